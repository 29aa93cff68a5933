/* The sampler: a thread that reads one source at a fixed period into a ring
 * of (time, joules per column) and publishes windowed average powers.
 *
 * One writer (the thread), many readers.  Readers of the ring check after
 * reading that the rows they used were not overwritten meanwhile.  The
 * published powers are plain aligned doubles: a hot loop reads one with a
 * single load, no lock and no system call. */
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
    uint64_t start; /* oldest row of the window; moved by the thread only */
    atomic_int active;
};

struct nrg_sampler {
    nrg_source *src;
    double period;
    uint64_t cap;
    int ncol; /* domains + total */
    uint32_t total_mask;
    double *t;
    double *j; /* row-major: j[row % cap * ncol + col] */
    _Atomic uint64_t head; /* rows written so far */
    double first[NRG_MAX_DOMAINS + 1]; /* row 0, for energy() */
    struct slot slots[NRG_MAX_SLOTS];
    volatile double published[NRG_MAX_SLOTS];
    pthread_mutex_t watch_lock; /* serialises nrg_sampler_watch callers */
    int n_slots;
    pthread_t thread;
    atomic_int stop;
    atomic_int running;
    _Atomic uint64_t errors;
};

static double *row_j(nrg_sampler *s, uint64_t row)
{
    return &s->j[(row % s->cap) * (uint64_t)s->ncol];
}

static double row_t(nrg_sampler *s, uint64_t row) { return s->t[row % s->cap]; }

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
        s->src->errors++;
        pthread_mutex_unlock(&s->src->lock);
        atomic_fetch_add(&s->errors, 1);
        return rc;
    }
    uint64_t row = atomic_load_explicit(&s->head, memory_order_relaxed);
    double *dst = row_j(s, row);
    double total = 0.0;
    for (int d = 0; d < nd; d++) {
        dst[d] = joules[d];
        if (s->total_mask & (1u << d))
            total += joules[d];
    }
    dst[nd] = total;
    s->t[row % s->cap] = t;
    if (row == 0)
        memcpy(s->first, dst, sizeof(double) * (size_t)s->ncol);
    atomic_store_explicit(&s->head, row + 1, memory_order_release);
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
    return (row_j(s, last)[col] - row_j(s, start)[col]) / dt;
}

static uint64_t advance_start(nrg_sampler *s, uint64_t start, uint64_t last,
                              double window)
{
    double edge = row_t(s, last) - window;
    while (start + 1 <= last && row_t(s, start + 1) <= edge)
        start++;
    return start;
}

static void publish(nrg_sampler *s)
{
    uint64_t head = atomic_load_explicit(&s->head, memory_order_relaxed);
    if (head == 0)
        return;
    uint64_t last = head - 1, oldest = oldest_row(s, head);
    for (int i = 0; i < NRG_MAX_SLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (!atomic_load_explicit(&sl->active, memory_order_acquire))
            continue;
        if (sl->start < oldest)
            sl->start = oldest;
        sl->start = advance_start(s, sl->start, last, sl->window);
        s->published[i] = window_power(s, sl->start, last, sl->col);
    }
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
        if (take_sample(s) == 0)
            publish(s);
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
                      int capacity, uint32_t total_mask)
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
    s->t = calloc(s->cap, sizeof *s->t);
    s->j = calloc(s->cap * (uint64_t)s->ncol, sizeof *s->j);
    pthread_mutex_init(&s->watch_lock, NULL);
    int e = (!s->t || !s->j) ? -ENOMEM : first_sample(s);
    if (e == 0)
        e = spawn(s);
    if (e < 0) {
        pthread_mutex_destroy(&s->watch_lock);
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
    pthread_mutex_destroy(&s->watch_lock);
    free(s->t);
    free(s->j);
    free(s);
}

int nrg_sampler_respawn(nrg_sampler *s)
{
    pthread_mutex_init(&s->watch_lock, NULL);
    atomic_store(&s->running, 0); /* the parent's thread does not exist here */
    return spawn(s);
}

static int column(nrg_sampler *s, int domain)
{
    if (domain == -1)
        return s->ncol - 1;
    if (domain < 0 || domain >= s->ncol - 1)
        return -1;
    return domain;
}

/* True if rows from `from` on were not overwritten while we read them. */
static int still_valid(nrg_sampler *s, uint64_t from)
{
    uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
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
    if (col < 0 || !(window > 0))
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
    pthread_mutex_lock(&s->watch_lock);
    int i;
    for (i = 0; i < s->n_slots; i++)
        if (s->slots[i].window == window && s->slots[i].col == col)
            goto done;
    if (s->n_slots == NRG_MAX_SLOTS) {
        i = -ENOSPC;
        goto done;
    }
    i = s->n_slots++;
    s->slots[i].window = window;
    s->slots[i].col = col;
    s->slots[i].start = 0; /* clamped to the oldest row by the thread */
    /* valid before the thread first publishes it */
    s->published[i] = nrg_sampler_power(s, window, domain);
    atomic_store_explicit(&s->slots[i].active, 1, memory_order_release);
done:
    pthread_mutex_unlock(&s->watch_lock);
    return i;
}

volatile double *nrg_sampler_published(nrg_sampler *s) { return s->published; }

int nrg_sampler_latest(nrg_sampler *s, double *t, double *joules_cols)
{
    for (;;) {
        uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
        *t = row_t(s, head - 1);
        memcpy(joules_cols, row_j(s, head - 1), sizeof(double) * (size_t)s->ncol);
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
