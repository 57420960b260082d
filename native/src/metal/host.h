/* host.h — the Metal backend's host logic in portable C: what a context holds,
 * what context creation checks, and cpu/forward.c's forward pass as a list of
 * kernel dispatches, written against a small device interface (kvm_device)
 * instead of the Metal API. backend_metal.m implements kvm_device with Metal
 * (macOS); tests/metal/sim.cpp implements it with the Linux shim, running the
 * same kernels in-process, so this file's whole forward pass is compared with
 * the CPU backend's logits on Linux (tests/test_metal.py).
 *
 * Header-only (static functions): the portable build compiles no Metal code.
 * Compiles as C (the host) and as C++ (the simulator).
 *
 * Runs: weights F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K (copied into device
 * buffers at context creation); f16 or TurboQuant K and V caches (sinks, K
 * centering with a given mean, V mean, permutation, QJL); QK-norm,
 * post-norms, sliding windows (every position stays cached), SwiGLU/GeGLU,
 * embedding scale. Refuses at creation (KVC_ERR_UNSUPPORTED): f32/q8_0/q4_0
 * caches, Q4_1/Q5_0 weights, K centering from the first batch's mean,
 * head_dim > 256, per-row scales of the q/k products (K→Q smoothing); at eval: calibration capture. Embedding rows are looked up
 * on the CPU (device buffers are shared memory). */
#ifndef KVC_METAL_HOST_H
#define KVC_METAL_HOST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels.h"
#include "util.h"
#include "metal/kvc_metal.h"
#include "metal/tq_tables.h"

enum {
    KVM_P_RMS_NORM, KVM_P_ROPE, KVM_P_SWIGLU, KVM_P_GEGLU, KVM_P_ADD, KVM_P_SCALE,
    KVM_P_MV_F32, KVM_P_MV_F16, KVM_P_MV_BF16, KVM_P_MV_Q8_0, KVM_P_MV_Q4_0, KVM_P_MV_Q4_K, KVM_P_MV_Q6_K,
    KVM_P_TQ_STORE, KVM_P_F16_STORE, KVM_P_ATTENTION, KVM_P_COUNT
};
static const char *const KVM_PIPE_NAMES[KVM_P_COUNT] = {
    "kvm_rms_norm", "kvm_rope", "kvm_swiglu", "kvm_geglu", "kvm_add", "kvm_scale",
    "kvm_matvec_f32", "kvm_matvec_f16", "kvm_matvec_bf16", "kvm_matvec_q8_0", "kvm_matvec_q4_0",
    "kvm_matvec_q4_K", "kvm_matvec_q6_K", "kvm_tq_store", "kvm_f16_store", "kvm_attention"};
/* threads per threadgroup each pipeline is dispatched with (below) */
static const int KVM_PIPE_THREADS[KVM_P_COUNT] = {
    256, 64, 256, 256, 256, 256, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG,
    32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, KVM_STORE_THREADS, 64, KVM_ATTN_THREADS};

/* A device: buffers in memory the CPU can also address, and one batch of dispatches at a
 * time that run in order, each seeing the previous one's writes. */
typedef void *kvm_buf;
typedef struct {
    kvm_buf (*alloc)(size_t n, const void *init); /* n bytes (zeroed if init is NULL), or NULL */
    void *(*contents)(kvm_buf b);
    void (*release)(kvm_buf b); /* NULL is allowed */
    size_t max_tg_mem;          /* bytes of threadgroup memory a threadgroup may use */
    void *(*begin)(char *err, int err_len);
    void (*pipe)(void *enc, int pipe);
    void (*bytes)(void *enc, int index, const void *p, size_t n);
    void (*buffer)(void *enc, int index, kvm_buf b, size_t offset);
    void (*tg_mem)(void *enc, int index, size_t n);
    void (*dispatch)(void *enc, int gx, int gy, int gz, int threads);
    int (*end)(void *enc, char *err, int err_len); /* run what was encoded and wait: a kvc status */
} kvm_device;

enum { KVM_WQ, KVM_WK, KVM_WV, KVM_WO, KVM_WGATE, KVM_WUP, KVM_WDOWN, KVM_NW };

typedef struct {
    kvm_buf w[KVM_NW];
    kvm_buf attn_norm, ffn_norm, bq, bk, bv, bo, q_norm, k_norm, attn_post_norm, ffn_post_norm;
    kvm_buf kc, vc, ks, vs;     /* cache rows (Hk, n_ctx); sinks (Hk, n_sink + 1, D) fp16 */
    kvm_buf kft, kit, vft, vit; /* TurboQuant tables */
    kvm_tq_layout LK, LV;
    int k_rb, v_rb;             /* bytes of a cached head row */
    kvm_buf k_mean, k_pairs, v_mean, rope_src;
} kvm_layer;

typedef struct {
    const kvm_device *dev;
    kvc_context *ctx;
    const kvc_model *m;
    const kvc_kernel_table *kern; /* the embedding lookup on the CPU */
    kvm_layer *L;                 /* (n_layer) */
    int n_layer;                  /* = m->n_layer, kept for kvm_free: the model may be freed first */
    kvm_buf out_norm, out_w, dummy;
    kvm_buf x, xn, q, k, v, att, gate, up, logits, scores, cs, rope_all;
    int k_tq, v_tq, n_sink, k_center, k_center_sub, scale_mode;
    int t_attn; /* query tokens per attention dispatch: scores scratch (t_attn * H, n_ctx) */
} kvm_ctx;

static int kvm_mv_pipe(int type) {
    switch (type) {
    case KVM_TYPE_F32: return KVM_P_MV_F32;
    case KVM_TYPE_F16: return KVM_P_MV_F16;
    case KVM_TYPE_BF16: return KVM_P_MV_BF16;
    case KVM_TYPE_Q8_0: return KVM_P_MV_Q8_0;
    case KVM_TYPE_Q4_0: return KVM_P_MV_Q4_0;
    case KVM_TYPE_Q4_K: return KVM_P_MV_Q4_K;
    case KVM_TYPE_Q6_K: return KVM_P_MV_Q6_K;
    default: return -1;
    }
}

/* kv_cache.c's select_pairs: keep the max_pairs pairs of largest mean energy, zero the rest */
static void kvm_select_pairs(const kvc_model *m, int max_pairs, float *mean, int *pairs) {
    const int P = m->head_dim / 2;
    const int n = max_pairs > 0 && max_pairs < P ? max_pairs : P;
    float energy[KVM_TQ_MAX_DIM / 2];
    int order[KVM_TQ_MAX_DIM / 2];
    for (int j = 0; j < P; j++) {
        const int a = m->rope_pairing == KVC_ROPE_NEOX ? j : 2 * j, b = m->rope_pairing == KVC_ROPE_NEOX ? j + P : 2 * j + 1;
        energy[j] = mean[a] * mean[a] + mean[b] * mean[b];
        order[j] = j;
    }
    for (int i = 1; i < P; i++)
        for (int k = i; k > 0 && energy[order[k]] > energy[order[k - 1]]; k--) {
            int t = order[k];
            order[k] = order[k - 1], order[k - 1] = t;
        }
    for (int i = 0; i < P; i++) pairs[i] = i < n ? order[i] : -1;
    for (int i = n; i < P; i++) {
        const int j = order[i], a = m->rope_pairing == KVC_ROPE_NEOX ? j : 2 * j;
        const int b = m->rope_pairing == KVC_ROPE_NEOX ? j + P : 2 * j + 1;
        mean[a] = mean[b] = 0.0f;
    }
}

static kvm_buf kvm_copy(const kvm_device *d, const void *p, size_t n) { return p ? d->alloc(n ? n : 4, p) : NULL; }

/* never touches c->m (context.c: the model may already be freed) */
static void kvm_free_ctx(kvm_ctx *c) {
    if (!c) return;
    const kvm_device *d = c->dev;
    for (int l = 0; c->L && l < c->n_layer; l++) {
        kvm_layer *y = &c->L[l];
        for (int i = 0; i < KVM_NW; i++) d->release(y->w[i]);
        kvm_buf all[] = {y->attn_norm, y->ffn_norm, y->bq, y->bk, y->bv, y->bo, y->q_norm, y->k_norm,
                         y->attn_post_norm, y->ffn_post_norm, y->kc, y->vc, y->ks, y->vs, y->kft, y->kit,
                         y->vft, y->vit, y->k_mean, y->k_pairs, y->v_mean, y->rope_src};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) d->release(all[i]);
    }
    free(c->L);
    kvm_buf all[] = {c->out_norm, c->out_w, c->dummy, c->x, c->xn, c->q, c->k, c->v, c->att, c->gate,
                     c->up, c->logits, c->scores, c->cs, c->rope_all};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) d->release(all[i]);
    free(c);
}

/* one layer's TurboQuant config (tq_layout_init: the C definition of every table) into device tables */
static int kvm_tq_device_tables(const kvm_device *d, const kvc_tq_layer *t, int D, unsigned long long seed,
                                int layer, kvm_tq_layout *out, kvm_buf *ft, kvm_buf *it) {
    tq_layout L;
    int st = tq_layout_init(&L, D, t->n_hi, t->hi_bits, t->lo_bits, t->qjl_hi, t->qjl_lo, t->codebook_hi,
                            t->codebook_lo, t->perm, seed, layer, 0, 0, 0);
    if (st != KVC_OK) return st;
    int nf, ni;
    kvm_tq_table_sizes(&L, &nf, &ni);
    float *f = (float *)calloc((size_t)nf + 1, sizeof(float));
    int32_t *i = (int32_t *)calloc((size_t)ni + 1, sizeof(int32_t));
    if (!f || !i) st = KVC_ERR_NOMEM;
    else if (kvm_tq_tables(&L, out, f, i)) st = KVC_ERR_UNSUPPORTED;
    else {
        *ft = d->alloc(sizeof(float) * ((size_t)nf + 1), f);
        *it = d->alloc(sizeof(int32_t) * ((size_t)ni + 1), i);
        if (!*ft || !*it) st = KVC_ERR_NOMEM;
    }
    free(f), free(i);
    tq_layout_free(&L);
    return st;
}

/* kvc_backend_ops.create: ctx->be = a kvm_ctx on device d */
static int kvm_create(const kvm_device *d, kvc_context *ctx, const kvc_context_params *p, char *err, int err_len) {
    const kvc_model *m = ctx->m;
    const int D = m->head_dim, P = D / 2, Hk = m->n_head_kv, H = m->n_head, E = m->n_embd, F = m->n_ff;
    const int C = ctx->n_ctx, B = ctx->n_batch;
    kvm_ctx *c = (kvm_ctx *)calloc(1, sizeof *c);
    if (!c) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    ctx->be = c;
    c->dev = d, c->ctx = ctx, c->m = m;
    if (kvc_kernel_table_for(KVC_IMPL_AUTO, &c->kern) != KVC_OK)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "no CPU kernel table for the embedding lookup");
    c->k_tq = p->type_k == KVC_CACHE_TQ, c->v_tq = p->type_v == KVC_CACHE_TQ;
    if ((!c->k_tq && p->type_k != KVC_TYPE_F16) || (!c->v_tq && p->type_v != KVC_TYPE_F16))
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "the Metal backend runs f16 and TurboQuant caches only");
    if ((c->k_tq && !p->tq_k) || (c->v_tq && !p->tq_v))
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "TurboQuant caches need one config per layer");
    if (c->k_tq && c->v_tq && kvc_v_scale_mode(p) != p->tq_scale_mode)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, /* one scale_mode per kernel call; auto runs the CPU */
                        "different K and V TurboQuant scale modes run on the CPU backend only");
    if (D > KVM_TQ_MAX_DIM || D % 2)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "the Metal backend runs head_dim <= %d, got %d",
                        KVM_TQ_MAX_DIM, D);
    if (p->k_center && !p->k_mean)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED,
                        "K centering from the first batch's mean runs on the CPU backend only (give k_mean)");
    if (p->k_mean_folded && (!p->k_center || !p->k_mean))
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "a K mean folded into the weights needs k_center and k_mean");
    if (p->n_sink < 0 || p->n_sink > 64) return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_sink must be 0..64");
    c->n_sink = (c->k_tq || c->v_tq) ? (p->n_sink < C ? p->n_sink : C) : 0;
    if (p->float_products) /* a measuring mode; auto then runs the context on the CPU */
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "float products run on the CPU backend only");
    if (p->n_recent < 0 || p->n_recent > 256)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_recent must be 0..256");
    if ((c->k_tq || c->v_tq) && p->n_recent > 0) /* auto then runs the context on the CPU */
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED,
                        "the recent exact window (n_recent) runs on the CPU backend only");
    for (int l = 0; l < m->n_layer; l++) /* the Metal kernels read fp16 scales only; auto then runs the CPU */
        if ((c->k_tq && p->tq_k[l].scale8) || (c->v_tq && p->tq_v[l].scale8))
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "8-bit TurboQuant scales run on the CPU backend only");
    for (int l = 0; l < m->n_layer; l++) /* the products' per-row scales (kvc.h); auto then runs the CPU */
        if (m->layers[l].q_scale)
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED,
                            "K→Q smoothing scales (a file patched with its own weights) run on the CPU backend only");
    for (int l = 0; l < m->n_layer; l++) { /* Lloyd–Max codes and no K basis only; auto then runs the CPU */
        if ((c->k_tq && p->tq_k[l].trellis) || (c->v_tq && p->tq_v[l].trellis))
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "TurboQuant trellis codes run on the CPU backend only");
        if (c->k_tq && p->tq_k[l].basis)
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "a calibrated K basis runs on the CPU backend only");
    }
    c->k_center = p->k_center != 0;
    c->k_center_sub = c->k_center && !p->k_mean_folded;
    c->scale_mode = c->k_tq ? p->tq_scale_mode : kvc_v_scale_mode(p); /* V-only: V's */

    c->L = (kvm_layer *)calloc((size_t)m->n_layer, sizeof(kvm_layer));
    c->n_layer = c->L ? m->n_layer : 0;
    c->dummy = d->alloc(16, NULL);
    if (!c->L || !c->dummy) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        kvm_layer *y = &c->L[l];
        const tview *tv[KVM_NW] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->gate, &w->up, &w->down};
        for (int i = 0; i < KVM_NW; i++) {
            if (kvm_mv_pipe(tv[i]->type) < 0)
                return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "layer %d: weight type %d does not run on Metal",
                                l, tv[i]->type);
            y->w[i] = d->alloc((size_t)tv[i]->ne1 * tv[i]->row_bytes + 16, NULL);
            if (!y->w[i]) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory for the weights");
            memcpy(d->contents(y->w[i]), tv[i]->data, (size_t)tv[i]->ne1 * tv[i]->row_bytes);
        }
        y->attn_norm = kvm_copy(d, w->attn_norm, sizeof(float) * E);
        y->ffn_norm = kvm_copy(d, w->ffn_norm, sizeof(float) * E);
        y->bq = kvm_copy(d, w->bq, sizeof(float) * H * D);
        y->bk = kvm_copy(d, w->bk, sizeof(float) * Hk * D);
        y->bv = kvm_copy(d, w->bv, sizeof(float) * Hk * D);
        y->bo = kvm_copy(d, w->bo, sizeof(float) * E);
        y->q_norm = kvm_copy(d, w->q_norm, sizeof(float) * D);
        y->k_norm = kvm_copy(d, w->k_norm, sizeof(float) * D);
        y->attn_post_norm = kvm_copy(d, w->attn_post_norm, sizeof(float) * E);
        y->ffn_post_norm = kvm_copy(d, w->ffn_post_norm, sizeof(float) * E);
        y->rope_src = kvm_copy(d, m->rope_src + (size_t)l * P, sizeof(int) * P);
        if (!y->attn_norm || !y->ffn_norm || !y->rope_src) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        int st;
        if (c->k_tq) {
            st = kvm_tq_device_tables(d, &p->tq_k[l], D, p->tq_seed, l, &y->LK, &y->kft, &y->kit);
            if (st != KVC_OK) return kvc_fail(err, err_len, st, "layer %d: invalid TurboQuant K config", l);
            y->k_rb = y->LK.row_bytes;
        } else y->k_rb = 2 * D;
        if (c->v_tq) {
            const kvc_tq_layer *t = &p->tq_v[l];
            if (t->qjl_hi || t->qjl_lo || t->perm)
                return kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: V caches take no QJL and no permutation", l);
            st = kvm_tq_device_tables(d, t, D, p->tq_seed, l, &y->LV, &y->vft, &y->vit);
            if (st != KVC_OK) return kvc_fail(err, err_len, st, "layer %d: invalid TurboQuant V config", l);
            y->v_rb = y->LV.row_bytes;
        } else y->v_rb = 2 * D;
        y->kc = d->alloc((size_t)Hk * C * y->k_rb + 8, NULL); /* slack: code reads may run 2 bytes past */
        y->vc = d->alloc((size_t)Hk * C * y->v_rb + 8, NULL);
        y->ks = d->alloc((size_t)Hk * (c->n_sink + 1) * D * 2, NULL);
        y->vs = d->alloc((size_t)Hk * (c->n_sink + 1) * D * 2, NULL);
        if (!y->kc || !y->vc || !y->ks || !y->vs)
            return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory for a context of %d tokens", C);
        if (c->k_center) {
            y->k_mean = kvm_copy(d, p->k_mean + (size_t)l * Hk * D, sizeof(float) * Hk * D);
            y->k_pairs = d->alloc(sizeof(int) * Hk * P, NULL);
            if (!y->k_mean || !y->k_pairs) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
            for (int h = 0; h < Hk; h++)
                kvm_select_pairs(m, p->k_center_pairs, (float *)d->contents(y->k_mean) + (size_t)h * D,
                                 (int *)d->contents(y->k_pairs) + (size_t)h * P);
        }
        if (p->v_mean) {
            y->v_mean = kvm_copy(d, p->v_mean + (size_t)l * Hk * D, sizeof(float) * Hk * D);
            if (!y->v_mean) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        }
    }
    if (kvm_mv_pipe(m->output.type) < 0)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "output weight type %d does not run on Metal", m->output.type);
    c->out_norm = kvm_copy(d, m->output_norm, sizeof(float) * E);
    c->out_w = kvm_copy(d, m->output.data, (size_t)m->output.ne1 * m->output.row_bytes);
    c->x = d->alloc(sizeof(float) * B * E, NULL), c->xn = d->alloc(sizeof(float) * B * E, NULL);
    c->q = d->alloc(sizeof(float) * B * H * D, NULL), c->att = d->alloc(sizeof(float) * B * H * D, NULL);
    c->k = d->alloc(sizeof(float) * B * Hk * D, NULL), c->v = d->alloc(sizeof(float) * B * Hk * D, NULL);
    c->gate = d->alloc(sizeof(float) * B * F, NULL), c->up = d->alloc(sizeof(float) * B * F, NULL);
    c->logits = d->alloc(sizeof(float) * (size_t)B * m->n_vocab, NULL);
    c->cs = d->alloc(sizeof(float) * m->n_rope * B * D, NULL);
    c->rope_all = d->alloc(c->k_center ? sizeof(float) * m->n_rope * C * D : 16, NULL);
    const long long per_tok = (long long)H * C * 4;
    const long long ta = (256ll << 20) / per_tok; /* <= 256 MiB of scores */
    c->t_attn = ta < 1 ? 1 : ta > B ? B : (int)ta;
    c->scores = d->alloc((size_t)c->t_attn * per_tok, NULL);
    if (!c->out_norm || !c->out_w || !c->x || !c->xn || !c->q || !c->att || !c->k || !c->v || !c->gate || !c->up ||
        !c->logits || !c->cs || !c->rope_all || !c->scores)
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory");
    for (int l = 0; l < m->n_layer; l++) {
        int nk = 0, nv = 0;
        for (int k = 0; c->k_tq && k < c->L[l].LK.n_groups; k++) nk += 1 << c->L[l].LK.g[k].bits;
        for (int k = 0; c->v_tq && k < c->L[l].LV.n_groups; k++) nv += 1 << c->L[l].LV.g[k].bits;
        if (sizeof(float) * (6 * D + nk + nv + KVM_ATTN_THREADS + 4) > d->max_tg_mem)
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "layer %d: codebooks too large for threadgroup memory", l);
    }
    return KVC_OK;
}

/* ---- encoding ---- */

static size_t kvm_r16(size_t n) { return (n + 15) & ~(size_t)15; }

static void kvm_dispatch_1d(const kvm_device *d, void *e, long long n, int tg) {
    d->dispatch(e, (int)((n + tg - 1) / tg), 1, 1, tg);
}

static void kvm_enc_norm(kvm_ctx *c, void *e, kvm_buf x, size_t xo, kvm_buf w, kvm_buf o, size_t oo, int n, int rows) {
    const kvm_device *d = c->dev;
    kvm_norm_args a = {n, rows, c->m->rms_eps, 0};
    d->pipe(e, KVM_P_RMS_NORM);
    d->bytes(e, 0, &a, sizeof a);
    d->buffer(e, 1, x, xo), d->buffer(e, 2, w, 0), d->buffer(e, 3, o, oo);
    d->tg_mem(e, 0, kvm_r16(33 * sizeof(float)));
    d->dispatch(e, rows, 1, 1, KVM_PIPE_THREADS[KVM_P_RMS_NORM]);
}

static void kvm_enc_matvec(kvm_ctx *c, void *e, kvm_buf w, const tview *tv, kvm_buf x, kvm_buf bias, kvm_buf y,
                           int T) {
    const kvm_device *d = c->dev;
    kvm_matvec_args a = {(int)tv->ne0, (int)tv->ne1, T, (int)tv->row_bytes, (int)tv->ne0, (int)tv->ne1, bias != NULL, 0};
    d->pipe(e, kvm_mv_pipe(tv->type));
    d->bytes(e, 0, &a, sizeof a);
    d->buffer(e, 1, w, 0), d->buffer(e, 2, x, 0), d->buffer(e, 3, bias ? bias : c->dummy, 0), d->buffer(e, 4, y, 0);
    d->dispatch(e, (int)((tv->ne1 + KVM_MATVEC_SG - 1) / KVM_MATVEC_SG), (T + KVM_MATVEC_TOKENS - 1) / KVM_MATVEC_TOKENS,
                1, 32 * KVM_MATVEC_SG);
}

static void kvm_enc_elem(kvm_ctx *c, void *e, int pipe, kvm_buf a0, kvm_buf a1, kvm_buf o, long long n) {
    const kvm_device *d = c->dev;
    kvm_elem_args a = {(int)n, 0.0f, {0, 0}};
    d->pipe(e, pipe);
    d->bytes(e, 0, &a, sizeof a);
    d->buffer(e, 1, a0, 0), d->buffer(e, 2, a1, 0), d->buffer(e, 3, o, 0);
    kvm_dispatch_1d(d, e, n, KVM_PIPE_THREADS[pipe]);
}

static void kvm_enc_rope(kvm_ctx *c, void *e, kvm_buf x, int n_heads, int T, int rope_set, kvm_buf src, kvm_buf mean) {
    const kvm_device *d = c->dev;
    const int D = c->m->head_dim;
    kvm_rope_args a = {D, n_heads, T, c->m->rope_pairing, mean != NULL, {0, 0, 0}};
    d->pipe(e, KVM_P_ROPE);
    d->bytes(e, 0, &a, sizeof a);
    d->buffer(e, 1, x, 0), d->buffer(e, 2, c->cs, sizeof(float) * (size_t)rope_set * c->ctx->n_batch * D);
    d->buffer(e, 3, src, 0), d->buffer(e, 4, mean ? mean : c->dummy, 0);
    kvm_dispatch_1d(d, e, (long long)T * n_heads * (D / 2), KVM_PIPE_THREADS[KVM_P_ROPE]);
}

static void kvm_enc_store(kvm_ctx *c, void *e, kvm_layer *y, int kind, int T) {
    const kvm_device *d = c->dev;
    const int D = c->m->head_dim, Hk = c->m->n_head_kv, tq = kind ? c->v_tq : c->k_tq;
    kvm_tq_store_args a;
    memset(&a, 0, sizeof a);
    a.D = D, a.n_kv_head = Hk, a.T = T, a.pos0 = c->ctx->n_past, a.n_ctx = c->ctx->n_ctx;
    a.scale_mode = c->scale_mode, a.kind = kind, a.has_mean = kind && y->v_mean, a.n_sink = tq ? c->n_sink : 0;
    kvm_buf mean = kind && y->v_mean ? y->v_mean : c->dummy;
    if (tq) {
        a.L = kind ? y->LV : y->LK;
        d->pipe(e, KVM_P_TQ_STORE);
        d->bytes(e, 0, &a, sizeof a);
        d->buffer(e, 1, kind ? c->v : c->k, 0), d->buffer(e, 2, mean, 0);
        d->buffer(e, 3, kind ? y->vft : y->kft, 0), d->buffer(e, 4, kind ? y->vit : y->kit, 0);
        d->buffer(e, 5, kind ? y->vc : y->kc, 0), d->buffer(e, 6, kind ? y->vs : y->ks, 0);
        d->tg_mem(e, 0, kvm_r16(sizeof(float) * (6 * D + 8)));
        d->tg_mem(e, 1, kvm_r16(sizeof(uint32_t) * D));
        d->dispatch(e, T, Hk, 1, KVM_STORE_THREADS);
    } else {
        d->pipe(e, KVM_P_F16_STORE);
        d->bytes(e, 0, &a, sizeof a);
        d->buffer(e, 1, kind ? c->v : c->k, 0), d->buffer(e, 2, mean, 0), d->buffer(e, 3, kind ? y->vc : y->kc, 0);
        kvm_dispatch_1d(d, e, (long long)T * Hk * D, KVM_PIPE_THREADS[KVM_P_F16_STORE]);
    }
}

static void kvm_enc_attention(kvm_ctx *c, void *e, kvm_layer *y, int l, int T) {
    const kvm_device *d = c->dev;
    const kvc_model *m = c->m;
    const int D = m->head_dim, H = m->n_head;
    kvm_attn_args a;
    memset(&a, 0, sizeof a);
    a.D = D, a.n_head = H, a.n_kv_head = m->n_head_kv, a.n_ctx = c->ctx->n_ctx, a.window = m->layers[l].window;
    a.q_stride = H * D, a.scale = m->attn_scale, a.k_tq = c->k_tq, a.v_tq = c->v_tq, a.n_sink = c->n_sink;
    a.k_center = c->k_center, a.pairing = m->rope_pairing, a.has_v_mean = y->v_mean != NULL;
    if (c->k_tq) a.LK = y->LK;
    if (c->v_tq) a.LV = y->LV;
    int nk = 0, nv = 0;
    for (int k = 0; c->k_tq && k < a.LK.n_groups; k++) nk += 1 << a.LK.g[k].bits;
    for (int k = 0; c->v_tq && k < a.LV.n_groups; k++) nv += 1 << a.LV.g[k].bits;
    d->pipe(e, KVM_P_ATTENTION);
    d->buffer(e, 2, y->kc, 0), d->buffer(e, 3, y->vc, 0);
    d->buffer(e, 4, y->kft ? y->kft : c->dummy, 0), d->buffer(e, 5, y->kit ? y->kit : c->dummy, 0);
    d->buffer(e, 6, y->vft ? y->vft : c->dummy, 0), d->buffer(e, 7, y->vit ? y->vit : c->dummy, 0);
    d->buffer(e, 8, y->ks, 0), d->buffer(e, 9, y->vs, 0);
    d->buffer(e, 10, y->k_mean ? y->k_mean : c->dummy, 0), d->buffer(e, 11, y->k_pairs ? y->k_pairs : c->dummy, 0);
    d->buffer(e, 12, y->rope_src, 0);
    d->buffer(e, 13, c->rope_all, c->k_center ? sizeof(float) * (size_t)m->layers[l].rope_set * c->ctx->n_ctx * D : 0);
    d->buffer(e, 14, y->v_mean ? y->v_mean : c->dummy, 0), d->buffer(e, 15, c->scores, 0);
    d->tg_mem(e, 0, kvm_r16(sizeof(float) * (6 * D + nk + nv + KVM_ATTN_THREADS + 4)));
    for (int t0 = 0; t0 < T; t0 += c->t_attn) { /* the scores scratch holds t_attn tokens */
        const int nt = T - t0 < c->t_attn ? T - t0 : c->t_attn;
        a.T = nt, a.n_past = c->ctx->n_past + t0;
        d->bytes(e, 0, &a, sizeof a);
        d->buffer(e, 1, c->q, sizeof(float) * (size_t)t0 * H * D);
        d->buffer(e, 16, c->att, sizeof(float) * (size_t)t0 * H * D);
        d->dispatch(e, nt, H, 1, KVM_ATTN_THREADS);
    }
}

/* cpu_forward for one context: T tokens at ctx->n_past; logits (T - first, V) or NULL */
static int kvm_forward(kvm_ctx *c, const int *tokens, int T, float *logits, int first) {
    const kvm_device *d = c->dev;
    const kvc_model *m = c->m;
    kvc_context *ctx = c->ctx;
    const int E = m->n_embd, D = m->head_dim, P = D / 2, H = m->n_head, Hk = m->n_head_kv, F = m->n_ff;
    float *x = (float *)d->contents(c->x);
    const kvc_kernels *emb = &c->kern->type[m->tok_embd.type];
    for (int t = 0; t < T; t++)
        emb->dequantize(m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes, x + (size_t)t * E, E);
    if (m->embd_scale != 1.0f) c->kern->vec->scale(T * E, m->embd_scale, x);
    for (int s = 0; s < m->n_rope; s++) { /* forward.c's rope_table: angles in double */
        float *cs = (float *)d->contents(c->cs) + (size_t)s * ctx->n_batch * D;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < P; j++) {
                const double ang = (double)(ctx->n_past + t) * (double)m->rope_freqs[(size_t)s * P + j];
                cs[((size_t)t * P + j) * 2] = (float)cos(ang);
                cs[((size_t)t * P + j) * 2 + 1] = (float)sin(ang);
            }
        if (c->k_center)
            memcpy((float *)d->contents(c->rope_all) + ((size_t)s * ctx->n_ctx + ctx->n_past) * D, cs,
                   sizeof(float) * (size_t)T * D);
    }
    void *e = d->begin(ctx->err, (int)sizeof ctx->err);
    if (!e) return KVC_ERR_NOMEM;
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        kvm_layer *y = &c->L[l];
        kvm_enc_norm(c, e, c->x, 0, y->attn_norm, c->xn, 0, E, T);
        kvm_enc_matvec(c, e, y->w[KVM_WQ], &w->wq, c->xn, y->bq, c->q, T);
        kvm_enc_matvec(c, e, y->w[KVM_WK], &w->wk, c->xn, y->bk, c->k, T);
        kvm_enc_matvec(c, e, y->w[KVM_WV], &w->wv, c->xn, y->bv, c->v, T);
        if (y->q_norm) { /* QK-norm: per head, before centering and RoPE */
            kvm_enc_norm(c, e, c->q, 0, y->q_norm, c->q, 0, D, T * H);
            kvm_enc_norm(c, e, c->k, 0, y->k_norm, c->k, 0, D, T * Hk);
        }
        kvm_enc_rope(c, e, c->q, H, T, w->rope_set, y->rope_src, NULL);
        kvm_enc_rope(c, e, c->k, Hk, T, w->rope_set, y->rope_src, c->k_center_sub ? y->k_mean : NULL);
        kvm_enc_store(c, e, y, 0, T);
        kvm_enc_store(c, e, y, 1, T);
        kvm_enc_attention(c, e, y, l, T);
        kvm_enc_matvec(c, e, y->w[KVM_WO], &w->wo, c->att, y->bo, c->xn, T);
        if (y->attn_post_norm) kvm_enc_norm(c, e, c->xn, 0, y->attn_post_norm, c->xn, 0, E, T);
        kvm_enc_elem(c, e, KVM_P_ADD, c->x, c->xn, c->x, (long long)T * E);
        kvm_enc_norm(c, e, c->x, 0, y->ffn_norm, c->xn, 0, E, T);
        kvm_enc_matvec(c, e, y->w[KVM_WGATE], &w->gate, c->xn, NULL, c->gate, T);
        kvm_enc_matvec(c, e, y->w[KVM_WUP], &w->up, c->xn, NULL, c->up, T);
        kvm_enc_elem(c, e, m->activation == KVC_ACT_GELU_TANH ? KVM_P_GEGLU : KVM_P_SWIGLU, c->gate, c->up, c->gate,
                     (long long)T * F);
        kvm_enc_matvec(c, e, y->w[KVM_WDOWN], &w->down, c->gate, NULL, c->xn, T);
        if (y->ffn_post_norm) kvm_enc_norm(c, e, c->xn, 0, y->ffn_post_norm, c->xn, 0, E, T);
        kvm_enc_elem(c, e, KVM_P_ADD, c->x, c->xn, c->x, (long long)T * E);
    }
    const int nl = logits ? T - first : 0;
    if (nl > 0) {
        kvm_enc_norm(c, e, c->x, sizeof(float) * (size_t)first * E, c->out_norm, c->xn, 0, E, nl);
        kvm_enc_matvec(c, e, c->out_w, &m->output, c->xn, NULL, c->logits, nl);
    }
    const int st = d->end(e, ctx->err, (int)sizeof ctx->err);
    if (st != KVC_OK) return st;
    if (nl > 0) memcpy(logits, d->contents(c->logits), sizeof(float) * (size_t)nl * m->n_vocab);
    ctx->n_past += T;
    return KVC_OK;
}

/* kvc_backend_ops.eval: n tokens in batches of at most n_batch */
static int kvm_eval(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits) {
    kvm_ctx *c = (kvm_ctx *)ctx->be;
    if (ctx->cap_q || ctx->cap_k || ctx->cap_v) {
        snprintf(ctx->err, sizeof ctx->err, "calibration capture runs on the CPU backend only");
        return KVC_ERR_UNSUPPORTED;
    }
    const long long V = ctx->m->n_vocab;
    int st = KVC_OK;
    for (int i = 0; st == KVC_OK && i < n; i += ctx->n_batch) {
        const int T = n - i < ctx->n_batch ? n - i : ctx->n_batch, last = i + T == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (size_t)i * V;
        else if (logits && last) lg = logits;
        st = kvm_forward(c, tokens + i, T, lg, all_logits ? 0 : T - 1);
    }
    return st;
}

/* kvc_backend_ops.eval_multi: one token per context, one context after another (not yet one
 * batch). context.c has checked every argument, so only a device failure stops it part way
 * (earlier contexts then keep their token). */
static int kvm_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits) {
    const long long V = ctxs[0]->m->n_vocab;
    for (int i = 0; i < n; i++) {
        const int st = kvm_eval(ctxs[i], tokens + i, 1, logits ? logits + (size_t)i * V : NULL, 0);
        if (st != KVC_OK) {
            if (i) snprintf(ctxs[0]->err, sizeof ctxs[0]->err, "context %d: %.200s", i, ctxs[i]->err);
            return st;
        }
    }
    return KVC_OK;
}

static long long kvm_kv_bytes_per_token(const kvc_context *ctx) {
    const kvm_ctx *c = (const kvm_ctx *)ctx->be;
    long long total = 0;
    for (int l = 0; l < c->m->n_layer; l++) total += (long long)c->m->n_head_kv * (c->L[l].k_rb + c->L[l].v_rb);
    return total;
}

/* the rows allocated: every layer holds n_ctx positions (no sliding-window cap here yet) */
static long long kvm_kv_bytes(const kvc_context *ctx) { return (long long)ctx->n_ctx * kvm_kv_bytes_per_token(ctx); }

/* every position stays cached (no sliding-window trimming here): any rewind works */
static int kvm_rewind_floor(const kvc_context *ctx) {
    (void)ctx;
    return 1;
}

static void kvm_free(kvc_context *ctx) {
    kvm_free_ctx((kvm_ctx *)ctx->be);
    ctx->be = NULL;
}

#endif /* KVC_METAL_HOST_H */
