/* Decode kernels (AVX2 + FMA): matrix-vector products that stream weights row by row with independent
 * accumulators, in float32 or int8 widened to float32, and one token's SwiGLU experts in one call.
 * Built by seekmoe/model/kernels.py with the system C compiler; any build failure falls back to torch.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 int8 weights from w, widened to float32 in four registers */
#define WIDEN32(w, w0, w1, w2, w3)                                                           \
    __m256i raw = _mm256_loadu_si256((const __m256i *)(w));                                  \
    __m128i lo = _mm256_castsi256_si128(raw), hi = _mm256_extracti128_si256(raw, 1);         \
    __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));                                \
    __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));             \
    __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));                                \
    __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))

/* one row of x against weight row w, length n: four accumulators, so the multiply-adds do not wait on each other */
static inline float dot1(const float *x, const int8_t *w, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        WIDEN32(w + i, w0, w1, w2, w3);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + i + 24), a3);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += (float)w[i] * x[i];
    return s;
}

/* nm <= 4 rows of x (stride n) against weight row w: the rows share each widening */
static inline void dot4(const float *x, int nm, const int8_t *w, int64_t n, float *out) {
    __m256 acc[4][2];
    for (int m = 0; m < 4; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        WIDEN32(w + i, w0, w1, w2, w3);
        for (int m = 0; m < nm; m++) {
            const float *xm = x + m * n + i;
            acc[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xm), acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), acc[m][1]);
            acc[m][0] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xm + 16), acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24), acc[m][1]);
        }
    }
    for (int m = 0; m < nm; m++) {
        float s = hsum(_mm256_add_ps(acc[m][0], acc[m][1]));
        for (int64_t j = i; j < n; j++) s += (float)w[j] * x[m * n + j];
        out[m] = s;
    }
}

/* y (M, O) = x (M, I) @ (q (O, I) int8 * scale (O)).T for a few rows: each weight row is read from memory once, 32
 * weights at a time widened to float32 and multiplied into up to four rows of x, so the rows share the widening.
 * The activations stay float32 (no bfloat16 rounding) and the scale is applied once per output. */
void seekmoe_int8_gemv(const float *x, const int8_t *q, const float *scale, float *y, int64_t m_rows, int64_t n_in,
                       int64_t n_out) {
    float part[4];
    for (int64_t o = 0; o < n_out; o++) {
        const int8_t *w = q + o * n_in;
        if (m_rows == 1) {
            y[o] = dot1(x, w, n_in) * scale[o];
            continue;
        }
        for (int64_t m0 = 0; m0 < m_rows; m0 += 4) {  /* the weight row stays in cache for the next rows of x */
            int nm = m_rows - m0 < 4 ? (int)(m_rows - m0) : 4;
            dot4(x + m0 * n_in, nm, w, n_in, part);
            for (int m = 0; m < nm; m++) y[(m0 + m) * n_out + o] = part[m] * scale[o];
        }
    }
}

/* One token through int8 SwiGLU experts, added into y (D): for each chosen expert k,
 * y += weight[k] * down_k(silu(gate_k x) * up_k x), with gate and up stacked as (2F, D) rows per expert and one
 * float32 scale per row. `h` is scratch for 2F floats. The whole routed-expert block of a decode step in one call
 * instead of a handful of PyTorch calls per expert. Returns -1 (and adds nothing) if an expert index is out of range. */
int seekmoe_int8_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                         const float *gate_up_scale, const int8_t *down, const float *down_scale, const int64_t *idx,
                         const float *weight, int64_t k, float *y, float *h) {
    for (int64_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= n_experts) return -1;
    for (int64_t j = 0; j < k; j++) {
        const int8_t *gu = gate_up + idx[j] * 2 * f * d, *dn = down + idx[j] * d * f;
        const float *gus = gate_up_scale + idx[j] * 2 * f, *dns = down_scale + idx[j] * d;
        for (int64_t o = 0; o < 2 * f; o++) h[o] = dot1(x, gu + o * d, d) * gus[o];
        for (int64_t o = 0; o < f; o++) h[o] = h[o] / (1.0f + expf(-h[o])) * h[f + o];  /* silu(gate) * up */
        for (int64_t o = 0; o < d; o++) y[o] += weight[j] * (dot1(h, dn + o * f, f) * dns[o]);
    }
    return 0;
}

/* ---- float32 experts ------------------------------------------------------------------------------------------ */

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

/* y (n) += sum over r < nr of a[r] * rows[r] (rows of length n, stride n): four rows per pass over y */
static inline void axpy4(float *y, const float *a, const float *rows, int nr, int64_t n) {
    __m256 c[4];
    for (int r = 0; r < 4; r++) c[r] = _mm256_set1_ps(r < nr ? a[r] : 0.0f);
    const float *r0 = rows, *r1 = rows + (nr > 1 ? n : 0), *r2 = rows + (nr > 2 ? 2 * n : 0),
                *r3 = rows + (nr > 3 ? 3 * n : 0);  /* missing rows read row 0 with a zero coefficient */
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
        for (int r = 0; r < nr; r++) y[i] += a[r] * rows[r * n + i];
}

/* As seekmoe_int8_experts for float32 weights: gate and up (E, 2F, D) row by row, the down projection stored
 * transposed as (E, F, D) so that it streams as scaled rows added into y. `h` is scratch for 2F floats. */
int seekmoe_f32_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                        const float *down_t, const int64_t *idx, const float *weight, int64_t k, float *y, float *h) {
    for (int64_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= n_experts) return -1;
    for (int64_t j = 0; j < k; j++) {
        const float *gu = gate_up + idx[j] * 2 * f * d, *dt = down_t + idx[j] * f * d;
        for (int64_t o = 0; o < 2 * f; o++) h[o] = dot1_f32(x, gu + o * d, d);
        for (int64_t o = 0; o < f; o++) h[o] = h[o] / (1.0f + expf(-h[o])) * h[f + o] * weight[j];
        for (int64_t o = 0; o < f; o += 4) axpy4(y, h + o, dt + o * d, f - o < 4 ? (int)(f - o) : 4, d);
    }
    return 0;
}

/* nm <= 4 float32 rows of x (stride n) against weight row w: the rows share each load of the weights */
static inline void dot4_f32(const float *x, int nm, const float *w, int64_t n, float *out) {
    __m256 acc[4][2];
    for (int m = 0; m < 4; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
        for (int m = 0; m < nm; m++) {
            acc[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * n + i), acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * n + i + 8), acc[m][1]);
        }
    }
    for (int m = 0; m < nm; m++) {
        float s = hsum(_mm256_add_ps(acc[m][0], acc[m][1]));
        for (int64_t j = i; j < n; j++) s += w[j] * x[m * n + j];
        out[m] = s;
    }
}

/* y (M, O) = x (M, I) W.T for a few float32 rows: W stored (O, I) row by row (transposed == 0) or as (I, O)
 * (transposed == 1), streamed once the way it is stored: dot products of rows, or scaled rows added into y. */
void seekmoe_f32_gemv(const float *x, const float *w, float *y, int64_t m_rows, int64_t n_in, int64_t n_out,
                      int transposed) {
    if (!transposed) {
        if (m_rows == 1) {
            for (int64_t o = 0; o < n_out; o++) y[o] = dot1_f32(x, w + o * n_in, n_in);
            return;
        }
        float part[4];
        for (int64_t o = 0; o < n_out; o++)
            for (int64_t m0 = 0; m0 < m_rows; m0 += 4) {  /* the weight row stays in cache for the next rows */
                int nm = m_rows - m0 < 4 ? (int)(m_rows - m0) : 4;
                dot4_f32(x + m0 * n_in, nm, w + o * n_in, n_in, part);
                for (int m = 0; m < nm; m++) y[(m0 + m) * n_out + o] = part[m];
            }
        return;
    }
    for (int64_t j = 0; j < m_rows * n_out; j++) y[j] = 0.0f;
    for (int64_t i = 0; i < n_in; i += 4) {  /* four weight rows, then every row of x against them (from cache) */
        int nr = n_in - i < 4 ? (int)(n_in - i) : 4;
        for (int64_t m = 0; m < m_rows; m++) axpy4(y + m * n_out, x + m * n_in + i, w + i * n_out, nr, n_out);
    }
}
