/* NVML energy source (placeholder until the GPU work lands). */
#include <errno.h>

#include "nrgloops.h"

int nrg_nvml_new(nrg_source **out, const char *library, unsigned int index,
                 int mode)
{
    (void)out, (void)library, (void)index, (void)mode;
    return -ENOSYS;
}

int nrg_nvml_mode(const nrg_source *s) { (void)s; return -ENOSYS; }

int nrg_nvml_last_status(const nrg_source *s) { (void)s; return -ENOSYS; }
