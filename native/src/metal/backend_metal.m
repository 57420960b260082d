/* backend_metal.m — the Metal backend (backend.h's kvc_backend_ops on an Apple
 * GPU): the forward pass of cpu/forward.c as a sequence of the kernels in
 * this directory, one command buffer per batch. Compiled only on macOS
 * (kvconvert/_build_native.py), chosen with KVC_BACKEND=metal (context.c).
 * Objective-C with manual reference counting; errors are kvc status codes
 * with a message in ctx->err, never prints or exits.
 *
 * NOT YET RUN ON APPLE HARDWARE: the kernels are verified on Linux through
 * the shim (tests/test_metal.py), this host code is not; scripts/metal_check.sh
 * is the first run (docs/design.md §9).
 *
 * What it runs: weights F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K (copied into
 * Metal buffers at context creation); caches f16 or TurboQuant for K and V
 * (sinks, K centering with a given mean, V mean, permutation, QJL); QK-norm,
 * post-norms, sliding windows, SwiGLU/GeGLU, embedding scale. Not (yet):
 * f32/q8_0/q4_0 caches, Q4_1/Q5_0 weights, K centering from the first batch's
 * mean, calibration capture, head_dim > 256 — context creation says so
 * (KVC_ERR_UNSUPPORTED). Embedding rows are looked up on the CPU (shared memory). */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels.h"
#include "util.h"
#include "metal/kvc_metal.h"
#include "metal/tq_tables.h"
#include "metal/metal_source.inc"

/* ---- the device, its library and pipelines: once per process ---- */

enum {
    P_RMS_NORM, P_ROPE, P_SWIGLU, P_GEGLU, P_ADD, P_SCALE,
    P_MV_F32, P_MV_F16, P_MV_BF16, P_MV_Q8_0, P_MV_Q4_0, P_MV_Q4_K, P_MV_Q6_K,
    P_TQ_STORE, P_F16_STORE, P_ATTENTION, P_COUNT
};
static const char *const PIPE_NAMES[P_COUNT] = {
    "kvm_rms_norm", "kvm_rope", "kvm_swiglu", "kvm_geglu", "kvm_add", "kvm_scale",
    "kvm_matvec_f32", "kvm_matvec_f16", "kvm_matvec_bf16", "kvm_matvec_q8_0", "kvm_matvec_q4_0",
    "kvm_matvec_q4_K", "kvm_matvec_q6_K", "kvm_tq_store", "kvm_f16_store", "kvm_attention"};

/* threads per threadgroup each pipeline is dispatched with (the encoders below) */
static const int PIPE_THREADS[P_COUNT] = {256, 64, 256, 256, 256, 256, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG,
                                          32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG,
                                          32 * KVM_MATVEC_SG, 32 * KVM_MATVEC_SG, KVM_STORE_THREADS, 64,
                                          KVM_ATTN_THREADS};

static struct {
    int status; /* KVC_OK once initialised */
    char err[256];
    id<MTLDevice> dev;
    id<MTLCommandQueue> queue;
    id<MTLComputePipelineState> pipe[P_COUNT];
} G;

static void metal_init_once(void) {
    @autoreleasepool {
        G.status = KVC_ERR_UNSUPPORTED;
        G.dev = MTLCreateSystemDefaultDevice();
        if (!G.dev) {
            snprintf(G.err, sizeof G.err, "no Metal device");
            return;
        }
        MTLCompileOptions *opt = [[MTLCompileOptions alloc] init];
        /* no fast-math relaxations: the kernels follow the CPU twins' float operations */
#if defined(__MAC_15_0) && __MAC_OS_X_VERSION_MAX_ALLOWED >= __MAC_15_0
        if (@available(macOS 15.0, *)) opt.mathMode = MTLMathModeSafe;
        else opt.fastMathEnabled = NO;
#else
        opt.fastMathEnabled = NO;
#endif
        NSError *e = nil;
        NSString *src = [NSString stringWithUTF8String:kvm_metal_source];
        id<MTLLibrary> lib = [G.dev newLibraryWithSource:src options:opt error:&e];
        [opt release];
        if (!lib) {
            snprintf(G.err, sizeof G.err, "Metal kernels do not compile: %s",
                     e ? [[e localizedDescription] UTF8String] : "unknown error");
            return;
        }
        for (int i = 0; i < P_COUNT; i++) {
            id<MTLFunction> f = [lib newFunctionWithName:[NSString stringWithUTF8String:PIPE_NAMES[i]]];
            if (!f) {
                snprintf(G.err, sizeof G.err, "Metal kernel %s missing", PIPE_NAMES[i]);
                [lib release];
                return;
            }
            G.pipe[i] = [G.dev newComputePipelineStateWithFunction:f error:&e];
            [f release];
            if (!G.pipe[i]) {
                snprintf(G.err, sizeof G.err, "Metal pipeline %s: %s", PIPE_NAMES[i],
                         e ? [[e localizedDescription] UTF8String] : "unknown error");
                [lib release];
                return;
            }
            /* simd_sum spans 32 lanes; the threadgroup sizes below must fit */
            if (G.pipe[i].threadExecutionWidth != 32 ||
                G.pipe[i].maxTotalThreadsPerThreadgroup < (NSUInteger)PIPE_THREADS[i]) {
                snprintf(G.err, sizeof G.err, "Metal pipeline %s: SIMD width %d, at most %d threads per group",
                         PIPE_NAMES[i], (int)G.pipe[i].threadExecutionWidth,
                         (int)G.pipe[i].maxTotalThreadsPerThreadgroup);
                [lib release];
                return;
            }
        }
        [lib release];
        G.queue = [G.dev newCommandQueue];
        if (!G.queue) {
            snprintf(G.err, sizeof G.err, "no Metal command queue");
            return;
        }
        G.status = KVC_OK;
    }
}

static int metal_ready(char *err, int err_len) {
    static dispatch_once_t once;
    dispatch_once(&once, ^{ metal_init_once(); });
    return G.status == KVC_OK ? KVC_OK : kvc_fail(err, err_len, G.status, "%s", G.err);
}

/* ---- a context's state ---- */

typedef struct {
    id<MTLBuffer> w[7]; /* wq wk wv wo gate up down */
    int wtype[7];
    id<MTLBuffer> attn_norm, ffn_norm, bq, bk, bv, bo, q_norm, k_norm, attn_post_norm, ffn_post_norm;
    id<MTLBuffer> kc, vc, ks, vs;       /* cache rows (Hk, n_ctx); sinks (Hk, n_sink, D) fp16 */
    id<MTLBuffer> kft, kit, vft, vit;   /* TurboQuant tables */
    kvm_tq_layout LK, LV;
    int k_rb, v_rb;
    id<MTLBuffer> k_mean, k_pairs, v_mean, rope_src;
} mlayer;

typedef struct {
    kvc_context *ctx;
    const kvc_model *m;
    const kvc_kernel_table *kern; /* embedding lookup on the CPU */
    mlayer *L;                    /* (n_layer) */
    id<MTLBuffer> out_norm, out_w, dummy;
    int out_type;
    id<MTLBuffer> x, xn, q, k, v, att, gate, up, logits, scores, cs, rope_all;
    int k_tq, v_tq, n_sink, k_center, k_center_sub, has_v_mean, scale_mode;
    int t_attn; /* query tokens per attention dispatch (scores scratch: t_attn * H * n_ctx floats) */
} mtl_ctx;

static id<MTLBuffer> buf_copy(const void *p, size_t n) {
    if (!p) return nil;
    return [G.dev newBufferWithBytes:p length:(n ? n : 4) options:MTLResourceStorageModeShared];
}

static id<MTLBuffer> buf_new(size_t n) {
    id<MTLBuffer> b = [G.dev newBufferWithLength:(n ? n : 4) options:MTLResourceStorageModeShared];
    if (b) memset([b contents], 0, [b length]);
    return b;
}

static int mv_pipe(int type) {
    switch (type) {
    case KVM_TYPE_F32: return P_MV_F32;
    case KVM_TYPE_F16: return P_MV_F16;
    case KVM_TYPE_BF16: return P_MV_BF16;
    case KVM_TYPE_Q8_0: return P_MV_Q8_0;
    case KVM_TYPE_Q4_0: return P_MV_Q4_0;
    case KVM_TYPE_Q4_K: return P_MV_Q4_K;
    case KVM_TYPE_Q6_K: return P_MV_Q6_K;
    default: return -1;
    }
}

/* kv_cache.c's select_pairs: keep the max_pairs pairs of largest mean energy, zero the rest */
static void select_pairs(const kvc_model *m, int max_pairs, float *mean, int *pairs) {
    const int P = m->head_dim / 2;
    int n = max_pairs > 0 && max_pairs < P ? max_pairs : P;
    float energy[KVM_TQ_MAX_DIM / 2];
    int order[KVM_TQ_MAX_DIM / 2];
    for (int j = 0; j < P; j++) {
        int a = m->rope_pairing == KVC_ROPE_NEOX ? j : 2 * j, b = m->rope_pairing == KVC_ROPE_NEOX ? j + P : 2 * j + 1;
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
        int j = order[i], a = m->rope_pairing == KVC_ROPE_NEOX ? j : 2 * j;
        int b = m->rope_pairing == KVC_ROPE_NEOX ? j + P : 2 * j + 1;
        mean[a] = mean[b] = 0.0f;
    }
}

static void release_layer(mlayer *l) {
    for (int i = 0; i < 7; i++) [l->w[i] release];
    id<MTLBuffer> all[] = {l->attn_norm, l->ffn_norm, l->bq, l->bk, l->bv, l->bo, l->q_norm, l->k_norm,
                           l->attn_post_norm, l->ffn_post_norm, l->kc, l->vc, l->ks, l->vs, l->kft, l->kit,
                           l->vft, l->vit, l->k_mean, l->k_pairs, l->v_mean, l->rope_src};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) [all[i] release];
}

static void mtl_free(kvc_context *ctx) {
    mtl_ctx *c = ctx->be;
    if (!c) return;
    for (int l = 0; c->L && l < c->m->n_layer; l++) release_layer(&c->L[l]);
    free(c->L);
    id<MTLBuffer> all[] = {c->out_norm, c->out_w, c->dummy, c->x, c->xn, c->q, c->k, c->v, c->att, c->gate,
                           c->up, c->logits, c->scores, c->cs, c->rope_all};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) [all[i] release];
    free(c);
    ctx->be = NULL;
}

/* one TurboQuant layer config into kernel tables */
static int tq_tables(const kvc_tq_layer *t, int D, unsigned long long seed, int layer, kvm_tq_layout *out,
                     id<MTLBuffer> *ft, id<MTLBuffer> *it) {
    tq_layout L;
    int st = tq_layout_init(&L, D, t->n_hi, t->hi_bits, t->lo_bits, t->qjl_hi, t->qjl_lo, t->codebook_hi,
                            t->codebook_lo, t->perm, seed, layer);
    if (st != KVC_OK) return st;
    int nf, ni;
    kvm_tq_table_sizes(&L, &nf, &ni);
    float *f = calloc((size_t)nf + 1, sizeof(float));
    int32_t *i = calloc((size_t)ni + 1, sizeof(int32_t));
    if (!f || !i) st = KVC_ERR_NOMEM;
    else if (kvm_tq_tables(&L, out, f, i)) st = KVC_ERR_UNSUPPORTED;
    else {
        *ft = buf_copy(f, sizeof(float) * ((size_t)nf + 1));
        *it = buf_copy(i, sizeof(int32_t) * ((size_t)ni + 1));
        if (!*ft || !*it) st = KVC_ERR_NOMEM;
    }
    free(f), free(i);
    tq_layout_free(&L);
    return st;
}

static int mtl_create(kvc_context *ctx, const kvc_context_params *p, char *err, int err_len) {
    int st = metal_ready(err, err_len);
    if (st != KVC_OK) return st;
    const kvc_model *m = ctx->m;
    const int D = m->head_dim, P = D / 2, Hk = m->n_head_kv, H = m->n_head, E = m->n_embd, F = m->n_ff;
    const int C = ctx->n_ctx, B = ctx->n_batch;
    mtl_ctx *c = calloc(1, sizeof *c);
    if (!c) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    ctx->be = c;
    c->ctx = ctx, c->m = m;
    if (kvc_kernel_table_for(KVC_IMPL_AUTO, &c->kern) != KVC_OK)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "no CPU kernel table for the embedding lookup");
    c->k_tq = p->type_k == KVC_CACHE_TQ, c->v_tq = p->type_v == KVC_CACHE_TQ;
    if ((!c->k_tq && p->type_k != KVC_TYPE_F16) || (!c->v_tq && p->type_v != KVC_TYPE_F16))
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "the Metal backend runs f16 and TurboQuant caches only");
    if ((c->k_tq && !p->tq_k) || (c->v_tq && !p->tq_v))
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "TurboQuant caches need one config per layer");
    if (p->tq_scale_mode < 0 || p->tq_scale_mode > 2)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tq_scale_mode must be 0 (norm), 1 (ls) or 2 (proj)");
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
    c->k_center = p->k_center != 0;
    c->k_center_sub = c->k_center && !p->k_mean_folded;
    c->has_v_mean = p->v_mean != NULL;
    c->scale_mode = p->tq_scale_mode;

    /* weights */
    c->L = calloc((size_t)m->n_layer, sizeof(mlayer));
    if (!c->L) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    c->dummy = buf_new(16);
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        mlayer *ml = &c->L[l];
        const tview *tv[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->gate, &w->up, &w->down};
        for (int i = 0; i < 7; i++) {
            if (mv_pipe(tv[i]->type) < 0)
                return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "layer %d: weight type %d does not run on Metal",
                                l, tv[i]->type);
            ml->wtype[i] = tv[i]->type;
            ml->w[i] = buf_copy(tv[i]->data, (size_t)tv[i]->ne1 * tv[i]->row_bytes + 16);
            if (!ml->w[i]) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory for the weights");
        }
        ml->attn_norm = buf_copy(w->attn_norm, sizeof(float) * E);
        ml->ffn_norm = buf_copy(w->ffn_norm, sizeof(float) * E);
        ml->bq = buf_copy(w->bq, sizeof(float) * H * D);
        ml->bk = buf_copy(w->bk, sizeof(float) * Hk * D);
        ml->bv = buf_copy(w->bv, sizeof(float) * Hk * D);
        ml->bo = buf_copy(w->bo, sizeof(float) * E);
        ml->q_norm = buf_copy(w->q_norm, sizeof(float) * D);
        ml->k_norm = buf_copy(w->k_norm, sizeof(float) * D);
        ml->attn_post_norm = buf_copy(w->attn_post_norm, sizeof(float) * E);
        ml->ffn_post_norm = buf_copy(w->ffn_post_norm, sizeof(float) * E);
        ml->rope_src = buf_copy(m->rope_src + (size_t)l * P, sizeof(int) * P);

        /* caches */
        if (c->k_tq) {
            st = tq_tables(&p->tq_k[l], D, p->tq_seed, l, &ml->LK, &ml->kft, &ml->kit);
            if (st != KVC_OK) return kvc_fail(err, err_len, st, "layer %d: invalid TurboQuant K config", l);
            ml->k_rb = ml->LK.row_bytes;
        } else ml->k_rb = 2 * D;
        if (c->v_tq) {
            const kvc_tq_layer *t = &p->tq_v[l];
            if (t->qjl_hi || t->qjl_lo || t->perm)
                return kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: V caches take no QJL and no permutation", l);
            st = tq_tables(t, D, p->tq_seed, l, &ml->LV, &ml->vft, &ml->vit);
            if (st != KVC_OK) return kvc_fail(err, err_len, st, "layer %d: invalid TurboQuant V config", l);
            ml->v_rb = ml->LV.row_bytes;
        } else ml->v_rb = 2 * D;
        ml->kc = buf_new((size_t)Hk * C * ml->k_rb + 8); /* slack: code reads may run 2 bytes past */
        ml->vc = buf_new((size_t)Hk * C * ml->v_rb + 8);
        ml->ks = buf_new((size_t)Hk * (c->n_sink + 1) * D * 2);
        ml->vs = buf_new((size_t)Hk * (c->n_sink + 1) * D * 2);
        if (!ml->kc || !ml->vc || !ml->ks || !ml->vs)
            return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory for a context of %d tokens", C);
        if (c->k_center) {
            ml->k_mean = buf_copy(p->k_mean + (size_t)l * Hk * D, sizeof(float) * Hk * D);
            ml->k_pairs = buf_new(sizeof(int) * Hk * P);
            if (!ml->k_mean || !ml->k_pairs) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
            for (int h = 0; h < Hk; h++)
                select_pairs(m, p->k_center_pairs, (float *)[ml->k_mean contents] + (size_t)h * D,
                             (int *)[ml->k_pairs contents] + (size_t)h * P);
        }
        if (p->v_mean) ml->v_mean = buf_copy(p->v_mean + (size_t)l * Hk * D, sizeof(float) * Hk * D);
    }
    c->out_norm = buf_copy(m->output_norm, sizeof(float) * E);
    if (mv_pipe(m->output.type) < 0)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "output weight type %d does not run on Metal", m->output.type);
    c->out_type = m->output.type;
    c->out_w = buf_copy(m->output.data, (size_t)m->output.ne1 * m->output.row_bytes + 16);

    /* activations */
    c->x = buf_new(sizeof(float) * B * E), c->xn = buf_new(sizeof(float) * B * E);
    c->q = buf_new(sizeof(float) * B * H * D), c->att = buf_new(sizeof(float) * B * H * D);
    c->k = buf_new(sizeof(float) * B * Hk * D), c->v = buf_new(sizeof(float) * B * Hk * D);
    c->gate = buf_new(sizeof(float) * B * F), c->up = buf_new(sizeof(float) * B * F);
    c->logits = buf_new(sizeof(float) * (size_t)B * m->n_vocab);
    c->cs = buf_new(sizeof(float) * m->n_rope * B * D);
    c->rope_all = buf_new(c->k_center ? sizeof(float) * m->n_rope * C * D : 16);
    const long long per_tok = (long long)H * C * 4;
    long long ta = (256ll << 20) / per_tok; /* <= 256 MiB of scores */
    c->t_attn = ta < 1 ? 1 : ta > B ? B : (int)ta;
    c->scores = buf_new((size_t)c->t_attn * per_tok);
    if (!c->out_norm || !c->out_w || !c->x || !c->xn || !c->q || !c->att || !c->k || !c->v || !c->gate || !c->up ||
        !c->logits || !c->cs || !c->rope_all || !c->scores || !c->dummy)
        return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of GPU memory");
    int nk = 0, nv = 0;
    for (int l = 0; l < m->n_layer; l++) {
        int a = 0, b = 0;
        for (int k = 0; c->k_tq && k < c->L[l].LK.n_groups; k++) a += 1 << c->L[l].LK.g[k].bits;
        for (int k = 0; c->v_tq && k < c->L[l].LV.n_groups; k++) b += 1 << c->L[l].LV.g[k].bits;
        nk = a > nk ? a : nk, nv = b > nv ? b : nv;
    }
    if (sizeof(float) * (6 * D + nk + nv + KVM_ATTN_THREADS + 4) > [G.dev maxThreadgroupMemoryLength])
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "codebooks too large for threadgroup memory");
    return KVC_OK;
}

/* ---- encoding helpers ---- */

static NSUInteger r16(size_t n) { return (NSUInteger)((n + 15) & ~(size_t)15); }

static void bind(id<MTLComputeCommandEncoder> e, int i, id<MTLBuffer> b, size_t off) {
    [e setBuffer:b offset:off atIndex:i];
}

static void dispatch_1d(id<MTLComputeCommandEncoder> e, long long n, int tg) {
    [e dispatchThreadgroups:MTLSizeMake((NSUInteger)((n + tg - 1) / tg), 1, 1) threadsPerThreadgroup:MTLSizeMake(tg, 1, 1)];
}

static void enc_norm(mtl_ctx *c, id<MTLComputeCommandEncoder> e, id<MTLBuffer> x, size_t xo, id<MTLBuffer> w,
                     id<MTLBuffer> o, size_t oo, int n, int rows) {
    kvm_norm_args a = {n, rows, c->m->rms_eps, 0};
    [e setComputePipelineState:G.pipe[P_RMS_NORM]];
    [e setBytes:&a length:sizeof a atIndex:0];
    bind(e, 1, x, xo), bind(e, 2, w, 0), bind(e, 3, o, oo);
    [e setThreadgroupMemoryLength:r16(33 * sizeof(float)) atIndex:0];
    [e dispatchThreadgroups:MTLSizeMake(rows, 1, 1) threadsPerThreadgroup:MTLSizeMake(256, 1, 1)];
}

static void enc_matvec(mtl_ctx *c, id<MTLComputeCommandEncoder> e, int type, id<MTLBuffer> w, long long K,
                       long long M, size_t row_bytes, id<MTLBuffer> x, id<MTLBuffer> bias, id<MTLBuffer> y, int T) {
    kvm_matvec_args a = {(int)K, (int)M, T, (int)row_bytes, (int)K, (int)M, bias != nil, 0};
    [e setComputePipelineState:G.pipe[mv_pipe(type)]];
    [e setBytes:&a length:sizeof a atIndex:0];
    bind(e, 1, w, 0), bind(e, 2, x, 0), bind(e, 3, bias ? bias : c->dummy, 0), bind(e, 4, y, 0);
    [e dispatchThreadgroups:MTLSizeMake((M + KVM_MATVEC_SG - 1) / KVM_MATVEC_SG,
                                        (T + KVM_MATVEC_TOKENS - 1) / KVM_MATVEC_TOKENS, 1)
        threadsPerThreadgroup:MTLSizeMake(32 * KVM_MATVEC_SG, 1, 1)];
}

static void enc_elem(id<MTLComputeCommandEncoder> e, int pipe, id<MTLBuffer> a0, id<MTLBuffer> a1, id<MTLBuffer> o,
                     long long n) {
    kvm_elem_args a = {(int)n, 0.0f, {0, 0}};
    [e setComputePipelineState:G.pipe[pipe]];
    [e setBytes:&a length:sizeof a atIndex:0];
    bind(e, 1, a0, 0), bind(e, 2, a1, 0), bind(e, 3, o, 0);
    dispatch_1d(e, n, 256);
}

static void enc_rope(mtl_ctx *c, id<MTLComputeCommandEncoder> e, id<MTLBuffer> x, int n_heads, int T, int rope_set,
                     id<MTLBuffer> src, id<MTLBuffer> mean) {
    const int D = c->m->head_dim;
    kvm_rope_args a = {D, n_heads, T, c->m->rope_pairing, mean != nil, {0, 0, 0}};
    [e setComputePipelineState:G.pipe[P_ROPE]];
    [e setBytes:&a length:sizeof a atIndex:0];
    bind(e, 1, x, 0), bind(e, 2, c->cs, sizeof(float) * (size_t)rope_set * c->ctx->n_batch * D), bind(e, 3, src, 0);
    bind(e, 4, mean ? mean : c->dummy, 0);
    dispatch_1d(e, (long long)T * n_heads * (D / 2), 64);
}

static void enc_store(mtl_ctx *c, id<MTLComputeCommandEncoder> e, mlayer *ml, int kind, int T) {
    const int D = c->m->head_dim, Hk = c->m->n_head_kv;
    const int tq = kind ? c->v_tq : c->k_tq;
    kvm_tq_store_args a;
    memset(&a, 0, sizeof a);
    a.D = D, a.n_kv_head = Hk, a.T = T, a.pos0 = c->ctx->n_past, a.n_ctx = c->ctx->n_ctx;
    a.scale_mode = c->scale_mode, a.kind = kind, a.has_mean = kind && c->has_v_mean, a.n_sink = tq ? c->n_sink : 0;
    id<MTLBuffer> mean = kind && ml->v_mean ? ml->v_mean : c->dummy;
    if (tq) {
        a.L = kind ? ml->LV : ml->LK;
        [e setComputePipelineState:G.pipe[P_TQ_STORE]];
        [e setBytes:&a length:sizeof a atIndex:0];
        bind(e, 1, kind ? c->v : c->k, 0), bind(e, 2, mean, 0);
        bind(e, 3, kind ? ml->vft : ml->kft, 0), bind(e, 4, kind ? ml->vit : ml->kit, 0);
        bind(e, 5, kind ? ml->vc : ml->kc, 0), bind(e, 6, kind ? ml->vs : ml->ks, 0);
        [e setThreadgroupMemoryLength:r16(sizeof(float) * (6 * D + 8)) atIndex:0];
        [e setThreadgroupMemoryLength:r16(sizeof(uint32_t) * D) atIndex:1];
        [e dispatchThreadgroups:MTLSizeMake(T, Hk, 1) threadsPerThreadgroup:MTLSizeMake(KVM_STORE_THREADS, 1, 1)];
    } else {
        [e setComputePipelineState:G.pipe[P_F16_STORE]];
        [e setBytes:&a length:sizeof a atIndex:0];
        bind(e, 1, kind ? c->v : c->k, 0), bind(e, 2, mean, 0), bind(e, 3, kind ? ml->vc : ml->kc, 0);
        dispatch_1d(e, (long long)T * Hk * D, 64);
    }
}

static void enc_attention(mtl_ctx *c, id<MTLComputeCommandEncoder> e, mlayer *ml, int l, int T) {
    const kvc_model *m = c->m;
    const int D = m->head_dim, H = m->n_head;
    kvm_attn_args a;
    memset(&a, 0, sizeof a);
    a.D = D, a.n_head = H, a.n_kv_head = m->n_head_kv, a.n_ctx = c->ctx->n_ctx, a.window = m->layers[l].window;
    a.q_stride = H * D, a.scale = m->attn_scale, a.k_tq = c->k_tq, a.v_tq = c->v_tq, a.n_sink = c->n_sink;
    a.k_center = c->k_center, a.pairing = m->rope_pairing, a.has_v_mean = ml->v_mean != nil;
    if (c->k_tq) a.LK = ml->LK;
    if (c->v_tq) a.LV = ml->LV;
    int nk = 0, nv = 0;
    for (int k = 0; c->k_tq && k < a.LK.n_groups; k++) nk += 1 << a.LK.g[k].bits;
    for (int k = 0; c->v_tq && k < a.LV.n_groups; k++) nv += 1 << a.LV.g[k].bits;
    [e setComputePipelineState:G.pipe[P_ATTENTION]];
    bind(e, 2, ml->kc, 0), bind(e, 3, ml->vc, 0);
    bind(e, 4, ml->kft ? ml->kft : c->dummy, 0), bind(e, 5, ml->kit ? ml->kit : c->dummy, 0);
    bind(e, 6, ml->vft ? ml->vft : c->dummy, 0), bind(e, 7, ml->vit ? ml->vit : c->dummy, 0);
    bind(e, 8, ml->ks, 0), bind(e, 9, ml->vs, 0);
    bind(e, 10, ml->k_mean ? ml->k_mean : c->dummy, 0), bind(e, 11, ml->k_pairs ? ml->k_pairs : c->dummy, 0);
    bind(e, 12, ml->rope_src, 0);
    bind(e, 13, c->rope_all, c->k_center ? sizeof(float) * (size_t)m->layers[l].rope_set * c->ctx->n_ctx * D : 0);
    bind(e, 14, ml->v_mean ? ml->v_mean : c->dummy, 0), bind(e, 15, c->scores, 0);
    [e setThreadgroupMemoryLength:r16(sizeof(float) * (6 * D + nk + nv + KVM_ATTN_THREADS + 4)) atIndex:0];
    for (int t0 = 0; t0 < T; t0 += c->t_attn) { /* the scores scratch holds t_attn tokens */
        const int nt = T - t0 < c->t_attn ? T - t0 : c->t_attn;
        a.T = nt, a.n_past = c->ctx->n_past + t0;
        [e setBytes:&a length:sizeof a atIndex:0];
        bind(e, 1, c->q, sizeof(float) * (size_t)t0 * H * D);
        bind(e, 16, c->att, sizeof(float) * (size_t)t0 * H * D);
        [e dispatchThreadgroups:MTLSizeMake(nt, H, 1) threadsPerThreadgroup:MTLSizeMake(KVM_ATTN_THREADS, 1, 1)];
    }
}

/* cpu_forward for one context: T tokens at ctx->n_past; logits (T - first, V) or NULL */
static int forward(mtl_ctx *c, const int *tokens, int T, float *logits, int first) {
    const kvc_model *m = c->m;
    kvc_context *ctx = c->ctx;
    const int E = m->n_embd, D = m->head_dim, P = D / 2, H = m->n_head, Hk = m->n_head_kv, F = m->n_ff;
    float *x = [c->x contents];
    const kvc_kernels *emb = &c->kern->type[m->tok_embd.type];
    for (int t = 0; t < T; t++)
        emb->dequantize(m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes, x + (size_t)t * E, E);
    if (m->embd_scale != 1.0f)
        for (long long i = 0; i < (long long)T * E; i++) x[i] *= m->embd_scale;
    for (int s = 0; s < m->n_rope; s++) { /* forward.c's rope_table: angles in double */
        float *cs = (float *)[c->cs contents] + (size_t)s * ctx->n_batch * D;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < P; j++) {
                double ang = (double)(ctx->n_past + t) * (double)m->rope_freqs[(size_t)s * P + j];
                cs[((size_t)t * P + j) * 2] = (float)cos(ang);
                cs[((size_t)t * P + j) * 2 + 1] = (float)sin(ang);
            }
        if (c->k_center)
            memcpy((float *)[c->rope_all contents] + ((size_t)s * ctx->n_ctx + ctx->n_past) * D, cs,
                   sizeof(float) * (size_t)T * D);
    }
    id<MTLCommandBuffer> cb = [G.queue commandBuffer];
    id<MTLComputeCommandEncoder> e = [cb computeCommandEncoder]; /* serial: each dispatch sees the previous */
    if (!cb || !e) {
        snprintf(ctx->err, sizeof ctx->err, "Metal: no command buffer");
        return KVC_ERR_NOMEM;
    }
    for (int l = 0; l < m->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        mlayer *ml = &c->L[l];
        enc_norm(c, e, c->x, 0, ml->attn_norm, c->xn, 0, E, T);
        enc_matvec(c, e, ml->wtype[0], ml->w[0], E, w->wq.ne1, w->wq.row_bytes, c->xn, ml->bq, c->q, T);
        enc_matvec(c, e, ml->wtype[1], ml->w[1], E, w->wk.ne1, w->wk.row_bytes, c->xn, ml->bk, c->k, T);
        enc_matvec(c, e, ml->wtype[2], ml->w[2], E, w->wv.ne1, w->wv.row_bytes, c->xn, ml->bv, c->v, T);
        if (ml->q_norm) {
            enc_norm(c, e, c->q, 0, ml->q_norm, c->q, 0, D, T * H);
            enc_norm(c, e, c->k, 0, ml->k_norm, c->k, 0, D, T * Hk);
        }
        enc_rope(c, e, c->q, H, T, w->rope_set, ml->rope_src, nil);
        enc_rope(c, e, c->k, Hk, T, w->rope_set, ml->rope_src, c->k_center_sub ? ml->k_mean : nil);
        enc_store(c, e, ml, 0, T);
        enc_store(c, e, ml, 1, T);
        enc_attention(c, e, ml, l, T);
        enc_matvec(c, e, ml->wtype[3], ml->w[3], (long long)H * D, E, w->wo.row_bytes, c->att, ml->bo, c->xn, T);
        if (ml->attn_post_norm) enc_norm(c, e, c->xn, 0, ml->attn_post_norm, c->xn, 0, E, T);
        enc_elem(e, P_ADD, c->x, c->xn, c->x, (long long)T * E);
        enc_norm(c, e, c->x, 0, ml->ffn_norm, c->xn, 0, E, T);
        enc_matvec(c, e, ml->wtype[4], ml->w[4], E, F, w->gate.row_bytes, c->xn, nil, c->gate, T);
        enc_matvec(c, e, ml->wtype[5], ml->w[5], E, F, w->up.row_bytes, c->xn, nil, c->up, T);
        enc_elem(e, m->activation == KVC_ACT_GELU_TANH ? P_GEGLU : P_SWIGLU, c->gate, c->up, c->gate, (long long)T * F);
        enc_matvec(c, e, ml->wtype[6], ml->w[6], F, E, w->down.row_bytes, c->gate, nil, c->xn, T);
        if (ml->ffn_post_norm) enc_norm(c, e, c->xn, 0, ml->ffn_post_norm, c->xn, 0, E, T);
        enc_elem(e, P_ADD, c->x, c->xn, c->x, (long long)T * E);
    }
    const int nl = logits ? T - first : 0;
    if (nl > 0) {
        enc_norm(c, e, c->x, sizeof(float) * (size_t)first * E, c->out_norm, c->xn, 0, E, nl);
        enc_matvec(c, e, c->out_type, c->out_w, E, m->n_vocab, m->output.row_bytes, c->xn, nil, c->logits, nl);
    }
    [e endEncoding];
    [cb commit];
    [cb waitUntilCompleted];
    if ([cb status] != MTLCommandBufferStatusCompleted) {
        NSError *er = [cb error];
        snprintf(ctx->err, sizeof ctx->err, "Metal command buffer failed: %s",
                 er ? [[er localizedDescription] UTF8String] : "unknown error");
        return KVC_ERR_UNSUPPORTED;
    }
    if (nl > 0) memcpy(logits, [c->logits contents], sizeof(float) * (size_t)nl * m->n_vocab);
    ctx->n_past += T;
    return KVC_OK;
}

static int mtl_eval(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits) {
    mtl_ctx *c = ctx->be;
    if (ctx->cap_q || ctx->cap_k || ctx->cap_v) {
        snprintf(ctx->err, sizeof ctx->err, "calibration capture runs on the CPU backend only");
        return KVC_ERR_UNSUPPORTED;
    }
    const long long V = ctx->m->n_vocab;
    int st = KVC_OK;
    @autoreleasepool {
        for (int i = 0; st == KVC_OK && i < n; i += ctx->n_batch) {
            const int T = n - i < ctx->n_batch ? n - i : ctx->n_batch, last = i + T == n;
            float *lg = NULL;
            if (logits && all_logits) lg = logits + (size_t)i * V;
            else if (logits && last) lg = logits;
            st = forward(c, tokens + i, T, lg, all_logits ? 0 : T - 1);
        }
    }
    return st;
}

/* One token per context, evaluated one context after another (not yet one batch). context.c
 * has checked every argument, so only a device failure stops it part way (earlier contexts
 * then keep their token). */
static int mtl_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits) {
    const long long V = ctxs[0]->m->n_vocab;
    for (int i = 0; i < n; i++) {
        int st = mtl_eval(ctxs[i], tokens + i, 1, logits ? logits + (size_t)i * V : NULL, 0);
        if (st != KVC_OK) {
            if (i) snprintf(ctxs[0]->err, sizeof ctxs[0]->err, "context %d: %s", i, ctxs[i]->err);
            return st;
        }
    }
    return KVC_OK;
}

static long long mtl_kv_bytes_per_token(const kvc_context *ctx) {
    const mtl_ctx *c = ctx->be;
    long long total = 0;
    for (int l = 0; l < c->m->n_layer; l++) total += (long long)c->m->n_head_kv * (c->L[l].k_rb + c->L[l].v_rb);
    return total;
}

/* the rows allocated: every layer holds n_ctx positions (no sliding-window cap here yet) */
static long long mtl_kv_bytes(const kvc_context *ctx) { return (long long)ctx->n_ctx * mtl_kv_bytes_per_token(ctx); }

/* every position stays cached (no sliding-window trimming here): any rewind works */
static int mtl_rewind_floor(const kvc_context *ctx) {
    (void)ctx;
    return 1;
}

const kvc_backend_ops kvc_backend_metal = {
    .name = "metal",
    .create = mtl_create,
    .eval = mtl_eval,
    .eval_multi = mtl_eval_multi,
    .kv_bytes_per_token = mtl_kv_bytes_per_token,
    .kv_bytes = mtl_kv_bytes,
    .rewind_floor = mtl_rewind_floor,
    .free = mtl_free,
};
