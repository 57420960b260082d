/* model.h — a loaded model: its dimensions and views of its weights in the
 * caller's mapping (model.c validates them). Contexts: backend.h.
 *
 * Shapes: E = n_embd, F = n_ff, V = n_vocab, H = n_head, Hk = n_head_kv,
 * D = head_dim, T = tokens in the current batch, C = n_ctx. */
#ifndef KVC_MODEL_H
#define KVC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kvc.h"

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
    float *q_norm, *k_norm;      /* (D) QK-norm gains or NULL */
    float *q_scale, *k_scale;    /* (H*D) (Hk*D) per-row scales of the q and k products, or NULL (kvc.h) */
    float *attn_post_norm, *ffn_post_norm; /* (E) or NULL (both or neither) */
    tview wq, wk, wv, wo, gate, up, down;
    int window;                  /* 0: global; else keys at distance < window */
    int rope_set;                /* row of kvc_model.rope_freqs this layer rotates with */
} layer_w;

#define KVC_MAX_ROPE_SETS 4 /* distinct per-layer RoPE tables (Gemma 3: global and local) */

struct kvc_model {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    float rms_eps;
    int rope_pairing;
    int activation;     /* KVC_ACT_* */
    float embd_scale, attn_scale;
    int n_rope;         /* distinct RoPE tables, 1..KVC_MAX_ROPE_SETS */
    float *rope_freqs;  /* (n_rope, D/2) */
    int *rope_src;      /* (n_layer, D/2) frequency index of each pair (identity unless folded) */
    float *output_norm; /* (E) */
    tview tok_embd, output;
    layer_w *layers;    /* (n_layer) */
};

#endif
