#include "kernels.h"

/* ---- the thread pool ------------------------------------------------------------------------------------------ */
/* A job is cut into parts that threads claim one at a time, the caller among them, so no thread waits for another
 * to start: on a busy machine a worker may not run for milliseconds, and its parts are then done by the caller
 * (llama.cpp's pool hands out chunks the same way). Between jobs the workers spin for SPIN_NS (the next product of
 * a decode step comes within microseconds; waking a sleeping thread takes tens), yielding the core now and then,
 * then sleep on a condition variable, so an idle server costs no CPU. A second caller finding the pool busy
 * (another thread of the process) runs its job alone. */

#define MAX_THREADS 64
#define SPIN_NS 2000000  /* 2 ms: longer than the Python between two products of a decode step */
#define MIN_SPLIT_BYTES 32768  /* less weight than this is read faster by one thread than handed out */

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
API int seekmoe_pool_start(int n) {
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

int pool_run(job_fn fn, void *args, int parts, int64_t bytes) {
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

int pool_threads(void) { return pool.n; }

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

API double seekmoe_stream_sum(const float *buf, int64_t n) {
    stream_args a = {.buf = buf, .n = n};
    int nth = pool_run(stream_job, &a, parts_of(n, 1 << 16), 4 * n);
    double s = 0.0;
    for (int t = 0; t < nth; t++) s += a.part[t];
    return s;
}
