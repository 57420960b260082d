/* forward.c — the transformer forward pass behind kvc_eval.
 *
 * Per layer: RMSNorm → Q/K/V projections (+bias) → RoPE → append K/V to the
 * cache → causal GQA attention → output projection → residual; RMSNorm →
 * SwiGLU MLP → residual. Matrix products quantize the activations once per
 * vec_dot type and split weight rows across the thread pool (decode is a
 * bandwidth-bound matvec; prefill runs the kernels' blocked GEMM). Attention
 * scores a group of query heads against its KV head's cached keys with the
 * same GEMM kernel, so K in q8_0/q4_0 is scored with integer dot products;
 * TurboQuant caches take a block of query tokens per work item instead, so
 * that each cached row is decoded once per block rather than once per token. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "kv_cache.h"
#include "model.h"
#include "util.h"

/* ---- matrix products ---- */

typedef struct {
    const tview *w;
    const float *bias; /* (w->ne1) or NULL */
    float *out;        /* row t at out + t * w->ne1 */
    const uint8_t *a;  /* (T) activation rows in w->vec_dot_type */
} mm_job;

typedef struct {
    int T, n_jobs;
    mm_job jobs[3];
} mm_task;

static void mm_run(void *arg, int ith, int nth) {
    mm_task *task = arg;
    for (int j = 0; j < task->n_jobs; j++) {
        const mm_job *jb = &task->jobs[j];
        const tview *w = jb->w;
        long long r0, r1;
        kvc_split(w->ne1, ith, nth, 16, &r0, &r1);
        if (r1 <= r0) continue;
        kvc_gemm(w->type, KVC_IMPL_AUTO, r1 - r0, task->T, w->ne0, w->data + (size_t)r0 * w->row_bytes, jb->a,
                 jb->out + r0, w->ne1);
        if (jb->bias)
            for (int t = 0; t < task->T; t++)
                for (long long r = r0; r < r1; r++) jb->out[(size_t)t * w->ne1 + r] += jb->bias[r];
    }
}

typedef struct {
    int type, T;
    long long n;
    const float *x; /* (T, n) */
    uint8_t *dst;   /* (T) rows of kvc_row_bytes(type, n) */
} quant_task;

static void quant_run(void *arg, int ith, int nth) {
    quant_task *q = arg;
    long long t0, t1;
    kvc_split(q->T, ith, nth, 1, &t0, &t1);
    size_t rb = kvc_row_bytes(q->type, q->n);
    for (long long t = t0; t < t1; t++) kvc_quantize_row(q->type, KVC_IMPL_AUTO, q->x + t * q->n, q->dst + t * rb, q->n);
}

/* outs[i] (T, ws[i]->ne1) = x (T, n) · ws[i]ᵀ + biases[i], for up to 3 weights sharing x. */
static void matmul(kvc_context *c, int T, const float *x, long long n, int count, const tview **ws,
                   const float **biases, float **outs) {
    mm_task task = {.T = T, .n_jobs = count};
    int types[3];
    const uint8_t *bufs[3];
    int n_types = 0;
    for (int i = 0; i < count; i++) {
        int vdt = ws[i]->vec_dot_type, k = 0;
        while (k < n_types && types[k] != vdt) k++;
        if (k == n_types) {
            types[n_types] = vdt;
            if (vdt == KVC_TYPE_F32) {
                bufs[n_types] = (const uint8_t *)x;
            } else {
                quant_task q = {vdt, T, n, x, c->aq[n_types]};
                if (T < 8)
                    quant_run(&q, 0, 1);
                else
                    kvc_pool_run(c->pool, quant_run, &q);
                bufs[n_types] = c->aq[n_types];
            }
            n_types++;
        }
        task.jobs[i] = (mm_job){ws[i], biases[i], outs[i], bufs[k]};
    }
    kvc_pool_run(c->pool, mm_run, &task);
}

static void matmul1(kvc_context *c, int T, const float *x, const tview *w, const float *bias, float *out) {
    matmul(c, T, x, w->ne0, 1, &w, &bias, &out);
}

/* ---- RoPE ---- */

/* cs (T, D/2, 2): cos and sin of pos * freq for each token and pair, angles in double. */
static void rope_table(const kvc_model *m, int pos0, int T, float *cs) {
    const int P = m->head_dim / 2;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < P; j++) {
            double a = (double)(pos0 + t) * (double)m->rope_freqs[j];
            cs[((size_t)t * P + j) * 2] = (float)cos(a);
            cs[((size_t)t * P + j) * 2 + 1] = (float)sin(a);
        }
}

/* Rotate x (T, n_heads, D) in place; pair j uses column src[j] of cs (src: (D/2), the
 * layer's permuted θ table in the folded layout, else the identity). */
static void rope_apply(const kvc_model *m, const int *src, int T, int n_heads, float *x, const float *cs) {
    const int D = m->head_dim, P = D / 2;
    const int stride = m->rope_pairing == KVC_ROPE_NEOX ? 1 : 2; /* index step between pairs */
    const int partner = m->rope_pairing == KVC_ROPE_NEOX ? P : 1;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * D;
            const float *tc = cs + (size_t)t * P * 2;
            for (int j = 0; j < P; j++) {
                float *a = v + j * stride, *b = a + partner;
                float c0 = tc[2 * src[j]], s0 = tc[2 * src[j] + 1];
                float xa = *a, xb = *b;
                *a = xa * c0 - xb * s0;
                *b = xa * s0 + xb * c0;
            }
        }
}

/* ---- attention ---- */

typedef struct {
    kvc_context *c;
    int layer, T;
    int tb, n_blocks; /* TurboQuant: query tokens per work item, items per KV head; tb 0: one token each */
    atomic_int next;  /* TurboQuant: next work item */
} attn_task;

/* Causal attention of query tokens t0..t1-1 of KV head h (all n_rep query heads). */
static void attn_block(attn_task *at, attn_scratch *s, int h, int t0, int t1) {
    kvc_context *c = at->c;
    const kvc_model *m = c->m;
    const int D = m->head_dim, Hk = m->n_head_kv, n_rep = m->n_head / Hk;
    const size_t QD = (size_t)m->n_head * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int nt = t1 - t0, n0 = c->n_past + t0 + 1, ld = n0 + nt - 1; /* token t0 + i sees n0 + i keys */
    const float *q = c->q + t0 * QD + (size_t)h * n_rep * D; /* token i: (n_rep, D) at q + i * QD */
    float *out = c->att + t0 * QD + (size_t)h * n_rep * D;   /* token i: (n_rep, D) at out + i * QD */
    kv_scores(c, s, at->layer, h, q, QD, nt, n0, s->scores, ld);
    for (int i = 0; i < nt * n_rep; i++) {
        float *row = s->scores + (size_t)i * ld; /* (n0 + i / n_rep) keys */
        c->ops->scale(n0 + i / n_rep, scale, row);
        c->ops->softmax(n0 + i / n_rep, row);
    }
    kv_values(c, s, at->layer, h, s->scores, ld, nt, n0, out, QD);
    if (c->v_mean) /* the cache holds v − μ_v; the weights sum to 1 */
        for (int i = 0; i < nt * n_rep; i++)
            c->ops->axpy(D, 1.0f, c->v_mean + ((size_t)at->layer * Hk + h) * D,
                         out + (i / n_rep) * QD + (size_t)(i % n_rep) * D);
}

static void attn_run(void *arg, int ith, int nth) {
    attn_task *at = arg;
    attn_scratch *s = &at->c->scratch[ith];
    const int Hk = at->c->m->n_head_kv;
    if (!at->tb) { /* f32/f16/q8_0/q4_0 caches: (token, KV head) items, round robin */
        for (int i = ith; i < at->T * Hk; i += nth) attn_block(at, s, i % Hk, i / Hk, i / Hk + 1);
        return;
    }
    /* TurboQuant: (KV head, block of tokens) items, taken from a shared counter so
     * that threads stay busy whatever Hk and T; the costliest (latest) blocks first */
    for (int i; (i = atomic_fetch_add_explicit(&at->next, 1, memory_order_relaxed)) < at->n_blocks * Hk;) {
        const int t0 = (at->n_blocks - 1 - i / Hk) * at->tb;
        attn_block(at, s, i % Hk, t0, t0 + at->tb < at->T ? t0 + at->tb : at->T);
    }
}

/* Run attention for one layer. TurboQuant blocks: at most kv_block_tokens tokens, and
 * small enough that there are about 4 items per thread. */
static void attention(kvc_context *c, int layer, int T) {
    attn_task at = {.c = c, .layer = layer, .T = T};
    atomic_init(&at.next, 0);
    const int tb_max = kv_block_tokens(c);
    if (tb_max) {
        const int Hk = c->m->n_head_kv, per_head = (4 * c->n_threads + Hk - 1) / Hk; /* blocks wanted per KV head */
        int tb = (T + per_head - 1) / per_head;
        at.tb = tb < 1 ? 1 : tb > tb_max ? tb_max : tb;
        at.n_blocks = (T + at.tb - 1) / at.tb;
    }
    kvc_pool_run(c->pool, attn_run, &at);
}

/* ---- one batch ---- */

static void capture(kvc_context *c, int l, int T) {
    const kvc_model *m = c->m;
    const size_t QD = (size_t)m->n_head * m->head_dim, KD = (size_t)m->n_head_kv * m->head_dim;
    const size_t base = (size_t)l * c->n_batch;
    memcpy(c->cap_q + base * QD, c->q, sizeof(float) * T * QD);
    memcpy(c->cap_k + base * KD, c->k, sizeof(float) * T * KD);
    memcpy(c->cap_v + base * KD, c->v, sizeof(float) * T * KD);
}

static void forward_batch(kvc_context *c, const int *tokens, int T, float *logits, int all_logits) {
    const kvc_model *m = c->m;
    const long long E = m->n_embd, F = m->n_ff;
    const kvc_vec_ops *ops = c->ops;
    for (int t = 0; t < T; t++)
        kvc_dequantize_row(m->tok_embd.type, KVC_IMPL_AUTO, m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes,
                           c->x + t * E, E);
    rope_table(m, c->n_past, T, c->rope_cs);
    if (c->k_center) memcpy(c->rope_all + (size_t)c->n_past * m->head_dim, c->rope_cs, sizeof(float) * T * m->head_dim);
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        for (int t = 0; t < T; t++) ops->rms_norm(E, c->x + t * E, w->attn_norm, m->rms_eps, c->xn + t * E);
        const tview *qkv[3] = {&w->wq, &w->wk, &w->wv};
        const float *qkv_b[3] = {w->bq, w->bk, w->bv};
        float *qkv_o[3] = {c->q, c->k, c->v};
        matmul(c, T, c->xn, E, 3, qkv, qkv_b, qkv_o);
        if (c->cap_q) capture(c, l, T);
        kv_center(c, l, T);
        const int *src = m->rope_src + (size_t)l * (m->head_dim / 2);
        rope_apply(m, src, T, m->n_head, c->q, c->rope_cs);
        rope_apply(m, src, T, m->n_head_kv, c->k, c->rope_cs);
        kv_store(c, l, T);
        attention(c, l, T);
        matmul1(c, T, c->att, &w->wo, w->bo, c->xn);
        ops->axpy((int)(T * E), 1.0f, c->xn, c->x);
        for (int t = 0; t < T; t++) ops->rms_norm(E, c->x + t * E, w->ffn_norm, m->rms_eps, c->xn + t * E);
        const tview *gu[2] = {&w->gate, &w->up};
        const float *gu_b[2] = {NULL, NULL};
        float *gu_o[2] = {c->gate, c->up};
        matmul(c, T, c->xn, E, 2, gu, gu_b, gu_o);
        ops->silu_mul((int)(T * F), c->gate, c->up, c->gate);
        matmul1(c, T, c->gate, &w->down, NULL, c->xn);
        ops->axpy((int)(T * E), 1.0f, c->xn, c->x);
    }
    c->n_past += T;
    c->k_mean_ready = c->k_mean_ready || c->k_center;
    if (!logits) return;
    const int first = all_logits ? 0 : T - 1, n_out = T - first;
    for (int t = first; t < T; t++) ops->rms_norm(E, c->x + t * E, m->output_norm, m->rms_eps, c->xn + (t - first) * E);
    matmul1(c, n_out, c->xn, &m->output, NULL, logits);
}

int kvc_eval(kvc_context *c, const int *tokens, int n, float *logits, int all_logits) {
    if (!c) return KVC_ERR_INVALID;
    c->err[0] = 0;
    if (n <= 0 || !tokens) {
        snprintf(c->err, sizeof c->err, "no tokens to evaluate");
        return KVC_ERR_INVALID;
    }
    if (c->n_past + (long long)n > c->n_ctx) {
        snprintf(c->err, sizeof c->err, "%d tokens do not fit: %d of %d context positions are used", n, c->n_past,
                 c->n_ctx);
        return KVC_ERR_CONTEXT_FULL;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->n_vocab) {
            snprintf(c->err, sizeof c->err, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                     c->m->n_vocab);
            return KVC_ERR_INVALID;
        }
    const long long V = c->m->n_vocab;
    for (int i = 0; i < n; i += c->n_batch) {
        int T = n - i < c->n_batch ? n - i : c->n_batch;
        int last = i + T == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (size_t)i * V;
        else if (logits && last) lg = logits;
        forward_batch(c, tokens + i, T, lg, all_logits);
    }
    return KVC_OK;
}
