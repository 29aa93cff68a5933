/* A tiny fake libnvidia-ml for the NVML meter's tests.
 *
 * Built by tests/test_meter_nvml.py with gcc into a temporary .so; the C
 * meter dlopens it like the real library, and the test drives it through
 * ctypes on the same file (same handle, so both see the same state).
 *
 * It exports the NVML getters the meter uses, with the real signatures and
 * the real nvmlFieldValue_t layout (both from csrc/nvml_api.h, the header the
 * meter itself uses), plus a few setters that only count their
 * calls (the meter must never call them), plus a control API (fake_nvml_*).
 *
 * Values: "manual" (the test sets the energy in mJ and the power in mW) or
 * "simulated" (a power in W integrated over real time, and both readings
 * move only at update boundaries, like the ~100 ms steps seen on an H200). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "nvml_api.h" /* csrc/: the real types and layout */

/* Which call a status or a counter is for. */
enum {
    FAKE_INIT = 0,
    FAKE_COUNT = 1,
    FAKE_HANDLE = 2,
    FAKE_ENERGY = 3,
    FAKE_FIELDS = 4,      /* the nvmlDeviceGetFieldValues call itself */
    FAKE_FIELD_ENTRY = 5, /* the power field's own nvmlReturn */
    FAKE_NAME = 6,
    FAKE_SHUTDOWN = 7,
    FAKE_N = 8,
};

struct nvmlDevice_st {
    unsigned int index;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlDevice_st devs[8] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
static unsigned int gpu_count = 1;
static int status[FAKE_N];
static unsigned long long calls[FAKE_N];
static int inits;
static unsigned long long setter_calls;
static int value_type = NVML_VALUE_TYPE_UNSIGNED_INT;

static int simulated;
static unsigned long long manual_mj;
static double manual_mw;
/* simulation: power held since sim_t, energy integrated exactly */
static double sim_w, sim_j, sim_t, period, next_edge, shown_j, shown_w;
static unsigned long long energy_offset_mj = 123456789ULL; /* "since driver load" */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Move the simulation to t: publish the values of every update edge passed. */
static void advance(double t)
{
    if (!simulated)
        return;
    if (period <= 0) {
        sim_j += sim_w * (t - sim_t);
        sim_t = t;
        shown_j = sim_j;
        shown_w = sim_w;
        return;
    }
    while (next_edge <= t) {
        /* the power shown is the average over the last update period, so
         * energy added in impulses (fake_nvml_add_energy) shows in it too */
        double j = sim_j + sim_w * (next_edge - sim_t);
        shown_w = (j - shown_j) / period;
        shown_j = j;
        next_edge += period;
    }
    sim_j += sim_w * (t - sim_t);
    sim_t = t;
}

/* ---- control API --------------------------------------------------------- */

void fake_nvml_reset(void)
{
    pthread_mutex_lock(&lock);
    gpu_count = 1;
    memset(status, 0, sizeof status);
    memset(calls, 0, sizeof calls);
    setter_calls = 0;
    value_type = NVML_VALUE_TYPE_UNSIGNED_INT;
    simulated = 0;
    manual_mj = 0;
    manual_mw = 0;
    pthread_mutex_unlock(&lock);
}

void fake_nvml_set_count(unsigned int n)
{
    pthread_mutex_lock(&lock);
    gpu_count = n > 8 ? 8 : n;
    pthread_mutex_unlock(&lock);
}

void fake_nvml_set_status(int call, int code)
{
    pthread_mutex_lock(&lock);
    if (call >= 0 && call < FAKE_N)
        status[call] = code;
    pthread_mutex_unlock(&lock);
}

unsigned long long fake_nvml_calls(int call)
{
    pthread_mutex_lock(&lock);
    unsigned long long n = call >= 0 && call < FAKE_N ? calls[call] : 0;
    pthread_mutex_unlock(&lock);
    return n;
}

int fake_nvml_inits(void) { return inits; }

unsigned long long fake_nvml_setter_calls(void) { return setter_calls; }

void fake_nvml_set_value_type(int t)
{
    pthread_mutex_lock(&lock);
    value_type = t;
    pthread_mutex_unlock(&lock);
}

/* Manual values: exactly what the next reads return. */
void fake_nvml_set_energy_mj(unsigned long long mj)
{
    pthread_mutex_lock(&lock);
    simulated = 0;
    manual_mj = mj;
    pthread_mutex_unlock(&lock);
}

void fake_nvml_set_power_mw(double mw)
{
    pthread_mutex_lock(&lock);
    simulated = 0;
    manual_mw = mw;
    pthread_mutex_unlock(&lock);
}

/* Simulated values: `watts` from now on, readings updated every
 * `update_period` seconds (0: continuously). */
void fake_nvml_simulate(double watts, double update_period)
{
    pthread_mutex_lock(&lock);
    double t = now();
    if (!simulated) {
        simulated = 1;
        sim_j = shown_j = 0;
        sim_t = t;
        sim_w = shown_w = watts;
        period = update_period;
        next_edge = t + update_period;
    } else {
        advance(t);
        sim_w = watts;
        if (update_period != period) {
            period = update_period;
            next_edge = t + update_period;
        }
    }
    pthread_mutex_unlock(&lock);
}

/* Add an impulse of energy (a batch of GPU work, say) to the simulation:
 * the counter shows it at the next update, the power field averages it over
 * the update period. */
void fake_nvml_add_energy(double joules)
{
    pthread_mutex_lock(&lock);
    if (simulated && joules > 0) {
        advance(now());
        sim_j += joules;
    }
    pthread_mutex_unlock(&lock);
}

/* True energy of the simulation so far, J (what the meter should see). */
double fake_nvml_true_joules(void)
{
    pthread_mutex_lock(&lock);
    advance(now());
    double j = sim_j;
    pthread_mutex_unlock(&lock);
    return j;
}

/* ---- NVML ------------------------------------------------------------------ */

/* Count the call and take the lock (leave() drops it); its status to return. */
static nvmlReturn_t enter(int call)
{
    pthread_mutex_lock(&lock);
    calls[call]++;
    return status[call];
}

/* enter() for the calls that need nvmlInit_v2 first */
static nvmlReturn_t enter_initialized(int call)
{
    nvmlReturn_t r = enter(call);
    if (r == NVML_SUCCESS && inits == 0)
        r = NVML_ERROR_UNINITIALIZED;
    return r;
}

static nvmlReturn_t leave(nvmlReturn_t r)
{
    pthread_mutex_unlock(&lock);
    return r;
}

nvmlReturn_t nvmlInit_v2(void)
{
    nvmlReturn_t r = enter(FAKE_INIT);
    if (r == NVML_SUCCESS)
        inits++;
    return leave(r);
}

nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t r = enter(FAKE_SHUTDOWN);
    if (inits == 0)
        r = NVML_ERROR_UNINITIALIZED;
    else
        inits--;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    nvmlReturn_t r = enter_initialized(FAKE_COUNT);
    if (r == NVML_SUCCESS)
        *n = gpu_count;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev)
{
    nvmlReturn_t r = enter_initialized(FAKE_HANDLE);
    if (r == NVML_SUCCESS && index >= gpu_count)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *dev = &devs[index];
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int len)
{
    nvmlReturn_t r = enter(FAKE_NAME);
    if (r == NVML_SUCCESS)
        snprintf(name, len, "Fake NVIDIA H200 #%u", dev->index);
    return leave(r);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int len)
{
    snprintf(v, len, "999.99-fake");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, unsigned long long *mj)
{
    (void)dev;
    nvmlReturn_t r = enter_initialized(FAKE_ENERGY);
    if (r == NVML_SUCCESS) {
        advance(now());
        *mj = simulated ? energy_offset_mj + (unsigned long long)(shown_j * 1e3)
                        : manual_mj;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t dev, int n, nvmlFieldValue_t *v)
{
    (void)dev;
    nvmlReturn_t r = enter_initialized(FAKE_FIELDS);
    if (r == NVML_SUCCESS) {
        advance(now());
        double mw = simulated ? shown_w * 1e3 : manual_mw;
        for (int i = 0; i < n; i++) {
            if (v[i].fieldId != NVML_FI_DEV_POWER_INSTANT) {
                /* only the power field exists here */
                v[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                continue;
            }
            v[i].nvmlReturn = status[FAKE_FIELD_ENTRY];
            v[i].valueType = value_type;
            v[i].timestamp = 0;
            v[i].latencyUsec = 0;
            switch (value_type) {
            case NVML_VALUE_TYPE_DOUBLE: v[i].value.dVal = mw; break;
            case NVML_VALUE_TYPE_SIGNED_INT: v[i].value.siVal = (int)mw; break;
            case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
                v[i].value.ullVal = (unsigned long long)mw;
                break;
            default: v[i].value.uiVal = (unsigned int)mw; break;
            }
        }
    }
    return leave(r);
}

const char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_NOT_READY: return "System is not in ready state";
    default: return "Unknown Error";
    }
}

/* Setters: present so that a call would be seen; the meter must make none. */
static nvmlReturn_t setter(void)
{
    pthread_mutex_lock(&lock);
    setter_calls++;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t d, unsigned int mw)
{
    (void)d, (void)mw;
    return setter();
}

nvmlReturn_t nvmlDeviceSetGpuLockedClocks(nvmlDevice_t d, unsigned int lo, unsigned int hi)
{
    (void)d, (void)lo, (void)hi;
    return setter();
}

nvmlReturn_t nvmlDeviceSetApplicationsClocks(nvmlDevice_t d, unsigned int m, unsigned int g)
{
    (void)d, (void)m, (void)g;
    return setter();
}

nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t d, int mode)
{
    (void)d, (void)mode;
    return setter();
}
