/* kvm_common.h — MSL helpers the .metal files share: the exp of the CPU twins
 * (vec.h's kvc_expf_ref, same operations in the same order), fp16 fields read
 * from byte pointers, TurboQuant codes, and the group rotations of tq.c done
 * cooperatively by a threadgroup over a head vector in threadgroup memory.
 *
 * Rotations: the butterflies of tq_wht and the sign/mixing steps of tq_rotate
 * and tq.c's unrotate, element for element the same float operations, so the
 * rotated vectors are bit-identical to the C ones (tests/test_metal.py). Every
 * helper taking `tid, nt` must be called by all nt threads of the threadgroup
 * (they contain barriers). */
#ifndef KVM_COMMON_H
#define KVM_COMMON_H

#include <metal_stdlib>
using namespace metal;

#include "kvc_metal.h"

/* [[threadgroup(n)]] on a kernel parameter, spelled through a macro because the
 * Linux shim defines `threadgroup` (the address space) away */
#ifndef KVM_SHIM
#define KVM_TG(n) [[threadgroup(n)]]
#endif

/* (float)(1 / sqrt((double)2^k)) as tq_wht computes it, k = 0..10 */
constant float kvm_inv_sqrt_pow2[11] = {1.000000000e+00f, 7.071067691e-01f, 5.000000000e-01f, 3.535533845e-01f,
                                        2.500000000e-01f, 1.767766923e-01f, 1.250000000e-01f, 8.838834614e-02f,
                                        6.250000000e-02f, 4.419417307e-02f, 3.125000000e-02f};

/* kvc_expf_ref (vec.h): Cody–Waite reduction, degree-7 polynomial with fma */
static inline float kvm_exp(float x) {
    if (x != x) return x;
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) x = 88.0f;
    float n = rint(x * 1.44269504088896341f);
    float r = fma(-n, 0.693145751953125f, x);
    r = fma(-n, 1.42860682030941723212e-6f, r);
    float p = 1.0f / 5040;
    p = fma(p, r, 1.0f / 720);
    p = fma(p, r, 1.0f / 120);
    p = fma(p, r, 1.0f / 24);
    p = fma(p, r, 1.0f / 6);
    p = fma(p, r, 1.0f / 2);
    p = fma(p, r, 1.0f);
    p = fma(p, r, 1.0f);
    return p * as_type<float>((int)(((int)n + 127) << 23));
}

/* fp16 at any byte offset (rows of a TurboQuant cache need not be 2-byte aligned) */
static inline float kvm_ld_half(device const uchar *p) {
    return (float)as_type<half>((ushort)(p[0] | (p[1] << 8)));
}

static inline float kvm_half_f(kvm_half h) { return (float)h; }

/* code i of a b-bit little-endian bitstream (tq_get_code; reads up to 2 bytes past) */
static inline uint kvm_get_code(device const uchar *codes, int i, int b) {
    uint bit = (uint)i * (uint)b, byte = bit >> 3, sh = bit & 7;
    uint v = codes[byte] | ((uint)codes[byte + 1] << 8) | ((uint)codes[byte + 2] << 16);
    return (v >> sh) & ((1u << b) - 1);
}

/* group of channel i, its index within the group, and the block of tq_wht's binary
 * expansion it falls in (start within the group, size) */
static inline int kvm_group_of(constant kvm_tq_layout &L, int i) { return L.n_groups > 1 && i >= L.g[1].start ? 1 : 0; }

static inline void kvm_block_of(int m, int li, thread int &bstart, thread int &B) {
    int s = 0;
    for (int b = 1 << 10; b >= 1; b >>= 1) {
        if (!(m & b)) continue;
        if (li < s + b) {
            bstart = s, B = b;
            return;
        }
        s += b;
    }
    bstart = 0, B = 1;
}

static inline int kvm_log2(int B) {
    int k = 0;
    while ((1 << k) < B) k++;
    return k;
}

/* tq_wht on every group of x (d) whose bit is set in mask (1: group 0, 2: group 1) */
static void kvm_wht_tg(threadgroup float *x, constant kvm_tq_layout &L, int mask, uint tid, uint nt) {
    int maxB = 1;
    for (int k = 0; k < L.n_groups; k++)
        if (mask >> k & 1)
            for (int b = 1 << 10; b >= 1; b >>= 1)
                if (L.g[k].m & b) {
                    maxB = max(maxB, b);
                    break;
                }
    for (int h = 1; h < maxB; h <<= 1) {
        for (int i = (int)tid; i < L.d; i += (int)nt) {
            const int k = kvm_group_of(L, i);
            if (!(mask >> k & 1)) continue;
            const int li = i - L.g[k].start;
            int bs, B;
            kvm_block_of(L.g[k].m, li, bs, B);
            if (h < B && !((li - bs) & h)) {
                const float a = x[i], b = x[i + h];
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    for (int i = (int)tid; i < L.d; i += (int)nt) {
        const int k = kvm_group_of(L, i);
        if (!(mask >> k & 1)) continue;
        int bs, B;
        kvm_block_of(L.g[k].m, i - L.g[k].start, bs, B);
        x[i] *= kvm_inv_sqrt_pow2[kvm_log2(B)];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

static inline int kvm_mix_mask(constant kvm_tq_layout &L) {
    int mask = 0;
    for (int k = 0; k < L.n_groups; k++)
        if (L.g[k].mix >= 0) mask |= 1 << k;
    return mask;
}

/* x (d) in place: x <- R x per group, R = tq_rotate's with the group's signs (which 0)
 * or signs2 (which 1, QJL groups only when qjl_only); tmp: (d) scratch */
static void kvm_rotate_tg(threadgroup float *x, threadgroup float *tmp, constant kvm_tq_layout &L,
                          device const float *ft, device const int *it, int which, bool qjl_only, uint tid, uint nt) {
    int mask = 0;
    for (int k = 0; k < L.n_groups; k++)
        if (!qjl_only || L.g[k].qjl) mask |= 1 << k;
    for (int i = (int)tid; i < L.d; i += (int)nt) {
        const int k = kvm_group_of(L, i);
        if (mask >> k & 1) x[i] *= ft[(which ? L.g[k].signs2 : L.g[k].signs) + i - L.g[k].start];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    kvm_wht_tg(x, L, mask, tid, nt);
    const int mm = kvm_mix_mask(L) & mask;
    if (!mm) return;
    for (int i = (int)tid; i < L.d; i += (int)nt) {
        const int k = kvm_group_of(L, i);
        if (!(mm >> k & 1)) continue;
        const int li = i - L.g[k].start;
        tmp[i] = x[L.g[k].start + it[L.g[k].mix + li]] * ft[L.g[k].mix_signs + li];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int i = (int)tid; i < L.d; i += (int)nt)
        if (mm >> kvm_group_of(L, i) & 1) x[i] = tmp[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    kvm_wht_tg(x, L, mm, tid, nt);
}

/* x (d) in place: x <- Rᵀ x per group (tq.c's unrotate); tmp: (d) scratch */
static void kvm_unrotate_tg(threadgroup float *x, threadgroup float *tmp, constant kvm_tq_layout &L,
                            device const float *ft, device const int *it, uint tid, uint nt) {
    kvm_wht_tg(x, L, (1 << L.n_groups) - 1, tid, nt);
    const int mm = kvm_mix_mask(L);
    if (mm) {
        for (int i = (int)tid; i < L.d; i += (int)nt) {
            const int k = kvm_group_of(L, i);
            if (!(mm >> k & 1)) continue;
            const int li = i - L.g[k].start;
            tmp[L.g[k].start + it[L.g[k].mix + li]] = x[i] * ft[L.g[k].mix_signs + li];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int i = (int)tid; i < L.d; i += (int)nt)
            if (mm >> kvm_group_of(L, i) & 1) x[i] = tmp[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        kvm_wht_tg(x, L, mm, tid, nt);
    }
    for (int i = (int)tid; i < L.d; i += (int)nt) {
        const int k = kvm_group_of(L, i);
        x[i] *= ft[L.g[k].signs + i - L.g[k].start];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

#endif /* KVM_COMMON_H */
