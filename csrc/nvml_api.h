/* The part of NVIDIA's nvml.h that nrgloops uses: return codes, value
 * types, the field id and nvmlFieldValue_t, with layouts checked against
 * NVIDIA's header.
 *
 * Included by csrc/nvml.c (the meter, which dlopens libnvidia-ml) and by
 * tests/fakes/fake_nvml.c (the fake library), so the two cannot drift apart.
 * Not for csrc/nrgloops.h: cffi reads that one, and nothing here is for
 * Python. */
#ifndef NRG_NVML_API_H
#define NRG_NVML_API_H

typedef int nvmlReturn_t;
/* opaque in NVIDIA's header; the fake library defines the struct */
typedef struct nvmlDevice_st *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_NOT_READY = 27, /* "System is not in ready state" */
    NVML_ERROR_GPU_NOT_FOUND = 28,
};

/* nvmlValueType_t: which member of nvmlValue_t holds the value */
enum {
    NVML_VALUE_TYPE_DOUBLE = 0,
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG = 2,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4,
    NVML_VALUE_TYPE_SIGNED_INT = 5,
    NVML_VALUE_TYPE_UNSIGNED_SHORT = 6,
};

enum { NVML_FI_DEV_POWER_INSTANT = 186 }; /* mW */

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;   /* us since 1970 (wall clock) */
    long long latencyUsec;
    int valueType;         /* nvmlValueType_t */
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t; /* 40 bytes */

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");

#endif
