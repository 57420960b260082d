/* backend.h — the seam between the context half of the C ABI (context.c) and
 * what runs a model: a backend is a table of operations on a kvc_context, and
 * owns everything it allocates for one (KV caches, scratch, threads or device
 * queues) behind ctx->be. context.c validates every argument and keeps the
 * state every backend shares (model, sizes, position, capture buffers, error
 * message) in struct kvc_context; a backend sees only checked calls.
 *
 * Backends: kvc_backend_cpu (cpu/backend_cpu.c: the kernel tables of
 * cpu/dispatch.c, a thread pool) and, on macOS, kvc_backend_metal
 * (metal/backend_metal.m, docs/design.md §9); context.c picks one per context
 * (environment KVC_BACKEND=auto|cpu|metal; auto, the default, is Metal where it
 * runs the context and the CPU otherwise). */
#ifndef KVC_BACKEND_H
#define KVC_BACKEND_H

#include "model.h"

typedef struct kvc_backend_ops {
    const char *name;
    /* Allocate ctx->be for ctx->m and p (sizes already in ctx). On failure ctx->be
     * may be partly built: free is still called. Returns a kvc status, message in err. */
    int (*create)(kvc_context *ctx, const kvc_context_params *p, char *err, int err_len);
    /* Evaluate n >= 1 valid tokens at positions ctx->n_past.. (they fit in n_ctx)
     * and advance ctx->n_past; logits as kvc_eval's. Returns a kvc status. */
    int (*eval)(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits);
    /* One token per context, ctxs[0] leading (checked as kvc_eval_multi documents). */
    int (*eval_multi)(kvc_context **ctxs, int n, const int *tokens, float *logits);
    long long (*kv_bytes_per_token)(const kvc_context *ctx); /* all layers, K and V */
    long long (*kv_bytes)(const kvc_context *ctx);           /* the cache rows held, all layers, K and V */
    int (*rewind_floor)(const kvc_context *ctx);             /* smallest n_past > 0 the cache can go back to */
    void (*free)(kvc_context *ctx);                             /* ctx->be and what it owns */
} kvc_backend_ops;

/* V's TurboQuant encode scale (kvc.h: tq_v_scale_mode 0 = K's, else 1 + the mode); checked by context.c. */
static inline int kvc_v_scale_mode(const kvc_context_params *p) {
    return p->tq_v_scale_mode ? p->tq_v_scale_mode - 1 : p->tq_scale_mode;
}

/* What every backend shares; the ABI's opaque kvc_context. */
struct kvc_context {
    kvc_model *m;
    const kvc_backend_ops *backend;
    void *be;                     /* the backend's state (cpu/backend_cpu.h: cpu_ctx) */
    int n_ctx;                    /* tokens the cache holds */
    int n_batch;                  /* max tokens per forward batch (<= n_ctx) */
    int n_threads;
    int n_past;                   /* tokens in the cache */
    float *cap_q, *cap_k, *cap_v; /* calibration capture (kvc_set_capture) or NULL */
    char err[256];                /* message of the last failed call */
};

extern const kvc_backend_ops kvc_backend_cpu;
#if defined(__APPLE__)
extern const kvc_backend_ops kvc_backend_metal; /* metal/backend_metal.m (macOS builds) */
#endif

#endif /* KVC_BACKEND_H */
