/* Energy sources: counters (MSR, powercap, perf), the CPU-time model, the
 * fake and the push source.  Every read returns cumulative joules that never
 * decrease; wrap is undone exactly in integer units before scaling. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "source_internal.h"

double nrg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- registry: fork must not leave a mutex held in the child ---------- */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nrg_source *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void)
{
    pthread_mutex_lock(&registry_lock);
    for (struct nrg_source *s = registry; s; s = s->next)
        pthread_mutex_lock(&s->lock);
}

static void after_fork_parent(void)
{
    for (struct nrg_source *s = registry; s; s = s->next)
        pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&registry_lock);
}

static void after_fork_child(void)
{
    for (struct nrg_source *s = registry; s; s = s->next) {
        pthread_mutex_init(&s->lock, NULL);
        if (s->in_child)
            s->in_child(s);
    }
    pthread_mutex_init(&registry_lock, NULL);
}

static void install_atfork(void)
{
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

int nrg_source_alloc(struct nrg_source **out, int n_domains, nrg_read_fn read,
                     nrg_free_fn free_impl, void *impl)
{
    if (n_domains < 1 || n_domains > NRG_MAX_DOMAINS)
        return -EINVAL;
    pthread_once(&atfork_once, install_atfork);
    struct nrg_source *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    s->n_domains = n_domains;
    s->read = read;
    s->free_impl = free_impl;
    s->impl = impl;
    pthread_mutex_lock(&registry_lock);
    s->next = registry;
    registry = s;
    pthread_mutex_unlock(&registry_lock);
    *out = s;
    return 0;
}

int nrg_source_read(nrg_source *s, double *t, double *joules)
{
    pthread_mutex_lock(&s->lock);
    int rc = s->read(s, t, joules);
    if (rc < 0)
        nrg_source_count_error(s);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int nrg_source_domains(const nrg_source *s) { return s->n_domains; }

uint64_t nrg_source_errors(const nrg_source *s)
{
    return __atomic_load_n(&s->errors, __ATOMIC_RELAXED);
}

uint64_t nrg_source_resets(const nrg_source *s)
{
    return __atomic_load_n(&s->resets, __ATOMIC_RELAXED);
}

void nrg_source_free(nrg_source *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&registry_lock);
    for (struct nrg_source **p = &registry; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (s->free_impl)
        s->free_impl(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- counters ---------------------------------------------------------- */

/* Slack on the reset bound: counters step about every 1 ms with jitter and
 * no timestamp, and a read of many channels takes time. */
static const double RESET_SLACK_S = 0.05;

struct channel {
    int fd;
    int kind;
    uint64_t offset;
    uint64_t scale;   /* count = value read x scale */
    double unit_j;    /* joules per count */
    uint64_t modulus; /* in counts; 0: the full 64-bit range */
    int domain;
    uint64_t prev;    /* last count */
    double prev_t;    /* when it was read */
    unsigned __int128 total; /* counts since the channel was added: no
                              * overflow, also for nJ over years */
};

struct counters {
    int n;
    double max_watts; /* physical bound per channel; 0: none */
    struct channel ch[NRG_MAX_CHANNELS];
};

static int read_value(const struct channel *c, uint64_t *value)
{
    if (c->kind == NRG_CH_MSR) {
        uint64_t v;
        ssize_t r = pread(c->fd, &v, sizeof v, (off_t)c->offset);
        if (r != (ssize_t)sizeof v)
            return r < 0 ? -errno : -EIO;
        *value = v & 0xffffffffu; /* energy status is 32 bits, also on AMD */
        return 0;
    }
    if (c->kind == NRG_CH_TEXT) {
        char buf[32];
        ssize_t r = pread(c->fd, buf, sizeof buf - 1, 0);
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        buf[r] = '\0';
        char *end;
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 10);
        if (end == buf || (*end != '\0' && *end != '\n') || buf[0] == '-')
            return -EINVAL; /* not a decimal count */
        if (errno == ERANGE)
            return -ERANGE;
        *value = v;
        return 0;
    }
    uint64_t v; /* NRG_CH_PERF: perf fds do not support pread */
    ssize_t r = read(c->fd, &v, sizeof v);
    if (r != (ssize_t)sizeof v)
        return r < 0 ? -errno : -EIO;
    *value = v;
    return 0;
}

/* The channel's count now: the value read, scaled, below the modulus. */
static int read_count(const struct channel *c, uint64_t *count)
{
    uint64_t v;
    int e = read_value(c, &v);
    if (e < 0)
        return e;
    if (v > UINT64_MAX / c->scale)
        return -ERANGE;
    v *= c->scale;
    if (c->modulus && v >= c->modulus)
        return -ERANGE;
    *count = v;
    return 0;
}

static uint64_t wrap_delta(uint64_t now, uint64_t prev, uint64_t modulus)
{
    if (modulus == 0 || now >= prev)
        return now - prev; /* unsigned: exact modulo 2^64 */
    return modulus - prev + now;
}

/* Book the step from the channel's last count to `count`, unless it is
 * more than the physical bound allows: then the counter was reset. */
static void book(struct nrg_source *s, struct counters *c, struct channel *ch,
                 uint64_t count, double t)
{
    uint64_t delta = wrap_delta(count, ch->prev, ch->modulus);
    double bound = c->max_watts * ((t - ch->prev_t) + RESET_SLACK_S) / ch->unit_j;
    if (c->max_watts > 0 && (double)delta > bound)
        __atomic_fetch_add(&s->resets, 1, __ATOMIC_RELAXED);
    else
        ch->total += delta;
    ch->prev = count;
    ch->prev_t = t;
}

static int counters_read(struct nrg_source *s, double *t, double *joules)
{
    struct counters *c = s->impl;
    int rc = 0;
    *t = nrg_now();
    for (int d = 0; d < s->n_domains; d++)
        joules[d] = 0.0;
    for (int i = 0; i < c->n; i++) {
        struct channel *ch = &c->ch[i];
        uint64_t count;
        int e = read_count(ch, &count);
        if (e < 0)
            rc = e; /* keep the channel's last total */
        else
            book(s, c, ch, count, *t);
        joules[ch->domain] += (double)ch->total * ch->unit_j;
    }
    return rc;
}

static void counters_free(struct nrg_source *s)
{
    struct counters *c = s->impl;
    for (int i = 0; i < c->n; i++)
        close(c->ch[i].fd);
    free(c);
}

int nrg_counters_new(nrg_source **out, int n_domains, double max_watts)
{
    if (!(max_watts >= 0) || isinf(max_watts))
        return -EINVAL;
    struct counters *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->max_watts = max_watts;
    int e = nrg_source_alloc(out, n_domains, counters_read, counters_free, c);
    if (e < 0)
        free(c);
    return e;
}

static int add_channel(nrg_source *s, int fd, int kind, uint64_t offset,
                       uint64_t scale, double unit_j, uint64_t modulus,
                       int domain)
{
    struct counters *c = s->impl;
    struct channel *ch = &c->ch[c->n];
    *ch = (struct channel){.fd = fd, .kind = kind, .offset = offset,
                           .scale = scale, .unit_j = unit_j,
                           .modulus = modulus, .domain = domain};
    int e = read_count(ch, &ch->prev); /* the first read sets the zero */
    ch->prev_t = nrg_now();
    if (e < 0) {
        close(fd);
        return e;
    }
    c->n++;
    return 0;
}

static int check_channel_args(nrg_source *s, uint64_t scale, double unit_j,
                              int domain)
{
    if (s->read != counters_read || domain < 0 || domain >= s->n_domains ||
        !(unit_j > 0) || isinf(unit_j) || scale == 0)
        return -EINVAL;
    if (((struct counters *)s->impl)->n >= NRG_MAX_CHANNELS)
        return -ENOSPC;
    return 0;
}

int nrg_counters_add_file(nrg_source *s, const char *path, int kind,
                          uint64_t offset, uint64_t scale, double unit_j,
                          uint64_t modulus, int domain)
{
    int e = check_channel_args(s, scale, unit_j, domain);
    if (e < 0)
        return e;
    if (kind != NRG_CH_MSR && kind != NRG_CH_TEXT)
        return -EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    pthread_mutex_lock(&s->lock);
    e = add_channel(s, fd, kind, offset, scale, unit_j, modulus, domain);
    pthread_mutex_unlock(&s->lock);
    return e;
}

int nrg_counters_add_perf(nrg_source *s, uint32_t type, uint64_t config,
                          int cpu, double unit_j, int domain)
{
    int e = check_channel_args(s, 1, unit_j, domain);
    if (e < 0)
        return e;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = type;
    attr.config = config;
    /* system-wide event on one CPU of the package: pid -1 */
    int fd = (int)syscall(SYS_perf_event_open, &attr, -1, cpu, -1,
                          PERF_FLAG_FD_CLOEXEC);
    if (fd < 0)
        return -errno;
    pthread_mutex_lock(&s->lock);
    e = add_channel(s, fd, NRG_CH_PERF, 0, 1, unit_j, 0, domain);
    pthread_mutex_unlock(&s->lock);
    return e;
}

/* ---- model: estimated power from CPU time ----------------------------- */

struct model {
    int scope;
    int stat_fd;
    double idle_w, per_core_w;
    double t0, busy0;
    double last_busy; /* busy seconds at the last read */
    double last_j;    /* never report less than before */
    double tick_s;
};

static int busy_seconds(struct model *m, double *busy)
{
    if (m->scope == NRG_MODEL_PROCESS) {
        struct timespec ts;
        if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) < 0)
            return -errno;
        *busy = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        return 0;
    }
    char buf[512];
    ssize_t r = pread(m->stat_fd, buf, sizeof buf - 1, 0);
    if (r <= 0)
        return r < 0 ? -errno : -EIO;
    buf[r] = '\0';
    unsigned long long v[8] = {0};
    /* cpu user nice system idle iowait irq softirq steal */
    if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
               &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 4)
        return -EINVAL;
    unsigned long long ticks = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    *busy = (double)ticks * m->tick_s;
    return 0;
}

static int model_read(struct nrg_source *s, double *t, double *joules)
{
    struct model *m = s->impl;
    double busy;
    *t = nrg_now();
    int e = busy_seconds(m, &busy);
    if (e < 0)
        return e;
    m->last_busy = busy;
    double j = m->idle_w * (*t - m->t0) + m->per_core_w * (busy - m->busy0);
    if (j > m->last_j)
        m->last_j = j;
    joules[0] = m->last_j;
    return 0;
}

/* A forked child's process CPU clock starts again near 0: carry on from the
 * parent's count so that the child's energy keeps rising at once. */
static void model_in_child(struct nrg_source *s)
{
    struct model *m = s->impl;
    if (m->scope == NRG_MODEL_PROCESS)
        m->busy0 -= m->last_busy;
}

static void model_free(struct nrg_source *s)
{
    struct model *m = s->impl;
    if (m->stat_fd >= 0)
        close(m->stat_fd);
    free(m);
}

int nrg_model_new(nrg_source **out, int scope, const char *stat_path,
                  double idle_w, double per_core_w)
{
    if ((scope != NRG_MODEL_PROCESS && scope != NRG_MODEL_SYSTEM) ||
        !(idle_w >= 0) || !(per_core_w >= 0))
        return -EINVAL;
    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->scope = scope;
    m->stat_fd = -1;
    m->idle_w = idle_w;
    m->per_core_w = per_core_w;
    long hz = sysconf(_SC_CLK_TCK);
    m->tick_s = 1.0 / (double)(hz > 0 ? hz : 100);
    if (scope == NRG_MODEL_SYSTEM) {
        m->stat_fd = open(stat_path ? stat_path : "/proc/stat",
                          O_RDONLY | O_CLOEXEC);
        if (m->stat_fd < 0) {
            int e = -errno;
            free(m);
            return e;
        }
    }
    int e = busy_seconds(m, &m->busy0);
    m->t0 = nrg_now();
    if (e == 0) {
        m->last_busy = m->busy0;
        e = nrg_source_alloc(out, 1, model_read, model_free, m);
        if (e == 0) {
            (*out)->in_child = model_in_child;
            return 0;
        }
    }
    if (m->stat_fd >= 0)
        close(m->stat_fd);
    free(m);
    return e;
}

/* ---- fake: power set by the caller ------------------------------------ */

struct fake {
    double watts, joules, last_t;
};

static void fake_advance(struct fake *f, double now)
{
    f->joules += f->watts * (now - f->last_t);
    f->last_t = now;
}

static int fake_read(struct nrg_source *s, double *t, double *joules)
{
    struct fake *f = s->impl;
    *t = nrg_now();
    fake_advance(f, *t);
    joules[0] = f->joules;
    return 0;
}

static void plain_free(struct nrg_source *s) { free(s->impl); }

int nrg_fake_new(nrg_source **out, double watts)
{
    if (!(watts >= 0))
        return -EINVAL;
    struct fake *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->watts = watts;
    f->last_t = nrg_now();
    int e = nrg_source_alloc(out, 1, fake_read, plain_free, f);
    if (e < 0)
        free(f);
    return e;
}

int nrg_fake_set_watts(nrg_source *s, double watts)
{
    if (s->read != fake_read || !(watts >= 0))
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    struct fake *f = s->impl;
    fake_advance(f, nrg_now()); /* the old power holds until now */
    f->watts = watts;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* ---- push: readings handed in by another thread ----------------------- */

struct push {
    double t;
    int have;
    double joules[NRG_MAX_DOMAINS];
};

static int push_read(struct nrg_source *s, double *t, double *joules)
{
    struct push *p = s->impl;
    *t = p->have ? p->t : nrg_now();
    memcpy(joules, p->joules, sizeof(double) * (size_t)s->n_domains);
    return 0;
}

int nrg_push_new(nrg_source **out, int n_domains)
{
    struct push *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    int e = nrg_source_alloc(out, n_domains, push_read, plain_free, p);
    if (e < 0)
        free(p);
    return e;
}

int nrg_push(nrg_source *s, double t, const double *joules)
{
    if (s->read != push_read)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    struct push *p = s->impl;
    int rc = 0;
    if (p->have && t < p->t)
        rc = -EINVAL; /* time runs forward */
    for (int d = 0; rc == 0 && d < s->n_domains; d++)
        if (!(joules[d] >= p->joules[d]))
            rc = -EINVAL; /* cumulative energy never decreases */
    if (rc == 0) {
        p->t = t;
        p->have = 1;
        memcpy(p->joules, joules, sizeof(double) * (size_t)s->n_domains);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}
