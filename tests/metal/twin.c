/* twin.c — the CPU backend's own KV-cache code (native/src/cpu/kv_cache.c:
 * kv_init, kv_store, kv_scores, kv_values) driven for one layer with the
 * scalar kernel table, plus cpu/forward.c's attn_block steps between scores
 * and values: the twin the Metal store and attention kernels are compared
 * with (check.cpp). Built by tests/test_metal.py with gcc; not part of the
 * extension. */
#include "twin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"

/* The one symbol of cpu/dispatch.c the linked files call (the kvc_tq_* test
 * entry points in tq.c): this harness has no dispatch, so none. */
int kvc_kernel_table_for(int impl, const kvc_kernel_table **out) {
    (void)impl;
    *out = NULL;
    return KVC_ERR_UNSUPPORTED;
}

/* kv_cache.c in flux: with kv_first_key (sliding-window caches), score column j is key
 * k0 + j, k0 the window's first key; without it (older kv_cache.c), column j is key j. */
int kv_first_key(const cpu_ctx *c, int layer, int n0) __attribute__((weak));

struct twin {
    struct kvc_model m;
    layer_w layer;
    struct kvc_context ctx;
    cpu_ctx c;
    attn_scratch scratch;
    kvc_kernel_table kern;
    kvc_tq_layer tk, tv;
    int rope_src[TQ_MAX_DIM / 2];
    float rope_freqs[TQ_MAX_DIM / 2];
    float *rope_all; /* (n_ctx, D/2, 2): the table as the Metal host lays it out */
};

int twin_create(const twin_cfg *g, twin **out) {
    twin *t = calloc(1, sizeof *t);
    if (!t) return KVC_ERR_NOMEM;
    const int D = g->D, P = D / 2;
    t->kern.name = "scalar";
    t->kern.vec = &kvc_vec_ops_ref;
    t->kern.tq_encode = tq_encode_ref, t->kern.tq_score = tq_score_ref, t->kern.tq_accum = tq_accum_ref;
    t->kern.type[KVC_TYPE_F32] = (kvc_kernels){kvc_quantize_row_f32_ref, kvc_dequantize_row_f32_ref,
                                               kvc_vec_dot_f32_f32_ref, kvc_gemm_f32_f32_ref};
    t->kern.type[KVC_TYPE_F16] = (kvc_kernels){kvc_quantize_row_f16_ref, kvc_dequantize_row_f16_ref,
                                               kvc_vec_dot_f16_f32_ref, kvc_gemm_f16_f32_ref};
    for (int j = 0; j < P; j++) t->rope_src[j] = g->rope_src ? g->rope_src[j] : j;
    memcpy(t->rope_freqs, g->rope_freqs, sizeof(float) * (size_t)P);
    t->m.n_layer = 1, t->m.n_head = g->H, t->m.n_head_kv = g->Hk, t->m.head_dim = D;
    t->m.rope_pairing = g->pairing, t->m.n_rope = 1, t->m.rope_freqs = t->rope_freqs, t->m.rope_src = t->rope_src;
    t->m.attn_scale = g->scale;
    t->layer.window = g->window;
    t->m.layers = &t->layer;
    t->ctx.m = &t->m, t->ctx.n_ctx = g->n_ctx, t->ctx.n_batch = g->n_ctx, t->ctx.n_threads = 1;
    t->c.ctx = &t->ctx, t->c.m = &t->m, t->c.kern = &t->kern, t->c.n_layer = 1;
    t->c.type_k = g->k_tq ? KVC_CACHE_TQ : KVC_TYPE_F16, t->c.type_v = g->v_tq ? KVC_CACHE_TQ : KVC_TYPE_F16;
    t->c.scratch = &t->scratch;
    t->tk = (kvc_tq_layer){g->n_hi_k, g->hi_bits_k, g->lo_bits_k, g->qjl_hi, g->qjl_lo, g->cbk_hi, g->cbk_lo, g->perm};
    t->tv = (kvc_tq_layer){g->n_hi_v, g->hi_bits_v, g->lo_bits_v, 0, 0, g->cbv_hi, g->cbv_lo, NULL};
    kvc_context_params p;
    memset(&p, 0, sizeof p);
    p.n_ctx = g->n_ctx, p.n_batch = g->n_ctx, p.n_threads = 1;
    p.type_k = t->c.type_k, p.type_v = t->c.type_v;
    p.tq_k = g->k_tq ? &t->tk : NULL, p.tq_v = g->v_tq ? &t->tv : NULL;
    p.tq_seed = g->seed, p.tq_scale_mode = g->scale_mode;
    p.k_center = g->k_center, p.k_center_pairs = g->k_center_pairs, p.k_mean = g->k_mean;
    p.v_mean = g->v_mean, p.n_sink = g->n_sink;
    t->scratch.qq = malloc(sizeof(float) * (size_t)g->n_ctx * g->H * D);
    t->scratch.vrow = malloc(sizeof(float) * (size_t)D);
    char err[256];
    int st = kv_init(&t->c, &p, err, sizeof err);
    if (st == KVC_OK && t->c.rope_cols) { /* cos, sin of position × each column's frequency: the CPU's
                                           * (D, C) columns and the Metal host's (C, D/2, 2) rows */
        t->rope_all = malloc(sizeof(float) * (size_t)g->n_ctx * D);
        if (!t->rope_all) st = KVC_ERR_NOMEM;
        for (int pos = 0; t->rope_all && pos < g->n_ctx; pos++)
            for (int j = 0; j < P; j++) {
                double a = (double)pos * (double)t->rope_freqs[j];
                t->rope_all[((size_t)pos * P + j) * 2] = (float)cos(a);
                t->rope_all[((size_t)pos * P + j) * 2 + 1] = (float)sin(a);
                t->c.rope_cols[(size_t)2 * j * g->n_ctx + pos] = (float)cos(a);
                t->c.rope_cols[(size_t)(2 * j + 1) * g->n_ctx + pos] = (float)sin(a);
            }
    }
    *out = t;
    return st;
}

void twin_store(twin *t, float *k, float *v, int T, int n_past) {
    t->c.k = k, t->c.v = v;
    t->ctx.n_past = n_past;
    kv_store(&t->c, 0, T);
}

void twin_attend(twin *t, const float *q, int T, int n_past, float *out) {
    const struct kvc_model *m = &t->m;
    const int D = m->head_dim, Hk = m->n_head_kv, n_rep = m->n_head / Hk;
    const size_t QD = (size_t)m->n_head * D;
    t->ctx.n_past = n_past;
    for (int tok = 0; tok < T; tok++)
        for (int h = 0; h < Hk; h++) { /* attn_block for one token (nt = 1) */
            const int n0 = n_past + tok + 1, k0 = kv_first_key ? kv_first_key(&t->c, 0, n0) : 0, ld = n0 - k0;
            const float *qh = q + tok * QD + (size_t)h * n_rep * D;
            float *oh = out + tok * QD + (size_t)h * n_rep * D;
            kv_scores(&t->c, &t->scratch, 0, h, qh, QD, 1, n0, t->scratch.scores, ld);
            for (int i = 0; i < n_rep; i++) {
                float *row = t->scratch.scores + (size_t)i * ld - k0; /* row[j]: key j */
                const int n = n0, lo = m->layers[0].window && n > m->layers[0].window ? n - m->layers[0].window : 0;
                kvc_vec_ops_ref.scale(n - lo, m->attn_scale, row + lo);
                kvc_vec_ops_ref.softmax(n - lo, row + lo);
                if (lo > k0) memset(row + k0, 0, sizeof(float) * (size_t)(lo - k0));
            }
            kv_values(&t->c, &t->scratch, 0, h, t->scratch.scores, ld, 1, n0, oh, QD);
            if (t->c.v_mean)
                for (int i = 0; i < n_rep; i++) kvc_vec_ops_ref.axpy(D, 1.0f, t->c.v_mean + (size_t)h * D, oh + (size_t)i * D);
        }
}

const uint8_t *twin_rows(const twin *t, int kind) { return kind ? t->c.kv[0].v : t->c.kv[0].k; }
size_t twin_row_bytes(const twin *t, int kind) { return kind ? t->c.v_rb[0] : t->c.k_rb[0]; }
const uint16_t *twin_sink(const twin *t, int kind) { return kind ? t->c.v_sink : t->c.k_sink; }
const tq_layout *twin_layout(const twin *t, int kind) { return kind ? t->c.tq_v : t->c.tq_k; }
const float *twin_rope_all(const twin *t) { return t->rope_all; }
const float *twin_k_mean(const twin *t) { return t->c.k_mean; }
const int *twin_k_pairs(const twin *t) { return t->c.k_pairs; }
const float *twin_v_mean(const twin *t) { return t->c.v_mean; }

void twin_free(twin *t) {
    kv_free(&t->c);
    free(t->scratch.scores), free(t->scratch.qq), free(t->scratch.vrow), free(t->rope_all);
    free(t);
}
