/* kv_cache.c — see kv_cache.h. K centering (docs/design.md §2): the cache holds
 * R_n(k − μ) and scores add back q·R_n·μ exactly, per centered pair j:
 *   q·R_n μ_j = cos(nθ_j)·(q_a μ_a + q_b μ_b) + sin(nθ_j)·(q_b μ_a − q_a μ_b)
 * where (a, b) are the pair's channels in the file's RoPE pairing. Only the
 * pairs holding most of μ's energy are centered, so the correction costs a few
 * multiply-adds per key.
 *
 * Attention sinks: the first token of a sequence typically draws a large share
 * of every head's attention with a key far from the others (on Qwen2.5 its norm
 * is ~3.5x the median), so its quantization error moves whole attention rows.
 * With n_sink > 0 a TurboQuant cache also keeps positions < n_sink exactly:
 * their K scores are recomputed from an fp16 copy of the cached key, and V adds
 * an fp16 correction (value − decoded row) with the same attention weights.
 * The recent window (kv_recent.c) does the same for the last n_recent positions
 * before each query, with the same formulas (kv_exact_*). */
#include "kv_cache.h"
#include "kv_basis.h"
#include "kv_recent.h"

#include "quants.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Attention works on blocks of query tokens: about this many query rows per block
 * (tokens × GQA group; their queries and V accumulators stay in L1),
 * with at most this many bytes in a thread's (block rows, C) score buffer. */
#define KV_BLOCK_QUERIES 48
#define KV_BLOCK_SCORE_BYTES (16ll << 20)

static int std_type_ok(int t) {
    return t == KVC_TYPE_F32 || t == KVC_TYPE_F16 || t == KVC_TYPE_Q8_0 || t == KVC_TYPE_Q4_0;
}

static inline void pair_channels(const kvc_model *m, int j, int *a, int *b) {
    if (m->rope_pairing == KVC_ROPE_NEOX) *a = j, *b = j + m->head_dim / 2;
    else *a = 2 * j, *b = 2 * j + 1;
}

/* Keep the max_pairs pairs of largest energy in mean (D) (0: all); zero the rest. */
static void select_pairs(const kvc_model *m, int max_pairs, float *mean, int *pairs) {
    const int P = m->head_dim / 2;
    int n = max_pairs > 0 && max_pairs < P ? max_pairs : P;
    float energy[TQ_MAX_DIM / 2];
    int order[TQ_MAX_DIM / 2];
    for (int j = 0; j < P; j++) {
        int a, b;
        pair_channels(m, j, &a, &b);
        energy[j] = mean[a] * mean[a] + mean[b] * mean[b];
        order[j] = j;
    }
    for (int i = 1; i < P; i++) /* insertion sort, descending energy (P ≤ 512) */
        for (int k = i; k > 0 && energy[order[k]] > energy[order[k - 1]]; k--) {
            int t = order[k];
            order[k] = order[k - 1], order[k - 1] = t;
        }
    for (int i = 0; i < P; i++) pairs[i] = i < n ? order[i] : -1;
    for (int i = n; i < P; i++) {
        int a, b;
        pair_channels(m, order[i], &a, &b);
        mean[a] = mean[b] = 0.0f;
    }
}

static int tq_layer_ok(const kvc_tq_layer *t) { return t != NULL; }

int kv_init(cpu_ctx *c, const kvc_context_params *p, char *err, int err_len) {
    const kvc_model *m = c->m;
    const int L = m->n_layer, Hk = m->n_head_kv, D = m->head_dim, n_rep = m->n_head / m->n_head_kv;
    const int k_tq = p->type_k == KVC_CACHE_TQ, v_tq = p->type_v == KVC_CACHE_TQ;
    if ((!k_tq && !std_type_ok(p->type_k)) || (!v_tq && !std_type_ok(p->type_v)))
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "cache types must be f32, f16, q8_0, q4_0 or TurboQuant");
    if ((k_tq && !tq_layer_ok(p->tq_k)) || (v_tq && !tq_layer_ok(p->tq_v)))
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "TurboQuant caches need one config per layer");
    if (D > TQ_MAX_DIM) return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "head_dim %d is too large", D);
    c->tq_scale_mode = p->tq_scale_mode;
    c->tq_v_scale_mode = kvc_v_scale_mode(p);
    c->k_rb = calloc((size_t)L, sizeof(size_t));
    c->v_rb = calloc((size_t)L, sizeof(size_t));
    c->kv = calloc((size_t)L, sizeof(kv_layer));
    c->kv_cap = calloc((size_t)L, sizeof(int));
    c->kv_base = calloc((size_t)L, sizeof(int));
    if (!c->kv_cap || !c->kv_base) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < L; l++) { /* a sliding-window layer: its window, a batch, and a batch to rewind */
        const long long w = m->layers[l].window, want = 2 * w + 2 * (long long)c->ctx->n_batch;
        c->kv_cap[l] = w && !p->kv_keep_all && want < c->ctx->n_ctx ? (int)want : c->ctx->n_ctx;
    }
    /* per thread of the context's pool (kv_store): permuted k | encode scratch (2D) | centered v */
    c->enc_tmp = malloc(sizeof(float) * 4 * (size_t)D * (size_t)(c->ctx->n_threads > 0 ? c->ctx->n_threads : 1));
    if (k_tq) c->tq_k = calloc((size_t)L, sizeof(tq_layout));
    if (v_tq) c->tq_v = calloc((size_t)L, sizeof(tq_layout));
    if (!c->k_rb || !c->v_rb || !c->kv || !c->enc_tmp || (k_tq && !c->tq_k) || (v_tq && !c->tq_v))
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < L; l++) {
        for (int kind = 0; kind < 2; kind++) {
            const int tq = kind ? v_tq : k_tq;
            size_t rb;
            if (tq) {
                const kvc_tq_layer *t = kind ? &p->tq_v[l] : &p->tq_k[l];
                if (kind && (t->qjl_hi || t->qjl_lo || t->perm || t->basis || t->qbasis))
                    return kvc_fail(err, err_len, KVC_ERR_INVALID,
                                    "layer %d: V caches take no QJL, no permutation and no basis", l);
                if (!t->basis != !t->qbasis)
                    return kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: a K basis needs its query twin", l);
                if (t->basis_block < 0 || (t->basis_block && !t->basis))
                    return kvc_fail(err, err_len, KVC_ERR_INVALID,
                                    "layer %d: basis_block %d (needs a basis; 0 or positive)", l, t->basis_block);
                tq_layout *lay = kind ? &c->tq_v[l] : &c->tq_k[l];
                int st = tq_layout_init(lay, D, t->n_hi, t->hi_bits, t->lo_bits, t->qjl_hi, t->qjl_lo, t->codebook_hi,
                                        t->codebook_lo, t->perm, p->tq_seed, l, t->scale8, t->scale_base, t->trellis);
                if (st != KVC_OK)
                    return kvc_fail(err, err_len, st,
                                    "layer %d: invalid TurboQuant %s config (n_hi %d, bits %d/%d, scale8 %d base %d, "
                                    "trellis %d)", l, kind ? "V" : "K", t->n_hi, t->hi_bits, t->lo_bits, t->scale8,
                                    t->scale_base, t->trellis);
                lay->basis = t->basis, lay->qbasis = t->qbasis, lay->basis_block = t->basis_block;
                rb = (size_t)lay->row_bytes;
            } else {
                rb = kvc_row_bytes(kind ? p->type_v : p->type_k, D);
                if (!rb) return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "head_dim %d does not fit the cache type", D);
            }
            size_t bytes = (size_t)Hk * (size_t)c->kv_cap[l] * rb + 8; /* slack: code reads may run 2 bytes past */
            if (kind) c->v_rb[l] = rb, c->kv[l].v = malloc(bytes);
            else c->k_rb[l] = rb, c->kv[l].k = malloc(bytes);
            if (!(kind ? c->kv[l].v : c->kv[l].k))
                return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory for a context of %d tokens", c->ctx->n_ctx);
        }
    }
    if (!k_tq) {
        int bs, ts;
        kvc_type_info(p->type_k, &bs, &ts, &c->k_vec_dot_type);
    }
    if (p->n_sink < 0 || p->n_sink > 64)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_sink must be 0..64, got %d", p->n_sink);
    c->n_sink = (k_tq || v_tq) ? (p->n_sink < c->ctx->n_ctx ? p->n_sink : c->ctx->n_ctx) : 0;
    if (c->n_sink) {
        const size_t n = (size_t)L * Hk * c->n_sink * D;
        if (k_tq && !(c->k_sink = calloc(n, sizeof(uint16_t))))
            return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        if (v_tq && !(c->v_sink = calloc(n, sizeof(uint16_t))))
            return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    }
    const int st_rec = kv_recent_init(c, p, err, err_len);
    if (st_rec != KVC_OK) return st_rec;
    c->k_center = p->k_center != 0;
    c->k_center_pairs = p->k_center_pairs;
    c->k_mean_folded = p->k_mean_folded != 0;
    if (c->k_mean_folded && (!c->k_center || !p->k_mean))
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "a K mean folded into the weights needs k_center and k_mean");
    if (p->v_mean) {
        c->v_mean = malloc(sizeof(float) * (size_t)L * Hk * D);
        if (!c->v_mean) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        memcpy(c->v_mean, p->v_mean, sizeof(float) * (size_t)L * Hk * D);
    }
    if (c->k_center) {
        c->k_mean = calloc((size_t)L * Hk * D, sizeof(float));
        c->k_pairs = malloc(sizeof(int) * (size_t)L * Hk * (D / 2));
        c->rope_cols = malloc(sizeof(float) * (size_t)m->n_rope * c->ctx->n_ctx * D);
        if (!c->k_mean || !c->k_pairs || !c->rope_cols) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        if (p->k_mean) {
            memcpy(c->k_mean, p->k_mean, sizeof(float) * (size_t)L * Hk * D);
            for (int i = 0; i < L * Hk; i++)
                select_pairs(m, c->k_center_pairs, c->k_mean + (size_t)i * D, c->k_pairs + (size_t)i * (D / 2));
            c->k_mean_ready = 1;
        }
    }
    c->flash = !k_tq && !v_tq && !c->k_center && n_rep <= KVC_ATTN_ROWS;
    const int tb = kv_block_tokens(c);
    const size_t nq = (size_t)(tb > 0 ? tb : 1) * n_rep; /* query rows of one work item */
    const size_t W = KVC_ATTN_ROWS, KT = KVC_ATTN_KEYS;
    for (int i = 0; i < c->ctx->n_threads; i++) {
        attn_scratch *s = &c->scratch[i];
        if (c->flash) { /* qt (D, W) | o (W, D) | m, l (W) | st (KT, W) | k, v tiles (KT, D) */
            s->flash = malloc(sizeof(float) * (2 * D * W + 2 * W + KT * W + 2 * KT * D));
            if (!s->flash) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        } else if (!(s->scores = malloc(sizeof(float) * nq * c->ctx->n_ctx)))
            return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        s->qp = malloc(sizeof(float) * nq * D);
        s->corr = malloc(sizeof(float) * (nq > 2 ? nq : 2) * D); /* also kv_basis_query's (2D) scratch */
        /* one allocation: the header, then its qr (nq, D) and w (nq, D) */
        s->tq = k_tq ? malloc(sizeof(tq_query) + sizeof(float) * 2 * nq * D) : NULL;
        if (!s->qp || !s->corr || (k_tq && !s->tq)) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        if (k_tq) s->tq->qr = (float *)(s->tq + 1), s->tq->w = s->tq->qr + nq * D;
    }
    return KVC_OK;
}

void kv_free(cpu_ctx *c) {
    if (c->kv)
        for (int i = 0; i < c->n_layer; i++) free(c->kv[i].k), free(c->kv[i].v);
    for (int i = 0; c->tq_k && i < c->n_layer; i++) tq_layout_free(&c->tq_k[i]);
    for (int i = 0; c->tq_v && i < c->n_layer; i++) tq_layout_free(&c->tq_v[i]);
    if (c->scratch)
        for (int i = 0; i < c->ctx->n_threads; i++) free(c->scratch[i].qp), free(c->scratch[i].corr), free(c->scratch[i].tq), free(c->scratch[i].flash);
    free(c->kv), free(c->tq_k), free(c->tq_v), free(c->k_rb), free(c->v_rb), free(c->enc_tmp);
    free(c->kv_cap), free(c->kv_base);
    free(c->k_mean), free(c->k_pairs), free(c->rope_cols), free(c->v_mean), free(c->k_sink), free(c->v_sink);
    kv_recent_free(c);
}

static inline uint16_t *sink_row(const cpu_ctx *c, uint16_t *base, int l, int h, int pos) {
    return base + (((size_t)l * c->m->n_head_kv + h) * c->n_sink + pos) * c->m->head_dim;
}

/* Row of position pos (>= kv_base[l]) of KV head h in layer l. */
static inline uint8_t *k_row(const cpu_ctx *c, int l, int h, int pos) {
    return c->kv[l].k + ((size_t)h * c->kv_cap[l] + (size_t)(pos - c->kv_base[l])) * c->k_rb[l];
}
static inline uint8_t *v_row(const cpu_ctx *c, int l, int h, int pos) {
    return c->kv[l].v + ((size_t)h * c->kv_cap[l] + (size_t)(pos - c->kv_base[l])) * c->v_rb[l];
}

int kv_first_key(const cpu_ctx *c, int layer, int n0) {
    const int w = c->m->layers[layer].window;
    return w && n0 > w ? n0 - w : 0;
}

int kv_rewind_floor(const kvc_context *ctx) {
    const cpu_ctx *c = ctx->be;
    int floor = kv_recent_floor(c); /* the recent window's ring */
    for (int l = 0; l < c->n_layer; l++) /* position n_past sees keys from n_past + 1 - window */
        if (c->kv_base[l] > 0 && c->kv_base[l] + c->m->layers[l].window - 1 > floor)
            floor = c->kv_base[l] + c->m->layers[l].window - 1;
    return floor;
}

int kv_check_window(cpu_ctx *c, char *err, int err_len) {
    const int n_past = c->ctx->n_past;
    kv_recent_check(c);
    if (n_past > 0 && n_past < kv_recent_floor(c))
        return kvc_fail(err, err_len, KVC_ERR_INVALID,
                        "the recent window holds positions from %d on, and position %d needs earlier ones: the "
                        "context was rewound too far (evaluate from 0 again)", c->rec_lo, n_past);
    for (int l = 0; l < c->n_layer; l++) {
        if (c->kv_cap[l] == c->ctx->n_ctx) continue;
        if (n_past == 0) c->kv_base[l] = 0;
        if (kv_first_key(c, l, n_past + 1) < c->kv_base[l])
            return kvc_fail(err, err_len, KVC_ERR_INVALID,
                            "layer %d's sliding-window cache holds positions from %d on, and position %d needs "
                            "earlier ones: the context was rewound too far (evaluate from 0 again)",
                            l, c->kv_base[l], n_past);
    }
    return KVC_OK;
}

/* Make room for T more rows of a sliding-window layer: when they would not fit, drop the
 * rows no query can see any more, keeping the window before n_past plus one batch (so
 * that a rewind of up to n_batch tokens still finds its keys), and move the rest to the
 * front. Every row moves at most once per (cap - window - 2 batches) appended. */
static void kv_make_room(cpu_ctx *c, int layer, int T) {
    const int n_past = c->ctx->n_past, base = c->kv_base[layer], cap = c->kv_cap[layer];
    if (cap == c->ctx->n_ctx || n_past + T - base <= cap) return;
    int keep_from = n_past - (c->m->layers[layer].window - 1) - c->ctx->n_batch;
    keep_from = keep_from > base ? keep_from : base;
    const size_t n = (size_t)(n_past - keep_from), off = (size_t)(keep_from - base);
    for (int h = 0; h < c->m->n_head_kv; h++) {
        uint8_t *k = c->kv[layer].k + (size_t)h * cap * c->k_rb[layer];
        uint8_t *v = c->kv[layer].v + (size_t)h * cap * c->v_rb[layer];
        memmove(k, k + off * c->k_rb[layer], n * c->k_rb[layer]);
        memmove(v, v + off * c->v_rb[layer], n * c->v_rb[layer]);
    }
    c->kv_base[layer] = keep_from;
}

void kv_center(cpu_ctx *c, int layer, int T) {
    if (!c->k_center || c->k_mean_folded) return;
    const kvc_model *m = c->m;
    const int Hk = m->n_head_kv, D = m->head_dim;
    float *mean = c->k_mean + (size_t)layer * Hk * D;
    if (!c->k_mean_ready) { /* first batch: its mean, fixed from then on */
        for (int h = 0; h < Hk; h++) {
            float *mu = mean + (size_t)h * D;
            for (int i = 0; i < D; i++) {
                double s = 0;
                for (int t = 0; t < T; t++) s += c->k[((size_t)t * Hk + h) * D + i];
                mu[i] = (float)(s / T);
            }
            select_pairs(m, c->k_center_pairs, mu, c->k_pairs + ((size_t)layer * Hk + h) * (D / 2));
        }
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hk; h++) {
            float *k = c->k + ((size_t)t * Hk + h) * D;
            const float *mu = mean + (size_t)h * D;
            for (int i = 0; i < D; i++) k[i] -= mu[i];
        }
}

/* Write token t, KV head h of the batch into the caches; tmp: this thread's (4D) scratch. */
static void store_one(cpu_ctx *c, int layer, int t, int h, float *tmp) {
    const kvc_model *m = c->m;
    const int Hk = m->n_head_kv, D = m->head_dim;
    float *scratch = tmp + D;
    const int pos = c->ctx->n_past + t;
    const float *k = c->k + ((size_t)t * Hk + h) * D;
    const float *v = c->v + ((size_t)t * Hk + h) * D;
    if (c->v_mean) {
        const float *mu = c->v_mean + ((size_t)layer * Hk + h) * D;
        float *vc = tmp + 3 * (size_t)D;
        for (int i = 0; i < D; i++) vc[i] = v[i] - mu[i];
        v = vc;
    }
    if (c->tq_k) {
        const tq_layout *L = &c->tq_k[layer];
        if (pos < c->n_sink) kv_exact_key(k, D, sink_row(c, c->k_sink, layer, h, pos));
        if (c->k_rec) kv_exact_key(k, D, kv_recent_row(c, 0, layer, h, pos));
        if (L->basis) { /* k' = k (turned back to its block's start)[perm] · basis[h]; scratch is free here */
            kv_basis_key(c, layer, h, pos, k, tmp, scratch);
            k = tmp;
        } else if (L->perm) {
            for (int i = 0; i < D; i++) tmp[i] = k[L->perm[i]];
            k = tmp;
        }
        c->kern->tq_encode(L, c->tq_scale_mode, k, k_row(c, layer, h, pos), scratch);
    } else {
        c->kern->type[c->type_k].quantize(k, k_row(c, layer, h, pos), D);
    }
    if (c->tq_v) {
        c->kern->tq_encode(&c->tq_v[layer], c->tq_v_scale_mode, v, v_row(c, layer, h, pos), scratch);
        uint16_t *vs = pos < c->n_sink ? sink_row(c, c->v_sink, layer, h, pos) : NULL;
        uint16_t *vr = c->v_rec ? kv_recent_row(c, 1, layer, h, pos) : NULL;
        if (vs || vr) { /* correction = value − decoded row (scratch: 2D floats), computed once */
            kv_exact_residual(&c->tq_v[layer], v, v_row(c, layer, h, pos), D, scratch, vr ? vr : vs);
            if (vs && vr) memcpy(vs, vr, sizeof(uint16_t) * (size_t)D);
        }
    } else c->kern->type[c->type_v].quantize(v, v_row(c, layer, h, pos), D);
}

typedef struct {
    cpu_ctx *c;
    int layer, T;
} store_task;

static void store_run(void *arg, int ith, int nth) {
    const store_task *s = (const store_task *)arg;
    const int Hk = s->c->m->n_head_kv, D = s->c->m->head_dim;
    long long b, e;
    kvc_split((long long)s->T * Hk, ith, nth, 1, &b, &e);
    float *tmp = s->c->enc_tmp + (size_t)ith * 4 * D; /* (4D) this thread's */
    for (long long i = b; i < e; i++) store_one(s->c, s->layer, (int)(i / Hk), (int)(i % Hk), tmp);
}

/* Every (token, KV head) of a batch writes its own rows (codes, sink and ring rows), so the
 * context's pool splits them: a trellis encode (a Viterbi search per group) is the costly part. */
void kv_store(cpu_ctx *c, int layer, int T) {
    kv_make_room(c, layer, T);
    store_task s = {c, layer, T};
    if (c->pool && kvc_pool_size(c->pool) > 1 && (long long)T * c->m->n_head_kv > 1 && (c->tq_k || c->tq_v))
        kvc_pool_run(c->pool, store_run, &s);
    else
        store_run(&s, 0, 1);
}

/* Offset of query row i of a block (token i / n_rep, head i % n_rep) in a buffer whose
 * tokens are stride floats apart: the layout of q in kv_scores and of out in kv_values. */
static inline size_t block_row(int i, int n_rep, size_t stride, int D) {
    return (size_t)(i / n_rep) * stride + (size_t)(i % n_rep) * D;
}

int kv_block_tokens(const cpu_ctx *c) {
    const long long n_rep = c->m->n_head / c->m->n_head_kv;
    long long tb = c->flash ? KVC_ATTN_ROWS / n_rep : (KV_BLOCK_QUERIES + n_rep - 1) / n_rep;
    const long long fit = KV_BLOCK_SCORE_BYTES / (n_rep * c->ctx->n_ctx * (long long)sizeof(float));
    if (tb > fit) tb = fit;
    if (tb > c->ctx->n_batch) tb = c->ctx->n_batch;
    return tb > 1 ? (int)tb : 1;
}

void kv_scores(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *q, size_t q_stride, int nt, int n0,
               float *scores, int ld) {
    const kvc_model *m = c->m;
    const int D = m->head_dim, P = D / 2, n_rep = m->n_head / m->n_head_kv, nq = nt * n_rep;
    const int k0 = kv_first_key(c, layer, n0), n0r = n0 - k0; /* keys k0.. (sliding window); column j = key k0 + j */
    if (c->tq_k) { /* every key decoded once for the nt * n_rep queries */
        const tq_layout *L = &c->tq_k[layer];
        const int nk = n0r + nt - 1; /* columns */
        /* one segment of keys, or (a basis following RoPE) one per block of positions, each scored by
         * the queries turned like its keys; a segment is [c0, c1) of the columns */
        for (int c0 = 0, c1; c0 < nk; c0 = c1) {
            const int p0 = kv_basis_start(L, k0 + c0);
            c1 = L->basis_block > 0 && p0 + L->basis_block - k0 < nk ? p0 + L->basis_block - k0 : nk;
            for (int i = 0; i < nq; i++) {
                const float *qr = q + block_row(i, n_rep, q_stride, D); /* (D) */
                if (L->qbasis) { /* q' = q (turned back by p0)[perm] · qbasis[h] */
                    kv_basis_query(c, layer, h, p0, qr, s->qp, s->corr);
                    qr = s->qp;
                } else if (L->perm) {
                    for (int k = 0; k < D; k++) s->qp[k] = qr[L->perm[k]];
                    qr = s->qp;
                }
                tq_prepare_query(L, qr, s->tq->qr + (size_t)i * D, s->tq->w + (size_t)i * D);
            }
            if (c1 <= n0r) { /* every query sees the whole segment: one group of nq */
                c->kern->tq_score(L, s->tq, nq, nq, c1 - c0, k_row(c, layer, h, k0 + c0), scores + c0, ld);
            } else { /* from the first query seeing column c0; columns past c1 are rescored by later segments */
                const int r0 = tq_first_seeing(c0, n_rep, n0r);
                const tq_query sub = {s->tq->qr + (size_t)r0 * D, s->tq->w + (size_t)r0 * D};
                c->kern->tq_score(L, &sub, nq - r0, n_rep, n0r + r0 / n_rep - c0, k_row(c, layer, h, k0 + c0),
                                  scores + (size_t)r0 * ld + c0, ld);
            }
        }
        float *kf = s->corr; /* (D) one exact row in f32; corr is free until the centering below */
        for (int j = k0; j < c->n_sink && j < n0 + nt - 1; j++) { /* sinks: exact scores */
            kv_exact_load(sink_row(c, c->k_sink, layer, h, j), D, kf);
            for (int i = tq_first_seeing(j - k0, n_rep, n0r); i < nq; i++)
                scores[(size_t)i * ld + j - k0] = kv_exact_dot(q + block_row(i, n_rep, q_stride, D), kf, D);
        }
        kv_recent_scores(c, layer, h, q, q_stride, nt, n0, k0, scores, ld, kf); /* the recent window: exact */
    } else { /* one GEMM for the nt * n_rep queries: every key row read once per block */
        const size_t qrb = kvc_row_bytes(c->k_vec_dot_type, D);
        for (int i = 0; i < nq; i++) {
            const float *qr = q + block_row(i, n_rep, q_stride, D); /* (D) */
            if (c->k_vec_dot_type == KVC_TYPE_F32) memcpy(s->qq + i * qrb, qr, qrb);
            else c->kern->type[c->k_vec_dot_type].quantize(qr, s->qq + i * qrb, D);
        }
        /* keys a query does not see yet (later tokens of the block) are scored too, and ignored */
        c->kern->type[c->type_k].gemm(tq_rows_read(nq, n_rep, n0r), nq, D, k_row(c, layer, h, k0), s->qq, scores, ld);
    }
    if (!c->k_center) return;
    /* key n's correction is sum over centered pairs j of A_j cos(n θ_j) + B_j sin(n θ_j), A_j, B_j from the
     * query (docs/design.md §2): per query, 2·np rows of rope_cols (a pair's cos or sin at every key)
     * scaled by its coefficients and added to its visible scores, so a score costs 2·np multiply-adds.
     * By runs of CENTER_KEYS keys, every query in turn, so a run's rows (2·np × CENTER_KEYS floats,
     * 64 KiB at D = 64) are read from L2 by all queries, not from memory by each */
    enum { CENTER_KEYS = 256 };
    const int *pairs = c->k_pairs + ((size_t)layer * m->n_head_kv + h) * P;
    const int *src = m->rope_src + (size_t)layer * P; /* pair -> pair column of the RoPE table */
    const float *mu = c->k_mean + ((size_t)layer * m->n_head_kv + h) * D;
    const size_t C = (size_t)c->ctx->n_ctx;
    const float *cols = c->rope_cols + (size_t)m->layers[layer].rope_set * D * C + k0; /* (D, C) from key k0 */
    const float *rows[TQ_MAX_DIM];
    int np = 0; /* centered pairs */
    for (; np < P && pairs[np] >= 0; np++) {
        rows[2 * np] = cols + (size_t)2 * src[pairs[np]] * C;
        rows[2 * np + 1] = rows[2 * np] + C;
    }
    if (np == 0) return;
    float *coef = s->corr; /* (nq, 2 np) */
    for (int i = 0; i < nq; i++) {
        const float *qr = q + block_row(i, n_rep, q_stride, D); /* (D) */
        for (int k = 0; k < np; k++) {
            int a, b;
            pair_channels(m, pairs[k], &a, &b);
            coef[(size_t)i * 2 * np + 2 * k] = qr[a] * mu[a] + qr[b] * mu[b];
            coef[(size_t)i * 2 * np + 2 * k + 1] = qr[b] * mu[a] - qr[a] * mu[b];
        }
    }
    const int nk = tq_visible(nq - 1, n_rep, n0r); /* the last query sees the most keys */
    for (int j0 = 0; j0 < nk; j0 += CENTER_KEYS) {
        const float *run[TQ_MAX_DIM];
        for (int k = 0; k < 2 * np; k++) run[k] = rows[k] + j0;
        for (int i = tq_first_seeing(j0, n_rep, n0r); i < nq; i++) {
            const int nv = tq_visible(i, n_rep, n0r) - j0;
            c->kern->vec->axpy_rows(nv < CENTER_KEYS ? nv : CENTER_KEYS, 2 * np, coef + (size_t)i * 2 * np, run,
                                    scores + (size_t)i * ld + j0);
        }
    }
}

void kv_values(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *p, int ld, int nt, int n0, float *out,
               size_t out_stride) {
    const int D = c->m->head_dim, n_rep = c->m->n_head / c->m->n_head_kv, nq = nt * n_rep;
    const int k0 = kv_first_key(c, layer, n0), n0r = n0 - k0; /* as kv_scores: column j = key k0 + j */
    if (c->tq_v) { /* every value decoded once for the nt * n_rep queries */
        const tq_layout *L = &c->tq_v[layer];
        float *acc = s->qp; /* (nq, D) rotated domain */
        memset(acc, 0, sizeof(float) * (size_t)nq * D);
        c->kern->tq_accum(L, p, ld, nq, n_rep, n0r, v_row(c, layer, h, k0), acc);
        float *rf = s->corr; /* (D) one exact correction row in f32 */
        for (int i = 0; i < nq; i++) tq_unrotate(L, acc + (size_t)i * D);
        for (int j = k0; j < c->n_sink && j < n0 + nt - 1; j++) { /* sinks: exact values */
            kv_exact_load(sink_row(c, c->v_sink, layer, h, j), D, rf);
            for (int i = tq_first_seeing(j - k0, n_rep, n0r); i < nq; i++)
                kv_exact_value(p[(size_t)i * ld + j - k0], rf, D, acc + (size_t)i * D);
        }
        kv_recent_values(c, layer, h, p, ld, nt, n0, k0, acc, rf); /* the recent window: exact values */
        for (int i = 0; i < nq; i++)
            memcpy(out + block_row(i, n_rep, out_stride, D), acc + (size_t)i * D, sizeof(float) * (size_t)D);
        return;
    }
    for (int i = 0; i < nq; i++)
        memset(out + block_row(i, n_rep, out_stride, D), 0, sizeof(float) * (size_t)D);
    for (int j = 0; j < tq_rows_read(nq, n_rep, n0r); j++) { /* every value row read once per block */
        const float *vr = (const float *)v_row(c, layer, h, k0 + j);
        if (c->type_v != KVC_TYPE_F32) {
            c->kern->type[c->type_v].dequantize(v_row(c, layer, h, k0 + j), s->vrow, D);
            vr = s->vrow;
        }
        for (int i = tq_first_seeing(j, n_rep, n0r); i < nq; i++)
            c->kern->vec->axpy(D, p[(size_t)i * ld + j], vr, out + block_row(i, n_rep, out_stride, D));
    }
}

void kv_attend(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *q, size_t q_stride, int nt, int n0,
               float scale, float *out, size_t out_stride) {
    enum { W = KVC_ATTN_ROWS, KT = KVC_ATTN_KEYS };
    const kvc_model *m = c->m;
    const int D = m->head_dim, n_rep = m->n_head / m->n_head_kv, nq = nt * n_rep, window = m->layers[layer].window;
    const int k0 = kv_first_key(c, layer, n0), nk = n0 - k0 + nt - 1; /* keys k0 .. n0 + nt - 2; column j: k0 + j */
    float *qt = s->flash, *o = qt + (size_t)D * W, *mx = o + (size_t)W * D, *sum = mx + W, *st = sum + W;
    float *kt = st + (size_t)KT * W, *vt = kt + (size_t)KT * D; /* qt (D, W), o (nq, D), st (KT, W), kt, vt (KT, D) */
    int lo_r[W], hi_r[W], lo[W], hi[W]; /* row i sees keys lo_r[i] <= j < hi_r[i]; lo, hi: within a tile */
    memset(qt, 0, sizeof(float) * (size_t)D * W);
    for (int i = 0; i < nq; i++) {
        const float *qr = q + block_row(i, n_rep, q_stride, D); /* (D) */
        for (int d = 0; d < D; d++) qt[(size_t)d * W + i] = qr[d];
        const int n = n0 + i / n_rep; /* keys 0 .. n - 1, from n - window in a sliding-window layer */
        lo_r[i] = (window && n > window ? n - window : 0) - k0, hi_r[i] = n - k0;
    }
    for (int i = 0; i < W; i++) mx[i] = -INFINITY, sum[i] = 0.0f;
    memset(o, 0, sizeof(float) * (size_t)nq * D);
    const kvc_kernels *tk = &c->kern->type[c->type_k], *tv = &c->kern->type[c->type_v];
    for (int j0 = 0; j0 < nk; j0 += KT) {
        const int kc = nk - j0 < KT ? nk - j0 : KT;
        int mask = 0, any = 0;
        for (int i = 0; i < nq; i++) {
            lo[i] = lo_r[i] - j0 < 0 ? 0 : lo_r[i] - j0 > kc ? kc : lo_r[i] - j0;
            hi[i] = hi_r[i] - j0 < 0 ? 0 : hi_r[i] - j0 > kc ? kc : hi_r[i] - j0;
            mask |= lo[i] > 0 || hi[i] < kc;
            any |= hi[i] > lo[i];
        }
        if (!any) continue;
        /* the tile's rows are consecutive in the cache: one conversion each for K and V */
        const float *kp = (const float *)k_row(c, layer, h, k0 + j0), *vp = (const float *)v_row(c, layer, h, k0 + j0);
        if (c->type_k != KVC_TYPE_F32) tk->dequantize(kp, kt, (int64_t)kc * D), kp = kt;
        if (c->type_v != KVC_TYPE_F32) tv->dequantize(vp, vt, (int64_t)kc * D), vp = vt;
        c->kern->attn_tile(nq, D, kc, scale, qt, kp, vp, mask ? lo : NULL, mask ? hi : NULL, mx, sum, o, st);
    }
    for (int i = 0; i < nq; i++) {
        float *orow = out + block_row(i, n_rep, out_stride, D); /* (D) */
        const float inv = 1.0f / sum[i];
        for (int d = 0; d < D; d++) orow[d] = o[(size_t)i * D + d] * inv;
    }
}
