/* model.h — internal structures of a loaded model and an inference context.
 *
 * Shapes: E = n_embd, F = n_ff, V = n_vocab, H = n_head, Hk = n_head_kv,
 * D = head_dim, T = tokens in the current batch, C = n_ctx. */
#ifndef KVC_MODEL_H
#define KVC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "kvc.h"
#include "threadpool.h"

typedef struct {
    int type;            /* kvc_type */
    long long ne0, ne1;  /* row length, rows */
    size_t row_bytes;
    const uint8_t *data; /* (ne1) rows of row_bytes; NULL if absent */
    int vec_dot_type;    /* type activations are quantized to for this weight */
} tview;

typedef struct {
    float *attn_norm, *ffn_norm; /* (E) owned copies */
    float *bq, *bk, *bv, *bo;    /* (H*D) (Hk*D) (Hk*D) (E) or NULL */
    tview wq, wk, wv, wo, gate, up, down;
} layer_w;

struct kvc_model {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    float rms_eps;
    int rope_pairing;
    float *rope_freqs;  /* (D/2) */
    int *rope_src;      /* (n_layer, D/2) frequency index of each pair (identity unless folded) */
    float *output_norm; /* (E) */
    tview tok_embd, output;
    layer_w *layers;    /* (n_layer) */
};

/* One layer's cache: rows of D values in the cache type, per KV head.
 * Row (h, pos) of K starts at k + ((size_t)h * C + pos) * k_row_bytes. */
typedef struct {
    uint8_t *k, *v;
} kv_layer;

/* Per-thread attention scratch. */
typedef struct {
    float *scores; /* (nq, C), nq = n_rep × the token block of kv_block_tokens() */
    float *scores2; /* (nq, C) centering corrections */
    uint8_t *qq;   /* (nq) query rows in K's vec_dot type */
    float *vrow;   /* (D) one dequantized V row */
    float *qp;     /* (nq, D) permuted query / rotated-domain V accumulators */
    float *corr;   /* (nq, D/2, 2) per-pair centering coefficients A, B */
    tq_query *tq;  /* nq prepared TurboQuant queries, packed (tq.h) */
} attn_scratch;

struct kvc_context {
    kvc_model *m;
    kvc_pool *pool;
    const kvc_kernel_table *kern; /* the kernels of this CPU, chosen once (cpu/dispatch.c) */
    int n_ctx, n_batch, n_past, n_threads, n_layer;
    int type_k, type_v, k_vec_dot_type;
    size_t *k_rb, *v_rb; /* (n_layer) bytes of one cached head row, per layer */
    kv_layer *kv;        /* (n_layer) */
    tq_layout *tq_k, *tq_v; /* (n_layer) when the cache type is KVC_CACHE_TQ */
    int tq_scale_mode;
    float *enc_tmp;      /* (4*D) encode scratch (caches are written by thread 0 only) */
    /* attention sinks: positions < n_sink kept exactly besides their TurboQuant rows */
    int n_sink;
    uint16_t *k_sink;    /* fp16 (n_layer, Hk, n_sink, D) the cached key (centered, file channel order), TQ K only */
    uint16_t *v_sink;    /* fp16 (n_layer, Hk, n_sink, D) value − its decoded TQ row, TQ V only */
    /* K mean-centering */
    int k_center, k_center_pairs, k_mean_ready, k_mean_folded;
    float *v_mean;       /* (n_layer, Hk, D) or NULL */
    float *cap_q, *cap_k, *cap_v; /* calibration capture (kvc_set_capture) or NULL */
    float *k_mean;       /* (n_layer, Hk, D) pre-RoPE, zero outside centered pairs */
    int *k_pairs;        /* (n_layer, Hk, D/2) centered pair indices, -1 after the last */
    float *rope_all;     /* (C, D/2, 2) cos, sin of every cached position */
    float *x, *xn;       /* (T, E) residual stream, normed input */
    float *q, *k, *v;    /* (T, H*D), (T, Hk*D), (T, Hk*D) */
    float *att;          /* (T, H*D) attention output */
    float *gate, *up;    /* (T, F) */
    float *rope_cs;      /* (T, D/2, 2) cos, sin per token and pair */
    uint8_t *aq[3];      /* quantized activations, one per distinct vec_dot type */
    size_t aq_bytes;
    attn_scratch *scratch; /* (n_threads) */
    char err[256];
};

#endif
