/* seekmoe's CPU kernels: what their parts share. The library is every .c file of this folder compiled together
 * (seekmoe/model/kernels.py, with -fvisibility=hidden: only the seekmoe_* functions marked API are exported, so no
 * helper name can clash with another library's in the process).
 *   pool.c    the thread pool every call splits its work over, and the memory-bandwidth probe
 *   gemv.c    float32 and int8 products of a few rows (tiles), SwiGLU experts one token or many at a time
 *   attend.c  MLA's absorbed attention over the latent cache, float32 or int8
 *   int4.c    group-wise int4 products, dequantization and experts
 *   layer.c   a whole decode layer in one call, the calls above chained
 * AVX2 + FMA, built with AVX-512 too where the CPU has it (the int4 and int8-cache products with AVX512-VNNI).
 * Products stream weights row by row with independent accumulators, several rows at once in tiles (four rows
 * against four weight rows, the next weight rows prefetched). Each call splits its weight rows over a pool of
 * threads that lives as long as the process: one core streams only part of what the memory gives (a decode step is
 * bound by how fast weights stream), and OpenMP's wake-up per call costs more than a small product takes. Any
 * build failure falls back to torch. */
#ifndef SEEKMOE_KERNELS_H
#define SEEKMOE_KERNELS_H

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API __attribute__((visibility("default")))  /* what ctypes calls */

/* ---- the thread pool (pool.c) -------------------------------------------------------------------------------- */
#define MAX_PARTS 512

typedef void (*job_fn)(void *args, int part, int parts);

/* fn(args, part, parts) for every part of a job, on the pool's threads (the caller's among them); returns when all
 * are done, and the count of parts. A job reading fewer than MIN_SPLIT_BYTES of weight, or one that finds the pool
 * busy, runs on the caller alone as one part. */
int pool_run(job_fn fn, void *args, int parts, int64_t bytes);
int pool_threads(void);  /* the pool's threads, the caller included */

/* ---- helpers every part uses ------------------------------------------------------------------------------- */
/* part ith of nth: its share [*lo, *hi) of n items, in whole multiples of `align` but the last */
static inline void share(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t per = (n + nth - 1) / nth;
    per = (per + align - 1) / align * align;
    *lo = ith * per < n ? ith * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* how many parts to cut n items into: a few per thread, so that a thread that falls behind leaves parts for the
 * others; none smaller than `grain` items */
static inline int parts_of(int64_t n, int64_t grain) {
    int64_t parts = pool_threads() == 1 ? 1 : 4 * pool_threads(), most = n / grain;
    if (parts > most) parts = most;
    return parts < 1 ? 1 : (int)parts;
}

/* the largest of eight floats */
static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Weight rows are prefetched AHEAD bytes before they are read: the hardware prefetcher alone kept one core's
 * products well below what the memory streams to it (V2-Lite's int4 expert rows: 17 -> 19-20 GB/s on one thread,
 * 25 -> 27-28 on two; small's int8 experts 23 -> 25 GB/s on two). A prefetch past a row's end is harmless: it never
 * faults. */
#define AHEAD 1024
static inline void ahead(const void *p) { _mm_prefetch((const char *)p + AHEAD, _MM_HINT_T0); }

static inline float dot1_f32(const float *x, const float *w, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

/* y (n) += sum over r < nr of a[r] * rows[r] (rows of length n, `stride` apart): four rows per pass over y */
static inline void axpy4(float *y, const float *a, const float *rows, int nr, int64_t n, int64_t stride) {
    __m256 c[4];
    for (int r = 0; r < 4; r++) c[r] = _mm256_set1_ps(r < nr ? a[r] : 0.0f);
    const float *r0 = rows, *r1 = rows + (nr > 1 ? stride : 0), *r2 = rows + (nr > 2 ? 2 * stride : 0),
                *r3 = rows + (nr > 3 ? 3 * stride : 0);  /* missing rows read row 0 with a zero coefficient */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_loadu_ps(y + i);
        acc = _mm256_fmadd_ps(c[0], _mm256_loadu_ps(r0 + i), acc);
        acc = _mm256_fmadd_ps(c[1], _mm256_loadu_ps(r1 + i), acc);
        acc = _mm256_fmadd_ps(c[2], _mm256_loadu_ps(r2 + i), acc);
        acc = _mm256_fmadd_ps(c[3], _mm256_loadu_ps(r3 + i), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int r = 0; r < nr; r++) y[i] += a[r] * rows[r * stride + i];
}

/* acc's eight int32 lanes + the products of u8 x and s8 y, 32 at a time, each lane the sum of four: AVX512-VNNI's
 * dpbusd where the library is built with it, else vpmaddubsw (pairs summed in 16 bits) and vpmaddwd with ones. The
 * two agree exactly while a pair's sum fits 16 bits, as every caller's operands make sure (x at most 127 or 15) */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define VNNI 1
static inline __m256i dot_u8s8(__m256i acc, __m256i x, __m256i y) { return _mm256_dpbusd_epi32(acc, x, y); }
#else
static inline __m256i dot_u8s8(__m256i acc, __m256i x, __m256i y) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)));
}
#endif

/* ---- what one part calls in another ----------------------------------------------------------------------- */
/* gemv.c */
void tiles_f32(const float *x, int64_t m_rows, int64_t ldx, const float *w, int64_t k, int64_t o0, int64_t o1,
               const float *after, float *y, int64_t ldy);
void tiles_nn(const float *a, int64_t lda, int64_t m_rows, int64_t k, const float *b, int64_t ldb, int64_t n, int add,
              float *y, int64_t ldy);
void swiglu_act(const float *h, int64_t m_rows, int64_t f, const float *weight, float *act);
API void seekmoe_int8_gemv(const float *x, const int8_t *q, const float *scale, float *y, int64_t m_rows, int64_t n_in,
                           int64_t n_out);
API void seekmoe_int8_gemv_heads(const float *x, const int8_t *q, const float *scale, float *y, int64_t heads,
                                 int64_t m_rows, int64_t n_in, int64_t n_out);
API int seekmoe_int8_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                             const float *gate_up_scale, const int8_t *down, const float *down_scale,
                             const int64_t *idx, const float *weight, int64_t k, float *y, float *h);
API int seekmoe_f32_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                            const float *down_t, const int64_t *idx, const float *weight, int64_t k, float *y,
                            float *h);
API int seekmoe_f32_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                                    const float *down_t, const int64_t *used, const int64_t *start, int64_t n_used,
                                    const float *weight, float *out);
API int seekmoe_int8_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                                     const float *gate_up_scale, const int8_t *down, const float *down_scale,
                                     const int64_t *used, const int64_t *start, int64_t n_used, const float *weight,
                                     float *out);
API void seekmoe_f32_gemv(const float *x, const float *w, float *y, int64_t m_rows, int64_t n_in, int64_t n_out,
                          int transposed);
/* attend.c */
#define LATENT_META 4  /* an int8 cache row's floats beside it: [scale_lat, scale_rope, sum_lat, sum_rope] */
API void seekmoe_quantize_latent(const float *x, int64_t n, int64_t w, int64_t lat, int8_t *q, float *meta);
int attend(const float *q, const float *kv, const int8_t *kv8, const float *meta, int64_t n_rows, int64_t width,
           int64_t lat, int64_t heads, const int64_t *slots, const int64_t *offsets, int64_t n_seqs, float scale,
           float *out);
/* int4.c */
API int seekmoe_int4_gemv(const float *x, const uint8_t *q, const uint16_t *scale, float *y, int64_t m_rows,
                          int64_t n_in, int64_t n_out, int64_t group);
API int seekmoe_int4_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const uint8_t *gate_up,
                             const uint16_t *gate_up_scale, const uint8_t *down, const uint16_t *down_scale,
                             int64_t group, const int64_t *idx, const float *weight, int64_t k, float *y, float *h);

#endif
