/* The sampler: a thread that reads one source at a fixed period into a ring
 * of (time, joules per column) and publishes windowed average powers.
 *
 * One writer (the thread), many readers, no lock on the read side:
 *
 * - Ring rows are a seqlock without a sequence number: the writer fills row
 *   `head` with relaxed atomic stores, then publishes head + 1 with a
 *   release store, then a release fence before it touches the next row.  A
 *   reader loads head (acquire), reads rows with relaxed atomic loads, and
 *   after an acquire fence loads head again: if a row it used may have been
 *   overwritten meanwhile it reads again.  The fences pair up (C11 7.17.4),
 *   so a reader that saw part of an overwrite also sees the head that makes
 *   the row invalid.  On x86 these are plain moves and compiler barriers:
 *   the same machine code as plain doubles; on aarch64 they are what makes
 *   it correct.
 * - The published powers are aligned doubles written with relaxed atomic
 *   stores: a hot loop reads one with a single load, no lock and no system
 *   call, and never sees half a value.
 * - Stale: after NRG_STALE_READS failed reads in a row (and at least
 *   NRG_STALE_MIN_MS), every published slot holds NaN until a read works
 *   again, and nrg_sampler_power() returns NaN: a comparison with a cap is
 *   then false, so a loop that reads a power it cannot trust notices. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "source_internal.h"

struct slot {
    double window;
    int col;
    int users;      /* watch() minus unwatch(); 0: free */
    uint64_t start; /* oldest row of the window; moved by the thread only */
};

struct nrg_sampler {
    nrg_source *src;
    double period;
    uint64_t cap;
    int ncol; /* domains + total */
    uint64_t total_mask;
    double *t;
    double *j; /* row-major: j[row % cap * ncol + col] */
    _Atomic uint64_t head; /* rows written so far */
    double first[NRG_MAX_DOMAINS + 1]; /* row 0, for energy(); set before
                                        * the thread starts */
    double published[NRG_MAX_SLOTS]; /* relaxed atomic stores only */
    /* Slots: changed by watch/unwatch and read by the thread's publish,
     * both under this lock. */
    pthread_mutex_t slot_lock;
    struct slot slots[NRG_MAX_SLOTS];
    int stale_after;  /* failed reads in a row that make the power stale */
    int failed_in_row; /* the thread's own */
    atomic_int stale;
    pthread_t thread;
    atomic_int stop;
    atomic_int running;
    _Atomic uint64_t errors;
};

static inline void store_d(double *p, double v)
{
    __atomic_store(p, &v, __ATOMIC_RELAXED);
}

static inline double load_d(const double *p)
{
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}

static double *row_j(nrg_sampler *s, uint64_t row)
{
    return &s->j[(row % s->cap) * (uint64_t)s->ncol];
}

static double row_t(nrg_sampler *s, uint64_t row)
{
    return load_d(&s->t[row % s->cap]);
}

static double row_col(nrg_sampler *s, uint64_t row, int col)
{
    return load_d(&row_j(s, row)[col]);
}

/* Oldest row that is safe to read: leave a margin for the writer. */
static uint64_t oldest_row(nrg_sampler *s, uint64_t head)
{
    uint64_t keep = s->cap - 2;
    return head > keep ? head - keep : 0;
}

static int take_sample(nrg_sampler *s)
{
    double t, joules[NRG_MAX_DOMAINS];
    int nd = s->ncol - 1;
    /* Hold the source lock across the ring write: fork() takes every
     * source lock first, so a child never sees a half-written row. */
    pthread_mutex_lock(&s->src->lock);
    int rc = s->src->read(s->src, &t, joules);
    if (rc < 0) {
        nrg_source_count_error(s->src);
        pthread_mutex_unlock(&s->src->lock);
        atomic_fetch_add(&s->errors, 1);
        return rc;
    }
    uint64_t row = atomic_load_explicit(&s->head, memory_order_relaxed);
    double *dst = row_j(s, row);
    double total = 0.0;
    for (int d = 0; d < nd; d++) {
        store_d(&dst[d], joules[d]);
        if (s->total_mask & (UINT64_C(1) << d))
            total += joules[d];
    }
    store_d(&dst[nd], total);
    store_d(&s->t[row % s->cap], t);
    if (row == 0) {
        for (int c = 0; c < nd; c++)
            s->first[c] = joules[c];
        s->first[nd] = total;
    }
    atomic_store_explicit(&s->head, row + 1, memory_order_release);
    /* the next row's stores must not be seen before this head */
    atomic_thread_fence(memory_order_release);
    pthread_mutex_unlock(&s->src->lock);
    return 0;
}

/* Average power over [start, last] where start is the last row at or
 * before t_last - window, or the oldest row held. */
static double window_power(nrg_sampler *s, uint64_t start, uint64_t last,
                           int col)
{
    if (last <= start)
        return 0.0;
    double dt = row_t(s, last) - row_t(s, start);
    if (dt <= 0)
        return 0.0;
    return (row_col(s, last, col) - row_col(s, start, col)) / dt;
}

static uint64_t advance_start(nrg_sampler *s, uint64_t start, uint64_t last,
                              double window)
{
    double edge = row_t(s, last) - window;
    while (start + 1 <= last && row_t(s, start + 1) <= edge)
        start++;
    return start;
}

/* Called by the thread after each sample, good or failed. */
static void publish(nrg_sampler *s, int good)
{
    if (good) {
        s->failed_in_row = 0;
        atomic_store_explicit(&s->stale, 0, memory_order_relaxed);
    } else if (++s->failed_in_row >= s->stale_after) {
        atomic_store_explicit(&s->stale, 1, memory_order_relaxed);
    } else {
        return; /* a failed read or two: the published powers still hold */
    }
    int stale = !good;
    uint64_t head = atomic_load_explicit(&s->head, memory_order_relaxed);
    uint64_t last = head - 1, oldest = oldest_row(s, head);
    pthread_mutex_lock(&s->slot_lock);
    for (int i = 0; i < NRG_MAX_SLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->users == 0)
            continue;
        if (stale) {
            store_d(&s->published[i], NAN);
            continue;
        }
        if (sl->start < oldest)
            sl->start = oldest;
        sl->start = advance_start(s, sl->start, last, sl->window);
        store_d(&s->published[i], window_power(s, sl->start, last, sl->col));
    }
    pthread_mutex_unlock(&s->slot_lock);
}

static struct timespec add_seconds(struct timespec t, double seconds)
{
    long ns = (long)(seconds * 1e9);
    t.tv_nsec += ns % 1000000000L;
    t.tv_sec += ns / 1000000000L + t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    return t;
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Sleep to the next tick.  Late ticks are skipped, not bunched up.  A long
 * period sleeps in slices of at most 50 ms so that stop() is seen soon; a
 * short one is a single clock_nanosleep, the cheapest wake-up there is. */
static void sleep_until(nrg_sampler *s, struct timespec *deadline)
{
    *deadline = add_seconds(*deadline, s->period);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (before(deadline, &now)) {
        *deadline = now;
        return;
    }
    while (!atomic_load(&s->stop)) {
        struct timespec slice = add_seconds(now, 0.05);
        const struct timespec *until = before(deadline, &slice) ? deadline : &slice;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, until, NULL) == EINTR)
            ;
        if (until == deadline)
            return;
        now = slice;
    }
}

static void *run(void *arg)
{
    nrg_sampler *s = arg;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    while (!atomic_load(&s->stop)) {
        sleep_until(s, &deadline);
        if (atomic_load(&s->stop))
            break;
        publish(s, take_sample(s) == 0);
    }
    return NULL;
}

/* A source may refuse a read for a moment (NVML: "not ready"): try for
 * about ten periods, at least 50 ms, before giving up. */
static int first_sample(nrg_sampler *s)
{
    double give_up = nrg_now() + fmax(10 * s->period, 0.05);
    int e;
    while ((e = take_sample(s)) < 0 && nrg_now() < give_up) {
        struct timespec pause = {0, (long)(fmin(s->period, 0.01) * 1e9)};
        nanosleep(&pause, NULL);
    }
    return e;
}

static int spawn(nrg_sampler *s)
{
    atomic_store(&s->stop, 0);
    /* The thread takes no signal: a Ctrl-C must reach Python's main thread
     * (or another Python thread), never this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&s->thread, NULL, run, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e)
        return -e;
    pthread_setname_np(s->thread, "nrg-sampler"); /* seen in top -H, ps -L */
    atomic_store(&s->running, 1);
    return 0;
}

int nrg_sampler_start(nrg_sampler **out, nrg_source *src, double period,
                      int capacity, uint64_t total_mask)
{
    if (!src || !(period > 0) || !isfinite(period) || capacity < 4)
        return -EINVAL;
    nrg_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->src = src;
    s->period = period;
    s->cap = (uint64_t)capacity;
    s->ncol = src->n_domains + 1;
    s->total_mask = total_mask;
    double min_reads = ceil(NRG_STALE_MIN_MS * 1e-3 / period);
    s->stale_after = min_reads > NRG_STALE_READS ? (int)fmin(min_reads, 1e6)
                                                 : NRG_STALE_READS;
    for (int i = 0; i < NRG_MAX_SLOTS; i++)
        s->published[i] = NAN;
    s->t = calloc(s->cap, sizeof *s->t);
    s->j = calloc(s->cap * (uint64_t)s->ncol, sizeof *s->j);
    pthread_mutex_init(&s->slot_lock, NULL);
    int e = (!s->t || !s->j) ? -ENOMEM : first_sample(s);
    if (e == 0)
        e = spawn(s);
    if (e < 0) {
        pthread_mutex_destroy(&s->slot_lock);
        free(s->t);
        free(s->j);
        free(s);
        return e;
    }
    *out = s;
    return 0;
}

void nrg_sampler_halt(nrg_sampler *s)
{
    atomic_store(&s->stop, 1);
    if (atomic_exchange(&s->running, 0))
        pthread_join(s->thread, NULL);
}

void nrg_sampler_stop(nrg_sampler *s)
{
    if (!s)
        return;
    nrg_sampler_halt(s);
    pthread_mutex_destroy(&s->slot_lock);
    free(s->t);
    free(s->j);
    free(s);
}

void nrg_sampler_forked(nrg_sampler *s)
{
    pthread_mutex_init(&s->slot_lock, NULL);
    atomic_store(&s->running, 0); /* the parent's thread does not exist here */
}

int nrg_sampler_respawn(nrg_sampler *s)
{
    atomic_store(&s->running, 0);
    return spawn(s);
}

int nrg_sampler_stale(nrg_sampler *s)
{
    return atomic_load_explicit(&s->stale, memory_order_relaxed);
}

static int column(nrg_sampler *s, int domain)
{
    if (domain == -1)
        return s->ncol - 1;
    if (domain < 0 || domain >= s->ncol - 1)
        return -1;
    return domain;
}

/* True if rows from `from` on were not overwritten while we read them:
 * the acquire fence pairs with the writer's release fence (see the top). */
static int still_valid(nrg_sampler *s, uint64_t from)
{
    atomic_thread_fence(memory_order_acquire);
    uint64_t head = atomic_load_explicit(&s->head, memory_order_relaxed);
    return from >= oldest_row(s, head);
}

static uint64_t find_start(nrg_sampler *s, uint64_t oldest, uint64_t last,
                           double window)
{
    /* binary search: last row with t <= t_last - window, else oldest */
    double edge = row_t(s, last) - window;
    uint64_t lo = oldest, hi = last;
    if (row_t(s, lo) > edge)
        return oldest;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if (row_t(s, mid) <= edge)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

double nrg_sampler_power(nrg_sampler *s, double window, int domain)
{
    int col = column(s, domain);
    if (col < 0 || !(window > 0) || nrg_sampler_stale(s))
        return NAN;
    for (;;) {
        uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
        uint64_t last = head - 1, oldest = oldest_row(s, head);
        uint64_t start = find_start(s, oldest, last, window);
        double w = window_power(s, start, last, col);
        if (still_valid(s, start))
            return w;
    }
}

int nrg_sampler_watch(nrg_sampler *s, double window, int domain)
{
    int col = column(s, domain);
    if (col < 0 || !(window > 0))
        return -EINVAL;
    pthread_mutex_lock(&s->slot_lock);
    int i, free_slot = -1;
    for (i = 0; i < NRG_MAX_SLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->users > 0 && sl->window == window && sl->col == col) {
            sl->users++;
            goto done;
        }
        if (sl->users == 0 && free_slot < 0)
            free_slot = i;
    }
    i = free_slot;
    if (i < 0) {
        i = -ENOSPC;
        goto done;
    }
    s->slots[i] = (struct slot){.window = window, .col = col, .users = 1};
    /* valid before the thread first publishes it (it holds slot_lock) */
    store_d(&s->published[i], nrg_sampler_power(s, window, domain));
done:
    pthread_mutex_unlock(&s->slot_lock);
    return i;
}

int nrg_sampler_unwatch(nrg_sampler *s, int slot)
{
    if (slot < 0 || slot >= NRG_MAX_SLOTS)
        return -EINVAL;
    pthread_mutex_lock(&s->slot_lock);
    int e = 0;
    if (s->slots[slot].users == 0)
        e = -EINVAL;
    else if (--s->slots[slot].users == 0)
        store_d(&s->published[slot], NAN); /* a late reader sees "unknown" */
    pthread_mutex_unlock(&s->slot_lock);
    return e;
}

double *nrg_sampler_published(nrg_sampler *s) { return s->published; }

int nrg_sampler_latest(nrg_sampler *s, double *t, double *joules_cols)
{
    for (;;) {
        uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
        *t = row_t(s, head - 1);
        for (int c = 0; c < s->ncol; c++)
            joules_cols[c] = row_col(s, head - 1, c);
        if (still_valid(s, head - 1))
            return s->ncol;
    }
}

double nrg_sampler_energy(nrg_sampler *s, int domain)
{
    int col = column(s, domain);
    if (col < 0)
        return NAN;
    double t, j[NRG_MAX_DOMAINS + 1];
    nrg_sampler_latest(s, &t, j);
    return j[col] - s->first[col]; /* row 0 itself may be overwritten */
}

uint64_t nrg_sampler_samples(nrg_sampler *s)
{
    return atomic_load_explicit(&s->head, memory_order_acquire);
}

uint64_t nrg_sampler_errors(nrg_sampler *s) { return atomic_load(&s->errors); }

int nrg_sampler_series(nrg_sampler *s, double after, double window,
                       int domain, double *out_t, double *out_w, int max)
{
    int col = column(s, domain);
    if (col < 0 || !(window > 0) || max < 0)
        return -EINVAL;
    for (;;) {
        uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
        uint64_t oldest = oldest_row(s, head), row = oldest;
        while (row < head && row_t(s, row) <= after)
            row++;
        uint64_t start = row > oldest ? find_start(s, oldest, row, window)
                                      : oldest;
        uint64_t first = start; /* the oldest row this call reads */
        int n = 0;
        for (; row < head && n < max; row++, n++) {
            start = advance_start(s, start, row, window);
            out_t[n] = row_t(s, row);
            out_w[n] = window_power(s, start, row, col);
        }
        if (still_valid(s, first))
            return n;
    }
}
