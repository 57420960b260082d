/* forward.c — the CPU backend's transformer forward pass (cpu_forward), behind
 * kvc_eval and kvc_eval_multi (backend_cpu.c).
 *
 * Per layer, as the model's block description says (kvc_layer_desc, from
 * kvconvert/models/arch/base.py): RMSNorm → Q/K/V projections (+bias) →
 * [QK-norm per head] → RoPE (the layer's table) → append K/V to the cache →
 * causal GQA attention (scores × attn_scale; a sliding window gives keys
 * outside it weight 0) → output projection → [post-norm] → residual; RMSNorm →
 * SwiGLU or GeGLU MLP → [post-norm] → residual. Embeddings × embd_scale. Matrix products quantize the activations once per
 * vec_dot type and split weight rows across the thread pool (decode is a
 * bandwidth-bound matvec; prefill runs the kernels' blocked GEMM). Attention
 * takes a block of query tokens (each a group of query heads) per work item, so
 * that each cached row is read (TurboQuant: decoded) once per block rather than
 * once per token; f32/f16/q8_0/q4_0 keys are scored with the weights' GEMM
 * kernel, so K in q8_0/q4_0 is scored with integer dot products.
 *
 * A batch is a list of segments: consecutive rows that belong to one context.
 * kvc_eval runs one segment (its own context); kvc_eval_multi one row per
 * context, so that independent sequences decode as one GEMM batch and every
 * weight row is read once per step for all of them. The lead context's buffers
 * and thread pool run the weight products; each segment's context keeps its own
 * positions, K centering, cache and attention scratch. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"
#include "kv_recent.h"
#include "util.h"

/* ---- matrix products ---- */

typedef struct {
    const tview *w;
    const float *bias; /* (w->ne1) or NULL */
    float *out;        /* row t at out + t * w->ne1 */
    const uint8_t *a;  /* (T) activation rows in w->vec_dot_type */
} mm_job;

/* The rows of every job are cut into chunks that threads take from a shared counter
 * (work stealing): when another process holds one of our cores, the threads still
 * running take the chunks of the one waiting for it, instead of idling at the end of
 * the run. Chunks are multiples of 16 rows, about MM_CHUNKS_PER_THREAD per thread. */
#define MM_CHUNKS_PER_THREAD 8

typedef struct {
    const kvc_kernel_table *kern;
    float *wrows;     /* float products (cpu_ctx.wrows): (nth, 16, wrow_len), else NULL */
    size_t wrow_len;
    int T, n_jobs;
    mm_job jobs[3];
    long long chunk_rows[3]; /* rows per chunk of each job */
    int chunk0[4];           /* first chunk of each job; chunk0[n_jobs]: the total */
    atomic_int next;         /* next chunk to take */
} mm_task;

/* rows [r0, r1) of w times the float activations a (T, w->ne0): 16 rows at a time expanded to
 * float in wf (16, w->ne0), then the float GEMM */
static void mm_float_rows(const kvc_kernel_table *kern, const tview *w, long long r0, long long r1, int T,
                          const float *a, float *out, float *wf) {
    for (long long r = r0; r < r1; r += 16) {
        const long long nr = r1 - r < 16 ? r1 - r : 16;
        for (long long k = 0; k < nr; k++)
            kern->type[w->type].dequantize(w->data + (size_t)(r + k) * w->row_bytes, wf + (size_t)k * w->ne0, w->ne0);
        kern->type[KVC_TYPE_F32].gemm(nr, T, w->ne0, wf, a, out + r, w->ne1);
    }
}

static void mm_run(void *arg, int ith, int nth) {
    mm_task *task = arg;
    (void)nth;
    int j = 0; /* job of the chunk: chunks are taken in increasing order */
    for (int i; (i = atomic_fetch_add_explicit(&task->next, 1, memory_order_relaxed)) < task->chunk0[task->n_jobs];) {
        while (i >= task->chunk0[j + 1]) j++;
        const mm_job *jb = &task->jobs[j];
        const tview *w = jb->w;
        const long long r0 = (i - task->chunk0[j]) * task->chunk_rows[j];
        const long long r1 = r0 + task->chunk_rows[j] < w->ne1 ? r0 + task->chunk_rows[j] : w->ne1;
        if (task->wrows && w->vec_dot_type != KVC_TYPE_F32)
            mm_float_rows(task->kern, w, r0, r1, task->T, (const float *)jb->a, jb->out,
                          task->wrows + (size_t)ith * 16 * task->wrow_len);
        else
            task->kern->type[w->type].gemm(r1 - r0, task->T, w->ne0, w->data + (size_t)r0 * w->row_bytes, jb->a,
                                           jb->out + r0, w->ne1);
        if (jb->bias)
            for (int t = 0; t < task->T; t++)
                for (long long r = r0; r < r1; r++) jb->out[(size_t)t * w->ne1 + r] += jb->bias[r];
    }
}

typedef struct {
    kvc_quantize_fn quantize; /* to the activation type */
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
    for (long long t = t0; t < t1; t++) q->quantize(q->x + t * q->n, q->dst + t * rb, q->n);
}

/* outs[i] (T, ws[i]->ne1) = x (T, n) · ws[i]ᵀ + biases[i], for up to 3 weights sharing x. */
static void matmul(cpu_ctx *c, int T, const float *x, long long n, int count, const tview **ws,
                   const float **biases, float **outs) {
    mm_task task = {.kern = c->kern, .wrows = c->wrows, .wrow_len = c->wrow_len, .T = T, .n_jobs = count};
    int types[3];
    const uint8_t *bufs[3];
    int n_types = 0;
    for (int i = 0; i < count; i++) {
        int vdt = c->wrows ? KVC_TYPE_F32 : ws[i]->vec_dot_type, k = 0; /* float products: x as it is */
        while (k < n_types && types[k] != vdt) k++;
        if (k == n_types) {
            types[n_types] = vdt;
            if (vdt == KVC_TYPE_F32) {
                bufs[n_types] = (const uint8_t *)x;
            } else {
                quant_task q = {c->kern->type[vdt].quantize, vdt, T, n, x, c->aq[n_types]};
                if (T < 32) /* a decode batch: cheaper than a pool run */
                    quant_run(&q, 0, 1);
                else
                    kvc_pool_run(c->pool, quant_run, &q);
                bufs[n_types] = c->aq[n_types];
            }
            n_types++;
        }
        task.jobs[i] = (mm_job){ws[i], biases[i], outs[i], bufs[k]};
    }
    long long rows = 0;
    for (int i = 0; i < count; i++) rows += ws[i]->ne1;
    const int nth = kvc_pool_size(c->pool);
    long long per = (rows + (long long)MM_CHUNKS_PER_THREAD * nth - 1) / ((long long)MM_CHUNKS_PER_THREAD * nth);
    per = nth == 1 ? rows : (per + 15) / 16 * 16; /* one thread: one chunk per job */
    for (int i = 0; i < count; i++) {
        task.chunk_rows[i] = per < ws[i]->ne1 ? per : ws[i]->ne1;
        task.chunk0[i + 1] = task.chunk0[i] + (int)((ws[i]->ne1 + task.chunk_rows[i] - 1) / task.chunk_rows[i]);
    }
    kvc_pool_run(c->pool, mm_run, &task);
}

/* x (n) *= s (n), element by element */
static void mul_rows(int n, const float *s, float *x) {
    for (int i = 0; i < n; i++) x[i] *= s[i];
}

static void matmul1(cpu_ctx *c, int T, const float *x, const tview *w, const float *bias, float *out) {
    matmul(c, T, x, w->ne0, 1, &w, &bias, &out);
}

/* ---- batches of segments ---- */

/* ---- attention ---- */

typedef struct {
    const segment *segs; /* (n_seg) */
    int n_seg, layer, n_items;
    int nth;             /* threads ith >= nth stay idle: every context has scratch for nth threads */
    atomic_int next;     /* next work item */
} attn_task;

/* Causal attention of query tokens t0..t1-1 of KV head h (all n_rep query heads) of
 * context c, whose q/att buffers hold its segment's rows. */
static void attn_block(cpu_ctx *c, int layer, attn_scratch *s, int h, int t0, int t1) {
    const kvc_model *m = c->m;
    const int D = m->head_dim, Hk = m->n_head_kv, n_rep = m->n_head / Hk;
    const size_t QD = (size_t)m->n_head * D;
    const float scale = m->attn_scale;
    const int window = m->layers[layer].window;
    const int nt = t1 - t0, n0 = c->ctx->n_past + t0 + 1; /* token t0 + i sees n0 + i keys */
    const int k0 = kv_first_key(c, layer, n0), ld = n0 - k0 + nt - 1; /* scores: keys k0 .. n0 + nt - 2 */
    const float *q = c->q + t0 * QD + (size_t)h * n_rep * D; /* token i: (n_rep, D) at q + i * QD */
    float *out = c->att + t0 * QD + (size_t)h * n_rep * D;   /* token i: (n_rep, D) at out + i * QD */
    if (c->flash) {
        kv_attend(c, s, layer, h, q, QD, nt, n0, scale, out, QD);
    } else {
        kv_scores(c, s, layer, h, q, QD, nt, n0, s->scores, ld);
        for (int i = 0; i < nt * n_rep; i++) {
            float *row = s->scores + (size_t)i * ld; /* keys k0 .. n - 1 */
            const int n = n0 + i / n_rep, lo = window && n > window ? n - window : 0; /* sliding: keys lo.. */
            c->kern->vec->scale(n - lo, scale, row + (lo - k0));
            c->kern->vec->softmax(n - lo, row + (lo - k0));
            if (lo > k0) memset(row, 0, sizeof(float) * (size_t)(lo - k0)); /* weight 0 outside the window */
        }
        kv_values(c, s, layer, h, s->scores, ld, nt, n0, out, QD);
    }
    if (c->v_mean) /* the cache holds v − μ_v; the weights sum to 1 */
        for (int i = 0; i < nt * n_rep; i++)
            c->kern->vec->axpy(D, 1.0f, c->v_mean + ((size_t)layer * Hk + h) * D,
                         out + (i / n_rep) * QD + (size_t)(i % n_rep) * D);
}

/* Work items (segment, KV head, block of tokens), taken from a shared counter so that
 * threads stay busy whatever Hk and T; in a segment the costliest (latest) blocks first. */
static void attn_run(void *arg, int ith, int nth) {
    attn_task *at = arg;
    (void)nth;
    if (ith >= at->nth) return;
    int j = 0; /* segment of the item: items are taken in increasing order */
    for (int i; (i = atomic_fetch_add_explicit(&at->next, 1, memory_order_relaxed)) < at->n_items;) {
        while (j + 1 < at->n_seg && i >= at->segs[j + 1].item0) j++;
        const segment *g = &at->segs[j];
        const int Hk = g->c->m->n_head_kv, k = i - g->item0, tb = g->tb;
        const int t0 = (g->n_blocks - 1 - k / Hk) * tb;
        attn_block(g->c, at->layer, &g->c->scratch[ith], k % Hk, t0, t0 + tb < g->T ? t0 + tb : g->T);
    }
}

/* Number the attention work items of every segment; returns their count. Blocks: at
 * most kv_block_tokens tokens, and small enough that there are about 4 items per thread. */
static int attn_plan(segment *segs, int n_seg) {
    int n_items = 0;
    for (int j = 0; j < n_seg; j++) {
        segment *g = &segs[j];
        const int Hk = g->c->m->n_head_kv, tb_max = kv_block_tokens(g->c);
        const int per_head = (4 * g->c->ctx->n_threads + Hk - 1) / Hk; /* blocks wanted per KV head */
        const int tb = (g->T + per_head - 1) / per_head;
        g->tb = tb < 1 ? 1 : tb > tb_max ? tb_max : tb;
        g->n_blocks = (g->T + g->tb - 1) / g->tb;
        g->item0 = n_items;
        n_items += g->n_blocks * Hk;
    }
    return n_items;
}

/* ---- one batch ---- */

static void capture(cpu_ctx *c, int l, int T) {
    const kvc_model *m = c->m;
    const size_t QD = (size_t)m->n_head * m->head_dim, KD = (size_t)m->n_head_kv * m->head_dim;
    const size_t base = (size_t)l * c->ctx->n_batch;
    memcpy(c->ctx->cap_q + base * QD, c->q, sizeof(float) * T * QD);
    memcpy(c->ctx->cap_k + base * KD, c->k, sizeof(float) * T * KD);
    memcpy(c->ctx->cap_v + base * KD, c->v, sizeof(float) * T * KD);
}

/* Layer l from the Q/K/V projections to the attention output, for every segment:
 * capture, K centering, RoPE and cache append in each segment's context (its rows
 * copied into its own buffers first when it is not the lead), then attention of
 * all segments in one run of the lead's pool; lead->att (T, H*D) receives it. */
static void attention_layer(cpu_ctx *lead, segment *segs, int n_seg, int n_items, int nth, int l) {
    const kvc_model *m = lead->m;
    const size_t QD = (size_t)m->n_head * m->head_dim, KD = (size_t)m->n_head_kv * m->head_dim;
    const int *src = m->rope_src + (size_t)l * (m->head_dim / 2);
    const size_t cs_off = (size_t)m->layers[l].rope_set * lead->ctx->n_batch * m->head_dim; /* this layer's table */
    for (int j = 0; j < n_seg; j++) {
        cpu_ctx *c = segs[j].c;
        const int T = segs[j].T;
        if (c != lead) {
            memcpy(c->q, lead->q + segs[j].row * QD, sizeof(float) * T * QD);
            memcpy(c->k, lead->k + segs[j].row * KD, sizeof(float) * T * KD);
            memcpy(c->v, lead->v + segs[j].row * KD, sizeof(float) * T * KD);
        }
        if (c->ctx->cap_q) capture(c, l, T);
        kv_center(c, l, T);
        rope_apply(m, src, T, m->n_head, c->q, c->rope_cs + cs_off);
        rope_apply(m, src, T, m->n_head_kv, c->k, c->rope_cs + cs_off);
        kv_store(c, l, T);
    }
    attn_task at = {.segs = segs, .n_seg = n_seg, .layer = l, .n_items = n_items, .nth = nth};
    atomic_init(&at.next, 0);
    kvc_pool_run(lead->pool, attn_run, &at);
    for (int j = 0; j < n_seg; j++) kv_recent_commit(segs[j].c, l, segs[j].T); /* the batch's exact rows */
    for (int j = 0; j < n_seg; j++)
        if (segs[j].c != lead)
            memcpy(lead->att + segs[j].row * QD, segs[j].c->att, sizeof(float) * segs[j].T * QD);
}

void cpu_forward(cpu_ctx *lead, segment *segs, int n_seg, const int *tokens, int T, float *logits, int first) {
    const kvc_model *m = lead->m;
    const long long E = m->n_embd, F = m->n_ff;
    const kvc_vec_ops *ops = lead->kern->vec;
    const kvc_kernels *emb = &lead->kern->type[m->tok_embd.type];
    for (int t = 0; t < T; t++)
        emb->dequantize(m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes, lead->x + t * E, E);
    if (m->embd_scale != 1.0f) ops->scale((int)(T * E), m->embd_scale, lead->x);
    int nth = lead->ctx->n_threads;
    const size_t D = (size_t)m->head_dim;
    for (int j = 0; j < n_seg; j++) {
        cpu_ctx *c = segs[j].c;
        for (int set = 0; set < m->n_rope; set++) {
            float *cs = c->rope_cs + (size_t)set * c->ctx->n_batch * D;
            rope_table(m, set, c->ctx->n_past, segs[j].T, cs);
            if (c->k_center) { /* column d of position n_past + t: rope_cols[set][d][n_past + t] */
                float *cols = c->rope_cols + (size_t)set * D * c->ctx->n_ctx + c->ctx->n_past;
                for (int t = 0; t < segs[j].T; t++)
                    for (size_t d = 0; d < D; d++) cols[d * c->ctx->n_ctx + t] = cs[t * D + d];
            }
        }
        nth = c->ctx->n_threads < nth ? c->ctx->n_threads : nth;
    }
    const int n_items = attn_plan(segs, n_seg);
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        for (int t = 0; t < T; t++) ops->rms_norm(E, lead->x + t * E, w->attn_norm, m->rms_eps, lead->xn + t * E);
        const tview *qkv[3] = {&w->wq, &w->wk, &w->wv};
        const float *qkv_b[3] = {w->bq, w->bk, w->bv};
        float *qkv_o[3] = {lead->q, lead->k, lead->v};
        matmul(lead, T, lead->xn, E, 3, qkv, qkv_b, qkv_o);
        if (w->q_scale) /* K→Q smoothing of a patched file (kvc.h): per-row scales of the products */
            for (int t = 0; t < T; t++) {
                mul_rows(m->n_head * (int)D, w->q_scale, lead->q + (size_t)t * m->n_head * D);
                mul_rows(m->n_head_kv * (int)D, w->k_scale, lead->k + (size_t)t * m->n_head_kv * D);
            }
        if (w->q_norm) /* QK-norm: per head, before capture, centering and RoPE */
            for (int t = 0; t < T; t++) {
                for (int h = 0; h < m->n_head; h++) {
                    float *x = lead->q + ((size_t)t * m->n_head + h) * D;
                    ops->rms_norm((int)D, x, w->q_norm, m->rms_eps, x);
                }
                for (int h = 0; h < m->n_head_kv; h++) {
                    float *x = lead->k + ((size_t)t * m->n_head_kv + h) * D;
                    ops->rms_norm((int)D, x, w->k_norm, m->rms_eps, x);
                }
            }
        attention_layer(lead, segs, n_seg, n_items, nth, l);
        matmul1(lead, T, lead->att, &w->wo, w->bo, lead->xn);
        if (w->attn_post_norm)
            for (int t = 0; t < T; t++) ops->rms_norm(E, lead->xn + t * E, w->attn_post_norm, m->rms_eps, lead->xn + t * E);
        ops->axpy((int)(T * E), 1.0f, lead->xn, lead->x);
        for (int t = 0; t < T; t++) ops->rms_norm(E, lead->x + t * E, w->ffn_norm, m->rms_eps, lead->xn + t * E);
        const tview *gu[2] = {&w->gate, &w->up};
        const float *gu_b[2] = {NULL, NULL};
        float *gu_o[2] = {lead->gate, lead->up};
        matmul(lead, T, lead->xn, E, 2, gu, gu_b, gu_o);
        if (m->activation == KVC_ACT_GELU_TANH)
            kvc_gelu_mul_ref((int)(T * F), lead->gate, lead->up, lead->gate);
        else
            ops->silu_mul((int)(T * F), lead->gate, lead->up, lead->gate);
        matmul1(lead, T, lead->gate, &w->down, NULL, lead->xn);
        if (w->ffn_post_norm)
            for (int t = 0; t < T; t++) ops->rms_norm(E, lead->xn + t * E, w->ffn_post_norm, m->rms_eps, lead->xn + t * E);
        ops->axpy((int)(T * E), 1.0f, lead->xn, lead->x);
    }
    for (int j = 0; j < n_seg; j++) {
        cpu_ctx *c = segs[j].c;
        c->ctx->n_past += segs[j].T;
        c->k_mean_ready = c->k_mean_ready || c->k_center;
    }
    if (!logits) return;
    for (int t = first; t < T; t++)
        ops->rms_norm(E, lead->x + t * E, m->output_norm, m->rms_eps, lead->xn + (t - first) * E);
    matmul1(lead, T - first, lead->xn, &m->output, NULL, logits);
}
