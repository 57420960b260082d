/* threadpool.c — see threadpool.h. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* Waiting: pause-spin SPIN_PAUSE iterations (a decode step issues hundreds of runs a
 * few microseconds apart), then keep polling with sched_yield() so that a thread of
 * ours that was preempted (more runnable threads than cores: another process, or a
 * busy machine) gets the core back instead of waiting out our time slice; idle workers
 * sleep on the condition variable after SPIN_ITERS polls. */
#define SPIN_PAUSE 2000
#define SPIN_ITERS 20000

static inline void backoff(int spins) {
    if (spins < SPIN_PAUSE) CPU_RELAX();
    else sched_yield();
}

typedef struct {
    kvc_pool *pool;
    int ith;
    pthread_t thread;
} worker;

struct kvc_pool {
    int n;                 /* threads including the caller */
    worker *workers;       /* (n - 1) */
    _Atomic unsigned gen;  /* incremented once per run */
    _Atomic int n_done;    /* workers finished with the current run */
    _Atomic int n_sleeping;
    _Atomic int quit;
    kvc_task_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *worker_main(void *p) {
    worker *w = p;
    kvc_pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&pool->gen)) == seen && !atomic_load(&pool->quit)) {
            if (++spins < SPIN_ITERS) {
                backoff(spins);
                continue;
            }
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->quit))
                pthread_cond_wait(&pool->cv, &pool->mu);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mu);
            spins = 0;
        }
        if (atomic_load(&pool->quit)) return NULL;
        seen = g;
        pool->fn(pool->arg, w->ith, pool->n);
        atomic_fetch_add(&pool->n_done, 1);
    }
}

int kvc_pool_create(int n_threads, kvc_pool **out) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 512) return 1;
    kvc_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return 2;
    pool->n = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->workers = calloc(n_threads > 1 ? n_threads - 1 : 1, sizeof(worker));
    if (!pool->workers) {
        free(pool);
        return 2;
    }
    for (int i = 1; i < n_threads; i++) {
        worker *w = &pool->workers[i - 1];
        w->pool = pool;
        w->ith = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pool->n = i; /* free() joins the ones started */
            kvc_pool_free(pool);
            return 2;
        }
    }
    *out = pool;
    return 0;
}

void kvc_pool_free(kvc_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->quit, 1);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->workers[i - 1].thread, NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->workers);
    free(pool);
}

int kvc_pool_size(const kvc_pool *pool) { return pool->n; }

void kvc_pool_run(kvc_pool *pool, kvc_task_fn fn, void *arg) {
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->n_done, 0);
    atomic_fetch_add(&pool->gen, 1); /* publishes fn/arg (seq_cst) */
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    fn(arg, 0, pool->n);
    for (int spins = 0; atomic_load(&pool->n_done) < pool->n - 1; spins += spins < SPIN_PAUSE) backoff(spins);
}
