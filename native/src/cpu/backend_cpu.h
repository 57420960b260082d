/* backend_cpu.h — the CPU backend's state of one context (cpu_ctx, behind
 * kvc_context.be) and the functions its files share: backend_cpu.c (the
 * kvc_backend_ops: create, eval, eval_multi, free), forward.c (the forward
 * pass), kv_cache.c (the caches and attention over them), kv_recent.c (the
 * exact rows of sinks and the recent window), kv_basis.c (a TurboQuant K layer's
 * calibrated basis), rope.c (RoPE tables and rotation).
 *
 * Shapes as model.h: E = n_embd, F = n_ff, H = n_head, Hk = n_head_kv,
 * D = head_dim, T = tokens in the current batch, C = n_ctx. */
#ifndef KVC_BACKEND_CPU_H
#define KVC_BACKEND_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kernels.h"
#include "threadpool.h"

/* One layer's cache: rows of D values in the cache type, per KV head.
 * Row (h, pos) of K starts at k + ((size_t)h * C + pos) * k_row_bytes. */
typedef struct {
    uint8_t *k, *v;
} kv_layer;

/* Per-thread attention scratch. */
typedef struct {
    float *scores;  /* (nq, C), nq = n_rep × the token block of kv_block_tokens() */
    uint8_t *qq;    /* (nq) query rows in K's vec_dot type */
    float *vrow;    /* (D) one dequantized V row */
    float *qp;      /* (nq, D) permuted query / rotated-domain V accumulators */
    float *corr;    /* (nq, D) scratch: kv_basis_query's, an exact row's, the centering coefficients */
    tq_query *tq;   /* nq prepared TurboQuant queries, packed (tq.h) */
    float *flash;   /* standard caches (cpu_ctx.flash): kv_attend's tiles, one allocation (kv_cache.c) */
} attn_scratch;

typedef struct cpu_ctx {
    kvc_context *ctx;             /* the context this is the state of: sizes, n_past, capture */
    const kvc_model *m;           /* = ctx->m */
    const kvc_kernel_table *kern; /* the kernels of this CPU, chosen once (cpu/dispatch.c) */
    kvc_pool *pool;
    int n_layer;
    int type_k, type_v, k_vec_dot_type;
    int flash;              /* attention by key tiles with online softmax (kv_attend): standard K and V, no centering */
    size_t *k_rb, *v_rb;    /* (n_layer) bytes of one cached head row, per layer */
    /* (n_layer) rows held per KV head and the position of row 0: n_ctx and 0, except in
     * sliding-window layers, which keep a window's worth (kv_cache.c: kv_make_room) */
    int *kv_cap, *kv_base;
    kv_layer *kv;           /* (n_layer) */
    tq_layout *tq_k, *tq_v; /* (n_layer) when the cache type is KVC_CACHE_TQ */
    int tq_scale_mode, tq_v_scale_mode; /* K's and V's encode scales (kvc_context_params) */
    float *enc_tmp;         /* (n_threads, 4*D) encode scratch, one slice per thread of pool (kv_store) */
    /* attention sinks: positions < n_sink kept exactly besides their TurboQuant rows */
    int n_sink;
    uint16_t *k_sink;       /* fp16 (n_layer, Hk, n_sink, D) the cached key (centered, file channel order), TQ K only */
    uint16_t *v_sink;       /* fp16 (n_layer, Hk, n_sink, D) value − its decoded TQ row, TQ V only */
    /* recent exact window (kv_recent.c): exact rows of positions before the batch in a ring of
     * rec_rows = n_recent + n_rewind rows (at most n_ctx), position pos at slot
     * pos % rec_rows, positions rec_lo .. n_past - 1 held; the batch's own rows in a buffer */
    int n_recent, rec_rows, rec_lo;
    uint16_t *k_rec;        /* fp16 (n_layer, Hk, rec_rows, D) as k_sink, TQ K only */
    uint16_t *v_rec;        /* fp16 (n_layer, Hk, rec_rows, D) as v_sink, TQ V only */
    uint16_t *k_rec_batch, *v_rec_batch; /* fp16 (n_batch, Hk, D) the batch's rows of the layer being computed */
    /* K mean-centering */
    int k_center, k_center_pairs, k_mean_ready, k_mean_folded;
    float *v_mean;          /* (n_layer, Hk, D) or NULL */
    float *k_mean;          /* (n_layer, Hk, D) pre-RoPE, zero outside centered pairs */
    int *k_pairs;           /* (n_layer, Hk, D/2) centered pair indices, -1 after the last */
    float *rope_cols;       /* (n_rope, D, C) per RoPE table, per column of its (D/2, 2) cos, sin rows: that
                             * value at every cached position (the K-centering correction reads a pair's
                             * cos and sin over a run of keys as two contiguous rows) */
    float *x, *xn;          /* (T, E) residual stream, normed input */
    float *q, *k, *v;       /* (T, H*D), (T, Hk*D), (T, Hk*D) */
    float *att;             /* (T, H*D) attention output */
    float *gate, *up;       /* (T, F) */
    float *rope_cs;         /* (n_rope, n_batch, D/2, 2) cos, sin per token and pair, per RoPE table */
    uint8_t *aq[3];         /* quantized activations, one per distinct vec_dot type */
    size_t aq_bytes;
    float *wrows;           /* float_products (kvc.h): (n_threads, 16, wrow_len) weight rows expanded to
                             * float for the products with unrounded activations; else NULL */
    size_t wrow_len;
    attn_scratch *scratch;  /* (n_threads) */
} cpu_ctx;

/* Rows [row, row + T) of a batch belong to context c. */
typedef struct {
    cpu_ctx *c;
    int row, T;
    /* attention work items of this segment: tb query tokens per item, n_blocks items
     * per KV head, numbered from item0 */
    int tb, n_blocks, item0;
} segment;

/* forward.c: evaluate the batch tokens (T) whose rows the segments partition, in
 * order, and append each segment's rows to its context (advancing its n_past). The
 * lead's buffers (n_batch >= T) and pool run every weight product. logits:
 * (T - first, V) for rows first..T-1, or NULL. */
void cpu_forward(cpu_ctx *lead, segment *segs, int n_seg, const int *tokens, int T, float *logits, int first);
/* rope.c: cs (T, D/2, 2) = cos and sin of pos * freq for positions pos0 .. pos0+T-1 (any sign) and
 * each pair's angle column of RoPE table set (angles in double). */
void rope_table(const kvc_model *m, int set, int pos0, int T, float *cs);
/* rope.c: rotate x (T, n_heads, D) in place; pair j uses column src[j] of cs (src: (D/2), the
 * layer's permuted θ table in the folded layout, else the identity). */
void rope_apply(const kvc_model *m, const int *src, int T, int n_heads, float *x, const float *cs);

#endif /* KVC_BACKEND_CPU_H */
