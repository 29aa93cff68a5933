/* NVML energy source: an NVIDIA GPU's energy counter, or its instant power
 * integrated over time.
 *
 * libnvidia-ml is loaded at run time (dlopen), so the package builds and
 * imports on machines without the driver.  Only NVML *getters* are looked
 * up: this file cannot change a GPU's settings.
 *
 * Facts it is built on (docs/hardware.md, seen on an H200 with driver 580):
 *   - nvmlDeviceGetTotalEnergyConsumption: mJ since driver load, ~4 ms a
 *     call, the value moves in steps about every 100 ms;
 *   - NVML_FI_DEV_POWER_INSTANT (field 186): mW, ~6 us a call, a new value
 *     about every 100 ms.
 *
 * Energy mode stamps each reading with the estimated time of the counter's
 * last step (midway between the last read that saw the old value and the
 * first that saw the new one), not with the read time: a 300 ms window of
 * read-time stamps would hold 2, 3 or 4 steps and be off by up to a third;
 * with step stamps the error is at most one sampler period at each end. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvml_api.h"
#include "source_internal.h"

/* ---- the library, loaded once per path and never unloaded -------------- */

struct nvml_api {
    struct nvml_api *next;
    char *path;
    void *dl;
    int inits; /* our nvmlInit_v2 calls not yet matched by nvmlShutdown */
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    nvmlReturn_t (*count)(unsigned int *);
    nvmlReturn_t (*handle)(unsigned int, nvmlDevice_t *);
    nvmlReturn_t (*name)(nvmlDevice_t, char *, unsigned int);
    nvmlReturn_t (*energy)(nvmlDevice_t, unsigned long long *);
    nvmlReturn_t (*fields)(nvmlDevice_t, int, nvmlFieldValue_t *);
    nvmlReturn_t (*driver)(char *, unsigned int);
    const char *(*error_string)(nvmlReturn_t);
};

static pthread_mutex_t api_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvml_api *apis;

/* What went wrong in this thread's last nrg_nvml_new / nrg_nvml_probe. */
static _Thread_local int open_status;
static _Thread_local char loader_error[512];

static const char DEFAULT_LIBRARY[] = "libnvidia-ml.so.1";

/* Called with api_lock held. */
static int load_api(const char *path, struct nvml_api **out)
{
    for (struct nvml_api *a = apis; a; a = a->next) {
        if (strcmp(a->path, path) == 0) {
            *out = a;
            return 0;
        }
    }
    dlerror();
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        snprintf(loader_error, sizeof loader_error, "%s", e ? e : path);
        return -ENOENT;
    }
    struct nvml_api *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        dlclose(dl);
        return -ENOMEM;
    }
    a->dl = dl;
    const char *missing = NULL;
#define NEED(field, sym)                                                      \
    do {                                                                      \
        *(void **)&a->field = dlsym(dl, sym);                                 \
        if (!a->field && !missing)                                            \
            missing = sym;                                                    \
    } while (0)
    NEED(init, "nvmlInit_v2");
    NEED(shutdown, "nvmlShutdown");
    NEED(count, "nvmlDeviceGetCount_v2");
    NEED(handle, "nvmlDeviceGetHandleByIndex_v2");
#undef NEED
    /* optional: a missing one only takes away what it gives */
    *(void **)&a->name = dlsym(dl, "nvmlDeviceGetName");
    *(void **)&a->energy = dlsym(dl, "nvmlDeviceGetTotalEnergyConsumption");
    *(void **)&a->fields = dlsym(dl, "nvmlDeviceGetFieldValues");
    *(void **)&a->driver = dlsym(dl, "nvmlSystemGetDriverVersion");
    *(void **)&a->error_string = dlsym(dl, "nvmlErrorString");
    if (missing) {
        snprintf(loader_error, sizeof loader_error,
                 "%s has no symbol %s (driver too old)", path, missing);
        free(a->path);
        free(a);
        dlclose(dl);
        return -ENOSYS;
    }
    a->next = apis;
    apis = a;
    *out = a;
    return 0;
}

static int init_status_errno(nvmlReturn_t r)
{
    switch (r) {
    case NVML_ERROR_NO_PERMISSION:
        return -EACCES;
    case NVML_ERROR_DRIVER_NOT_LOADED:
    case NVML_ERROR_GPU_NOT_FOUND:
    case NVML_ERROR_GPU_IS_LOST:
        return -ENODEV;
    default:
        return -EIO;
    }
}

/* Reads that fail: the sampler only needs "< 0", Python a fitting errno. */
static int read_status_errno(nvmlReturn_t r)
{
    switch (r) {
    case NVML_ERROR_NOT_SUPPORTED:
        return -EOPNOTSUPP;
    case NVML_ERROR_NO_PERMISSION:
        return -EACCES;
    case NVML_ERROR_NOT_READY:
    case NVML_ERROR_TIMEOUT:
    case NVML_ERROR_NO_DATA:
        return -EAGAIN;
    case NVML_ERROR_GPU_IS_LOST:
    case NVML_ERROR_GPU_NOT_FOUND:
    case NVML_ERROR_DRIVER_NOT_LOADED:
        return -ENODEV;
    default:
        return -EIO;
    }
}

/* Open the library and take one NVML reference: 0 or -errno. */
static int api_acquire(const char *library, struct nvml_api **out)
{
    open_status = 0;
    loader_error[0] = '\0';
    pthread_mutex_lock(&api_lock);
    struct nvml_api *a;
    int e = load_api(library ? library : DEFAULT_LIBRARY, &a);
    if (e == 0 && a->inits == 0) {
        nvmlReturn_t r = a->init();
        if (r != NVML_SUCCESS) {
            open_status = r;
            e = init_status_errno(r);
        }
    }
    if (e == 0) {
        a->inits++;
        *out = a;
    }
    pthread_mutex_unlock(&api_lock);
    return e;
}

static void api_release(struct nvml_api *a)
{
    pthread_mutex_lock(&api_lock);
    if (a->inits > 0 && --a->inits == 0)
        a->shutdown();
    pthread_mutex_unlock(&api_lock);
}

/* ---- discovery ---------------------------------------------------------- */

int nrg_nvml_probe(const char *library, unsigned int *count, char *driver,
                   int driver_len)
{
    struct nvml_api *a;
    int e = api_acquire(library, &a);
    if (e < 0)
        return e;
    nvmlReturn_t r = a->count(count);
    if (r != NVML_SUCCESS) {
        open_status = r;
        e = init_status_errno(r);
    }
    if (driver && driver_len > 0) {
        driver[0] = '\0';
        if (a->driver && a->driver(driver, (unsigned int)driver_len) != 0)
            driver[0] = '\0';
        driver[driver_len - 1] = '\0';
    }
    api_release(a);
    return e;
}

int nrg_nvml_open_status(void) { return open_status; }

const char *nrg_nvml_loader_error(void) { return loader_error; }

const char *nrg_nvml_error_string(int status)
{
    const char *text = NULL;
    pthread_mutex_lock(&api_lock);
    for (struct nvml_api *a = apis; a && !text; a = a->next)
        if (a->error_string)
            text = a->error_string(status);
    pthread_mutex_unlock(&api_lock);
    return text;
}

/* ---- the source --------------------------------------------------------- */

enum { AUTO_SWITCH_AFTER = 20 }; /* failed energy reads in a row, AUTO mode */

struct nvml_src {
    struct nvml_api *api;
    nvmlDevice_t dev;
    int requested; /* NRG_NVML_AUTO / ENERGY / POWER */
    _Atomic int mode;
    _Atomic int last_status;
    unsigned int failures_in_row;
    char name[96];
    double joules; /* cumulative, what read() reports */
    double stamp;  /* time of the reading reported (see the top comment) */
    /* energy mode */
    unsigned long long prev_mj;
    double prev_read_t; /* last successful read */
    double base_j;      /* joules when energy mode began */
    unsigned long long acc_mj;
    /* power mode */
    double prev_w;
};

static int get_energy(struct nvml_src *n, unsigned long long *mj, double *t)
{
    if (!n->api->energy)
        return NVML_ERROR_NOT_SUPPORTED;
    double t0 = nrg_now();
    nvmlReturn_t r = n->api->energy(n->dev, mj);
    *t = 0.5 * (t0 + nrg_now()); /* the call takes milliseconds */
    return r;
}

static int get_power(struct nvml_src *n, double *watts, double *t)
{
    if (!n->api->fields)
        return NVML_ERROR_NOT_SUPPORTED;
    nvmlFieldValue_t fv;
    memset(&fv, 0, sizeof fv);
    fv.fieldId = NVML_FI_DEV_POWER_INSTANT;
    double t0 = nrg_now();
    nvmlReturn_t r = n->api->fields(n->dev, 1, &fv);
    *t = 0.5 * (t0 + nrg_now());
    if (r != NVML_SUCCESS)
        return r;
    if (fv.nvmlReturn != NVML_SUCCESS)
        return fv.nvmlReturn;
    double mw;
    switch (fv.valueType) {
    case NVML_VALUE_TYPE_DOUBLE: mw = fv.value.dVal; break;
    case NVML_VALUE_TYPE_UNSIGNED_INT: mw = fv.value.uiVal; break;
    case NVML_VALUE_TYPE_UNSIGNED_LONG: mw = (double)fv.value.ulVal; break;
    case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: mw = (double)fv.value.ullVal; break;
    case NVML_VALUE_TYPE_SIGNED_LONG_LONG: mw = (double)fv.value.sllVal; break;
    case NVML_VALUE_TYPE_SIGNED_INT: mw = fv.value.siVal; break;
    case NVML_VALUE_TYPE_UNSIGNED_SHORT: mw = fv.value.usVal; break;
    default: return NVML_ERROR_NO_DATA;
    }
    if (!(mw >= 0) || mw > 1e8) /* negative, NaN or > 100 kW: not a reading */
        return NVML_ERROR_NO_DATA;
    *watts = mw * 1e-3;
    return NVML_SUCCESS;
}

static void start_energy(struct nvml_src *n, unsigned long long mj, double t,
                         double stamp)
{
    n->base_j = n->joules;
    n->acc_mj = 0;
    n->prev_mj = mj;
    n->prev_read_t = t;
    n->stamp = stamp;
    atomic_store(&n->mode, NRG_NVML_ENERGY);
}

static void start_power(struct nvml_src *n, double watts, double t)
{
    n->prev_w = watts;
    n->stamp = t;
    atomic_store(&n->mode, NRG_NVML_POWER);
}

static int fail(struct nvml_src *n, nvmlReturn_t r)
{
    atomic_store(&n->last_status, r);
    n->failures_in_row++;
    return read_status_errno(r);
}

static int read_energy(struct nvml_src *n)
{
    unsigned long long mj;
    double t;
    nvmlReturn_t r = get_energy(n, &mj, &t);
    if (r != NVML_SUCCESS) {
        int e = fail(n, r);
        double w;
        /* AUTO: a counter that stays refused mid-run gives way to power;
         * the gap since its last step is filled at the first power read. */
        if (n->requested == NRG_NVML_AUTO &&
            n->failures_in_row >= AUTO_SWITCH_AFTER &&
            get_power(n, &w, &t) == NVML_SUCCESS) {
            n->joules += w * (t - n->stamp);
            start_power(n, w, t);
            n->failures_in_row = 0;
            return 0;
        }
        return e;
    }
    if (mj != n->prev_mj) {
        /* A counter that goes back (driver reload) restarts from here: the
         * energy of that one interval is lost, the total never decreases. */
        if (mj > n->prev_mj)
            n->acc_mj += mj - n->prev_mj;
        n->stamp = 0.5 * (n->prev_read_t + t);
        n->prev_mj = mj;
        n->joules = n->base_j + (double)n->acc_mj * 1e-3;
    }
    n->prev_read_t = t;
    n->failures_in_row = 0;
    atomic_store(&n->last_status, NVML_SUCCESS);
    return 0;
}

static int read_power(struct nvml_src *n)
{
    double w, t;
    nvmlReturn_t r = get_power(n, &w, &t);
    if (r != NVML_SUCCESS)
        return fail(n, r);
    /* trapezoid over the read times; a failed read in between is bridged */
    n->joules += 0.5 * (n->prev_w + w) * (t - n->stamp);
    n->prev_w = w;
    n->stamp = t;
    n->failures_in_row = 0;
    atomic_store(&n->last_status, NVML_SUCCESS);
    return 0;
}

static int nvml_read(struct nrg_source *s, double *t, double *joules)
{
    struct nvml_src *n = s->impl;
    int e = atomic_load(&n->mode) == NRG_NVML_ENERGY ? read_energy(n)
                                                      : read_power(n);
    *t = n->stamp;
    joules[0] = n->joules; /* the last good values, also on failure */
    return e;
}

static void nvml_free(struct nrg_source *s)
{
    struct nvml_src *n = s->impl;
    api_release(n->api);
    free(n);
}

/* Wait (up to STILL_WAIT_S) for the energy counter to move.  It tells a
 * counter that never moves (seen with other counters on virtual machines:
 * docs/hardware.md) from one that works, and it stamps the first reading with the
 * time of a step instead of a read.  Returns 1 if it moved. */
enum { STILL_POLL_NS = 5000000 };
static const double STILL_WAIT_S = 0.25;

static int wait_for_a_step(struct nvml_src *n, unsigned long long mj, double t)
{
    double prev_t = t, deadline = t + STILL_WAIT_S;
    for (;;) {
        struct timespec pause = {0, STILL_POLL_NS};
        nanosleep(&pause, NULL);
        unsigned long long now_mj;
        double now_t;
        if (get_energy(n, &now_mj, &now_t) != NVML_SUCCESS)
            return 0;
        if (now_mj != mj) {
            start_energy(n, now_mj, now_t, 0.5 * (prev_t + now_t));
            return 1;
        }
        if (now_t > deadline)
            return 0;
        prev_t = now_t;
    }
}

/* First reading in the mode asked for; AUTO prefers the energy counter. */
static int first_reading(struct nvml_src *n, int mode)
{
    nvmlReturn_t r = NVML_ERROR_NOT_SUPPORTED;
    double t, w;
    if (mode == NRG_NVML_AUTO || mode == NRG_NVML_ENERGY) {
        unsigned long long mj;
        r = get_energy(n, &mj, &t);
        if (r == NVML_SUCCESS) {
            if (wait_for_a_step(n, mj, t))
                return 0;
            /* still: AUTO takes the power field if it reads > 0 W */
            if (mode == NRG_NVML_AUTO &&
                get_power(n, &w, &t) == NVML_SUCCESS && w > 0) {
                open_status = NRG_NVML_COUNTER_STILL;
                start_power(n, w, t);
                return 0;
            }
            start_energy(n, mj, t, t);
            return 0;
        }
        open_status = r;
        if (mode == NRG_NVML_ENERGY)
            return read_status_errno(r);
    }
    r = get_power(n, &w, &t);
    if (r == NVML_SUCCESS) {
        start_power(n, w, t);
        return 0;
    }
    open_status = r;
    return read_status_errno(r);
}

int nrg_nvml_new(nrg_source **out, const char *library, unsigned int index,
                 int mode)
{
    if (mode != NRG_NVML_AUTO && mode != NRG_NVML_ENERGY &&
        mode != NRG_NVML_POWER)
        return -EINVAL;
    struct nvml_src *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    int e = api_acquire(library, &n->api);
    if (e < 0) {
        free(n);
        return e;
    }
    unsigned int count = 0;
    nvmlReturn_t r = n->api->count(&count);
    if (r != NVML_SUCCESS) {
        open_status = r;
        e = init_status_errno(r);
    } else if (index >= count) {
        e = -ENXIO;
    } else if ((r = n->api->handle(index, &n->dev)) != NVML_SUCCESS) {
        open_status = r;
        e = r == NVML_ERROR_INVALID_ARGUMENT || r == NVML_ERROR_NOT_FOUND
                ? -ENXIO
                : init_status_errno(r);
    }
    if (e == 0) {
        n->requested = mode;
        if (n->api->name &&
            n->api->name(n->dev, n->name, sizeof n->name) != NVML_SUCCESS)
            n->name[0] = '\0';
        n->name[sizeof n->name - 1] = '\0';
        e = first_reading(n, mode);
    }
    if (e == 0) {
        e = nrg_source_alloc(out, 1, nvml_read, nvml_free, n);
        if (e == 0)
            return 0;
    }
    api_release(n->api);
    free(n);
    return e;
}

static struct nvml_src *as_nvml(const nrg_source *s)
{
    return s && s->read == nvml_read ? s->impl : NULL;
}

int nrg_nvml_mode(const nrg_source *s)
{
    struct nvml_src *n = as_nvml(s);
    return n ? atomic_load(&n->mode) : -EINVAL;
}

int nrg_nvml_last_status(const nrg_source *s)
{
    struct nvml_src *n = as_nvml(s);
    return n ? atomic_load(&n->last_status) : -EINVAL;
}

int nrg_nvml_name(const nrg_source *s, char *buf, int len)
{
    struct nvml_src *n = as_nvml(s);
    if (!n || !buf || len <= 0)
        return -EINVAL;
    snprintf(buf, (size_t)len, "%s", n->name);
    return 0;
}
