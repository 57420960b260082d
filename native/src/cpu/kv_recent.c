/* kv_recent.c — see kv_recent.h: the exact-row formulas the sinks and the recent
 * window share, and the recent window's ring (store bookkeeping, rewinds, scores,
 * values). The TurboQuant kernels are untouched: the window overwrites their
 * estimated scores and adds its V corrections after them, as the sinks do. */
#include "kv_recent.h"

#include "quants.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

void kv_exact_load(const uint16_t *k16, int D, float *kf) {
    for (int i = 0; i < D; i++) kf[i] = kvc_fp16_to_fp32(k16[i]);
}

/* Plain loops in this summation order on purpose: the Metal kernels are tested bit-identical
 * to them (tests/test_metal.py), and the kernel table's SIMD dot and axpy measured no faster
 * here (w = 32, Qwen2.5-0.5B, 2026-12-06). */
float kv_exact_dot(const float *q, const float *kf, int D) {
    float acc = 0.0f;
    for (int i = 0; i < D; i++) acc += q[i] * kf[i];
    return acc;
}

void kv_exact_value(float p, const float *rf, int D, float *acc) {
    for (int i = 0; i < D; i++) acc[i] += p * rf[i];
}

void kv_exact_key(const float *k, int D, uint16_t *out) {
    for (int i = 0; i < D; i++) out[i] = kvc_fp32_to_fp16(k[i]);
}

void kv_exact_residual(const tq_layout *L, const float *v, const uint8_t *row, int D, float *scratch, uint16_t *out) {
    const float one = 1.0f;
    memset(scratch, 0, sizeof(float) * (size_t)D);
    tq_accum_ref(L, &one, 1, 1, 1, 1, row, scratch); /* the decoded row, rotated domain */
    tq_unrotate(L, scratch);
    for (int i = 0; i < D; i++) out[i] = kvc_fp32_to_fp16(v[i] - scratch[i]);
}

int kv_recent_init(cpu_ctx *c, const kvc_context_params *p, char *err, int err_len) {
    const kvc_model *m = c->m;
    if (p->n_recent < 0 || p->n_recent > KV_MAX_RECENT)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_recent must be 0..%d, got %d", KV_MAX_RECENT, p->n_recent);
    if (p->n_rewind < 0 || p->n_rewind > KV_MAX_REWIND)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_rewind must be 0..%d, got %d", KV_MAX_REWIND, p->n_rewind);
    const int n_ctx = c->ctx->n_ctx;
    c->n_recent = (c->tq_k || c->tq_v) ? (p->n_recent < n_ctx ? p->n_recent : n_ctx) : 0;
    c->rec_lo = 0;
    if (!c->n_recent) return KVC_OK;
    const long long R = (long long)c->n_recent + (p->n_rewind ? p->n_rewind : KV_RECENT_SLACK);
    c->rec_rows = R < n_ctx ? (int)R : n_ctx;
    const size_t n = (size_t)m->n_layer * m->n_head_kv * c->rec_rows * m->head_dim;
    const size_t nb = (size_t)c->ctx->n_batch * m->n_head_kv * m->head_dim;
    if (c->tq_k && (!(c->k_rec = calloc(n, sizeof(uint16_t))) || !(c->k_rec_batch = calloc(nb, sizeof(uint16_t)))))
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    if (c->tq_v && (!(c->v_rec = calloc(n, sizeof(uint16_t))) || !(c->v_rec_batch = calloc(nb, sizeof(uint16_t)))))
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    return KVC_OK;
}

void kv_recent_free(cpu_ctx *c) {
    free(c->k_rec), free(c->v_rec), free(c->k_rec_batch), free(c->v_rec_batch);
    c->k_rec = c->v_rec = c->k_rec_batch = c->v_rec_batch = NULL;
}

/* The ring's row of position pos < n_past. */
static uint16_t *ring_row(const cpu_ctx *c, int is_v, int l, int h, int pos) {
    uint16_t *base = is_v ? c->v_rec : c->k_rec;
    return base + (((size_t)l * c->m->n_head_kv + h) * c->rec_rows + (size_t)(pos % c->rec_rows)) * c->m->head_dim;
}

uint16_t *kv_recent_row(const cpu_ctx *c, int is_v, int l, int h, int pos) {
    const int t = pos - c->ctx->n_past; /* the current batch's rows live in the batch buffer */
    if (t >= 0) return (is_v ? c->v_rec_batch : c->k_rec_batch) + ((size_t)t * c->m->n_head_kv + h) * c->m->head_dim;
    return ring_row(c, is_v, l, h, pos);
}

void kv_recent_commit(cpu_ctx *c, int layer, int T) {
    if (!c->n_recent) return;
    const int n_past = c->ctx->n_past, Hk = c->m->n_head_kv, D = c->m->head_dim;
    const int t0 = T > c->rec_rows ? T - c->rec_rows : 0; /* earlier batch rows would be overwritten anyway */
    for (int v = 0; v < 2; v++) {
        const uint16_t *rb = v ? c->v_rec_batch : c->k_rec_batch;
        if (!rb) continue;
        for (int t = t0; t < T; t++)
            for (int h = 0; h < Hk; h++)
                memcpy(ring_row(c, v, layer, h, n_past + t), rb + ((size_t)t * Hk + h) * D, sizeof(uint16_t) * (size_t)D);
    }
    if (layer != 0) return; /* every layer holds the same positions */
    const int lo = n_past + T - c->rec_rows; /* the slots of positions before lo now hold later ones */
    if (lo > c->rec_lo) c->rec_lo = lo;
}

int kv_recent_first(const cpu_ctx *c, int layer, int pos) {
    const int w = c->m->layers[layer].window;
    int first = pos - c->n_recent + 1;
    if (first < c->n_sink) first = c->n_sink;             /* sinks are exact already */
    if (w && pos + 1 - w > first) first = pos + 1 - w;    /* the sliding window's keys only */
    return first;
}

int kv_recent_floor(const cpu_ctx *c) {
    /* rewinding to r needs keys max(r - w + 1, n_sink) .. r - 1, all >= rec_lo */
    if (!c->n_recent || c->rec_lo <= c->n_sink || c->ctx->n_past == 0) return 1; /* 0: a fresh start */
    return c->rec_lo + c->n_recent - 1;
}

void kv_recent_check(cpu_ctx *c) {
    if (c->ctx->n_past == 0) c->rec_lo = 0;
}

long long kv_recent_bytes(const cpu_ctx *c) {
    if (!c->n_recent) return 0;
    const long long rows = (long long)c->m->n_layer * c->m->n_head_kv * c->rec_rows
                           + (long long)c->ctx->n_batch * c->m->n_head_kv; /* + the batch buffer */
    return rows * c->m->head_dim * 2 * ((c->k_rec != NULL) + (c->v_rec != NULL));
}

/* Query rows of the block (token i = row / n_rep at position n0 - 1 + i) whose window
 * holds key j: tokens from max(j, ...) to the last one whose window still starts <= j. */
static void rows_of_key(const cpu_ctx *c, int layer, int j, int nt, int n0, int n_rep, int *r0, int *r1) {
    int t0 = j - (n0 - 1); /* the first token at or after position j */
    if (t0 < 0) t0 = 0;
    int t1 = t0;
    while (t1 < nt && kv_recent_first(c, layer, n0 - 1 + t1) <= j) t1++;
    *r0 = t0 * n_rep, *r1 = t1 * n_rep;
}

/* Keys some row of the block uses exactly: from the first token's window start to the last token. */
static void block_keys(const cpu_ctx *c, int layer, int nt, int n0, int k0, int *j0, int *j1) {
    *j0 = kv_recent_first(c, layer, n0 - 1);
    if (*j0 < k0) *j0 = k0;
    *j1 = n0 - 1 + nt; /* exclusive */
}

void kv_recent_scores(const cpu_ctx *c, int layer, int h, const float *q, size_t q_stride, int nt, int n0, int k0,
                      float *scores, int ld, float *kf) {
    if (!c->k_rec) return;
    const int D = c->m->head_dim, n_rep = c->m->n_head / c->m->n_head_kv;
    int j0, j1;
    block_keys(c, layer, nt, n0, k0, &j0, &j1);
    for (int j = j0; j < j1; j++) { /* each key converted once for the rows that use it */
        int r0, r1;
        rows_of_key(c, layer, j, nt, n0, n_rep, &r0, &r1);
        if (r0 >= r1) continue;
        kv_exact_load(kv_recent_row(c, 0, layer, h, j), D, kf);
        for (int i = r0; i < r1; i++) {
            const float *qr = q + (size_t)(i / n_rep) * q_stride + (size_t)(i % n_rep) * D; /* (D) */
            scores[(size_t)i * ld + j - k0] = kv_exact_dot(qr, kf, D);
        }
    }
}

void kv_recent_values(const cpu_ctx *c, int layer, int h, const float *p, int ld, int nt, int n0, int k0, float *acc,
                      float *kf) {
    if (!c->v_rec) return;
    const int D = c->m->head_dim, n_rep = c->m->n_head / c->m->n_head_kv;
    int j0, j1;
    block_keys(c, layer, nt, n0, k0, &j0, &j1);
    for (int j = j0; j < j1; j++) { /* per row, the keys in increasing order (as row by row) */
        int r0, r1;
        rows_of_key(c, layer, j, nt, n0, n_rep, &r0, &r1);
        if (r0 >= r1) continue;
        kv_exact_load(kv_recent_row(c, 1, layer, h, j), D, kf);
        for (int i = r0; i < r1; i++) kv_exact_value(p[(size_t)i * ld + j - k0], kf, D, acc + (size_t)i * D);
    }
}
