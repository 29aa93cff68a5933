/* Substring counting for the benchmark's search loop (placeholder: memchr on
 * the first byte, then memcmp; search helper owns this file). */
#include <string.h>

#include "nrgloops.h"

int64_t nrg_search_count(const uint8_t *hay, size_t n, const uint8_t *pat,
                         size_t m, size_t start, size_t end)
{
    if (m == 0 || m > n || start >= end)
        return 0;
    if (end > n - m + 1)
        end = n - m + 1;
    int64_t count = 0;
    const uint8_t *p = hay + start, *stop = hay + end;
    while (p < stop) {
        p = memchr(p, pat[0], (size_t)(stop - p));
        if (!p)
            break;
        if (memcmp(p, pat, m) == 0)
            count++;
        p++;
    }
    return count;
}
