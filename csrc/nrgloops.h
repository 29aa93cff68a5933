/*
 * nrgloops C core: everything Python may call, and nothing else.
 *
 * ffi_build.py feeds this file to cffi's cdef() with the preprocessor lines
 * removed, so keep it to plain declarations (enums instead of #defines).
 *
 * Return codes: 0 (or a count) on success, -errno on failure, one errno per
 * kind of failure: -EINVAL a bad argument, -ENOMEM an allocation, -ENOSPC a
 * fixed table is full, -ERANGE a value read that the counter cannot hold,
 * else the errno of the system call that failed.  Python turns them into
 * exceptions in one place (nrgloops/_ffi.py).
 */
#ifndef NRGLOOPS_H
#define NRGLOOPS_H
#include <stddef.h>
#include <stdint.h>

enum {
    NRG_MAX_DOMAINS = 64, /* the total is a 64-bit mask of domains */
    NRG_MAX_SLOTS = 32,
    NRG_MAX_CHANNELS = 512,
    /* The sampler calls its power stale (and publishes NaN) after this many
     * failed reads in a row, and at least NRG_STALE_MIN_MS of them. */
    NRG_STALE_READS = 5,
    NRG_STALE_MIN_MS = 20,
};

/* How a counter channel is read. */
enum {
    NRG_CH_MSR = 0,  /* pread 8 bytes at the MSR address, low 32 bits count */
    NRG_CH_TEXT = 1, /* pread a decimal number at offset 0 (powercap energy_uj) */
    NRG_CH_PERF = 2, /* read 8 bytes from a perf_event fd (64-bit count) */
};

/* What the model meter counts as busy CPU time. */
enum {
    NRG_MODEL_PROCESS = 0, /* CLOCK_PROCESS_CPUTIME_ID of this process */
    NRG_MODEL_SYSTEM = 1,  /* busy jiffies of the first line of /proc/stat */
};

typedef struct nrg_source nrg_source;
typedef struct nrg_sampler nrg_sampler;

/* CLOCK_MONOTONIC in seconds: the same clock as Python's time.monotonic(). */
double nrg_now(void);

/* ---- sources: cumulative joules per domain, never decreasing ---------- */

/* Counter source: a set of hardware counters ("channels"), each adding to
 * one domain.  A channel's count is the value read times `scale` (powercap:
 * uJ x 1000 = nJ, so that a wrap of 2^32 units of whole nJ is exact).
 * Wrap: delta = (now - prev) mod modulus, modulus 0 = 2^64, in counts.
 * Reset: a delta above max_watts over the time since the channel's last
 * read (plus 50 ms of slack) is no wrap but a counter that restarted
 * (resume, driver reload): it is not booked, and nrg_source_resets() counts
 * it.  max_watts 0: no bound. */
int nrg_counters_new(nrg_source **out, int n_domains, double max_watts);
int nrg_counters_add_file(nrg_source *s, const char *path, int kind,
                          uint64_t offset, uint64_t scale, double unit_j,
                          uint64_t modulus, int domain);
int nrg_counters_add_perf(nrg_source *s, uint32_t type, uint64_t config,
                          int cpu, double unit_j, int domain);

/* Model source: idle_w * elapsed + per_core_w * busy CPU seconds. */
int nrg_model_new(nrg_source **out, int scope, const char *stat_path,
                  double idle_w, double per_core_w);

/* Fake source: the caller sets the power; energy integrates it over time. */
int nrg_fake_new(nrg_source **out, double watts);
int nrg_fake_set_watts(nrg_source *s, double watts);

/* Push source: another thread pushes (time, cumulative joules) readings;
 * reading returns the latest push.  For adapters of Python-only meters. */
int nrg_push_new(nrg_source **out, int n_domains);
int nrg_push(nrg_source *s, double t, const double *joules);

/* NVML source (nvml.c): the GPU's energy counter, or its instant power
 * integrated over time; libnvidia-ml is loaded at run time with dlopen
 * (library NULL: "libnvidia-ml.so.1").  Read only: no NVML setter is used.
 * Failures: -ENOENT library not found (nrg_nvml_loader_error says why),
 * -ENOSYS a required symbol is missing, -ENXIO no GPU of that index,
 * -EOPNOTSUPP the mode is not supported, else -EACCES/-ENODEV/-EIO; the
 * nvmlReturn_t behind a failure is nrg_nvml_open_status() (this thread). */
enum {
    NRG_NVML_AUTO = 0,    /* energy counter if supported, else power */
    NRG_NVML_ENERGY = 1,  /* nvmlDeviceGetTotalEnergyConsumption (mJ) */
    NRG_NVML_POWER = 2,   /* NVML_FI_DEV_POWER_INSTANT (mW), integrated */
    /* nrg_nvml_open_status() after AUTO chose power because the energy
     * counter did not move within 0.25 s (not an nvmlReturn_t) */
    NRG_NVML_COUNTER_STILL = 1000,
};
int nrg_nvml_new(nrg_source **out, const char *library, unsigned int index,
                 int mode);
/* Load, init, count the GPUs, read the driver version, shut down. */
int nrg_nvml_probe(const char *library, unsigned int *count, char *driver,
                   int driver_len);
int nrg_nvml_open_status(void);          /* nvmlReturn_t of the last failure */
const char *nrg_nvml_loader_error(void); /* dlopen/dlsym text of the last failure */
const char *nrg_nvml_error_string(int status); /* nvmlErrorString, or NULL */
int nrg_nvml_mode(const nrg_source *s);        /* the mode in use */
int nrg_nvml_last_status(const nrg_source *s); /* last nvmlReturn_t seen */
int nrg_nvml_name(const nrg_source *s, char *buf, int len); /* GPU name */

/* Read all domains now.  On failure joules holds the last good values. */
int nrg_source_read(nrg_source *s, double *t, double *joules);
int nrg_source_domains(const nrg_source *s);
uint64_t nrg_source_errors(const nrg_source *s);
uint64_t nrg_source_resets(const nrg_source *s); /* counter resets skipped */
void nrg_source_free(nrg_source *s);

/* ---- sampler: a background thread that reads a source into a ring ---- */

/* Columns of the ring: one per domain, then the total (domains in
 * total_mask).  The first sample is taken before this returns. */
int nrg_sampler_start(nrg_sampler **out, nrg_source *src, double period,
                      int capacity, uint64_t total_mask);
void nrg_sampler_stop(nrg_sampler *s); /* joins the thread and frees */
/* Joins the thread but keeps the ring: readers may still look at it. */
void nrg_sampler_halt(nrg_sampler *s);
/* In a forked child: make the sampler's lock usable again (the thread is
 * gone there); respawn then starts a new thread on the same ring. */
void nrg_sampler_forked(nrg_sampler *s);
int nrg_sampler_respawn(nrg_sampler *s);

/* Ask the thread to publish the windowed power of a column (domain index,
 * or -1 for the total) at every sample; returns the slot index.  Slots are
 * shared by equal (window, domain) and counted: each watch needs one
 * unwatch, and the last frees the slot.  -ENOSPC when all NRG_MAX_SLOTS
 * distinct (window, domain) are in use. */
int nrg_sampler_watch(nrg_sampler *s, double window, int domain);
int nrg_sampler_unwatch(nrg_sampler *s, int slot);
/* NRG_MAX_SLOTS doubles, watts; slot i is rewritten at every sample (one
 * aligned 8-byte store: a reader's plain load sees a whole value).  A slot
 * holds NaN while the sampler is stale: no good read for NRG_STALE_READS
 * reads in a row and NRG_STALE_MIN_MS. */
double *nrg_sampler_published(nrg_sampler *s);
int nrg_sampler_stale(nrg_sampler *s); /* 1 while stale, else 0 */

/* Windowed power now (NaN while stale, or for a bad argument). */
double nrg_sampler_power(nrg_sampler *s, double window, int domain);
double nrg_sampler_energy(nrg_sampler *s, int domain);
int nrg_sampler_latest(nrg_sampler *s, double *t, double *joules_cols);
uint64_t nrg_sampler_samples(nrg_sampler *s);
uint64_t nrg_sampler_errors(nrg_sampler *s);
/* Windowed power at each sample newer than `after`, oldest first. */
int nrg_sampler_series(nrg_sampler *s, double after, double window,
                       int domain, double *out_t, double *out_w, int max);

/* ---- substring search kernel (search.c) ------------------------------- */

/* Occurrences of pat (m bytes) that start at a position in [start, end) of
 * hay (n bytes); overlapping occurrences all count.  GIL-free under cffi. */
int64_t nrg_search_count(const uint8_t *hay, size_t n, const uint8_t *pat,
                         size_t m, size_t start, size_t end);

#endif
