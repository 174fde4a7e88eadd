#include "kernels.h"

/* ---- MLA attention over the latent cache (decode) ------------------------------------------------------------- */
/* B sequences, one new token each, attending over their cached rows [c_KV | k_rope] (width L + R) with the
 * absorbed query q (B, H, L + R): o (B, H, L) = softmax(q . rows * scale) . rows[:, :L], per head. The rows are
 * read where they sit in the cache, by slot, where torch first gathers every sequence's rows into a padded copy;
 * each row is read once for all heads.
 * A part is a chunk of at most ATTEND_ROWS of one sequence's rows, so that one long context keeps every thread
 * busy (as flash-decoding does on GPUs): a chunk of a longer sequence keeps its own softmax max and sum per head
 * and an unnormalised output, merged once all are done. The chunks do not depend on the thread count, so neither
 * do the results. */
#define ATTEND_ROWS 512

typedef struct {
    int64_t seq, lo, hi;  /* rows [lo, hi) of offsets' numbering */
    int64_t partial;      /* its block of partials (H * (L + 2) floats), or -1 when it is the whole sequence */
} attend_chunk;

typedef struct {
    const float *q, *kv;
    const int8_t *kv8;    /* the int8 cache instead of kv, or NULL */
    const float *meta;    /* its rows' scales and sums */
    const uint8_t *qu;    /* int8 cache: the queries (B, H, W) as offset 7-bit, and their scales (B, H, 2) */
    const float *qs;
    int64_t width, lat, heads;
    const int64_t *slots;
    const attend_chunk *chunks;
    int64_t n_chunks, head_groups;  /* a part is one chunk's share of the heads */
    float scale;
    float *out, *partials;
    atomic_int failed;
} attend_args;

/* ---- the int8 latent cache ------------------------------------------------------------------------------------ */
/* A row of the int8 cache holds its latent part (L) and its rope part (R) rounded to int8, each at its own scale
 * (its largest magnitude over 127: the rope part is not normalised and can be far larger), and beside it, in
 * `meta`, the two scales and each part's sum of int8 values: [scale_lat, scale_rope, sum_lat, sum_rope]. It is a
 * quarter of the float32 cache's bytes, and AVX2 multiplies int8 at twice float32's rate (dot_u8s8: vpmaddubsw, then
 * vpmaddwd with ones; one dpbusd with AVX512-VNNI): at 4k tokens of context and more the attention over the cache is
 * what a decode step grows by. The products need one operand unsigned: the query is rounded to 7 bits and offset by
 * 64 (so a pair's 16-bit sum, at most 2 * 127 * 127, never saturates, and both instructions give the same sums), and
 * the rows' sums take the offset back out. The weights of the rows (the
 * softmax's numerators times each row's latent scale) are rounded to 7 bits per head and chunk for the values'
 * product, whose rows are regrouped four to a column first (VNNI's layout; kept whole in the cache for the scores).
 * Per chunk of 512 rows, 8 heads of `small`, one thread, from L2: scores 55 -> 24 us, values 33-42 -> 19 us; 8
 * layers' caches from memory, pages of 16 rows in a random order, two threads: 4,096 rows 510-545 -> 223-239 us a
 * layer, 16,384 rows 1.97-2.04 -> 0.93-0.95 ms. On an AMD Zen 4 (AVX512-VNNI), the AVX2 build against the one with
 * dpbusd: per chunk scores 13.4 -> 7.2 us, values 9.7 -> 6.9 us; 4,096 rows 112-121 -> 98-108 us a layer, 16,384 rows
 * 447-473 -> 405-429 us. */

/* x (n) rounded as model/quant.py's quantize_rows rounds a row (x / (its largest magnitude / 127), to nearest, ties
 * to even), so that a row written here and one written by the torch path are the same bytes */
static void quantize_part(const float *x, int64_t n, int8_t *q, float *scale, float *sum) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) m = fabsf(x[j]) > m ? fabsf(x[j]) : m;
    float step = m / 127.0f, safe = step > 0.0f ? step : 1.0f;  /* a row of zeros stays zeros */
    int32_t s = 0;
    for (int64_t j = 0; j < n; j++) {
        float v = nearbyintf(x[j] / safe);
        int32_t i = v > 127.0f ? 127 : v < -127.0f ? -127 : (int32_t)v;
        q[j] = (int8_t)i;
        s += i;
    }
    *scale = step;
    *sum = (float)s;
}

/* n rows x (n, w) float32 into q (n, w) int8 and meta (n, LATENT_META), the first lat columns of a row one part */
API void seekmoe_quantize_latent(const float *x, int64_t n, int64_t w, int64_t lat, int8_t *q, float *meta) {
    for (int64_t i = 0; i < n; i++) {
        float *m = meta + i * LATENT_META;
        quantize_part(x + i * w, lat, q + i * w, &m[0], &m[2]);
        quantize_part(x + i * w + lat, w - lat, q + i * w + lat, &m[1], &m[3]);
    }
}

/* the sums of four vectors' int32 lanes, in one vector */
static inline __m128i sum4_i32(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}


/* s0, s1 = four heads' sums over columns [c0, c0 + n) (n a multiple of 32) of qu[h][j] * k0[j] and k1[j]: two rows
 * by four heads, eight accumulators, each load of a row serving four heads and each of a query two rows */
static inline __attribute__((always_inline)) void qk_2x4(const uint8_t *qu, int64_t ldq, const int8_t *k0,
                                                         const int8_t *k1, int64_t c0, int64_t n, __m128i *s0,
                                                         __m128i *s1) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256i a13 = a00;
    for (int64_t j = c0; j < c0 + n; j += 32) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(k0 + j)), x1 = _mm256_loadu_si256((const __m256i *)(k1 + j));
        __m256i q = _mm256_loadu_si256((const __m256i *)(qu + j));
        a00 = dot_u8s8(a00, q, x0);
        a10 = dot_u8s8(a10, q, x1);
        q = _mm256_loadu_si256((const __m256i *)(qu + ldq + j));
        a01 = dot_u8s8(a01, q, x0);
        a11 = dot_u8s8(a11, q, x1);
        q = _mm256_loadu_si256((const __m256i *)(qu + 2 * ldq + j));
        a02 = dot_u8s8(a02, q, x0);
        a12 = dot_u8s8(a12, q, x1);
        q = _mm256_loadu_si256((const __m256i *)(qu + 3 * ldq + j));
        a03 = dot_u8s8(a03, q, x0);
        a13 = dot_u8s8(a13, q, x1);
    }
    *s0 = sum4_i32(a00, a01, a02, a03);
    *s1 = sum4_i32(a10, a11, a12, a13);
}

/* the sum over columns [c0, c1) of qu[j] * k[j], one row and one head (the heads and rows qk_2x4 leaves, and widths
 * that are not multiples of 32) */
static inline int32_t qk_1x1(const uint8_t *qu, const int8_t *k, int64_t c0, int64_t c1) {
    __m256i acc = _mm256_setzero_si256();
    int64_t j = c0;
    for (; j + 32 <= c1; j += 32)
        acc = dot_u8s8(acc, _mm256_loadu_si256((const __m256i *)(qu + j)),
                       _mm256_loadu_si256((const __m256i *)(k + j)));
    __m128i s = sum4_i32(acc, _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
    int32_t total = _mm_cvtsi128_si32(s);
    for (; j < c1; j++) total += (int32_t)qu[j] * k[j];
    return total;
}

/* scores sc (H, n) of the int8 rows: qu (H, W) the heads' offset 7-bit queries, qs (H, 2) their two parts' scales;
 * two rows by four heads a step where both parts are whole vectors (`small`: 256 + 32, V2-Lite: 512 + 64) and there
 * are at most MAX_HEADS heads, the rows SCORE_AHEAD ahead prefetched (from memory: a decode step's weights pass
 * through L3 between two layers' attention); the rest a row and a head at a time */
#define SCORE_AHEAD 8
#define MAX_HEADS 256
static void attend_scores_q8(const uint8_t *qu, const float *qs, const int8_t *kv8, const float *meta,
                             const int64_t *slots, int64_t n, int64_t w, int64_t lat, int64_t nh, float scale,
                             float *sc) {
    int64_t h4 = lat % 32 == 0 && (w - lat) % 32 == 0 && nh <= MAX_HEADS ? nh / 4 * 4 : 0, t = 0;
    float qsl[MAX_HEADS], qsr[MAX_HEADS];  /* the two parts' query scales, each head's side by side */
    for (int64_t h = 0; h < h4; h++) {
        qsl[h] = qs[2 * h];
        qsr[h] = qs[2 * h + 1];
    }
    for (; t + 2 <= n && h4 > 0; t += 2) {
        const int8_t *k0 = kv8 + slots[t] * w, *k1 = kv8 + slots[t + 1] * w;
        for (int64_t i = t + SCORE_AHEAD; i < t + SCORE_AHEAD + 2 && i < n; i++)
            for (int64_t c = 0; c < w + 63; c += 64) _mm_prefetch((const char *)(kv8 + slots[i] * w + c), _MM_HINT_T0);
        const float *m0 = meta + slots[t] * LATENT_META, *m1 = meta + slots[t + 1] * LATENT_META;
        for (int64_t h = 0; h < h4; h += 4) {
            __m128i l0, l1, r0, r1;
            qk_2x4(qu + h * w, w, k0, k1, 0, lat, &l0, &l1);
            qk_2x4(qu + h * w, w, k0, k1, lat, w - lat, &r0, &r1);
            /* four heads at once: scale * (qs_lat * s_lat * (lat - 64 sum_lat) + qs_rope * s_rope * (rope - ...)) */
            __m128 sl = _mm_loadu_ps(qsl + h), sr = _mm_loadu_ps(qsr + h), k = _mm_set1_ps(scale);
            __m128 c = _mm_set1_ps(64.0f);
            __m128 v0 = _mm_add_ps(_mm_mul_ps(_mm_mul_ps(sl, _mm_set1_ps(m0[0])),
                                              _mm_fnmadd_ps(c, _mm_set1_ps(m0[2]), _mm_cvtepi32_ps(l0))),
                                   _mm_mul_ps(_mm_mul_ps(sr, _mm_set1_ps(m0[1])),
                                              _mm_fnmadd_ps(c, _mm_set1_ps(m0[3]), _mm_cvtepi32_ps(r0))));
            __m128 v1 = _mm_add_ps(_mm_mul_ps(_mm_mul_ps(sl, _mm_set1_ps(m1[0])),
                                              _mm_fnmadd_ps(c, _mm_set1_ps(m1[2]), _mm_cvtepi32_ps(l1))),
                                   _mm_mul_ps(_mm_mul_ps(sr, _mm_set1_ps(m1[1])),
                                              _mm_fnmadd_ps(c, _mm_set1_ps(m1[3]), _mm_cvtepi32_ps(r1))));
            float out0[4], out1[4];
            _mm_storeu_ps(out0, _mm_mul_ps(k, v0));
            _mm_storeu_ps(out1, _mm_mul_ps(k, v1));
            for (int j = 0; j < 4; j++) {
                sc[(h + j) * n + t] = out0[j];
                sc[(h + j) * n + t + 1] = out1[j];
            }
        }
    }
    for (int64_t i = 0; i < n; i++)  /* the heads qk_2x4 left, for every row; every head for the last odd row */
        for (int64_t h = i < t ? h4 : 0; h < nh; h++) {
            const int8_t *k = kv8 + slots[i] * w;
            const float *m = meta + slots[i] * LATENT_META, *s = qs + 2 * h;
            float dl = (float)qk_1x1(qu + h * w, k, 0, lat) - 64.0f * m[2];
            float dr = (float)qk_1x1(qu + h * w, k, lat, w) - 64.0f * m[3];
            sc[h * n + i] = scale * (s[0] * m[0] * dl + s[1] * m[1] * dr);
        }
}

/* the latent parts of a chunk's n rows regrouped four rows to a column (VNNI's layout, which vpmaddubsw then
 * vpmaddwd with ones sum four rows with): g (ceil(n / 4), lat, 4). Unpacking bytes then 16-bit pairs interleaves
 * four rows within each 128-bit lane; the lanes are put back in column order as they are stored. A missing row of
 * the last group repeats the group's first (its weight is 0). */
static void latent_groups(const int8_t *kv8, const int64_t *slots, int64_t n, int64_t w, int64_t lat, int8_t *g) {
    for (int64_t t = 0; t < n; t += 4) {
        const int8_t *r[4];
        for (int i = 0; i < 4; i++) r[i] = kv8 + slots[t + i < n ? t + i : t] * w;
        int8_t *d = g + (t / 4) * lat * 4;
        int64_t l = 0;
        for (; l + 32 <= lat; l += 32, d += 128) {
            __m256i r0 = _mm256_loadu_si256((const __m256i *)(r[0] + l));
            __m256i r1 = _mm256_loadu_si256((const __m256i *)(r[1] + l));
            __m256i r2 = _mm256_loadu_si256((const __m256i *)(r[2] + l));
            __m256i r3 = _mm256_loadu_si256((const __m256i *)(r[3] + l));
            __m256i a0 = _mm256_unpacklo_epi8(r0, r1), a1 = _mm256_unpackhi_epi8(r0, r1);
            __m256i b0 = _mm256_unpacklo_epi8(r2, r3), b1 = _mm256_unpackhi_epi8(r2, r3);
            __m256i v0 = _mm256_unpacklo_epi16(a0, b0), v1 = _mm256_unpackhi_epi16(a0, b0);  /* columns 0-7 | 16-23 */
            __m256i v2 = _mm256_unpacklo_epi16(a1, b1), v3 = _mm256_unpackhi_epi16(a1, b1);  /* 8-15 | 24-31 */
            _mm256_storeu_si256((__m256i *)d, _mm256_permute2x128_si256(v0, v1, 0x20));
            _mm256_storeu_si256((__m256i *)(d + 32), _mm256_permute2x128_si256(v2, v3, 0x20));
            _mm256_storeu_si256((__m256i *)(d + 64), _mm256_permute2x128_si256(v0, v1, 0x31));
            _mm256_storeu_si256((__m256i *)(d + 96), _mm256_permute2x128_si256(v2, v3, 0x31));
        }
        for (; l < lat; l++, d += 4)
            for (int i = 0; i < 4; i++) d[i] = r[i][l];
    }
}

/* acc[h][l .. l + 32) += sum over the n4 rows of u[h][t] * g's rows: nh (1 or 2, a constant) heads, four rows a
 * step */
static inline __attribute__((always_inline)) void pv_block(const uint8_t *u, int64_t ldu, int nh, const int8_t *g,
                                                           int64_t n4, int64_t lat, int64_t l, int32_t *acc) {
    __m256i a[2][4];
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < 4; j++) a[h][j] = _mm256_loadu_si256((const __m256i *)(acc + h * lat + l + 8 * j));
    for (int64_t t = 0; t < n4; t += 4) {
        const int8_t *blk = g + (t / 4) * lat * 4 + l * 4;
        __m256i p[2];
        for (int h = 0; h < nh; h++) {
            int32_t four;
            memcpy(&four, u + h * ldu + t, 4);
            p[h] = _mm256_set1_epi32(four);
        }
        for (int j = 0; j < 4; j++) {
            __m256i c = _mm256_loadu_si256((const __m256i *)(blk + 32 * j));
            for (int h = 0; h < nh; h++)
                a[h][j] = dot_u8s8(a[h][j], p[h], c);
        }
    }
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < 4; j++) _mm256_storeu_si256((__m256i *)(acc + h * lat + l + 8 * j), a[h][j]);
}

/* The rows are regrouped VALUE_ROWS at a time, so that the regrouped block (16 KB of `small`'s) stays in L1 while
 * every head's products read it. */
#define VALUE_ROWS 64

/* acc (H, L) int32 += u (H, n; rows ldu apart) u8 . the latent parts of the n rows at slots: VALUE_ROWS rows at a
 * time regrouped into g (latent_groups), then 32 columns by two heads a step, the last columns one by one */
static void attend_values_q8(const uint8_t *u, int64_t ldu, int64_t nh, const int8_t *kv8, const int64_t *slots,
                             int64_t n, int64_t w, int64_t lat, int8_t *g, int32_t *acc) {
    for (int64_t t0 = 0; t0 < n; t0 += VALUE_ROWS) {
        int64_t m = n - t0 < VALUE_ROWS ? n - t0 : VALUE_ROWS, m4 = (m + 3) / 4 * 4;
        latent_groups(kv8, slots + t0, m, w, lat, g);
        int64_t l = 0;
        for (; l + 32 <= lat; l += 32)
            for (int64_t h = 0; h < nh; h += 2) {
                if (h + 1 < nh) pv_block(u + h * ldu + t0, ldu, 2, g, m4, lat, l, acc + h * lat);
                else pv_block(u + h * ldu + t0, ldu, 1, g, m4, lat, l, acc + h * lat);
            }
        for (; l < lat; l++)
            for (int64_t h = 0; h < nh; h++)
                for (int64_t t = 0; t < m4; t++)
                    acc[h * lat + l] += (int32_t)u[h * ldu + t0 + t] * g[(t / 4) * lat * 4 + l * 4 + t % 4];
    }
}

/* s[t] *= scale[t] over n, and the largest of them (0 at least): the weights of a head's rows times each row's
 * latent scale */
static float scale_weights(float *s, const float *scale, int64_t n) {
    __m256 top = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + t), _mm256_loadu_ps(scale + t));
        _mm256_storeu_ps(s + t, v);
        top = _mm256_max_ps(top, v);
    }
    float m = hmax(top);
    for (; t < n; t++) {
        s[t] *= scale[t];
        m = s[t] > m ? s[t] : m;
    }
    return m;
}

/* u[t] = s[t] * inv rounded to the nearest integer (ties to even, as nearbyintf), for values in [0, 127] */
static void round_weights(const float *s, int64_t n, float inv, uint8_t *u) {
    __m256 iv = _mm256_set1_ps(inv);
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + t), iv));
        __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(u + t), _mm_packus_epi16(w16, w16));
    }
    for (; t < n; t++) u[t] = (uint8_t)nearbyintf(s[t] * inv);
}

/* the end of the run of consecutive slots that starts at t (a page of the cache, or more: one product) */
static inline int64_t run_end(const int64_t *slots, int64_t t, int64_t n) {
    int64_t e = t + 1;
    while (e < n && slots[e] == slots[e - 1] + 1) e++;
    return e;
}

/* scores sc (H, n) = q (H, W) . rows (n, W)^T * scale: each run of consecutive slots (a page of the cache, or more)
 * as one product in tiles, the heads as its rows and the cached rows as its weight rows, the next run's first rows
 * prefetched meanwhile. The rows stream as weights do: four rows by two heads at a time (each row's heads in pairs)
 * read a cache larger than L3 at 9-10 GB/s, where memory gives 40. 8 heads of `small` on two threads, pages of 16
 * rows in a random order, the cache of 8 layers from memory, the two builds alternating: 4,096 rows 450-575 ->
 * 265-345 us a layer, 16,384 rows 1.85-2.2 -> 1.1-1.3 ms. */
static void attend_scores(const float *q, const float *kv, const int64_t *slots, int64_t n, int64_t w, int64_t nh,
                          float scale, float *sc) {
    for (int64_t t = 0; t < n;) {
        int64_t e = run_end(slots, t, n);
        tiles_f32(q, nh, w, kv + slots[t] * w, w, 0, e - t, e < n ? kv + slots[e] * w : NULL, sc + t, n);
        t = e;
    }
    for (int64_t j = 0; j < nh * n; j++) sc[j] *= scale;
}

/* o (H, L) = p (H, n) . rows (n, :L): each run of consecutive slots as one product in tiles (tiles_nn: the heads as
 * its rows, the run's rows as its weight rows), added into o */
static void attend_values(const float *p, const float *kv, const int64_t *slots, int64_t n, int64_t w, int64_t lat,
                          int64_t nh, float *o) {
    for (int64_t j = 0; j < nh * lat; j++) o[j] = 0.0f;
    for (int64_t t = 0; t < n;) {
        int64_t e = run_end(slots, t, n);
        tiles_nn(p + t, n, nh, e - t, kv + slots[t] * w, w, lat, 1, o, lat);
        t = e;
    }
}

/* exp of 8 floats (Cephes' expf: 2^n times a degree-6 polynomial on [-ln2/2, ln2/2], within 2 ulp of expf), for
 * the softmax of a long context, where a scalar expf per cached row and head was 10-15% of the attention */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365478515625f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* x - n ln2, ln2 in two parts */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));  /* times 2^n */
}

static void attend_job(void *p, int part, int parts) {
    attend_args *a = p;
    int64_t w = a->width, lat = a->lat, heads = a->heads, hg = a->head_groups;
    for (int64_t i = part; i < a->n_chunks * hg; i += parts) {
        attend_chunk c = a->chunks[i / hg];
        int64_t n = c.hi - c.lo, n4 = (n + 3) / 4 * 4, h0, h1;
        share(heads, (int)(i % hg), (int)hg, 2, &h0, &h1);  /* heads [h0, h1), in pairs */
        int64_t nh = h1 - h0;
        if (nh <= 0) continue;
        const int64_t *slots = a->slots + c.lo;
        /* the scores (nh, n) and, for the int8 cache, each head's factor (nh), the rows' latent scales (n), the
         * weights as 7-bit unsigned (nh, n4), VALUE_ROWS rows regrouped, the sums (nh, L): one allocation, small
         * enough that malloc does not map and unmap it at every call */
        int64_t n1 = n > 0 ? n : 1, bytes = sizeof(float) * nh * n1;
        if (a->kv8 != NULL)
            bytes += sizeof(float) * (nh + n1) + nh * n4 + VALUE_ROWS * lat + sizeof(int32_t) * nh * lat;
        float *sc = malloc(bytes + 64);
        if (sc == NULL) {
            atomic_store(&a->failed, 1);
            return;
        }
        float *f = sc + nh * n1, *rs = f + nh;
        int32_t *acc = (int32_t *)(rs + n1);
        uint8_t *u = (uint8_t *)(acc + nh * lat);
        int8_t *g = (int8_t *)(u + nh * n4);
        if (a->kv8 != NULL) {
            for (int64_t j = 0; j < nh * lat; j++) acc[j] = 0;
            for (int64_t j = 0; j < nh * n4; j++) u[j] = 0;
            for (int64_t t = 0; t < n; t++) rs[t] = a->meta[slots[t] * LATENT_META];
            attend_scores_q8(a->qu + (c.seq * heads + h0) * w, a->qs + (c.seq * heads + h0) * 2, a->kv8, a->meta,
                             slots, n, w, lat, nh, a->scale, sc);  /* (nh, n) */
        } else {
            attend_scores(a->q + (c.seq * heads + h0) * w, a->kv, slots, n, w, nh, a->scale, sc);  /* (nh, n) */
        }
        /* a whole sequence is written normalised; a chunk leaves (output, max, sum) per head for the merge */
        float *block = c.partial < 0 ? a->out + c.seq * heads * lat : a->partials + c.partial * heads * (lat + 2);
        float *o = block + h0 * lat, *stats = block + heads * lat + 2 * h0;  /* a chunk's max and sum per head */
        for (int64_t h = 0; h < nh; h++) {
            float *s = sc + h * n, z = 0.0f;
            int64_t t = 0;
            __m256 top8 = _mm256_set1_ps(-INFINITY);
            for (; t + 8 <= n; t += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(s + t));
            float m = hmax(top8);
            for (; t < n; t++) m = s[t] > m ? s[t] : m;
            __m256 mv = _mm256_set1_ps(m), zv = _mm256_setzero_ps();
            t = 0;
            for (; t + 8 <= n; t += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
                _mm256_storeu_ps(s + t, e);
                zv = _mm256_add_ps(zv, e);
            }
            z = hsum(zv);
            for (; t < n; t++) z += (s[t] = expf(s[t] - m));
            if (c.partial >= 0) {
                stats[2 * h] = m;
                stats[2 * h + 1] = z;
            }
            if (a->kv8 == NULL) {
                if (c.partial < 0)
                    for (int64_t t = 0; t < n; t++) s[t] /= z;
                continue;
            }
            /* the weights times each row's latent scale (the values' scale folded in), to 7 bits at the head's
             * largest (at most 127, so a pair of products sums within 16 bits) */
            float top = scale_weights(s, rs, n), inv = top > 0.0f ? 127.0f / top : 0.0f;
            round_weights(s, n, inv, u + h * n4);
            f[h] = top > 0.0f ? top / 127.0f / (c.partial < 0 ? z : 1.0f) : 0.0f;
        }
        if (a->kv8 != NULL) {
            attend_values_q8(u, n4, nh, a->kv8, slots, n, w, lat, g, acc);
            for (int64_t h = 0; h < nh; h++)
                for (int64_t l = 0; l < lat; l++) o[h * lat + l] = f[h] * (float)acc[h * lat + l];
        } else {
            attend_values(sc, a->kv, slots, n, w, lat, nh, o);
        }
        free(sc);
    }
}

/* o (H, L) of one sequence from its k chunks' partials: each rescaled to the largest max, summed, divided by the
 * total sum */
static void attend_merge(const float *partials, int64_t k, int64_t nh, int64_t lat, float *o) {
    for (int64_t h = 0; h < nh; h++) {
        float m = -INFINITY, z = 0.0f;
        for (int64_t c = 0; c < k; c++) {
            float mc = partials[c * nh * (lat + 2) + nh * lat + 2 * h];
            m = mc > m ? mc : m;
        }
        float *oh = o + h * lat;
        for (int64_t j = 0; j < lat; j++) oh[j] = 0.0f;
        for (int64_t c = 0; c < k; c++) {
            const float *block = partials + c * nh * (lat + 2), *stats = block + nh * lat + 2 * h;
            float f = expf(stats[0] - m);
            z += f * stats[1];
            for (int64_t j = 0; j < lat; j++) oh[j] += f * block[h * lat + j];
        }
        for (int64_t j = 0; j < lat; j++) oh[j] /= z;
    }
}

/* the queries q (M, W) as the int8 cache's products take them: each of the two parts (the first lat columns, the
 * rest) rounded to 7 bits at its own scale and offset by 64, qu (M, W); the scales qs (M, 2) */
static void quantize_queries(const float *q, int64_t m, int64_t w, int64_t lat, uint8_t *qu, float *qs) {
    for (int64_t i = 0; i < m; i++)
        for (int part = 0; part < 2; part++) {
            int64_t c0 = part ? lat : 0, c1 = part ? w : lat;
            const float *x = q + i * w;
            float top = 0.0f;
            for (int64_t j = c0; j < c1; j++) top = fabsf(x[j]) > top ? fabsf(x[j]) : top;
            float inv = top > 0.0f ? 63.0f / top : 0.0f;
            for (int64_t j = c0; j < c1; j++) qu[i * w + j] = (uint8_t)(64 + (int32_t)nearbyintf(x[j] * inv));
            qs[2 * i + part] = top / 63.0f;
        }
}

/* The absorbed attention over a float32 cache kv, or the int8 cache kv8 with its meta (kv NULL). Returns -1 if a
 * slot is outside the cache's n_rows rows or the offsets are not in order, -2 when out of memory. */
int attend(const float *q, const float *kv, const int8_t *kv8, const float *meta, int64_t n_rows,
                  int64_t width, int64_t lat, int64_t heads, const int64_t *slots, const int64_t *offsets,
                  int64_t n_seqs, float scale, float *out) {
    if (offsets[0] != 0) return -1;
    int64_t n_chunks = 0, n_partials = 0;
    for (int64_t b = 0; b < n_seqs; b++) {
        int64_t t_len = offsets[b + 1] - offsets[b], k = (t_len + ATTEND_ROWS - 1) / ATTEND_ROWS;
        if (t_len < 0) return -1;
        n_chunks += k > 1 ? k : 1;
        n_partials += k > 1 ? k : 0;
    }
    for (int64_t i = 0; i < offsets[n_seqs]; i++)
        if (slots[i] < 0 || slots[i] >= n_rows) return -1;
    attend_chunk *chunks = malloc(sizeof(attend_chunk) * n_chunks);
    float *partials = n_partials ? malloc(sizeof(float) * n_partials * heads * (lat + 2)) : NULL;
    uint8_t *qu = kv8 != NULL ? malloc(n_seqs * heads * width) : NULL;
    float *qs = kv8 != NULL ? malloc(sizeof(float) * n_seqs * heads * 2) : NULL;
    if (chunks == NULL || (n_partials && partials == NULL) || (kv8 != NULL && (qu == NULL || qs == NULL))) {
        free(chunks);
        free(partials);
        free(qu);
        free(qs);
        return -2;
    }
    if (kv8 != NULL) quantize_queries(q, n_seqs * heads, width, lat, qu, qs);
    for (int64_t b = 0, i = 0, j = 0; b < n_seqs; b++) {
        int64_t lo = offsets[b], hi = offsets[b + 1];
        if (hi - lo <= ATTEND_ROWS) {
            chunks[i++] = (attend_chunk){b, lo, hi, -1};
            continue;
        }
        for (int64_t r = lo; r < hi; r += ATTEND_ROWS)
            chunks[i++] = (attend_chunk){b, r, r + ATTEND_ROWS < hi ? r + ATTEND_ROWS : hi, j++};
    }
    /* fewer chunks than threads (a short context, one sequence): the heads are shared out too, in as many groups
     * as there are threads but no more than pairs of heads; each head's arithmetic is the same either way */
    int64_t pairs = heads / 2 > 0 ? heads / 2 : 1;
    int64_t threads = pool_threads(), hg = n_chunks >= threads ? 1 : (pairs < threads ? pairs : threads);
    attend_args a = {q, kv, kv8, meta, qu, qs, width, lat, heads, slots, chunks, n_chunks, hg, scale, out, partials,
                     0};
    int64_t parts = n_chunks * hg < MAX_PARTS ? n_chunks * hg : MAX_PARTS;
    pool_run(attend_job, &a, (int)parts, offsets[n_seqs] * width * (kv8 != NULL ? 1 : 4));
    for (int64_t i = 0; i < n_chunks && !atomic_load(&a.failed); ) {
        int64_t k = 1;
        while (i + k < n_chunks && chunks[i + k].seq == chunks[i].seq) k++;
        if (chunks[i].partial >= 0)
            attend_merge(partials + chunks[i].partial * heads * (lat + 2), k, heads, lat,
                         out + chunks[i].seq * heads * lat);
        i += k;
    }
    free(chunks);
    free(partials);
    free(qu);
    free(qs);
    return atomic_load(&a.failed) ? -2 : 0;
}

API int seekmoe_mla_attend(const float *q, const float *kv, int64_t n_rows, int64_t width, int64_t lat, int64_t heads,
                           const int64_t *slots, const int64_t *offsets, int64_t n_seqs, float scale, float *out) {
    return attend(q, kv, NULL, NULL, n_rows, width, lat, heads, slots, offsets, n_seqs, scale, out);
}

/* the same over the int8 cache: kv8 (n_rows, W) int8, meta (n_rows, LATENT_META) */
API int seekmoe_mla_attend_int8(const float *q, const int8_t *kv8, const float *meta, int64_t n_rows, int64_t width,
                                int64_t lat, int64_t heads, const int64_t *slots, const int64_t *offsets,
                                int64_t n_seqs, float scale, float *out) {
    return attend(q, NULL, kv8, meta, n_rows, width, lat, heads, slots, offsets, n_seqs, scale, out);
}
