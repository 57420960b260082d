// elementwise.metal — RMSNorm, RoPE (both pairings, permuted θ table, K
// centering before rotation), SwiGLU, GeGLU, add, scale. Twins: vec_ref.c
// (rms_norm_ref, silu_mul_ref, kvc_gelu_mul_ref, scale_ref) and cpu/forward.c
// (rope_apply, kv_center's subtraction). Elementwise ones evaluate the twin's
// expression in its order, so they are bit-identical where the math library
// is (exp is the twins' own polynomial); RMSNorm reduces in a tree.
#include <metal_stdlib>
using namespace metal;

#include "kvm_common.h"

// One threadgroup per row: out (n_rows, n) = x / sqrt(mean(x²) + eps) * w. out may be x.
// Threadgroup memory: 33 floats. Threads: a multiple of 32, at most 1024.
kernel void kvm_rms_norm(constant kvm_norm_args &a [[buffer(0)]],
                         device const float *x [[buffer(1)]],
                         device const float *w [[buffer(2)]],
                         device float *out [[buffer(3)]],
                         threadgroup float *red KVM_TG(0),
                         uint3 tgpig [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint nt [[threads_per_threadgroup]],
                         ushort lane [[thread_index_in_simdgroup]],
                         ushort sg [[simdgroup_index_in_threadgroup]]) {
    const int row = (int)tgpig.x;
    device const float *xr = x + (ulong)row * a.n;
    device float *o = out + (ulong)row * a.n;
    float ss = 0.0f;
    for (int i = (int)tid; i < a.n; i += (int)nt) ss = fma(xr[i], xr[i], ss);
    ss = simd_sum(ss);
    if (lane == 0) red[sg] = ss;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        float t = 0.0f;
        for (int s = 0; s < (int)(nt + 31) / 32; s++) t += red[s];
        red[32] = 1.0f / sqrt(t / a.n + a.eps);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const float inv = red[32];
    for (int i = (int)tid; i < a.n; i += (int)nt) o[i] = xr[i] * inv * w[i];
}

// x (T, n_heads, D) in place, one thread per (token, head, pair). cs (T, D/2, 2): cos, sin per
// token and table column; src (D/2): the column of pair j (the folded layout's permuted θ
// table; identity otherwise). mean (n_heads, D): subtracted first when has_mean.
kernel void kvm_rope(constant kvm_rope_args &a [[buffer(0)]],
                     device float *x [[buffer(1)]],
                     device const float *cs [[buffer(2)]],
                     device const int *src [[buffer(3)]],
                     device const float *mean [[buffer(4)]],
                     uint gid [[thread_position_in_grid]]) {
    const int P = a.D / 2;
    if ((int)gid >= a.T * a.n_heads * P) return;
    const int j = (int)gid % P, h = ((int)gid / P) % a.n_heads, t = (int)gid / (P * a.n_heads);
    device float *v = x + ((ulong)t * a.n_heads + h) * a.D;
    const int ia = a.pairing == 0 ? j : 2 * j, ib = a.pairing == 0 ? j + P : 2 * j + 1;
    float xa = v[ia], xb = v[ib];
    if (a.has_mean) {
        xa = xa - mean[h * a.D + ia];
        xb = xb - mean[h * a.D + ib];
    }
    device const float *tc = cs + (ulong)t * P * 2;
    const float c0 = tc[2 * src[j]], s0 = tc[2 * src[j] + 1];
    v[ia] = xa * c0 - xb * s0;
    v[ib] = xa * s0 + xb * c0;
}

// out = silu(g) * u (out may be g)
kernel void kvm_swiglu(constant kvm_elem_args &a [[buffer(0)]],
                       device const float *g [[buffer(1)]],
                       device const float *u [[buffer(2)]],
                       device float *out [[buffer(3)]],
                       uint gid [[thread_position_in_grid]]) {
    if ((int)gid >= a.n) return;
    const float x = g[gid];
    out[gid] = x / (1.0f + kvm_exp(-x)) * u[gid];
}

// out = gelu_tanh(g) * u (out may be g)
kernel void kvm_geglu(constant kvm_elem_args &a [[buffer(0)]],
                      device const float *g [[buffer(1)]],
                      device const float *u [[buffer(2)]],
                      device float *out [[buffer(3)]],
                      uint gid [[thread_position_in_grid]]) {
    if ((int)gid >= a.n) return;
    const float c = 0.7978845608028654f;
    const float x = g[gid];
    out[gid] = 0.5f * x * (1.0f + tanh(c * (x + 0.044715f * x * x * x))) * u[gid];
}

// out = a + b (out may be a or b): residual adds, biases of a batch
kernel void kvm_add(constant kvm_elem_args &a [[buffer(0)]],
                    device const float *x [[buffer(1)]],
                    device const float *y [[buffer(2)]],
                    device float *out [[buffer(3)]],
                    uint gid [[thread_position_in_grid]]) {
    if ((int)gid >= a.n) return;
    out[gid] = x[gid] + y[gid];
}

// x *= s (embedding scale)
kernel void kvm_scale(constant kvm_elem_args &a [[buffer(0)]],
                      device float *x [[buffer(1)]],
                      uint gid [[thread_position_in_grid]]) {
    if ((int)gid >= a.n) return;
    x[gid] = x[gid] * a.s;
}
