#include "kernels.h"

/* ==== int4 (issue 25) ============================================================================================
 * Group-wise int4 weights (seekmoe/model/int4.py): each run of 32 inputs of a row is 16 bytes, byte j holding input
 * j in its low nibble and input j + 16 in its high one, each stored as u = q + 8 (0..15); one float16 scale per
 * group of G inputs (G = 32 or 64).
 * Widening int4 to float32 as the int8 kernels do costs twice their instructions per byte read, and made these
 * compute-bound at ~7 GB/s on a core here, below what memory gives. So the activations are rounded to int8 in blocks
 * of 32 (llama.cpp's q8_0 scheme for its Q4_0 products: the relative error of one rounding, ~0.4% of a block's
 * largest value, far under int4's own): a block's dot product is then one maddubs (u8 x s8 -> pairs of int16) and
 * one madd (-> int32), scaled by the weight's and the activation block's scales, and the +8 of the stored nibbles
 * comes out once per block as 8 * sum(xq) * scales. The float16 scales are widened through a table. */

/* float16 -> float32 for every bit pattern (256 KB, filled once): a scale is one load, where converting a row's
 * scales first cost as much as the row itself for the down projections' short rows (F / threads inputs) */
static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;

static void fill_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
        float f;
        if (exp == 0) {  /* zero or subnormal: man * 2^-24 */
            f = (float)man * 5.9604644775390625e-08f;
            f16_table[h] = sign ? -f : f;
            continue;
        }
        bits = exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112) << 23) | (man << 13);
        __builtin_memcpy(&f, &bits, 4);
        f16_table[h] = f;
    }
}

/* n floats (a multiple of 32) to int8 in blocks of 32: xq, each block's scale xd (x ~= xq * xd) and the correction
 * xc = 8 * sum(xq) * xd its dot products with stored nibbles (q + 8) carry. Blocks go by pairs in the order one
 * 32-byte load of their packed weights unpacks to (pair_dot): the first halves of both blocks, then the second
 * halves; a last block without a partner stays in order. */
static void quantize_blocks(const float *x, int64_t n, int8_t *xq, float *xd, float *xc) {
    int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0, alone = b % 2 == 0 && b + 1 == nb;
        int8_t *first = xq + 32 * (b - b % 2) + (alone ? 0 : 16 * (b % 2));  /* where inputs 0..15 go */
        int8_t *second = alone ? first + 16 : first + 32;  /* and 16..31 */
        for (int i = 0; i < 32; i++) {
            int q = (int)lrintf(xb[i] * id);
            (i < 16 ? first : second - 16)[i] = (int8_t)q;
            sum += q;
        }
        xd[b] = d;
        xc[b] = 8.0f * (float)sum * d;
    }
}

/* two blocks' dot products, their 32 packed bytes at w against their paired inputs at xq: 8 float partial sums, the
 * first four block b's, the last four block b + 1's (exact: |sums| < 2^15 in the int16 steps) */
static inline __m256 pair_dot(const uint8_t *w, const int8_t *xq) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)w), m15 = _mm256_set1_epi8(15);
    __m256i lo = _mm256_and_si256(raw, m15), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m15);
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xq)),
                                 _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xq + 32))));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* the 32 stored values (0..15) of a block, in input order: low nibbles in the low lane, high ones in the high */
static inline __m256i nibbles(const uint8_t *w) {
    __m128i raw = _mm_loadu_si128((const __m128i *)w), m15 = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m15), _mm_and_si128(raw, m15));
}

/* u (32 x 0..15) . xq (32 x int8) as 8 float partial sums: exact (|sums| < 2^15 in the int16 step) */
static inline __m256 block_dot(__m256i u, const int8_t *xq) {
    __m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)xq));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

#if defined(VNNI) && defined(__F16C__)
#define Q4_VNNI 1
/* u (32 x 0..15) . xq (32 x int8) added to the int32 sums p (dot_u8s8: one dpbusd) */
static inline __m256i dp(__m256i p, __m256i u, const int8_t *xq) {
    return dot_u8s8(p, u, _mm256_loadu_si256((const __m256i *)xq));
}
#endif

/* one quantized row of x (n inputs: xq, block scales xd, corrections xc) against one packed row w with its float16
 * group scales s: two blocks a step (pair_dot), into two accumulators so the multiply-adds do not wait on each
 * other. With AVX512-VNNI and F16C, four blocks a step: dpbusd for the products, and the four blocks' scales and
 * corrections as one vector each instead of table lookups and scalar products (1.7-1.9x the bytes a second on
 * V2-Lite's expert rows, one thread). */
static inline float dot1_q4(const int8_t *xq, const float *xd, const float *xc, const uint8_t *w, const uint16_t *s,
                            int64_t n, int64_t group) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    float c = 0.0f;
    int64_t nb = n / 32, b = 0;
    int sh = group == 64;  /* block b's scale is s[b >> sh]: a shift, not a division in the loop */
#ifdef Q4_VNNI
    __m128 corr = _mm_setzero_ps();
    const __m256i m15 = _mm256_set1_epi8(15), zero = _mm256_setzero_si256();
    /* the four blocks' scales to the lanes their sums sit in: pair_dot's order, block b in lanes 0-3, b + 1 in 4-7 */
    const __m256i first = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), second = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    for (; b + 4 <= nb; b += 4) {
        ahead(w + 16 * b);  /* a loop's 64 bytes: one cache line */
        __m128i half = sh ? _mm_set1_epi32(*(const int32_t *)(s + b / 2)) : _mm_loadl_epi64((const __m128i *)(s + b));
        __m128 ws = _mm_cvtph_ps(sh ? _mm_unpacklo_epi16(half, half) : half);  /* (4,): each block's weight scale */
        corr = _mm_fmadd_ps(ws, _mm_loadu_ps(xc + b), corr);
        __m256 sc = _mm256_castps128_ps256(_mm_mul_ps(ws, _mm_loadu_ps(xd + b)));
        __m256i r0 = _mm256_loadu_si256((const __m256i *)(w + 16 * b));
        __m256i r1 = _mm256_loadu_si256((const __m256i *)(w + 16 * b + 32));
        __m256i p0 = dp(dp(zero, _mm256_and_si256(r0, m15), xq + 32 * b),
                        _mm256_and_si256(_mm256_srli_epi16(r0, 4), m15), xq + 32 * b + 32);
        __m256i p1 = dp(dp(zero, _mm256_and_si256(r1, m15), xq + 32 * b + 64),
                        _mm256_and_si256(_mm256_srli_epi16(r1, 4), m15), xq + 32 * b + 96);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_permutevar8x32_ps(sc, first), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_permutevar8x32_ps(sc, second), a1);
    }
    corr = _mm_add_ps(corr, _mm_movehl_ps(corr, corr));
    c = _mm_cvtss_f32(_mm_add_ss(corr, _mm_movehdup_ps(corr)));
#else
    for (; b + 4 <= nb; b += 4) {
        ahead(w + 16 * b);
        float w0 = f16_table[s[b >> sh]], w1 = f16_table[s[(b + 1) >> sh]];
        float w2 = f16_table[s[(b + 2) >> sh]], w3 = f16_table[s[(b + 3) >> sh]];
        a0 = _mm256_fmadd_ps(pair_dot(w + 16 * b, xq + 32 * b),
                             _mm256_set_m128(_mm_set1_ps(w1 * xd[b + 1]), _mm_set1_ps(w0 * xd[b])), a0);
        a1 = _mm256_fmadd_ps(pair_dot(w + 16 * b + 32, xq + 32 * b + 64),
                             _mm256_set_m128(_mm_set1_ps(w3 * xd[b + 3]), _mm_set1_ps(w2 * xd[b + 2])), a1);
        c += (w0 * xc[b] + w1 * xc[b + 1]) + (w2 * xc[b + 2] + w3 * xc[b + 3]);
    }
#endif
    for (; b + 2 <= nb; b += 2) {
        float w0 = f16_table[s[b >> sh]], w1 = f16_table[s[(b + 1) >> sh]];
        a0 = _mm256_fmadd_ps(pair_dot(w + 16 * b, xq + 32 * b),
                             _mm256_set_m128(_mm_set1_ps(w1 * xd[b + 1]), _mm_set1_ps(w0 * xd[b])), a0);
        c += w0 * xc[b] + w1 * xc[b + 1];
    }
    if (b < nb) {  /* a last block alone, its inputs in order */
        float ws = f16_table[s[b >> sh]];
        a1 = _mm256_fmadd_ps(block_dot(nibbles(w + 16 * b), xq + 32 * b), _mm256_set1_ps(ws * xd[b]), a1);
        c += ws * xc[b];
    }
    return hsum(_mm256_add_ps(a0, a1)) - c;
}

/* nm <= 4 quantized rows of x (stride n) against one packed row: the rows share each unpacking */
static inline void dot4_q4(const int8_t *xq, const float *xd, const float *xc, int nm, const uint8_t *w,
                           const uint16_t *s, int64_t n, int64_t group, float *out) {
    __m256 acc[4];
    float corr[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int m = 0; m < 4; m++) acc[m] = _mm256_setzero_ps();
    int64_t nb = n / 32, b = 0;
    int sh = group == 64;
    const __m256i m15 = _mm256_set1_epi8(15);
#ifndef Q4_VNNI
    const __m256i ones = _mm256_set1_epi16(1);  /* pairs of 16-bit products summed into 32 bits */
#endif
    for (; b + 2 <= nb; b += 2) {
        ahead(w + 16 * b);
        __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 16 * b));
        __m256i lo = _mm256_and_si256(raw, m15), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m15);
        float w0 = f16_table[s[b >> sh]], w1 = f16_table[s[(b + 1) >> sh]];
        for (int m = 0; m < nm; m++) {
            const int8_t *xm = xq + m * n + 32 * b;
            const float *dm = xd + m * nb + b, *cm = xc + m * nb + b;
#ifdef Q4_VNNI
            __m256i sums = dp(dp(_mm256_setzero_si256(), lo, xm), hi, xm + 32);
#else
            __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xm)),
                                         _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xm + 32))));
            __m256i sums = _mm256_madd_epi16(p, ones);
#endif
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums),
                                     _mm256_set_m128(_mm_set1_ps(w1 * dm[1]), _mm_set1_ps(w0 * dm[0])), acc[m]);
            corr[m] += w0 * cm[0] + w1 * cm[1];
        }
    }
    if (b < nb) {
        __m256i u = nibbles(w + 16 * b);
        float ws = f16_table[s[b >> sh]];
        for (int m = 0; m < nm; m++) {
            acc[m] = _mm256_fmadd_ps(block_dot(u, xq + m * n + 32 * b), _mm256_set1_ps(ws * xd[m * nb + b]), acc[m]);
            corr[m] += ws * xc[m * nb + b];
        }
    }
    for (int m = 0; m < nm; m++) out[m] = hsum(acc[m]) - corr[m];
}

/* y (M, O) = x (M, I) @ dequant(q (O, I / 2), scale (O, I / G)).T for a few rows, x rounded to int8 blocks first;
 * the threads split the outputs */
typedef struct {
    const int8_t *xq;
    const float *xd, *xc;
    const uint8_t *q;
    const uint16_t *scale;
    float *y;
    int64_t m_rows, n_in, n_out, group;
} int4_gemv_args;

static void int4_gemv_job(void *p, int ith, int nth) {
    const int4_gemv_args *a = p;
    int64_t lo, hi, n_in = a->n_in, n_out = a->n_out, groups = n_in / a->group, nb = n_in / 32;
    share(n_out, ith, nth, 16, &lo, &hi);
    float part[4];
    for (int64_t o = lo; o < hi; o++) {
        const uint8_t *w = a->q + o * (n_in / 2);
        const uint16_t *s = a->scale + o * groups;
        if (a->m_rows == 1) {
            a->y[o] = dot1_q4(a->xq, a->xd, a->xc, w, s, n_in, a->group);
            continue;
        }
        for (int64_t m0 = 0; m0 < a->m_rows; m0 += 4) {
            int nm = a->m_rows - m0 < 4 ? (int)(a->m_rows - m0) : 4;
            dot4_q4(a->xq + m0 * n_in, a->xd + m0 * nb, a->xc + m0 * nb, nm, w, s, n_in, a->group, part);
            for (int m = 0; m < nm; m++) a->y[(m0 + m) * n_out + o] = part[m];
        }
    }
}

/* Returns -1 (and writes nothing) unless group is 32 or 64 and divides n_in; -2 without memory. */
API int seekmoe_int4_gemv(const float *x, const uint8_t *q, const uint16_t *scale, float *y, int64_t m_rows,
                          int64_t n_in, int64_t n_out, int64_t group) {
    if ((group != 32 && group != 64) || n_in % group) return -1;
    pthread_once(&f16_once, fill_f16_table);
    int64_t nb = n_in / 32;
    int8_t *xq = malloc((size_t)(m_rows * n_in));
    float *xd = malloc(sizeof(float) * 2 * m_rows * nb);
    if (xq == NULL || xd == NULL) {
        free(xq);
        free(xd);
        return -2;
    }
    for (int64_t m = 0; m < m_rows; m++) quantize_blocks(x + m * n_in, n_in, xq + m * n_in, xd + m * nb,
                                                         xd + m_rows * nb + m * nb);
    int4_gemv_args a = {xq, xd, xd + m_rows * nb, q, scale, y, m_rows, n_in, n_out, group};
    pool_run(int4_gemv_job, &a, parts_of(n_out, 16), n_in * n_out / 2);
    free(xq);
    free(xd);
    return 0;
}

/* w (R, I) float32 = q (R, I / 2) packed int4 * scale (R, I / G) float16, for the many-rows path (a prompt chunk's
 * float matmul): one pass over the packed bytes, where torch's unpacking took five (and, shift, cat, subtract,
 * multiply), each writing a tensor as large as the result. The threads split the rows. */
typedef struct {
    const uint8_t *q;
    const uint16_t *scale;
    float *w;
    int64_t rows, n_in, group;
} int4_dequant_args;

/* 8 stored values (0..15, as 8 bytes) times the block's scale, as floats */
static inline __m256 dequant8(__m128i u, __m256 scale) {
    return _mm256_mul_ps(scale, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(u), _mm256_set1_epi32(8))));
}

static void int4_dequant_job(void *p, int part, int parts) {
    const int4_dequant_args *a = p;
    int64_t lo, hi, n_in = a->n_in, groups = n_in / a->group;
    share(a->rows, part, parts, 1, &lo, &hi);
    const __m128i m15 = _mm_set1_epi8(15);
    for (int64_t r = lo; r < hi; r++) {
        const uint8_t *q = a->q + r * (n_in / 2);
        const uint16_t *s = a->scale + r * groups;
        float *w = a->w + r * n_in;
        for (int64_t b = 0; b < n_in / 32; b++) {  /* a block: inputs 0..15 in the low nibbles, 16..31 in the high */
            __m128i raw = _mm_loadu_si128((const __m128i *)(q + 16 * b));
            __m128i low = _mm_and_si128(raw, m15), high = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
            __m256 sc = _mm256_set1_ps(f16_table[s[b * 32 / a->group]]);
            _mm256_storeu_ps(w + 32 * b, dequant8(low, sc));
            _mm256_storeu_ps(w + 32 * b + 8, dequant8(_mm_srli_si128(low, 8), sc));
            _mm256_storeu_ps(w + 32 * b + 16, dequant8(high, sc));
            _mm256_storeu_ps(w + 32 * b + 24, dequant8(_mm_srli_si128(high, 8), sc));
        }
    }
}

/* Returns -1 (and writes nothing) unless group is 32 or 64 and divides n_in. */
API int seekmoe_int4_dequant(const uint8_t *q, const uint16_t *scale, float *w, int64_t rows, int64_t n_in,
                             int64_t group) {
    if ((group != 32 && group != 64) || n_in % group) return -1;
    pthread_once(&f16_once, fill_f16_table);
    int4_dequant_args a = {q, scale, w, rows, n_in, group};
    pool_run(int4_dequant_job, &a, parts_of(rows, 16), rows * n_in * 4);
    return 0;
}

/* One token through its chosen int4 SwiGLU experts, as seekmoe_int8_experts: gate_up (E, 2F, D / 2) with scales
 * (E, 2F, D / G), down (E, D, F / 2) with (E, D, F / G). x is rounded to int8 blocks once. Two passes over the
 * pool: the threads split the hidden units of the chosen experts (their gate and up rows), each rounding its own
 * units to int8 blocks; then they split the output rows, each reading whole down rows of every chosen expert. (One
 * pass that split the hidden units for both, with no wait between, cut each down row into a piece per part: at
 * V2-Lite's shape two threads made 8 parts and 98k products of 176 inputs a token, slower than one thread.) */
typedef struct {
    const uint8_t *gate_up, *down;
    const uint16_t *gate_up_scale, *down_scale;
    const int64_t *idx;
    const float *weight;
    int64_t k, d, f, group;
    const int8_t *xq;  /* x rounded: (D,) and its block scales and corrections */
    const float *xd, *xc;
    float *h;  /* (K, F): each chosen expert's silu(gate) * up (the caller's scratch) */
    int8_t *hq;  /* (K, F) h rounded, with block scales hd and corrections hc (K, F / 32) */
    float *hd, *hc, *y;
} int4_experts_args;

static void int4_experts_up_job(void *p, int part, int parts) {
    const int4_experts_args *a = p;
    int64_t lo, hi, d = a->d, f = a->f, g = a->group, nb = f / 32;
    share(f, part, parts, 64, &lo, &hi);  /* whole pairs of blocks: each part rounds its units as the row would */
    for (int64_t j = 0; j < a->k && lo < hi; j++) {
        int64_t e = a->idx[j];
        const uint8_t *gu = a->gate_up + e * 2 * f * (d / 2);
        const uint16_t *gus = a->gate_up_scale + e * 2 * f * (d / g);
        float *h = a->h + j * f;
        for (int64_t o = lo; o < hi; o++) {
            float gv = dot1_q4(a->xq, a->xd, a->xc, gu + o * (d / 2), gus + o * (d / g), d, g);
            float uv = dot1_q4(a->xq, a->xd, a->xc, gu + (f + o) * (d / 2), gus + (f + o) * (d / g), d, g);
            h[o] = gv / (1.0f + expf(-gv)) * uv;  /* silu(gate) * up */
        }
        quantize_blocks(h + lo, hi - lo, a->hq + j * f + lo, a->hd + j * nb + lo / 32, a->hc + j * nb + lo / 32);
    }
}

static void int4_experts_down_job(void *p, int part, int parts) {
    const int4_experts_args *a = p;
    int64_t lo, hi, d = a->d, f = a->f, g = a->group, nb = f / 32;
    share(d, part, parts, 16, &lo, &hi);
    for (int64_t j = 0; j < a->k; j++) {  /* expert by expert: the part's rows of each are one sequential read */
        const uint8_t *dn = a->down + a->idx[j] * d * (f / 2);
        const uint16_t *dns = a->down_scale + a->idx[j] * d * (f / g);
        for (int64_t o = lo; o < hi; o++)
            a->y[o] += a->weight[j] * dot1_q4(a->hq + j * f, a->hd + j * nb, a->hc + j * nb, dn + o * (f / 2),
                                              dns + o * (f / g), f, g);
    }
}

API int seekmoe_int4_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const uint8_t *gate_up,
                             const uint16_t *gate_up_scale, const uint8_t *down, const uint16_t *down_scale,
                             int64_t group, const int64_t *idx, const float *weight, int64_t k, float *y, float *h) {
    if ((group != 32 && group != 64) || d % group || f % group) return -1;
    for (int64_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= n_experts) return -1;
    pthread_once(&f16_once, fill_f16_table);
    int64_t nbd = d / 32, nbf = f / 32;
    int8_t *xq = malloc((size_t)(d + k * f));
    float *fl = malloc(sizeof(float) * (2 * nbd + 2 * k * nbf));
    if (xq == NULL || fl == NULL) {
        free(xq);
        free(fl);
        return -2;
    }
    quantize_blocks(x, d, xq, fl, fl + nbd);
    int4_experts_args a = {gate_up, down, gate_up_scale, down_scale, idx, weight, k, d, f, group, xq, fl, fl + nbd,
                           h, xq + d, fl + 2 * nbd, fl + 2 * nbd + k * nbf, y};
    pool_run(int4_experts_up_job, &a, parts_of(f, 64), k * f * d);
    pool_run(int4_experts_down_job, &a, parts_of(d, 16), k * f * d / 2);
    free(xq);
    free(fl);
    return 0;
}
