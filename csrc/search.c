/* Substring counting for the benchmark's search loop.
 *
 * Counts every occurrence (overlapping ones too) of pat that starts in
 * [start, end).  Overlapping counts add up over any split of the start
 * positions, which is what lets N threads search N slices and sum.
 *
 * Method (Mula's "generic SIMD" search, with the memchr crate's choice of
 * bytes): compare 32 (AVX2) or 16 (SSE2) positions at once against two bytes
 * of the pattern, the two rarest in ordinary text by a fixed frequency
 * ranking; only where both match is the whole pattern compared with memcmp.
 * The pair rejects nearly every position, so the scan runs near memory speed
 * with no per-byte branch.  AVX2 is chosen at run time (the extension is
 * built without -march flags so the wheel runs on any x86-64); other
 * architectures use a memchr scan on the pattern's first byte.
 */
#include <string.h>

#include "nrgloops.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(NRG_NO_SIMD)
#include <immintrin.h>
#define NRG_X86 1
#endif

/* Plain scan of the positions [i, stop): memchr skips to the first byte. */
static int64_t count_scalar(const uint8_t *hay, size_t i, size_t stop,
                            const uint8_t *pat, size_t m)
{
    int64_t count = 0;
    const uint8_t *p = hay + i, *end = hay + stop;
    while (p < end) {
        p = memchr(p, pat[0], (size_t)(end - p));
        if (!p)
            break;
        if (memcmp(p + 1, pat + 1, m - 1) == 0)
            count++;
        p++;
    }
    return count;
}

/* Population count of a byte buffer's matches of one value (m == 1). */
static int64_t count_byte(const uint8_t *hay, size_t i, size_t stop, uint8_t c)
{
    int64_t count = 0;
    const uint8_t *p = hay + i, *end = hay + stop;
    while (p < end && (p = memchr(p, c, (size_t)(end - p))) != NULL) {
        count++;
        p++;
    }
    return count;
}

#ifdef NRG_X86
/* How common a byte is in ordinary text and code, higher = more common:
 * the two rarest bytes of a pattern make the best filter.  Bytes not listed
 * rank 0 (rare). */
static const char COMMON[] =
    " etaoinsrhldcumfpgwybvk\n.,\"'-xjqzETAOINSRHLDCUMFPGWYBVKXJQZ0123456789"
    "()=;:_/{}[]<>*#\t";

struct pair {
    size_t o1, o2;   /* offsets of the two filter bytes in the pattern */
};

static struct pair choose_pair(const uint8_t *pat, size_t m)
{
    unsigned char rank[256] = {0};
    size_t k = sizeof COMMON - 1;
    for (size_t i = 0; i < k; i++)
        rank[(unsigned char)COMMON[i]] = (unsigned char)(k - i);
    size_t o1 = 0;
    for (size_t i = 1; i < m; i++)
        if (rank[pat[i]] < rank[pat[o1]])
            o1 = i;
    /* The second: rarest among the others, preferring a different byte value
     * (the same value twice filters less). */
    size_t o2 = o1 == 0 ? 1 : 0;
    for (size_t i = 0; i < m; i++) {
        if (i == o1)
            continue;
        int same_i = pat[i] == pat[o1], same_2 = pat[o2] == pat[o1];
        if (same_i < same_2 || (same_i == same_2 && rank[pat[i]] < rank[pat[o2]]))
            o2 = i;
    }
    struct pair pr = {o1, o2};
    return pr;
}

/* Candidates in a mask (bit b: position base + b): compare the pattern. */
static inline int64_t verify(uint32_t mask, const uint8_t *base,
                             const uint8_t *pat, size_t m)
{
    int64_t count = 0;
    while (mask) {
        unsigned bit = (unsigned)__builtin_ctz(mask);
        if (memcmp(base + bit, pat, m) == 0)
            count++;
        mask &= mask - 1;
    }
    return count;
}

/* Positions [*pi, stop) in 16-byte blocks, leaving the last < 16 to the
 * caller.  A block at i reads hay[i .. i + m + 14] at most, so the caller
 * keeps stop <= n - m + 1. */
static int64_t count_sse2(const uint8_t *hay, size_t *pi, size_t stop,
                          const uint8_t *pat, size_t m, struct pair pr)
{
    const __m128i c1 = _mm_set1_epi8((char)pat[pr.o1]);
    const __m128i c2 = _mm_set1_epi8((char)pat[pr.o2]);
    int64_t count = 0;
    size_t i = *pi;
    for (; i + 16 <= stop; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(hay + i + pr.o1));
        __m128i b = _mm_loadu_si128((const __m128i *)(hay + i + pr.o2));
        __m128i eq = _mm_and_si128(_mm_cmpeq_epi8(a, c1), _mm_cmpeq_epi8(b, c2));
        uint32_t mask = (uint32_t)_mm_movemask_epi8(eq);
        if (mask)
            count += verify(mask, hay + i, pat, m);
    }
    *pi = i;
    return count;
}

/* Same in 64-byte steps with AVX2 (two 32-byte blocks per step, so one
 * branch covers both when nothing matches, the common case). */
__attribute__((target("avx2"))) static int64_t
count_avx2(const uint8_t *hay, size_t *pi, size_t stop, const uint8_t *pat,
           size_t m, struct pair pr)
{
    const __m256i c1 = _mm256_set1_epi8((char)pat[pr.o1]);
    const __m256i c2 = _mm256_set1_epi8((char)pat[pr.o2]);
    int64_t count = 0;
    size_t i = *pi;
    for (; i + 64 <= stop; i += 64) {
        const uint8_t *p = hay + i + pr.o1, *q = hay + i + pr.o2;
        __m256i a0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i b0 = _mm256_loadu_si256((const __m256i *)q);
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(q + 32));
        __m256i e0 = _mm256_and_si256(_mm256_cmpeq_epi8(a0, c1),
                                      _mm256_cmpeq_epi8(b0, c2));
        __m256i e1 = _mm256_and_si256(_mm256_cmpeq_epi8(a1, c1),
                                      _mm256_cmpeq_epi8(b1, c2));
        __m256i any = _mm256_or_si256(e0, e1);
        if (_mm256_testz_si256(any, any))
            continue;
        uint32_t m0 = (uint32_t)_mm256_movemask_epi8(e0);
        uint32_t m1 = (uint32_t)_mm256_movemask_epi8(e1);
        if (m0)
            count += verify(m0, hay + i, pat, m);
        if (m1)
            count += verify(m1, hay + i + 32, pat, m);
    }
    *pi = i;
    return count;
}

static int have_avx2(void)
{
    static int cached = -1;  /* a benign race: every thread computes the same */
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return cached;
}
#endif

int64_t nrg_search_count(const uint8_t *hay, size_t n, const uint8_t *pat,
                         size_t m, size_t start, size_t end)
{
    if (m == 0 || m > n || start >= end)
        return 0;
    if (end > n - m + 1)
        end = n - m + 1; /* the last position where pat still fits */
    if (start >= end)
        return 0;
    if (m == 1)
        return count_byte(hay, start, end, pat[0]);
    int64_t count = 0;
    size_t i = start;
#ifdef NRG_X86
    /* A vector block at i reads at most hay[i + m - 1 + width - 1]; as end
     * is <= n - m + 1, blocks with i + width <= end stay inside hay, and the
     * last positions go to the scalar tail. */
    struct pair pr = choose_pair(pat, m);
    if (have_avx2())
        count += count_avx2(hay, &i, end, pat, m, pr);
    count += count_sse2(hay, &i, end, pat, m, pr);
#endif
    count += count_scalar(hay, i, end, pat, m);
    return count;
}
