// attention.metal — causal GQA attention read directly from the compressed
// cache (docs/design.md §4): no pass dequantizes it to f16. One threadgroup
// per (query token, query head); twin: cpu/kv_cache.c's kv_scores and
// kv_values for one query row with cpu/forward.c's attn_block between them
// (scale, sliding window, softmax, V mean).
//
//  1. the query row into threadgroup memory; TurboQuant K: permuted and rotated
//     per group once (tq_prepare_query; QJL groups also get their JL image),
//     the codebooks copied into threadgroup memory
//  2. one thread per key: the score from the codes (Σ_i q̃_i·cb[code_i] per group
//     times its fp16 scale, plus the QJL term), or from the fp16 copy of a sink,
//     or from an f16 row; plus the centering correction (q·R_pos·μ: per centered
//     pair, A·cos + B·sin of the position added onto the score, fused, pair by pair);
//     times scale; into `scores`
//  3. max and Σ exp over the window (partials per thread, then in thread order)
//  4. one thread per channel: V accumulated over the keys in the rotated domain
//     (Σ_j p_j·s_j·cb[code_ji]; f16 rows: fma as the CPU's axpy), un-rotated once,
//     then the sinks' corrections and the V mean
//
// Steps 2 and 4 run each key's / channel's sum in the twin's order, so with the
// same weights they are bit-identical; the softmax sum is a different order
// (tests/test_metal.py: tolerance). Threadgroup memory: floats
// 6 * D + (codebook entries of K and V) + KVM_ATTN_THREADS + 4.
#include <metal_stdlib>
using namespace metal;

#include "kvm_common.h"

static inline float kvm_tq_score(constant kvm_tq_layout &L, device const uchar *row, threadgroup const float *qr,
                                 threadgroup const float *w, threadgroup const float *cb) {
    float total = 0.0f;
    int cbo = 0;
    for (int k = 0; k < L.n_groups; k++) {
        const int m = L.g[k].m, s0 = L.g[k].start, b = L.g[k].bits;
        device const uchar *codes = row + L.g[k].codes_off;
        float acc = 0.0f;
        for (int i = 0; i < m; i++) acc += qr[s0 + i] * cb[cbo + kvm_get_code(codes, i, b)];
        total += kvm_ld_half(row + L.g[k].off) * acc;
        if (L.g[k].qjl) {
            device const uchar *bits = row + L.g[k].qjl_off;
            float sj = 0.0f;
            for (int i = 0; i < m; i++) sj += (bits[i >> 3] >> (i & 7) & 1) ? -w[s0 + i] : w[s0 + i];
            total += kvm_ld_half(row + L.g[k].off + 2) * L.g[k].qjl_c * sj;
        }
        cbo += 1 << b;
    }
    return total;
}

kernel void kvm_attention(constant kvm_attn_args &a [[buffer(0)]],
                          device const float *q [[buffer(1)]],        // (T, q_stride): query heads of D
                          device const uchar *kc [[buffer(2)]],       // K rows (n_kv_head, n_ctx)
                          device const uchar *vc [[buffer(3)]],       // V rows (n_kv_head, n_ctx)
                          device const float *kft [[buffer(4)]],      // K layout tables (TQ)
                          device const int *kit [[buffer(5)]],
                          device const float *vft [[buffer(6)]],      // V layout tables (TQ)
                          device const int *vit [[buffer(7)]],
                          device const half *k_sink [[buffer(8)]],    // (n_kv_head, n_sink, D)
                          device const half *v_sink [[buffer(9)]],    // (n_kv_head, n_sink, D)
                          device const float *k_mean [[buffer(10)]],  // (n_kv_head, D) pre-RoPE, 0 outside centered pairs
                          device const int *k_pairs [[buffer(11)]],   // (n_kv_head, D/2) centered pairs, -1 after the last
                          device const int *rope_src [[buffer(12)]],  // (D/2) pair -> column of rope_all
                          device const float *rope_all [[buffer(13)]],// (n_ctx, D/2, 2) cos, sin per position
                          device const float *v_mean [[buffer(14)]],  // (n_kv_head, D)
                          device float *scores [[buffer(15)]],        // (T * n_head, n_ctx) scratch
                          device float *out [[buffer(16)]],           // (T, q_stride)
                          threadgroup float *sm KVM_TG(0),
                          uint3 tgpig [[threadgroup_position_in_grid]],
                          uint tid [[thread_index_in_threadgroup]],
                          uint nt [[threads_per_threadgroup]]) {
    const int D = a.D, P = D / 2, t = (int)tgpig.x, hq = (int)tgpig.y;
    const int h = hq / (a.n_head / a.n_kv_head);
    const int n = a.n_past + t + 1;                          // keys this token sees
    const int lo = a.window && n > a.window ? n - a.window : 0; // sliding window: keys lo ..
    constant kvm_tq_layout &LK = a.LK;
    constant kvm_tq_layout &LV = a.LV;
    int nk = 0, nv = 0; // codebook entries
    for (int k = 0; a.k_tq && k < LK.n_groups; k++) nk += 1 << LK.g[k].bits;
    for (int k = 0; a.v_tq && k < LV.n_groups; k++) nv += 1 << LV.g[k].bits;
    threadgroup float *qs = sm;          // (D) the query as given
    threadgroup float *qr = sm + D;      // (D) rotated (TQ K)
    threadgroup float *w = sm + 2 * D;   // (D) JL image (QJL groups)
    threadgroup float *tmp = sm + 3 * D; // (D)
    threadgroup float *corr = sm + 4 * D; // (D) centering coefficients
    threadgroup float *acc = sm + 5 * D; // (D) V accumulator
    threadgroup float *cbk = sm + 6 * D; // (nk)
    threadgroup float *cbv = cbk + nk;   // (nv)
    threadgroup float *red = cbv + nv;   // (nt + 4)
    device const float *qrow = q + (ulong)t * a.q_stride + (ulong)hq * D;
    device float *srow = scores + ((ulong)t * a.n_head + hq) * a.n_ctx;

    // 1. query, codebooks, centering coefficients
    for (int i = (int)tid; i < D; i += (int)nt) {
        qs[i] = qrow[i];
        corr[i] = 0.0f;
    }
    for (int k = 0, o = 0; a.k_tq && k < LK.n_groups; o += 1 << LK.g[k].bits, k++)
        for (int c = (int)tid; c < (1 << LK.g[k].bits); c += (int)nt) cbk[o + c] = kft[LK.g[k].cb + c];
    for (int k = 0, o = 0; a.v_tq && k < LV.n_groups; o += 1 << LV.g[k].bits, k++)
        for (int c = (int)tid; c < (1 << LV.g[k].bits); c += (int)nt) cbv[o + c] = vft[LV.g[k].cb + c];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    device const int *pairs = k_pairs + h * P;
    int np = 0; // centered pairs: k_pairs is -1 after the last
    while (a.k_center && np < P && pairs[np] >= 0) np++;
    if (a.k_center) {
        device const float *mu = k_mean + h * D;
        for (int k = (int)tid; k < np; k += (int)nt) { // A_k, B_k of the k-th centered pair
            const int jp = pairs[k];
            const int ia = a.pairing == 0 ? jp : 2 * jp, ib = a.pairing == 0 ? jp + P : 2 * jp + 1;
            corr[2 * k] = qs[ia] * mu[ia] + qs[ib] * mu[ib];
            corr[2 * k + 1] = qs[ib] * mu[ia] - qs[ia] * mu[ib];
        }
    }
    if (a.k_tq) {
        for (int i = (int)tid; i < D; i += (int)nt) qr[i] = LK.perm >= 0 ? qs[kit[LK.perm + i]] : qs[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        kvm_rotate_tg(qr, tmp, LK, kft, kit, 0, false, tid, nt);
        for (int i = (int)tid; i < D; i += (int)nt) w[i] = qr[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        kvm_rotate_tg(w, tmp, LK, kft, kit, 1, true, tid, nt);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // 2. scores
    const int krb = a.k_tq ? LK.row_bytes : 2 * D;
    for (int j = lo + (int)tid; j < n; j += (int)nt) {
        device const uchar *row = kc + ((ulong)h * a.n_ctx + j) * krb;
        float s = 0.0f;
        if (a.k_tq && j < a.n_sink) {
            device const half *ks = k_sink + ((ulong)h * a.n_sink + j) * D;
            for (int k = 0; k < D; k++) s += qs[k] * (float)ks[k];
        } else if (a.k_tq) {
            s = kvm_tq_score(LK, row, qr, w, cbk);
        } else {
            device const half *kh = (device const half *)row;
            for (int k = 0; k < D; k++) s += (float)kh[k] * qs[k];
        }
        if (a.k_center) { // onto the score, pair by pair, fused: the CPU's axpy_rows (kv_cache.c)
            device const float *cs = rope_all + (ulong)j * D;
            for (int k = 0; k < np; k++) {
                const int col = 2 * rope_src[pairs[k]];
                s = fma(corr[2 * k], cs[col], s);
                s = fma(corr[2 * k + 1], cs[col + 1], s);
            }
        }
        srow[j] = s * a.scale;
    }
    threadgroup_barrier(mem_flags::mem_device);

    // 3. softmax over keys lo .. n-1
    float mx = -INFINITY;
    for (int j = lo + (int)tid; j < n; j += (int)nt) mx = max(mx, srow[j]);
    red[tid] = mx;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        float m = red[0];
        for (int i = 1; i < (int)nt; i++) m = max(m, red[i]);
        red[nt] = m;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    mx = red[nt];
    float sum = 0.0f;
    for (int j = lo + (int)tid; j < n; j += (int)nt) {
        const float e = kvm_exp(srow[j] - mx);
        srow[j] = e;
        sum += e;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    red[tid] = sum;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        float s = 0.0f;
        for (int i = 0; i < (int)nt; i++) s += red[i];
        red[nt + 1] = 1.0f / s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const float inv = red[nt + 1];
    for (int j = lo + (int)tid; j < n; j += (int)nt) srow[j] = srow[j] * inv;
    threadgroup_barrier(mem_flags::mem_device);

    // 4. values: the rows of the window, in order
    const int vrb = a.v_tq ? LV.row_bytes : 2 * D;
    for (int i = (int)tid; i < D; i += (int)nt) {
        float s = 0.0f;
        if (a.v_tq) {
            const int k = kvm_group_of(LV, i), li = i - LV.g[k].start, b = LV.g[k].bits;
            const int cbo = k ? 1 << LV.g[0].bits : 0;
            for (int j = lo; j < n; j++) {
                device const uchar *row = vc + ((ulong)h * a.n_ctx + j) * vrb;
                const float c = srow[j] * kvm_ld_half(row + LV.g[k].off);
                s = s + c * cbv[cbo + kvm_get_code(row + LV.g[k].codes_off, li, b)];
            }
        } else {
            for (int j = lo; j < n; j++) {
                device const half *vh = (device const half *)(vc + ((ulong)h * a.n_ctx + j) * vrb);
                s = fma(srow[j], (float)vh[i], s);
            }
        }
        acc[i] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (a.v_tq) kvm_unrotate_tg(acc, tmp, LV, vft, vit, tid, nt);
    device float *orow = out + (ulong)t * a.q_stride + (ulong)hq * D;
    for (int i = (int)tid; i < D; i += (int)nt) {
        float s = acc[i];
        for (int j = lo; a.v_tq && j < a.n_sink && j < n; j++) s += srow[j] * (float)v_sink[((ulong)h * a.n_sink + j) * D + i];
        if (a.has_v_mean) s = s + v_mean[h * D + i];
        orow[i] = s;
    }
}
