/* backend_cpu.c — the CPU backend (kvc_backend_cpu, backend.h): a context's
 * state (cpu_ctx: activations, KV caches, attention scratch, thread pool, the
 * kernel table picked for this CPU) and the backend operations over it. The
 * forward pass is forward.c, the caches kv_cache.c. */
#include <stdio.h>
#include <stdlib.h>

#include "backend_cpu.h"
#include "kv_cache.h"
#include "kv_recent.h"
#include "util.h"

static void *zalloc(size_t n) { return calloc(1, n ? n : 1); }

static void cpu_free(kvc_context *ctx) {
    cpu_ctx *c = ctx->be;
    if (!c) return;
    kvc_pool_free(c->pool);
    kv_free(c); /* never touches c->m: the model may already be freed */
    if (c->scratch) {
        for (int i = 0; i < ctx->n_threads; i++) {
            free(c->scratch[i].scores);
            free(c->scratch[i].qq);
            free(c->scratch[i].vrow);
        }
    }
    free(c->scratch);
    free(c->x), free(c->xn), free(c->q), free(c->k), free(c->v), free(c->att);
    free(c->gate), free(c->up), free(c->rope_cs);
    for (int i = 0; i < 3; i++) free(c->aq[i]);
    free(c->wrows);
    free(c);
    ctx->be = NULL;
}

static int cpu_create(kvc_context *ctx, const kvc_context_params *p, char *err, int err_len) {
    const kvc_model *m = ctx->m;
    const int D = m->head_dim;
    cpu_ctx *c = zalloc(sizeof *c);
    if (!c) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    ctx->be = c;
    c->ctx = ctx;
    c->m = m;
    c->n_layer = m->n_layer;
    kvc_kernel_table_for(KVC_IMPL_AUTO, &c->kern);
    c->type_k = p->type_k, c->type_v = p->type_v;

    const size_t T = (size_t)ctx->n_batch, E = (size_t)m->n_embd, F = (size_t)m->n_ff;
    const size_t QD = (size_t)m->n_head * D, KD = (size_t)m->n_head_kv * D;
    c->x = malloc(T * E * 4), c->xn = malloc(T * E * 4);
    c->q = malloc(T * QD * 4), c->k = malloc(T * KD * 4), c->v = malloc(T * KD * 4), c->att = malloc(T * QD * 4);
    c->gate = malloc(T * F * 4), c->up = malloc(T * F * 4);
    c->rope_cs = malloc((size_t)m->n_rope * T * (size_t)D * 4);
    /* activations quantize to at most 4 bytes per value (f32 is the widest vec_dot type) */
    size_t widest = E > F ? E : F;
    widest = widest > QD ? widest : QD;
    c->aq_bytes = T * widest * 4;
    for (int i = 0; i < 3; i++) c->aq[i] = malloc(c->aq_bytes);
    int ok = c->x && c->xn && c->q && c->k && c->v && c->att && c->gate && c->up && c->rope_cs;
    ok = ok && c->aq[0] && c->aq[1] && c->aq[2];
    if (p->float_products) { /* the longest weight row: E (W_q, W_k, W_v, gate, up, output), QD (W_o), F (down) */
        c->wrow_len = widest;
        c->wrows = malloc((size_t)ctx->n_threads * 16 * widest * 4);
        ok = ok && c->wrows;
    }
    c->scratch = zalloc((size_t)ctx->n_threads * sizeof(attn_scratch));
    ok = ok && c->scratch;
    const size_t nq = (size_t)kv_block_tokens(c) * (size_t)(m->n_head / m->n_head_kv); /* query rows per block */
    for (int i = 0; ok && i < ctx->n_threads; i++) {
        c->scratch[i].qq = malloc(nq * (size_t)D * 4);
        c->scratch[i].vrow = malloc((size_t)D * 4);
        ok = c->scratch[i].qq && c->scratch[i].vrow; /* scores: kv_init, sized for its blocks */
    }
    if (!ok) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory for a context of %d tokens", p->n_ctx);
    int st = kv_init(c, p, err, err_len);
    if (st != KVC_OK) return st;
    if (kvc_pool_create(ctx->n_threads, &c->pool) != 0)
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "cannot start %d threads", p->n_threads);
    return KVC_OK;
}

/* n tokens in batches of at most n_batch, one segment (this context) each. */
static int cpu_eval(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits) {
    cpu_ctx *c = ctx->be;
    if (kv_check_window(c, ctx->err, sizeof ctx->err) != KVC_OK) return KVC_ERR_INVALID;
    const long long V = ctx->m->n_vocab;
    for (int i = 0; i < n; i += ctx->n_batch) {
        int T = n - i < ctx->n_batch ? n - i : ctx->n_batch;
        int last = i + T == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (size_t)i * V;
        else if (logits && last) lg = logits;
        segment seg = {.c = c, .row = 0, .T = T};
        cpu_forward(c, &seg, 1, tokens + i, T, lg, all_logits ? 0 : T - 1);
    }
    return KVC_OK;
}

/* One batch of n rows, row i a segment of ctxs[i]; ctxs[0]'s buffers and pool run it. */
static int cpu_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits) {
    segment *segs = malloc(sizeof(segment) * (size_t)n); /* (n) one row each */
    if (!segs) {
        snprintf(ctxs[0]->err, sizeof ctxs[0]->err, "out of memory");
        return KVC_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (kv_check_window(ctxs[i]->be, ctxs[0]->err, sizeof ctxs[0]->err) != KVC_OK) {
            free(segs);
            return KVC_ERR_INVALID;
        }
        if (!((cpu_ctx *)ctxs[i]->be)->wrows != !((cpu_ctx *)ctxs[0]->be)->wrows) { /* the lead runs the products */
            snprintf(ctxs[0]->err, sizeof ctxs[0]->err, "context %d computes its products otherwise than context 0 "
                     "(float_products)", i);
            free(segs);
            return KVC_ERR_INVALID;
        }
    }
    for (int i = 0; i < n; i++) segs[i] = (segment){.c = ctxs[i]->be, .row = i, .T = 1};
    cpu_forward(ctxs[0]->be, segs, n, tokens, n, logits, 0);
    free(segs);
    return KVC_OK;
}

static long long cpu_kv_bytes(const kvc_context *ctx) {
    const cpu_ctx *c = ctx->be;
    long long total = 0;
    for (int l = 0; l < c->n_layer; l++)
        total += (long long)c->m->n_head_kv * c->kv_cap[l] * (long long)(c->k_rb[l] + c->v_rb[l]);
    return total + kv_recent_bytes(c); /* the recent window's fixed ring */
}

static long long cpu_kv_bytes_per_token(const kvc_context *ctx) {
    const cpu_ctx *c = ctx->be;
    long long total = 0;
    for (int l = 0; l < c->n_layer; l++) total += (long long)c->m->n_head_kv * (long long)(c->k_rb[l] + c->v_rb[l]);
    return total;
}

const kvc_backend_ops kvc_backend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .eval = cpu_eval,
    .eval_multi = cpu_eval_multi,
    .kv_bytes_per_token = cpu_kv_bytes_per_token,
    .kv_bytes = cpu_kv_bytes,
    .rewind_floor = kv_rewind_floor,
    .free = cpu_free,
};
