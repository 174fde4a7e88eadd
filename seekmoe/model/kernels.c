/* CPU kernels (AVX2 + FMA, built with AVX-512 too where the CPU has it; the int4 products with AVX512-VNNI):
 * matrix-vector products that stream weights row by row with independent accumulators, in float32 or int8 widened
 * to float32; several rows at once in tiles (four rows against four weight rows, the next weight rows prefetched);
 * one token's SwiGLU experts in one call, or tokens grouped by expert (a decode step of several sequences, or a
 * prompt); MLA's absorbed attention over the latent cache, float32 or int8; a whole decode layer in one call. Each
 * call splits its weight rows over a pool of threads that lives as long as the process: one core streams only part
 * of what the memory gives (a decode step is bound by how fast weights stream), and OpenMP's wake-up per call costs
 * more than a small product takes.
 * Built by seekmoe/model/kernels.py with the system C compiler; any build failure falls back to torch.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the thread pool ------------------------------------------------------------------------------------------ */
/* A job is cut into parts that threads claim one at a time, the caller among them, so no thread waits for another
 * to start: on a busy machine a worker may not run for milliseconds, and its parts are then done by the caller
 * (llama.cpp's pool hands out chunks the same way). Between jobs the workers spin for SPIN_NS (the next product of
 * a decode step comes within microseconds; waking a sleeping thread takes tens), yielding the core now and then,
 * then sleep on a condition variable, so an idle server costs no CPU. A second caller finding the pool busy
 * (another thread of the process) runs its job alone. */

#define MAX_THREADS 64
#define MAX_PARTS 512
#define SPIN_NS 2000000  /* 2 ms: longer than the Python between two products of a decode step */
#define MIN_SPLIT_BYTES 32768  /* less weight than this is read faster by one thread than handed out */

typedef void (*job_fn)(void *args, int part, int parts);

static struct {
    int n;  /* threads, the caller included; 1 until seekmoe_pool_start */
    pthread_t tid[MAX_THREADS];
    /* the job's generation (high 32 bits) and the next part to claim (low 32): a claim is a compare-and-swap on
     * both, so a thread that fell behind can never claim a part of a later job */
    _Atomic uint64_t claim;
    atomic_int done;  /* parts finished */
    atomic_int sleeping;  /* workers waiting on `wake` */
    job_fn fn;  /* the job: written by the caller only once every part of the previous one is done */
    void *args;
    int parts;
    pthread_mutex_t busy, mu;
    pthread_cond_t wake;
} pool = {.n = 1, .busy = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline uint32_t generation(uint64_t claim) { return (uint32_t)(claim >> 32); }

/* claim and run parts of job `gen` until none is left or a later job has begun */
static void run_parts(uint32_t gen) {
    uint64_t cur = atomic_load(&pool.claim);
    if (generation(cur) != gen) return;
    /* the job as it was when `cur` was read; should a later job have replaced it since, the swap below fails */
    job_fn fn = pool.fn;
    void *args = pool.args;
    uint32_t parts = (uint32_t)pool.parts;
    while (generation(cur) == gen && (uint32_t)cur < parts) {
        if (atomic_compare_exchange_weak(&pool.claim, &cur, cur + 1)) {
            fn(args, (int)(uint32_t)cur, (int)parts);
            atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
            cur = atomic_load(&pool.claim);
        }
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint32_t seen = generation(atomic_load(&pool.claim));
    for (;;) {
        int64_t since = now_ns();
        for (int spins = 1; generation(atomic_load_explicit(&pool.claim, memory_order_acquire)) == seen; spins++) {
            _mm_pause();
            if (spins % 1024 != 0) continue;
            sched_yield();  /* a busy machine: let a thread that has work run on this core */
            if (now_ns() - since > SPIN_NS) {
                pthread_mutex_lock(&pool.mu);
                atomic_fetch_add(&pool.sleeping, 1);  /* seq_cst: the caller reads it after opening a job */
                while (generation(atomic_load(&pool.claim)) == seen) pthread_cond_wait(&pool.wake, &pool.mu);
                atomic_fetch_sub(&pool.sleeping, 1);
                pthread_mutex_unlock(&pool.mu);
            }
        }
        seen = generation(atomic_load_explicit(&pool.claim, memory_order_acquire));
        run_parts(seen);
    }
    return NULL;
}

/* a forked child has the caller's thread only: it runs every job alone */
static void after_fork_child(void) {
    pool.n = 1;
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
}

/* Start n - 1 workers (once; n is capped at MAX_THREADS). Returns the pool's size. */
int seekmoe_pool_start(int n) {
    pthread_mutex_lock(&pool.busy);
    if (pool.n == 1 && n > 1) {
        static int registered;
        if (!registered) registered = pthread_atfork(NULL, NULL, after_fork_child) == 0;
        if (n > MAX_THREADS) n = MAX_THREADS;
        int started = 1;
        while (started < n && pthread_create(&pool.tid[started], NULL, worker, NULL) == 0) started++;
        pool.n = started;  /* fewer threads than asked if some could not start */
    }
    int size = pool.n;
    pthread_mutex_unlock(&pool.busy);
    return size;
}

/* fn(args, part, parts) for every part of a job, on the pool's threads (the caller's among them); returns when all
 * are done, and the count of parts. A job reading fewer than MIN_SPLIT_BYTES of weight, or one that finds the pool
 * busy, runs on the caller alone as one part. */
static int pool_run(job_fn fn, void *args, int parts, int64_t bytes) {
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    if (pool.n == 1 || parts <= 1 || bytes < MIN_SPLIT_BYTES || pthread_mutex_trylock(&pool.busy) != 0) {
        fn(args, 0, 1);
        return 1;
    }
    uint32_t gen = generation(atomic_load(&pool.claim)) + 1;
    pool.fn = fn;
    pool.args = args;
    pool.parts = parts;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.claim, (uint64_t)gen << 32);  /* seq_cst: opened before the read of `sleeping` */
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mu);
    }
    run_parts(gen);
    for (int spins = 1; atomic_load_explicit(&pool.done, memory_order_acquire) < parts; spins++) {
        _mm_pause();  /* a worker is finishing a part it claimed */
        if (spins % 1024 == 0) sched_yield();
    }
    pthread_mutex_unlock(&pool.busy);
    return parts;
}

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
    int64_t parts = pool.n == 1 ? 1 : 4 * pool.n, most = n / grain;
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

static void tiles_f32(const float *x, int64_t m_rows, int64_t ldx, const float *w, int64_t k, int64_t o0,
                      int64_t o1, float *y, int64_t ldy) {
    tiles(x, m_rows, ldx, w, 0, NULL, k, o0, o1, NULL, y, ldy);
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
static void tiles_nn(const float *a, int64_t lda, int64_t m_rows, int64_t k, const float *b, int64_t ldb, int64_t n,
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

void seekmoe_int8_gemv(const float *x, const int8_t *q, const float *scale, float *y, int64_t m_rows, int64_t n_in,
                       int64_t n_out) {
    int8_gemv_args a = {x, scale, q, y, m_rows, n_in, n_out, 1};
    pool_run(int8_gemv_job, &a, parts_of(n_out, 16), n_in * n_out);
}

void seekmoe_int8_gemv_heads(const float *x, const int8_t *q, const float *scale, float *y, int64_t heads,
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
int seekmoe_int8_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
                         const float *gate_up_scale, const int8_t *down, const float *down_scale, const int64_t *idx,
                         const float *weight, int64_t k, float *y, float *h) {
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
int seekmoe_f32_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                        const float *down_t, const int64_t *idx, const float *weight, int64_t k, float *y, float *h) {
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
static void swiglu_act(const float *h, int64_t m_rows, int64_t f, const float *weight, float *act) {
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
        tiles_f32(a->x + r0 * d, m_rows, d, (const float *)a->gate_up + e * 2 * f * d, d, 0, 2 * f, h, 2 * f);
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

int seekmoe_f32_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const float *gate_up,
                                const float *down_t, const int64_t *used, const int64_t *start, int64_t n_used,
                                const float *weight, float *out) {
    grouped_args a = {x, d, f, gate_up, down_t, NULL, NULL, used, start, n_used, weight, out, 0};
    return run_grouped(f32_grouped_job, &a, n_experts, 12 * f * d);
}

int seekmoe_int8_experts_grouped(const float *x, int64_t d, int64_t f, int64_t n_experts, const int8_t *gate_up,
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
    tiles_f32(a->x, a->m_rows, n_in, a->w, n_in, lo, hi, a->y, n_out);
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

void seekmoe_f32_gemv(const float *x, const float *w, float *y, int64_t m_rows, int64_t n_in, int64_t n_out,
                      int transposed) {
    f32_gemv_args a = {x, w, y, m_rows, n_in, n_out};
    pool_run(transposed ? f32_columns_job : f32_rows_job, &a, parts_of(n_out, 16), 4 * n_in * n_out);
}

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
#define LATENT_META 4

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
void seekmoe_quantize_latent(const float *x, int64_t n, int64_t w, int64_t lat, int8_t *q, float *meta) {
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
        acc = dot_u8s8(acc, _mm256_loadu_si256((const __m256i *)(qu + j)), _mm256_loadu_si256((const __m256i *)(k + j)));
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
        tiles(q, nh, w, kv + slots[t] * w, 0, NULL, w, 0, e - t, e < n ? kv + slots[e] * w : NULL, sc + t, n);
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
static int attend(const float *q, const float *kv, const int8_t *kv8, const float *meta, int64_t n_rows,
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
    int64_t hg = n_chunks >= pool.n ? 1 : (pairs < pool.n ? pairs : pool.n);
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

int seekmoe_mla_attend(const float *q, const float *kv, int64_t n_rows, int64_t width, int64_t lat, int64_t heads,
                       const int64_t *slots, const int64_t *offsets, int64_t n_seqs, float scale, float *out) {
    return attend(q, kv, NULL, NULL, n_rows, width, lat, heads, slots, offsets, n_seqs, scale, out);
}

/* the same over the int8 cache: kv8 (n_rows, W) int8, meta (n_rows, LATENT_META) */
int seekmoe_mla_attend_int8(const float *q, const int8_t *kv8, const float *meta, int64_t n_rows, int64_t width,
                            int64_t lat, int64_t heads, const int64_t *slots, const int64_t *offsets, int64_t n_seqs,
                            float scale, float *out) {
    return attend(q, NULL, kv8, meta, n_rows, width, lat, heads, slots, offsets, n_seqs, scale, out);
}

/* The sum of n floats read by every thread of the pool, each its share: how fast the machine streams memory with
 * all its cores (bench/decode.py's floor). */
typedef struct {
    const float *buf;
    int64_t n;
    double part[MAX_PARTS];
} stream_args;

static void stream_job(void *p, int ith, int nth) {
    stream_args *a = p;
    int64_t lo, hi;
    share(a->n, ith, nth, 64, &lo, &hi);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = lo;
    for (; i + 32 <= hi; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a->buf + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a->buf + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a->buf + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a->buf + i + 24));
    }
    double s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < hi; i++) s += a->buf[i];
    a->part[ith] = s;
}

double seekmoe_stream_sum(const float *buf, int64_t n) {
    stream_args a = {.buf = buf, .n = n};
    int nth = pool_run(stream_job, &a, parts_of(n, 1 << 16), 4 * n);
    double s = 0.0;
    for (int t = 0; t < nth; t++) s += a.part[t];
    return s;
}

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
int seekmoe_int4_gemv(const float *x, const uint8_t *q, const uint16_t *scale, float *y, int64_t m_rows,
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
int seekmoe_int4_dequant(const uint8_t *q, const uint16_t *scale, float *w, int64_t rows, int64_t n_in,
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

int seekmoe_int4_experts(const float *x, int64_t d, int64_t f, int64_t n_experts, const uint8_t *gate_up,
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

/* ---- one decode layer in one call ----------------------------------------------------------------------------- */
/* One sequence's one new token through a whole layer: norm, attention input, rope, the cache row, absorbed
 * attention over the latent cache, output projection, norm, router and experts, each by the products above. A decode
 * step of `tiny` is a chain of tiny products, and at V2-Lite's shape the PyTorch calls around the products (about
 * fifty a layer) cost a fifth of the step; here a layer is one call. The arithmetic is the runner's, step for step
 * (engine/runner.py), in float32. */

typedef struct {  /* y (O) = W x (I) */
    int32_t kind;  /* PROJ_* */
    int32_t group;  /* int4: inputs per scale */
    int64_t n_out, n_in;
    const void *w;  /* f32 (O, I) rows, or (I, O) when PROJ_F32_T; int8 (O, I); int4 (O, I / 2) */
    const void *scale;  /* int8: (O,) float32; int4: (O, I / G) float16 */
} proj_desc;

enum { PROJ_F32 = 0, PROJ_F32_T = 1, PROJ_INT8 = 2, PROJ_INT4 = 3 };

typedef struct {  /* SwiGLU experts as the experts kernels take them; n_experts 0: none */
    int32_t kind;  /* PROJ_F32 (down stored transposed), PROJ_INT8 or PROJ_INT4 */
    int32_t group;
    int64_t n_experts, f;
    const void *gate_up, *gate_up_scale, *down, *down_scale;
} experts_desc;

typedef struct {
    int64_t d, heads, nope, rope, v, lat;  /* model width; per head: nope, rope and value widths; latent width */
    float eps, kv_eps, softmax_scale, routed_scale;
    int32_t interleave;  /* rope pairs (x0, x1), (x2, x3), ... rather than halves */
    int32_t int8_heads;  /* the absorbed W_UK, W_UV as int8 rows (else float32 views of kv_b_proj) */
    const float *input_norm, *kv_norm, *post_norm;  /* RMSNorm weights */
    proj_desc attn_in;  /* D -> [q (H * (nope + rope)) | c_KV (lat) | k_rope (rope)] */
    proj_desc o_proj;  /* H * v -> D */
    const void *uk, *uk_scale, *uv, *uv_scale;  /* int8: (H, lat, nope) + (H, lat), (H, v, lat) + (H, v); float32:
                                                   uk = kv_b_proj (H, nope + v, lat), the others NULL */
    const float *gate;  /* router (E, D) float32, or NULL for a dense MLP */
    const float *gate_bias;  /* noaux_tc's selection bias (E,), or NULL */
    int64_t top_k;
    int32_t sigmoid, norm_topk;
    experts_desc routed, shared;  /* shared: the shared experts or the dense MLP as one expert */
    int64_t q_lora;  /* low-rank queries: attn_in gives q_a (q_lora wide), normed by q_norm, then q_b; 0: none */
    float q_eps;
    const float *q_norm;
    proj_desc q_b;
    int64_t n_group, topk_group;  /* group-limited routing: only the topk_group best of n_group groups; 1, 1: none */
    int32_t group_top2;  /* a group's score: the sum of its best two (noaux_tc, masked to -inf), else its best (to 0) */
} layer_desc;

static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *y) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

/* x (R) rotated in place by the position's cos, sin (R / 2), laid out as model.apply_rope does: the pairs'
 * first members, then their second */
static void rope(float *x, const float *cos, const float *sin, int64_t r, int interleave) {
    float t[r];
    int64_t half = r / 2;
    for (int64_t j = 0; j < half; j++) {
        float x1 = interleave ? x[2 * j] : x[j], x2 = interleave ? x[2 * j + 1] : x[j + half];
        t[j] = x1 * cos[j] - x2 * sin[j];
        t[j + half] = x2 * cos[j] + x1 * sin[j];
    }
    for (int64_t j = 0; j < r; j++) x[j] = t[j];
}

/* y (B, O) = x (B, I) W.T */
static int proj(const proj_desc *p, const float *x, int64_t b, float *y) {
    switch (p->kind) {
    case PROJ_F32:
    case PROJ_F32_T:
        seekmoe_f32_gemv(x, p->w, y, b, p->n_in, p->n_out, p->kind == PROJ_F32_T);
        return 0;
    case PROJ_INT8:
        seekmoe_int8_gemv(x, p->w, p->scale, y, b, p->n_in, p->n_out);
        return 0;
    case PROJ_INT4:
        return seekmoe_int4_gemv(x, p->w, p->scale, y, b, p->n_in, p->n_out, p->group) ? -2 : 0;
    }
    return -1;
}

/* y (D) += the experts' output for x: K chosen ones with their weights, or the one expert with weight 1 */
static int experts(const experts_desc *e, const float *x, int64_t d, const int64_t *idx, const float *weight,
                   int64_t k, float *y) {
    float *h = malloc(sizeof(float) * k * e->f);
    if (h == NULL) return -2;
    int status = 0;
    if (e->kind == PROJ_INT4)
        status = seekmoe_int4_experts(x, d, e->f, e->n_experts, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                      e->group, idx, weight, k, y, h);
    else if (e->kind == PROJ_INT8)
        status = seekmoe_int8_experts(x, d, e->f, e->n_experts, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                      idx, weight, k, y, h);
    else
        status = seekmoe_f32_experts(x, d, e->f, e->n_experts, e->gate_up, e->down, idx, weight, k, y, h);
    free(h);
    return status;
}

/* int4 pairs sorted by expert (as experts_grouped takes them): out (P, D) = weight[p] * SwiGLU_e(x[p]), expert by
 * expert, each of its two products over all its rows in one int4_gemv (the threads split the weight rows), as the
 * runner's Int4RoutedExperts.expert runs them. h: scratch for P * 3F floats. */
static int int4_grouped(const experts_desc *e, const float *xs, int64_t d, const int64_t *used, const int64_t *start,
                        int64_t n_used, const float *ws, float *h, float *out) {
    int64_t f = e->f, g = e->group;
    for (int64_t u = 0; u < n_used; u++) {
        int64_t ex = used[u], r0 = start[u], m_rows = start[u + 1] - r0;
        float *act = h + m_rows * 2 * f;
        proj_desc gate_up = {PROJ_INT4, (int32_t)g, 2 * f, d, (const uint8_t *)e->gate_up + ex * 2 * f * (d / 2),
                             (const uint16_t *)e->gate_up_scale + ex * 2 * f * (d / g)};
        proj_desc down = {PROJ_INT4, (int32_t)g, d, f, (const uint8_t *)e->down + ex * d * (f / 2),
                          (const uint16_t *)e->down_scale + ex * d * (f / g)};
        int status = proj(&gate_up, xs + r0 * d, m_rows, h);
        if (status) return status;
        swiglu_act(h, m_rows, f, NULL, act);
        if ((status = proj(&down, act, m_rows, out + r0 * d))) return status;
        for (int64_t m = r0; m < r0 + m_rows; m++)
            for (int64_t j = 0; j < d; j++) out[m * d + j] *= ws[m];
    }
    return 0;
}

/* y (B, D) += each row's routed experts (idx, weight (B, K)). One row: the experts kernel. Several: the (row,
 * expert) pairs sorted by expert (counting sort; stable, so a row's experts are added in the order of their index,
 * as the runner's index_add adds them), every used expert read once for all its rows (experts_grouped; int4,
 * int4_grouped). */
static int experts_rows(const experts_desc *e, const float *x, int64_t b, int64_t d, const int64_t *idx,
                        const float *weight, int64_t k, float *y) {
    if (b == 1) return experts(e, x, d, idx, weight, k, y);
    int status = 0;
    int64_t ne = e->n_experts, np = b * k;
    int64_t *ints = malloc(sizeof(int64_t) * (3 * ne + 1 + np));
    float *xs = malloc(sizeof(float) * np * (2 * d + 1 + (e->kind == PROJ_INT4 ? 3 * e->f : 0)));
    if (ints == NULL || xs == NULL) {
        free(ints);
        free(xs);
        return -2;
    }
    int64_t *fill = ints, *used = fill + ne, *start = used + ne, *row_of = start + ne + 1;
    float *out = xs + np * d, *ws = out + np * d;
    int64_t n_used = 0, at = 0;
    for (int64_t i = 0; i < ne; i++) fill[i] = 0;
    for (int64_t p = 0; p < np; p++) fill[idx[p]]++;
    for (int64_t i = 0; i < ne; i++) {
        int64_t count = fill[i];
        if (count == 0) continue;
        used[n_used] = i;
        start[n_used++] = at;
        fill[i] = at;  /* from here on: where expert i's next pair goes */
        at += count;
    }
    start[n_used] = np;
    for (int64_t p = 0; p < np; p++) {
        int64_t q = fill[idx[p]]++;
        row_of[q] = p / k;
        ws[q] = weight[p];
        for (int64_t j = 0; j < d; j++) xs[q * d + j] = x[(p / k) * d + j];
    }
    if (e->kind == PROJ_INT4)
        status = int4_grouped(e, xs, d, used, start, n_used, ws, ws + np, out);
    else if (e->kind == PROJ_INT8)
        status = seekmoe_int8_experts_grouped(xs, d, e->f, ne, e->gate_up, e->gate_up_scale, e->down, e->down_scale,
                                              used, start, n_used, ws, out);
    else
        status = seekmoe_f32_experts_grouped(xs, d, e->f, ne, e->gate_up, e->down, used, start, n_used, ws, out);
    if (!status)
        for (int64_t q = 0; q < np; q++)
            for (int64_t j = 0; j < d; j++) y[row_of[q] * d + j] += out[q * d + j];
    free(ints);
    free(xs);
    return status;
}

/* y (B, D) += one SwiGLU (the shared experts or a dense MLP, stored as one expert) over B rows. One row: the
 * experts kernel. Several: its products over all rows (the threads split the weight rows, where a grouped call
 * would give the one expert to one thread), silu(gate) * up between them. */
static int mlp_rows(const experts_desc *e, const float *x, int64_t b, int64_t d, float *y) {
    static const int64_t first = 0;
    static const float whole = 1.0f;
    if (b == 1) return experts(e, x, d, &first, &whole, 1, y);
    int64_t f = e->f;
    float *h = malloc(sizeof(float) * b * (3 * f + d));
    if (h == NULL) return -2;
    float *act = h + b * 2 * f, *out = act + b * f;
    /* a float32 down projection is stored transposed (F, D) */
    proj_desc gate_up = {e->kind, e->group, 2 * f, d, e->gate_up, e->gate_up_scale};
    proj_desc down = {e->kind == PROJ_F32 ? PROJ_F32_T : e->kind, e->group, d, f, e->down, e->down_scale};
    int status = proj(&gate_up, x, b, h);
    if (!status) {
        swiglu_act(h, b, f, NULL, act);
        status = proj(&down, act, b, out);
    }
    if (!status)
        for (int64_t i = 0; i < b * d; i++) y[i] += out[i];
    free(h);
    return status;
}

/* float32 absorbed products per head, from kv_b_proj (H, nope + v, lat), for M rows: the queries q_nope (H, M, nope)
 * into latent space (H, M, lat) as sums of W_UK's rows, or the latent outputs (H, M, lat) to values (H, M, v) as
 * dot products with W_UV's rows. The threads split the heads. */
typedef struct {
    const float *x, *w;
    float *y;
    int64_t heads, m_rows, nope, v, lat, values;
} heads_args;

static void f32_heads_job(void *p, int part, int parts) {
    const heads_args *a = p;
    int64_t n = a->nope, lat = a->lat, m_rows = a->m_rows;
    for (int64_t h = part; h < a->heads; h += parts) {  /* a call too small to split runs as one part */
        const float *w = a->w + h * (n + a->v) * lat;
        if (a->values && m_rows == 1) {
            for (int64_t j = 0; j < a->v; j++) a->y[h * a->v + j] = dot1_f32(a->x + h * lat, w + (n + j) * lat, lat);
            continue;
        }
        if (a->values) {
            tiles_f32(a->x + h * m_rows * lat, m_rows, lat, w + n * lat, lat, 0, a->v, a->y + h * m_rows * a->v, a->v);
            continue;
        }
        for (int64_t m = 0; m < m_rows; m++) {
            float *y = a->y + (h * m_rows + m) * lat;
            const float *x = a->x + (h * m_rows + m) * n;
            for (int64_t j = 0; j < lat; j++) y[j] = 0.0f;
            for (int64_t j = 0; j < n; j += 4) axpy4(y, x + j, w + j * lat, n - j < 4 ? (int)(n - j) : 4, lat, lat);
        }
    }
}

/* the K best of n values (or fewer where n < K), ties to the lowest index: K passes, K being small */
static void top_k(const float *c, int64_t n, int64_t k, int64_t *idx) {
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < n; i++) {
            int taken = 0;
            for (int64_t m = 0; m < j; m++) taken |= idx[m] == i;
            if (!taken && (best < 0 || c[i] > c[best])) best = i;
        }
        idx[j] = best;
    }
}

/* the router's K experts for a row: scores (E), given as the logits gate . h, by softmax or sigmoid; the K best
 * (plus noaux_tc's bias, which steers the choice but not the weights; within the best groups where routing is
 * group-limited), weights normalised over the K where asked, then scaled (model.Gate). choice: scratch for E. */
static void route(const layer_desc *L, float *scores, float *choice, int64_t *idx, float *weight) {
    int64_t e = L->routed.n_experts, k = L->top_k;
    if (L->sigmoid) {
        for (int64_t i = 0; i < e; i++) scores[i] = 1.0f / (1.0f + expf(-scores[i]));
    } else {
        float m = -INFINITY, z = 0.0f;
        for (int64_t i = 0; i < e; i++) m = scores[i] > m ? scores[i] : m;
        for (int64_t i = 0; i < e; i++) z += (scores[i] = expf(scores[i] - m));
        for (int64_t i = 0; i < e; i++) scores[i] /= z;
    }
    for (int64_t i = 0; i < e; i++) choice[i] = scores[i] + (L->gate_bias ? L->gate_bias[i] : 0.0f);
    if (L->n_group > 1) {
        int64_t g = L->n_group, per = e / g, kept[g];
        float best[g];
        for (int64_t i = 0; i < g; i++) {
            const float *c = choice + i * per;
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int64_t j = 0; j < per; j++) {
                if (c[j] > b1) b2 = b1, b1 = c[j];
                else if (c[j] > b2) b2 = c[j];
            }
            best[i] = L->group_top2 ? b1 + b2 : b1;
        }
        top_k(best, g, L->topk_group, kept);
        for (int64_t i = 0; i < g; i++) {
            int keep = 0;
            for (int64_t j = 0; j < L->topk_group; j++) keep |= kept[j] == i;
            if (!keep)
                for (int64_t j = 0; j < per; j++) choice[i * per + j] = L->group_top2 ? -INFINITY : 0.0f;
        }
    }
    top_k(choice, e, k, idx);
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++) sum += weight[j] = scores[idx[j]];
    for (int64_t j = 0; j < k; j++)
        weight[j] = (L->norm_topk && k > 1 ? weight[j] / (sum + 1e-20f) : weight[j]) * L->routed_scale;
}

/* B sequences' new tokens through the layer L describes. Returns 0; -1 for a bad descriptor, slot or offsets, -2
 * without memory. x (B, D) is updated in place; kv is the layer's cache (kv_rows, lat + rope), or NULL and kv8, meta
 * its int8 cache (kv_rows, lat + rope), (kv_rows, LATENT_META); cos, sin (B, rope / 2)
 * are the tokens' positions'; sequence i's cache rows are slots[offsets[i]..offsets[i + 1]) of the n_slots, in
 * order, its new token's last, whose row is written; counts (E) int64, or NULL, gains one for each chosen expert.
 * One row runs as it always has (the experts kernel per token); several share each product (tiles), and their
 * routed experts are grouped by expert. */
int seekmoe_decode_layer(const layer_desc *L, float *x, int64_t b, float *kv, int8_t *kv8, float *meta,
                         int64_t kv_rows, const float *cos, const float *sin, const int64_t *slots, int64_t n_slots,
                         const int64_t *offsets, int64_t *counts) {
    int64_t d = L->d, H = L->heads, nope = L->nope, r = L->rope, lat = L->lat, w = lat + r, v = L->v, hr = r / 2;
    int64_t qw = H * (nope + r), k = L->gate ? L->top_k : 0, e = L->routed.n_experts;
    int64_t qa = L->q_lora ? L->q_lora : qw;  /* attn_in's query part */
    if (b < 1 || k > e || L->attn_in.n_out != qa + w
        || L->attn_in.n_in != d || L->o_proj.n_in != H * v || L->o_proj.n_out != d || r % 2 || r > 256
        || (L->q_lora && (L->q_b.n_in != L->q_lora || L->q_b.n_out != qw))
        || (L->n_group > 1 && (e % L->n_group || L->topk_group < 1 || L->topk_group > L->n_group || L->n_group > 256)))
        return -1;
    if (offsets[0] != 0 || offsets[b] != n_slots || (kv == NULL) == (kv8 == NULL) || (kv8 != NULL && meta == NULL))
        return -1;
    for (int64_t i = 0; i < b; i++)
        if (offsets[i + 1] <= offsets[i]) return -1;  /* every sequence has its new token's row */
    for (int64_t i = 0; i < n_slots; i++)  /* before anything is written */
        if (slots[i] < 0 || slots[i] >= kv_rows) return -1;
    /* per row: h (D), y (D), t (attn_in's outputs), the queries (H (nope + R)), q_a (q_lora), q_nope (H nope),
     * q_lat (H lat), q (H w), o and o by head (H lat each), values and values by head (H v each), the router's
     * scores and choice (E each), weights (K), the cache row (w, for the int8 cache) */
    int64_t per = 2 * d + qa + w + qw + qa + H * nope + H * lat + H * w + 2 * H * lat + 2 * H * v + 2 * e + k + w;
    float *buf = malloc(sizeof(float) * (b * per + 1));
    int64_t *idx = malloc(sizeof(int64_t) * (b * k + 1));
    if (buf == NULL || idx == NULL) {
        free(buf);
        free(idx);
        return -2;
    }
    float *h = buf, *y = h + b * d, *t = y + b * d, *tq = t + b * (qa + w), *qa_rows = tq + b * qw;
    float *qn = qa_rows + b * qa, *ql = qn + b * H * nope, *q = ql + b * H * lat, *o = q + b * H * w;
    float *oh = o + b * H * lat, *vh = oh + b * H * lat, *vals = vh + b * H * v, *scores = vals + b * H * v;
    float *choice = scores + b * e, *weight = choice + b * e, *rows = weight + b * k;
    int status;

    /* attention: [q | c_KV | k_rope] from the normed input; each cache row [norm(c_KV) | rope(k_rope)] */
    for (int64_t i = 0; i < b; i++) rms_norm(x + i * d, L->input_norm, d, L->eps, h + i * d);
    if ((status = proj(&L->attn_in, h, b, t))) goto done;
    for (int64_t i = 0; i < b; i++) {
        const float *ti = t + i * (qa + w);
        int64_t slot = slots[offsets[i + 1] - 1];
        float *row = kv != NULL ? kv + slot * w : rows + i * w;
        rms_norm(ti + qa, L->kv_norm, lat, L->kv_eps, row);
        for (int64_t j = 0; j < r; j++) row[lat + j] = ti[qa + lat + j];
        rope(row + lat, cos + i * hr, sin + i * hr, r, L->interleave);
        if (kv8 != NULL) seekmoe_quantize_latent(row, 1, w, lat, kv8 + slot * w, meta + slot * LATENT_META);
        if (L->q_lora)
            rms_norm(ti, L->q_norm, qa, L->q_eps, qa_rows + i * qa);  /* the low-rank query, normed */
        else
            for (int64_t j = 0; j < qw; j++) tq[i * qw + j] = ti[j];
    }
    if (L->q_lora && (status = proj(&L->q_b, qa_rows, b, tq))) goto done;  /* up to every head's */
    for (int64_t i = 0; i < b; i++)
        for (int64_t hd = 0; hd < H; hd++) {  /* per head: q_nope aside (by head), q_rope rotated into q's last R */
            const float *th = tq + i * qw + hd * (nope + r);
            float *qr = q + (i * H + hd) * w + lat;
            for (int64_t j = 0; j < nope; j++) qn[(hd * b + i) * nope + j] = th[j];
            for (int64_t j = 0; j < r; j++) qr[j] = th[nope + j];
            rope(qr, cos + i * hr, sin + i * hr, r, L->interleave);
        }
    /* absorbed: the queries in latent space, attention over the cached rows, the latent outputs to values */
    if (L->int8_heads) {
        seekmoe_int8_gemv_heads(qn, L->uk, L->uk_scale, ql, H, b, nope, lat);
    } else {
        heads_args a = {qn, L->uk, ql, H, b, nope, v, lat, 0};
        pool_run(f32_heads_job, &a, (int)H, 4 * H * nope * lat);
    }
    for (int64_t hd = 0; hd < H; hd++)
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < lat; j++) q[(i * H + hd) * w + j] = ql[(hd * b + i) * lat + j];
    if ((status = attend(q, kv, kv8, meta, kv_rows, w, lat, H, slots, offsets, b, L->softmax_scale, o))) goto done;
    for (int64_t i = 0; i < b; i++)  /* (B, H, lat) -> (H, B, lat) */
        for (int64_t hd = 0; hd < H; hd++)
            for (int64_t j = 0; j < lat; j++) oh[(hd * b + i) * lat + j] = o[(i * H + hd) * lat + j];
    if (L->int8_heads) {
        seekmoe_int8_gemv_heads(oh, L->uv, L->uv_scale, vh, H, b, lat, v);
    } else {
        heads_args a = {oh, L->uk, vh, H, b, nope, v, lat, 1};
        pool_run(f32_heads_job, &a, (int)H, 4 * H * v * lat);
    }
    for (int64_t hd = 0; hd < H; hd++)  /* (H, B, v) -> (B, H v) */
        for (int64_t i = 0; i < b; i++)
            for (int64_t j = 0; j < v; j++) vals[(i * H + hd) * v + j] = vh[(hd * b + i) * v + j];
    if ((status = proj(&L->o_proj, vals, b, h))) goto done;
    for (int64_t i = 0; i < b * d; i++) x[i] += h[i];

    /* the MLP: routed experts and shared ones (or a dense MLP as one expert) added together */
    for (int64_t i = 0; i < b; i++) rms_norm(x + i * d, L->post_norm, d, L->eps, h + i * d);
    for (int64_t i = 0; i < b * d; i++) y[i] = 0.0f;
    if (k > 0) {
        seekmoe_f32_gemv(h, L->gate, scores, b, d, e, 0);  /* the router's logits, every row at once */
        for (int64_t i = 0; i < b; i++) route(L, scores + i * e, choice + i * e, idx + i * k, weight + i * k);
        if (counts != NULL)
            for (int64_t j = 0; j < b * k; j++) counts[idx[j]]++;
        if ((status = experts_rows(&L->routed, h, b, d, idx, weight, k, y))) goto done;
    }
    if (L->shared.n_experts > 0 && (status = mlp_rows(&L->shared, h, b, d, y))) goto done;
    for (int64_t i = 0; i < b * d; i++) x[i] += y[i];
done:
    free(buf);
    free(idx);
    return status;
}
