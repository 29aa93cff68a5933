/* Private to the C core: the shape shared by every energy source. */
#ifndef NRG_SOURCE_INTERNAL_H
#define NRG_SOURCE_INTERNAL_H
#include <pthread.h>
#include "nrgloops.h"

struct nrg_source;

/* Fill joules[0..n_domains) with cumulative values; called with s->lock held. */
typedef int (*nrg_read_fn)(struct nrg_source *s, double *t, double *joules);
typedef void (*nrg_free_fn)(struct nrg_source *s);
/* Called in a forked child, before anything else runs there. */
typedef void (*nrg_fork_fn)(struct nrg_source *s);

struct nrg_source {
    pthread_mutex_t lock; /* one reader at a time: sampler or Python */
    int n_domains;
    uint64_t errors; /* __atomic: read without the lock */
    uint64_t resets; /* __atomic: counter resets seen and not booked */
    nrg_read_fn read;
    nrg_free_fn free_impl;
    void *impl;
    nrg_fork_fn in_child; /* optional */
    struct nrg_source *next; /* registry for pthread_atfork */
};

/* Allocate the common part and register it for fork handling: 0, -EINVAL
 * (n_domains outside 1..NRG_MAX_DOMAINS) or -ENOMEM.  On failure the caller
 * still owns impl. */
int nrg_source_alloc(struct nrg_source **out, int n_domains, nrg_read_fn read,
                     nrg_free_fn free_impl, void *impl);

/* Count a failed read (the sampler and nrg_source_read both do). */
static inline void nrg_source_count_error(struct nrg_source *s)
{
    __atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED);
}

#endif
