// tq_store.metal — the TurboQuant KV store (docs/design.md §4): a batch of
// head vectors encoded into cache rows, one threadgroup per (token, KV head).
// Twin: tq_encode_ref (tq_ref.c) as cpu/kv_cache.c's kv_store calls it (V
// centering, K permutation, sinks).
//
// Per group: signs + block Walsh–Hadamard (+ mixing) rotation — bit-identical
// to tq_rotate —, then the norm, the nearest Lloyd–Max centroid of y/‖y‖, the
// scale (norm / least squares / proj) as fp16, the codes packed into the
// row's bitstream, and for QJL groups the residual's norm (fp16) and the signs
// of its second rotation. The twin does the norm, the comparisons with the
// centroid midpoints and the scale sums in double; Metal has no double, so
// here they are float: a code can differ where y/‖y‖ lies within float
// rounding of a midpoint, and a scale by an fp16 rounding (the test states
// how often and how far).
//
// Threadgroup memory: float sf[6 * D + 8], uint su[D]. Threads: KVM_STORE_THREADS.
#include <metal_stdlib>
using namespace metal;

#include "kvm_common.h"

kernel void kvm_tq_store(constant kvm_tq_store_args &a [[buffer(0)]],
                         device const float *x [[buffer(1)]],     // (T, n_kv_head, D)
                         device const float *mean [[buffer(2)]],  // (n_kv_head, D) V mean, if has_mean
                         device const float *ft [[buffer(3)]],    // the layout's float table
                         device const int *it [[buffer(4)]],      // the layout's int table
                         device uchar *cache [[buffer(5)]],       // (n_kv_head, n_ctx) rows of L.row_bytes
                         device half *sink [[buffer(6)]],         // (n_kv_head, n_sink, D), if n_sink
                         threadgroup float *sf KVM_TG(0),
                         threadgroup uint *code KVM_TG(1),
                         uint3 tgpig [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint nt [[threads_per_threadgroup]]) {
    constant kvm_tq_layout &L = a.L;
    const int D = a.D, t = (int)tgpig.x, h = (int)tgpig.y, pos = a.pos0 + t;
    threadgroup float *val = sf;       // (D) the vector as given (V: centered)
    threadgroup float *y = sf + D;     // (D) rotated
    threadgroup float *tmp = sf + 2 * D;
    threadgroup float *r = sf + 3 * D; // (D) QJL residual / decoded V row
    threadgroup float *prod = sf + 4 * D; // (D) per-channel products for the scale sums
    threadgroup float *prod2 = sf + 5 * D;
    threadgroup float *grp = sf + 6 * D; // per group: [norm, n2] x 2, then [fp16 scale as float] x 2
    device const float *src = x + ((ulong)t * a.n_kv_head + h) * D;
    device uchar *row = cache + ((ulong)h * a.n_ctx + pos) * L.row_bytes;
    const bool is_sink = pos < a.n_sink;

    for (int i = (int)tid; i < D; i += (int)nt) {
        float v = src[i];
        if (a.kind == 1 && a.has_mean) v = v - mean[h * D + i];
        val[i] = v;
        if (a.kind == 0 && is_sink) sink[((ulong)h * a.n_sink + pos) * D + i] = (half)v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int i = (int)tid; i < D; i += (int)nt) y[i] = L.perm >= 0 ? val[it[L.perm + i]] : val[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    kvm_rotate_tg(y, tmp, L, ft, it, 0, false, tid, nt);

    if ((int)tid < L.n_groups) { // one thread per group: the norm
        const int k = (int)tid, s0 = L.g[k].start;
        float n2 = 0.0f;
        for (int i = 0; i < L.g[k].m; i++) n2 += y[s0 + i] * y[s0 + i];
        grp[2 * k] = sqrt(n2);
        grp[2 * k + 1] = n2;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int i = (int)tid; i < D; i += (int)nt) { // nearest centroid: midpoints below u
        const int k = kvm_group_of(L, i);
        const float norm = grp[2 * k];
        const float u = norm > 0.0f ? y[i] / norm : 0.0f;
        device const float *bounds = ft + L.g[k].bounds;
        int lo = 0, hi = (1 << L.g[k].bits) - 1;
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (bounds[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        code[i] = (uint)lo;
        const float c = ft[L.g[k].cb + lo];
        prod[i] = y[i] * c;
        prod2[i] = c * c;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if ((int)tid < L.n_groups) { // the scale, as fp16 in the row
        const int k = (int)tid, s0 = L.g[k].start;
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < L.g[k].m; i++) num += prod[s0 + i], den += prod2[s0 + i];
        const float n2 = grp[2 * k + 1];
        const float s = a.scale_mode == 1 ? (den > 0.0f ? num / den : 0.0f)
                      : a.scale_mode == 2 ? (num != 0.0f ? n2 / num : 0.0f)
                                          : grp[2 * k];
        const half hs = (half)s;
        const ushort bits = as_type<ushort>(hs);
        row[L.g[k].off] = (uchar)(bits & 255);
        row[L.g[k].off + 1] = (uchar)(bits >> 8);
        grp[4 + k] = (float)hs;
    }
    for (int k = 0; k < L.n_groups; k++) { // pack the codes, one byte per thread
        const int m = L.g[k].m, b = L.g[k].bits, s0 = L.g[k].start;
        for (int bi = (int)tid; bi < (m * b + 7) / 8; bi += (int)nt) {
            uint byte = 0;
            for (int e = 0; e < 8; e++) {
                const int bit = 8 * bi + e, el = bit / b;
                if (el < m) byte |= ((code[s0 + el] >> (bit % b)) & 1u) << e;
            }
            row[L.g[k].codes_off + bi] = (uchar)byte;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    bool any_qjl = false;
    for (int k = 0; k < L.n_groups; k++) any_qjl = any_qjl || L.g[k].qjl;
    if (any_qjl) { // residual r = y − ŷ: its norm, then the signs of its second rotation
        for (int i = (int)tid; i < D; i += (int)nt) {
            const int k = kvm_group_of(L, i);
            r[i] = y[i] - grp[4 + k] * ft[L.g[k].cb + code[i]];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if ((int)tid < L.n_groups && L.g[tid].qjl) {
            const int k = (int)tid, s0 = L.g[k].start;
            float r2 = 0.0f;
            for (int i = 0; i < L.g[k].m; i++) r2 += r[s0 + i] * r[s0 + i];
            const ushort bits = as_type<ushort>((half)sqrt(r2));
            row[L.g[k].off + 2] = (uchar)(bits & 255);
            row[L.g[k].off + 3] = (uchar)(bits >> 8);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        kvm_rotate_tg(r, tmp, L, ft, it, 1, true, tid, nt);
        for (int k = 0; k < L.n_groups; k++) {
            if (!L.g[k].qjl) continue;
            const int m = L.g[k].m, s0 = L.g[k].start;
            for (int bi = (int)tid; bi < (m + 7) / 8; bi += (int)nt) {
                uint byte = 0;
                for (int e = 0; e < 8 && 8 * bi + e < m; e++)
                    if (r[s0 + 8 * bi + e] < 0.0f) byte |= 1u << e;
                row[L.g[k].qjl_off + bi] = (uchar)byte;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    if (a.kind == 1 && is_sink) { // V sink: fp16(value − decoded row)
        for (int i = (int)tid; i < D; i += (int)nt) {
            const int k = kvm_group_of(L, i);
            r[i] = 0.0f + grp[4 + k] * ft[L.g[k].cb + code[i]];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        kvm_unrotate_tg(r, tmp, L, ft, it, tid, nt);
        for (int i = (int)tid; i < D; i += (int)nt) sink[((ulong)h * a.n_sink + pos) * D + i] = (half)(val[i] - r[i]);
    }
}

// The f16 cache store (type f16): fp16 rows of D values, V centered when has_mean. One
// thread per value. Twin: kvc_quantize_row_f16_ref (round to nearest even, as (half)).
kernel void kvm_f16_store(constant kvm_tq_store_args &a [[buffer(0)]],
                          device const float *x [[buffer(1)]],    // (T, n_kv_head, D)
                          device const float *mean [[buffer(2)]], // (n_kv_head, D), if has_mean
                          device half *cache [[buffer(3)]],       // (n_kv_head, n_ctx, D)
                          uint gid [[thread_position_in_grid]]) {
    const int D = a.D;
    if ((int)gid >= a.T * a.n_kv_head * D) return;
    const int i = (int)gid % D, h = ((int)gid / D) % a.n_kv_head, t = (int)gid / (D * a.n_kv_head);
    float v = x[gid];
    if (a.has_mean) v = v - mean[h * D + i];
    cache[((ulong)h * a.n_ctx + a.pos0 + t) * D + i] = (half)v;
}
