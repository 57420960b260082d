/* threadpool.h — a persistent pool of worker threads for the forward pass.
 *
 * kvc_pool_run(pool, fn, arg) runs fn(arg, ith, nth) on nth threads (the caller
 * is thread 0) and returns when all have finished. Workers spin briefly
 * between runs (a decode step issues hundreds of runs) and then sleep on a
 * condition variable, so an idle pool costs no CPU. */
#ifndef KVC_THREADPOOL_H
#define KVC_THREADPOOL_H

typedef void (*kvc_task_fn)(void *arg, int ith, int nth);
typedef struct kvc_pool kvc_pool;

/* Returns 0 on success; n_threads >= 1. */
int kvc_pool_create(int n_threads, kvc_pool **out);
void kvc_pool_free(kvc_pool *pool);
int kvc_pool_size(const kvc_pool *pool);
void kvc_pool_run(kvc_pool *pool, kvc_task_fn fn, void *arg);

/* Split [0, n) into nth nearly equal ranges, aligned to `align` items. */
static inline void kvc_split(long long n, int ith, int nth, long long align, long long *begin, long long *end) {
    long long blocks = (n + align - 1) / align;
    long long per = blocks / nth, extra = blocks % nth;
    long long b0 = ith * per + (ith < extra ? ith : extra);
    long long b1 = b0 + per + (ith < extra ? 1 : 0);
    *begin = b0 * align < n ? b0 * align : n;
    *end = b1 * align < n ? b1 * align : n;
}

#endif
