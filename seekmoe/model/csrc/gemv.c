#include "kernels.h"

/* Products of a few float32 rows with float32 or int8 weights (decode steps; a prompt chunk's routed experts): one
 * row at a time (dot1), or tiles of four rows against four weight rows; SwiGLU experts one token at a time, or a
 * step's (token, expert) pairs grouped by expert. */

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
        ahead(w + i);
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
        ahead(w + i);
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

/* ---- tiles: several rows of x against several weight rows ----------------------------------------------------- */
/* y (M, O) = x (M, I) W.T for M of more than one row (a step of several sequences, a prompt's tokens in one expert,
 * the heads of an attention against the cached rows): four rows of x against four weight rows at a time, sixteen
 * accumulators, so each load of x serves four weight rows and each load (or int8 widening) of a weight row four
 * rows of x. dot4 loads one x vector per multiply-add and stays bound by loads; a tile loads one per two. Vectors are
 * 16 floats where the library is built with AVX-512 (32 registers hold the tile), else 8 (the two definitions
 * below). The weight tile (four rows) stays in L1 while the rows of x pass it, and the next four weight rows stream
 * into L2 meanwhile. Sums are reduced four at a time (sum4). */
#ifdef __AVX512F__
typedef __m512 vec;
#define VL 16
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vload(const float *p) { return _mm512_loadu_ps(p); }
static inline vec vload8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vbroadcast(float a) { return _mm512_set1_ps(a); }
static inline void vstore(float *p, vec a) { _mm512_storeu_ps(p, a); }
static inline __m256 vhalf(vec a) {  /* the two 256-bit halves added (no AVX512DQ needed) */
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
#define NN_VECS 4  /* tile_nn: 4 rows x 64 columns */
#else
typedef __m256 vec;
#define VL 8
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vload(const float *p) { return _mm256_loadu_ps(p); }
static inline vec vload8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vbroadcast(float a) { return _mm256_set1_ps(a); }
static inline void vstore(float *p, vec a) { _mm256_storeu_ps(p, a); }
static inline __m256 vhalf(vec a) { return a; }
#define NN_VECS 2  /* 16 registers: 4 rows x 16 columns */
#endif

/* (sum of a0, of a1, of a2, of a3) */
static inline __m128 sum4(vec a0, vec a1, vec a2, vec a3) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(vhalf(a0), vhalf(a1)), _mm256_hadd_ps(vhalf(a2), vhalf(a3)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* nm rows of x (stride ldx) against weight rows w[0..3] (stride k, float32 or int8): y[m][0..3] (stride ldy),
 * times scale[0..3] when given. nm and int8 are constants at every call, so each variant compiles unrolled. */
static inline __attribute__((always_inline)) void tile_dot(const float *x, int64_t ldx, int nm, const void *w,
                                                           int int8, int64_t k, const void *next,
                                                           const float *scale, float *y, int64_t ldy) {
    vec acc[4][4];
    for (int m = 0; m < 4; m++)
        for (int n = 0; n < 4; n++) acc[m][n] = vzero();
    const float *wf = w;
    const int8_t *wq = w;
    int64_t i = 0;
    for (; i + VL <= k; i += VL) {
        vec wv[4];
        for (int n = 0; n < 4; n++) {
            if (next != NULL)
                _mm_prefetch(int8 ? (const char *)next + n * k + i : (const char *)((const float *)next + n * k + i),
                             _MM_HINT_T1);
            wv[n] = int8 ? vload8(wq + n * k + i) : vload(wf + n * k + i);
        }
        for (int m = 0; m < nm; m++) {
            vec xv = vload(x + m * ldx + i);
            for (int n = 0; n < 4; n++) acc[m][n] = vfma(xv, wv[n], acc[m][n]);
        }
    }
    for (int m = 0; m < nm; m++) {
        float s[4];
        _mm_storeu_ps(s, sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
        for (int n = 0; n < 4; n++) {
            for (int64_t j = i; j < k; j++) s[n] += x[m * ldx + j] * (int8 ? (float)wq[n * k + j] : wf[n * k + j]);
            y[m * ldy + n] = scale != NULL ? s[n] * scale[n] : s[n];
        }
    }
}

/* y[m][o] = x[m] . w[o] (* scale[o]) for m < m_rows and o in [o0, o1): weight rows of length k, four at a time
 * against every four rows of x; a last one to three weight rows one at a time (dot4). Many rows (a prompt chunk) go
 * a block at a time, TILE_X_BYTES of x, so that the block stays in L2 while the weight rows pass it. `after`, or
 * NULL: four rows of k that the caller reads next, prefetched during the last tile. */
#define TILE_X_BYTES (256 * 1024)
static inline __attribute__((always_inline)) void tiles(const float *x, int64_t m_rows, int64_t ldx, const void *w,
                                                        int int8, const float *scale, int64_t k, int64_t o0,
                                                        int64_t o1, const void *after, float *y, int64_t ldy) {
    int64_t esize = int8 ? 1 : 4, block = TILE_X_BYTES / (4 * k) / 4 * 4;
    block = block < 4 ? 4 : block;
    for (int64_t b0 = 0; b0 < m_rows; b0 += block, x += block * ldx, y += block * ldy) {
        int64_t rows = m_rows - b0 < block ? m_rows - b0 : block, o = o0;
        for (; o + 4 <= o1; o += 4) {
            const void *wo = (const char *)w + o * k * esize;
            /* the next four weight rows stream into L2 while these are multiplied: the memory is not left idle
             * while the rows of x pass a tile that is already in L1 */
            const void *next = o + 8 <= o1 ? (const char *)wo + 4 * k * esize : after;
            const float *so = scale != NULL ? scale + o : NULL;
            int64_t m = 0;
            for (; m + 4 <= rows; m += 4) tile_dot(x + m * ldx, ldx, 4, wo, int8, k, next, so, y + m * ldy + o, ldy);
            switch (rows - m) {
                case 3: tile_dot(x + m * ldx, ldx, 3, wo, int8, k, next, so, y + m * ldy + o, ldy); break;
                case 2: tile_dot(x + m * ldx, ldx, 2, wo, int8, k, next, so, y + m * ldy + o, ldy); break;
                case 1: tile_dot(x + m * ldx, ldx, 1, wo, int8, k, next, so, y + m * ldy + o, ldy); break;
                default: break;
            }
        }
        float part[4];
        for (; o < o1; o++)
            for (int64_t m0 = 0; m0 < rows; m0 += 4) {
                int nm = rows - m0 < 4 ? (int)(rows - m0) : 4;
                if (int8) dot4(x + m0 * ldx, nm, (const int8_t *)w + o * k, k, part);
                else dot4_f32(x + m0 * ldx, nm, (const float *)w + o * k, k, part);
                for (int m = 0; m < nm; m++) y[(m0 + m) * ldy + o] = scale != NULL ? part[m] * scale[o] : part[m];
            }
    }
}

void tiles_f32(const float *x, int64_t m_rows, int64_t ldx, const float *w, int64_t k, int64_t o0, int64_t o1,
               const float *after, float *y, int64_t ldy) {
    tiles(x, m_rows, ldx, w, 0, NULL, k, o0, o1, after, y, ldy);
}

static void tiles_int8(const float *x, int64_t m_rows, int64_t ldx, const int8_t *w, const float *scale, int64_t k,
                       int64_t o0, int64_t o1, float *y, int64_t ldy) {
    tiles(x, m_rows, ldx, w, 1, scale, k, o0, o1, NULL, y, ldy);
}

/* y (M, N) (+)= a (M, K) b (K, N), b stored as K rows of N (a float32 down projection stored transposed; y and b
 * `ldy` and `ldb` floats a row): four rows of a against nv vectors of b's columns, each broadcast of a[m][k] used nv
 * times and each load of b four times; no sums to reduce. nm and nv are constants at every call. */
static inline __attribute__((always_inline)) void tile_nn(const float *a, int64_t lda, int nm, const float *b,
                                                          int64_t ldb, int nv, int64_t k, const float *next,
                                                          int add, float *y, int64_t ldy) {
    vec acc[4][NN_VECS];
    for (int m = 0; m < 4; m++)
        for (int v = 0; v < NN_VECS; v++) acc[m][v] = add && m < nm && v < nv ? vload(y + m * ldy + v * VL) : vzero();
    for (int64_t i = 0; i < k; i++) {
        vec bv[NN_VECS];
        if (next != NULL)
            for (int v = 0; v < nv * VL; v += 16) _mm_prefetch((const char *)(next + i * ldb + v), _MM_HINT_T1);
        for (int v = 0; v < nv; v++) bv[v] = vload(b + i * ldb + v * VL);
        for (int m = 0; m < nm; m++) {
            vec am = vbroadcast(a[m * lda + i]);
            for (int v = 0; v < nv; v++) acc[m][v] = vfma(am, bv[v], acc[m][v]);
        }
    }
    for (int m = 0; m < nm; m++)
        for (int v = 0; v < nv; v++) vstore(y + m * ldy + v * VL, acc[m][v]);
}

#define TILE_NN_ROWS(nv, next)                                                                                \
    do {                                                                                                      \
        const float *a0 = a + k0, *b0 = b + k0 * ldb + c;                                                     \
        int add_ = add || k0 > 0;                                                                             \
        int64_t m = 0;                                                                                        \
        for (; m + 4 <= m_rows; m += 4)                                                                       \
            tile_nn(a0 + m * lda, lda, 4, b0, ldb, nv, kc, next, add_, y + m * ldy + c, ldy);                 \
        switch (m_rows - m) {                                                                                 \
            case 3: tile_nn(a0 + m * lda, lda, 3, b0, ldb, nv, kc, next, add_, y + m * ldy + c, ldy); break;  \
            case 2: tile_nn(a0 + m * lda, lda, 2, b0, ldb, nv, kc, next, add_, y + m * ldy + c, ldy); break;  \
            case 1: tile_nn(a0 + m * lda, lda, 1, b0, ldb, nv, kc, next, add_, y + m * ldy + c, ldy); break;  \
            default: break;                                                                                   \
        }                                                                                                     \
    } while (0)

/* columns [0, n) of y (M rows, ldy apart) = a (M, K; rows lda apart) b (K rows, ldb apart), or += where `add`;
 * NN_ROWS rows of b at a time (a tile's columns of them, 64 KB, stay in L2 while every four rows of a pass; all K
 * rows of a tall b would not): whole tiles of NN_VECS vectors, the next tile's columns prefetched into L2 meanwhile
 * as in `tiles`, then single vectors, then the last columns (fewer than a vector) by axpy4 */
#define NN_ROWS 256
void tiles_nn(const float *a, int64_t lda, int64_t m_rows, int64_t k, const float *b, int64_t ldb, int64_t n,
                     int add, float *y, int64_t ldy) {
    const int64_t w = NN_VECS * VL, whole = n / w * w;
    for (int64_t k0 = 0; k0 < k; k0 += NN_ROWS) {
        int64_t kc = k - k0 < NN_ROWS ? k - k0 : NN_ROWS, c = 0;
        for (; c < whole; c += w) {
            const float *next = c + w < whole ? b + k0 * ldb + c + w : k0 + kc < k ? b + (k0 + kc) * ldb : NULL;
            TILE_NN_ROWS(NN_VECS, next);
        }
        for (; c + VL <= n; c += VL) TILE_NN_ROWS(1, NULL);
    }
    int64_t c = n / VL * VL;
    if (c < n) {
        if (!add)
            for (int64_t m = 0; m < m_rows; m++)
                for (int64_t j = c; j < n; j++) y[m * ldy + j] = 0.0f;
        for (int64_t i = 0; i < k; i += 4) {
            int nr = k - i < 4 ? (int)(k - i) : 4;
            for (int64_t m = 0; m < m_rows; m++)
                axpy4(y + m * ldy + c, a + m * lda + i, b + i * ldb + c, nr, n - c, ldb);
        }
    }
}

/* y (M, O) = x (M, I) @ (q (O, I) int8 * scale (O)).T for a few rows: each weight row is read from memory once, 32
 * weights at a time widened to float32 and multiplied into up to four rows of x, so the rows share the widening.
 * The activations stay float32 (no bfloat16 rounding) and the scale is applied once per output. The threads split
 * the output rows. With H heads, H such products in one call, each head its own x (M, I), weights and y (M, O):
 * x (H, M, I), q (H, O, I), scale (H, O), y (H, M, O). */
typedef struct {
    const float *x, *scale;
    const int8_t *q;
    float *y;
    int64_t m_rows, n_in, n_out, heads;  /* n_out: a head's */
} int8_gemv_args;

static void int8_gemv_job(void *p, int ith, int nth) {
    const int8_gemv_args *a = p;
    int64_t lo, hi, n_in = a->n_in, n_out = a->n_out;
    share(a->heads * n_out, ith, nth, 16, &lo, &hi);
    if (a->m_rows == 1) {
        for (int64_t r = lo; r < hi; r++) {
            int64_t h = r / n_out;
            a->y[h * n_out + r % n_out] = dot1(a->x + h * n_in, a->q + r * n_in, n_in) * a->scale[r];
        }
        return;
    }
    for (int64_t r = lo; r < hi;) {  /* each head's share of rows in one run of tiles */
        int64_t h = r / n_out, o0 = r % n_out, o1 = hi - h * n_out < n_out ? hi - h * n_out : n_out;
        tiles_int8(a->x + h * a->m_rows * n_in, a->m_rows, n_in, a->q + h * n_out * n_in, a->scale + h * n_out, n_in,
                   o0, o1, a->y + h * a->m_rows * n_out, n_out);
        r += o1 - o0;
    }
}

API void seekmoe_int8_gemv(const float *x, const int8_t *q, const float *scale, float *y, int64_t m_rows, int64_t n_in,
                           int64_t n_out) {
    int8_gemv_args a = {x, scale, q, y, m_rows, n_in, n_out, 1};
    pool_run(int8_gemv_job, &a, parts_of(n_out, 16), n_in * n_out);
}

API void seekmoe_int8_gemv_heads(const float *x, const int8_t *q, const float *scale, float *y, int64_t heads,
                                 int64_t m_rows, int64_t n_in, int64_t n_out) {
    int8_gemv_args a = {x, scale, q, y, m_rows, n_in, n_out, heads};
    pool_run(int8_gemv_job, &a, parts_of(heads * n_out, 16), heads * n_in * n_out);
}

/* One token through its chosen SwiGLU experts, added into y (D): for each chosen expert k,
 * y += weight[k] * down_k(silu(gate_k x) * up_k x), the whole routed-expert block of a decode step in one call
 * instead of a handful of PyTorch calls per expert. float32: the threads split each expert's F hidden units, so none
 * waits for another inside a call: thread t computes its units of gate and up, then adds their share of the down
 * projection into an output of its own (thread 0's is y), and the caller sums those; `h` is scratch for F floats.
 * int8 and int4: two passes (below); `h` is scratch for K * F floats, the chosen experts' hidden units. */
typedef struct {
    const float *x;
    int64_t d, f;
    const void *gate_up, *down;  /* int8 or float32 */
    const float *gate_up_scale, *down_scale;  /* int8 only */
    const int64_t *idx;
    const float *weight;
    int64_t k;
    float *y, *h, *ys;  /* ys: (threads - 1, D) outputs of threads 1.. */
} experts_args;

static float *own_output(const experts_args *a, int ith) {
    if (ith == 0) return a->y;
    float *y = a->ys + (ith - 1) * a->d;
    for (int64_t o = 0; o < a->d; o++) y[o] = 0.0f;
    return y;
}

/* int8: gate and up stacked as (2F, D) rows per expert and one float32 scale per row, down (D, F) with one per row.
 * Two passes over the pool, as the int4 kernel: the threads split the chosen experts' hidden units (into h, (K, F)),
 * then the output rows, each reading whole down rows (a pass that split the hidden units for both cut every down
 * row into a piece per part). */
static void int8_experts_up_job(void *p, int part, int parts) {
    const experts_args *a = p;
    int64_t lo, hi, d = a->d, f = a->f;
    share(f, part, parts, 32, &lo, &hi);
    for (int64_t j = 0; j < a->k && lo < hi; j++) {
        const int8_t *gu = (const int8_t *)a->gate_up + a->idx[j] * 2 * f * d;
        const float *gus = a->gate_up_scale + a->idx[j] * 2 * f;
        float *h = a->h + j * f;
        for (int64_t o = lo; o < hi; o++) {
            float g = dot1(a->x, gu + o * d, d) * gus[o], u = dot1(a->x, gu + (f + o) * d, d) * gus[f + o];
            h[o] = g / (1.0f + expf(-g)) * u;  /* silu(gate) * up */
        }
    }
}

static void int8_experts_down_job(void *p, int part, int parts) {
    const experts_args *a = p;
    int64_t lo, hi, d = a->d, f = a->f;
    share(d, part, parts, 16, &lo, &hi);
    for (int64_t j = 0; j < a->k; j++) {  /* expert by expert: the part's rows of each are one sequential read */
        const int8_t *dn = (const int8_t *)a->down + a->idx[j] * d * f;
        const float *dns = a->down_scale + a->idx[j] * d;
        for (int64_t o = lo; o < hi; o++) a->y[o] += a->weight[j] * (dot1(a->h + j * f, dn + o * f, f) * dns[o]);
    }
}

/* the float32 call: check the indices, run the job, add the threads' outputs into y */
static int run_experts(job_fn job, experts_args *a, int64_t n_experts, int64_t bytes, int64_t align) {
    for (int64_t j = 0; j < a->k; j++)
        if (a->idx[j] < 0 || a->idx[j] >= n_experts) return -1;
    int parts = parts_of(a->f, align);
    float *ys = parts > 1 ? malloc(sizeof(float) * (parts - 1) * a->d) : NULL;
    a->ys = ys;
    int nth = pool_run(job, a, parts, ys == NULL ? 0 : bytes);  /* no scratch (one part, or no memory): alone */
    for (int t = 1; t < nth; t++)
        for (int64_t o = 0; o < a->d; o++) a->y[o] += ys[(t - 1) * a->d + o];
    free(ys);
    return 0;
}

/* Returns -1 (and adds nothing) if an expert index is out of range. */
API int seekmoe_int8_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                             const float *gate_up_scale, const int8_t *down, const float *down_scale,
                             const int64_t *idx, const float *weight, int64_t k, float *y, float *h) {
    for (int64_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= n_experts) return -1;
    experts_args a = {x, d, f, gate_up, down, gate_up_scale, down_scale, idx, weight, k, y, h, NULL};
    pool_run(int8_experts_up_job, &a, parts_of(f, 32), 2 * f * d * k);
    pool_run(int8_experts_down_job, &a, parts_of(d, 16), f * d * k);
    return 0;
}

/* ---- float32 experts ------------------------------------------------------------------------------------------ */

/* float32: gate and up (E, 2F, D) row by row, the down projection stored transposed as (E, F, D) so that it
 * streams as scaled rows added into y */
static void f32_experts_job(void *p, int ith, int nth) {
    const experts_args *a = p;
    int64_t lo, hi, d = a->d, f = a->f;
    share(f, ith, nth, 4, &lo, &hi);
    float *y = own_output(a, ith), *h = a->h;
    for (int64_t j = 0; j < a->k && lo < hi; j++) {
        const float *gu = (const float *)a->gate_up + a->idx[j] * 2 * f * d;
        const float *dt = (const float *)a->down + a->idx[j] * f * d;
        for (int64_t o = lo; o < hi; o++) {
            float g = dot1_f32(a->x, gu + o * d, d), u = dot1_f32(a->x, gu + (f + o) * d, d);
            h[o] = g / (1.0f + expf(-g)) * u * a->weight[j];
        }
        for (int64_t o = lo; o < hi; o += 4) axpy4(y, h + o, dt + o * d, hi - o < 4 ? (int)(hi - o) : 4, d, d);
    }
}

/* As seekmoe_int8_experts for float32 weights, the down projection stored transposed (E, F, D). */
API int seekmoe_f32_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                            const float *down_t, const int64_t *idx, const float *weight, int64_t k, float *y,
                            float *h) {
    experts_args a = {x, d, f, gate_up, down_t, NULL, NULL, idx, weight, k, y, h, NULL};
    return run_experts(f32_experts_job, &a, n_experts, 12 * f * d * k, 4);
}


/* ---- many tokens through their experts ----------------------------------------------------------------------- */
/* A decode step of several sequences: the (token, expert) pairs sorted by expert, x (P, D) their rows, expert
 * used[u] owning rows [start[u], start[u + 1]). out (P, D) = weight[p] * SwiGLU_e(x[p]) for each pair: every used
 * expert's weights are read once for all its rows (up to four rows share each weight row read), where torch runs a
 * handful of small matrix products per expert on one thread. One part per used expert: the threads take experts
 * as they finish the last. */
typedef struct {
    const float *x;
    int64_t d, f;
    const void *gate_up, *down;  /* int8 or float32 */
    const float *gate_up_scale, *down_scale;  /* int8 only */
    const int64_t *used, *start;
    int64_t n_used;
    const float *weight;
    float *out;
    atomic_int failed;  /* a part found no memory */
} grouped_args;

/* h (M, 2F) -> act (M, F): silu(gate) * up, times each row's weight where given */
void swiglu_act(const float *h, int64_t m_rows, int64_t f, const float *weight, float *act) {
    for (int64_t m = 0; m < m_rows; m++)
        for (int64_t o = 0; o < f; o++) {
            float g = h[m * 2 * f + o];
            act[m * f + o] = g / (1.0f + expf(-g)) * h[m * 2 * f + f + o] * (weight != NULL ? weight[m] : 1.0f);
        }
}

static void f32_grouped_job(void *p, int part, int parts) {
    grouped_args *a = p;
    int64_t d = a->d, f = a->f;
    for (int64_t u = part; u < a->n_used; u += parts) {
        int64_t e = a->used[u], r0 = a->start[u], r1 = a->start[u + 1], m_rows = r1 - r0;
        float *h = malloc(sizeof(float) * m_rows * 3 * f);
        if (h == NULL) {
            atomic_store(&a->failed, 1);
            return;
        }
        tiles_f32(a->x + r0 * d, m_rows, d, (const float *)a->gate_up + e * 2 * f * d, d, 0, 2 * f, NULL, h, 2 * f);
        float *act = h + m_rows * 2 * f;
        swiglu_act(h, m_rows, f, a->weight + r0, act);
        tiles_nn(act, f, m_rows, f, (const float *)a->down + e * f * d, d, d, 0, a->out + r0 * d, d);  /* (F, D) */
        free(h);
    }
}

static void int8_grouped_job(void *p, int part, int parts) {
    grouped_args *a = p;
    int64_t d = a->d, f = a->f;
    for (int64_t u = part; u < a->n_used; u += parts) {
        int64_t e = a->used[u], r0 = a->start[u], r1 = a->start[u + 1], m_rows = r1 - r0;
        float *h = malloc(sizeof(float) * m_rows * 3 * f);
        if (h == NULL) {
            atomic_store(&a->failed, 1);
            return;
        }
        tiles_int8(a->x + r0 * d, m_rows, d, (const int8_t *)a->gate_up + e * 2 * f * d, a->gate_up_scale + e * 2 * f,
                   d, 0, 2 * f, h, 2 * f);
        float *act = h + m_rows * 2 * f;
        swiglu_act(h, m_rows, f, a->weight + r0, act);
        tiles_int8(act, m_rows, f, (const int8_t *)a->down + e * d * f, a->down_scale + e * d, f, 0, d,
                   a->out + r0 * d, d);  /* down (D, F) */
        free(h);
    }
}

/* Returns -1 if an expert index is out of range or the rows are not in order, -2 when out of memory. */
static int run_grouped(job_fn job, grouped_args *a, int64_t n_experts, int64_t bytes_per_expert) {
    for (int64_t u = 0; u < a->n_used; u++)
        if (a->used[u] < 0 || a->used[u] >= n_experts || a->start[u] > a->start[u + 1] || a->start[0] != 0)
            return -1;
    pool_run(job, a, (int)(a->n_used < MAX_PARTS ? a->n_used : MAX_PARTS), bytes_per_expert * a->n_used);
    return atomic_load(&a->failed) ? -2 : 0;
}

API int seekmoe_f32_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                                    const float *down_t, const int64_t *used, const int64_t *start, int64_t n_used,
                                    const float *weight, float *out) {
    grouped_args a = {x, d, f, gate_up, down_t, NULL, NULL, used, start, n_used, weight, out, 0};
    return run_grouped(f32_grouped_job, &a, n_experts, 12 * f * d);
}

API int seekmoe_int8_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                                     const float *gate_up_scale, const int8_t *down, const float *down_scale,
                                     const int64_t *used, const int64_t *start, int64_t n_used, const float *weight,
                                     float *out) {
    grouped_args a = {x, d, f, gate_up, down, gate_up_scale, down_scale, used, start, n_used, weight, out, 0};
    return run_grouped(int8_grouped_job, &a, n_experts, 3 * f * d);
}

/* y (M, O) = x (M, I) W.T for a few float32 rows: W stored (O, I) row by row (transposed == 0) or as (I, O)
 * (transposed == 1), streamed once the way it is stored: dot products of rows (the threads split the rows), or
 * scaled rows added into y (the threads split the columns). */
typedef struct {
    const float *x, *w;
    float *y;
    int64_t m_rows, n_in, n_out;
} f32_gemv_args;

static void f32_rows_job(void *p, int ith, int nth) {
    const f32_gemv_args *a = p;
    int64_t lo, hi, n_in = a->n_in, n_out = a->n_out;
    share(n_out, ith, nth, 16, &lo, &hi);
    if (a->m_rows == 1) {
        for (int64_t o = lo; o < hi; o++) a->y[o] = dot1_f32(a->x, a->w + o * n_in, n_in);
        return;
    }
    tiles_f32(a->x, a->m_rows, n_in, a->w, n_in, lo, hi, NULL, a->y, n_out);
}

static void f32_columns_job(void *p, int ith, int nth) {
    const f32_gemv_args *a = p;
    int64_t lo, hi, n_in = a->n_in, n_out = a->n_out;
    share(n_out, ith, nth, 16, &lo, &hi);  /* whole cache lines of each weight row */
    if (a->m_rows > 1) {
        tiles_nn(a->x, n_in, a->m_rows, n_in, a->w + lo, n_out, hi - lo, 0, a->y + lo, n_out);
        return;
    }
    for (int64_t m = 0; m < a->m_rows; m++)
        for (int64_t o = lo; o < hi; o++) a->y[m * n_out + o] = 0.0f;
    for (int64_t i = 0; i < n_in && lo < hi; i += 4) {  /* four weight rows, then every row of x against them */
        int nr = n_in - i < 4 ? (int)(n_in - i) : 4;
        for (int64_t m = 0; m < a->m_rows; m++)
            axpy4(a->y + m * n_out + lo, a->x + m * n_in + i, a->w + i * n_out + lo, nr, hi - lo, n_out);
    }
}

API void seekmoe_f32_gemv(const float *x, const float *w, float *y, int64_t m_rows, int64_t n_in, int64_t n_out,
                          int transposed) {
    f32_gemv_args a = {x, w, y, m_rows, n_in, n_out};
    pool_run(transposed ? f32_columns_job : f32_rows_job, &a, parts_of(n_out, 16), 4 * n_in * n_out);
}
