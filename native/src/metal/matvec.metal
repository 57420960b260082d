// matvec.metal — weight × activation products for F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K
// weights and f32 activations (as llama.cpp's Metal path; the CPU path instead
// quantizes activations to the weight's vec_dot type). One simdgroup per
// weight row; lane l takes the 32-element chunks l, l + 32, ... of the row,
// dequantizes each exactly as quants_ref.c's dequantize_row_*_ref does (the
// same float operations, so the weights are bit-identical to the twin's), and
// dots it with up to KVM_MATVEC_TOKENS activation rows; simd_sum joins the
// lanes. Decode (T = 1) reads every weight once; prefill reads it once per
// KVM_MATVEC_TOKENS tokens (a tiled GEMM is future work).
//
// Grid: (ceil(M / KVM_MATVEC_SG), ceil(T / KVM_MATVEC_TOKENS)) threadgroups of
// 32 * KVM_MATVEC_SG threads. Twin: dequantize_row_*_ref + a float64 dot
// (tests/test_metal.py states the tolerance).
#include <metal_stdlib>
using namespace metal;

#include "kvm_common.h"

// 32 weights of chunk c (elements 32c .. 32c + 31) of a row
static inline void kvm_chunk(int type, device const uchar *row, int c, thread float *w) {
    if (type == KVM_TYPE_F32) {
        device const float *f = (device const float *)row + 32 * c;
        for (int l = 0; l < 32; l++) w[l] = f[l];
    } else if (type == KVM_TYPE_BF16) {
        device const ushort *b = (device const ushort *)row + 32 * c;
        for (int l = 0; l < 32; l++) w[l] = as_type<float>((uint)b[l] << 16);
    } else if (type == KVM_TYPE_F16) {
        device const half *h = (device const half *)row + 32 * c;
        for (int l = 0; l < 32; l++) w[l] = (float)h[l];
    } else if (type == KVM_TYPE_Q8_0) {
        device const kvm_block_q8_0 *b = (device const kvm_block_q8_0 *)row + c;
        const float d = (float)b->d;
        for (int l = 0; l < 32; l++) w[l] = (float)b->qs[l] * d;
    } else if (type == KVM_TYPE_Q4_0) {
        device const kvm_block_q4_0 *b = (device const kvm_block_q4_0 *)row + c;
        const float d = (float)b->d;
        for (int l = 0; l < 16; l++) {
            w[l] = d * (float)((int)(b->qs[l] & 15) - 8);
            w[l + 16] = d * (float)((int)(b->qs[l] >> 4) - 8);
        }
    } else if (type == KVM_TYPE_Q4_K) {
        device const kvm_block_q4_K *b = (device const kvm_block_q4_K *)row + c / 8;
        const int j = c % 8; // sub-block: qs[32 * (j / 2)], low nibble for even j
        device const uchar *q = b->scales;
        int sc, m;
        if (j < 4) {
            sc = q[j] & 63;
            m = q[j + 4] & 63;
        } else {
            sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
            m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
        const float d1 = (float)b->d * (float)sc, m1 = (float)b->dmin * (float)m;
        device const uchar *qs = b->qs + 32 * (j / 2);
        const int shift = (j & 1) * 4;
        for (int l = 0; l < 32; l++) w[l] = d1 * (float)((qs[l] >> shift) & 15) - m1;
    } else { // KVM_TYPE_Q6_K
        device const kvm_block_q6_K *b = (device const kvm_block_q6_K *)row + c / 8;
        const int ci = c % 8, h = ci / 4, part = ci % 4; // elements 128h + 32part + l
        device const uchar *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        device const int8_t *sc = b->scales + 8 * h;
        const float d = (float)b->d;
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            int q;
            if (part == 0) q = (ql[l] & 15) | ((qh[l] & 3) << 4);
            else if (part == 1) q = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
            else if (part == 2) q = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            else q = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            w[l] = d * (float)sc[is + 2 * part] * (float)(q - 32);
        }
    }
}

static void kvm_matvec(int type, constant kvm_matvec_args &a, device const uchar *w, device const float *x,
                       device const float *bias, device float *y, uint3 tgpig, ushort lane, ushort sg) {
    const int r = (int)tgpig.x * KVM_MATVEC_SG + sg;
    if (r >= a.M) return; // the whole simdgroup: no simd_sum below is left waiting
    const int t0 = (int)tgpig.y * KVM_MATVEC_TOKENS, nt = min(KVM_MATVEC_TOKENS, a.T - t0);
    device const uchar *row = w + (ulong)r * a.row_bytes;
    float acc[KVM_MATVEC_TOKENS];
    for (int t = 0; t < KVM_MATVEC_TOKENS; t++) acc[t] = 0.0f;
    float wc[32];
    for (int c = lane; c < a.K / 32; c += 32) {
        kvm_chunk(type, row, c, wc);
        for (int t = 0; t < nt; t++) {
            device const float *xc = x + (ulong)(t0 + t) * a.ldx + 32 * c;
            float s = 0.0f;
            for (int l = 0; l < 32; l++) s = fma(wc[l], xc[l], s);
            acc[t] += s;
        }
    }
    for (int t = 0; t < nt; t++) {
        const float s = simd_sum(acc[t]);
        if (lane == 0) y[(ulong)(t0 + t) * a.ldy + r] = a.has_bias ? s + bias[r] : s;
    }
}

#define KVM_MATVEC_KERNEL(name, type)                                                                   \
    kernel void name(constant kvm_matvec_args &a [[buffer(0)]], device const uchar *w [[buffer(1)]],   \
                     device const float *x [[buffer(2)]], device const float *bias [[buffer(3)]],     \
                     device float *y [[buffer(4)]], uint3 tgpig [[threadgroup_position_in_grid]],     \
                     ushort lane [[thread_index_in_simdgroup]],                                        \
                     ushort sg [[simdgroup_index_in_threadgroup]]) {                                   \
        kvm_matvec(type, a, w, x, bias, y, tgpig, lane, sg);                                           \
    }

KVM_MATVEC_KERNEL(kvm_matvec_f32, KVM_TYPE_F32)
KVM_MATVEC_KERNEL(kvm_matvec_f16, KVM_TYPE_F16)
KVM_MATVEC_KERNEL(kvm_matvec_bf16, KVM_TYPE_BF16)
KVM_MATVEC_KERNEL(kvm_matvec_q8_0, KVM_TYPE_Q8_0)
KVM_MATVEC_KERNEL(kvm_matvec_q4_0, KVM_TYPE_Q4_0)
KVM_MATVEC_KERNEL(kvm_matvec_q4_K, KVM_TYPE_Q4_K)
KVM_MATVEC_KERNEL(kvm_matvec_q6_K, KVM_TYPE_Q6_K)
