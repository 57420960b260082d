/* quants_neon.c — aarch64 NEON quantize and dequantize kernels, bit-identical
 * to the scalar twins in quants_ref.c (tested in tests/test_neon.py). NEON has
 * the twins' roundings as instructions: fcvtas is roundf (half away from zero,
 * Q8_0/Q8_1), fcvtns is nearest-even (Q8_K's nearest_int), fcvtn/fcvtl are
 * IEEE fp32 <-> fp16 with round to nearest even. Block scales go through the
 * scalar kvc_fp32_to_fp16. vec_dot / gemm: quants_neon_dot.c. */

#if defined(__aarch64__)

#include <math.h>

#include "simd_neon.h"

/* One 32-element block of Q8_0/Q8_1: the quants, *d and (if sum_out) the int sum. */
KVC_INLINE int8x16x2_t quant_block_32(const float *x, float *d_out, int *sum_out) {
    float32x4_t v[8], amax = vdupq_n_f32(0.0f);
    for (int j = 0; j < 8; j++) {
        v[j] = vld1q_f32(x + 4 * j);
        amax = vmaxq_f32(amax, vabsq_f32(v[j]));
    }
    const float d = vmaxvq_f32(amax) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int32x4_t q[8];
    for (int j = 0; j < 8; j++) q[j] = vcvtaq_s32_f32(vmulq_n_f32(v[j], id)); /* (int)roundf(x * id) */
    *d_out = d;
    if (sum_out) {
        int32x4_t s = q[0];
        for (int j = 1; j < 8; j++) s = vaddq_s32(s, q[j]);
        *sum_out = vaddvq_s32(s);
    }
    int8x16x2_t r = {{narrow_s32_s8(q[0], q[1], q[2], q[3]), narrow_s32_s8(q[4], q[5], q[6], q[7])}};
    return r;
}

void kvc_quantize_row_q8_0_neon(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/32) blocks of 34 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 32, y += 34) {
        float d;
        const int8x16x2_t q = quant_block_32(x, &d, NULL);
        const kvc_half h = kvc_fp32_to_fp16(d);
        memcpy(y, &h, 2);
        vst1q_s8((int8_t *)(y + 2), q.val[0]);
        vst1q_s8((int8_t *)(y + 18), q.val[1]);
    }
}

void kvc_quantize_row_q8_1_neon(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/32) blocks of 36 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 32, y += 36) {
        float d;
        int sum;
        const int8x16x2_t q = quant_block_32(x, &d, &sum);
        const kvc_half h[2] = {kvc_fp32_to_fp16(d), kvc_fp32_to_fp16((float)sum * d)};
        memcpy(y, h, 4);
        vst1q_s8((int8_t *)(y + 4), q.val[0]);
        vst1q_s8((int8_t *)(y + 20), q.val[1]);
    }
}

/* Q8_K: like quantize_row_q8_K_ref — the first element of largest magnitude
 * maps to -127, round half to even (fcvtns == nearest_int for |v| < 2^22). */
void kvc_quantize_row_q8_K_neon(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/256) blocks of 292 bytes
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, y += 292) {
        float32x4_t amax_v = vdupq_n_f32(0.0f);
        for (int j = 0; j < QK_K; j += 4) amax_v = vmaxq_f32(amax_v, vabsq_f32(vld1q_f32(x + j)));
        const float amax = vmaxvq_f32(amax_v);
        if (amax == 0.0f) {
            memset(y, 0, 292);
            continue;
        }
        float max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.0f / max;
        int16_t bsums[16];
        for (int j = 0; j < QK_K; j += 16) {
            int32x4_t q[4];
            for (int l = 0; l < 4; l++)
                q[l] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * l), iscale)), vdupq_n_s32(127));
            vst1q_s8((int8_t *)(y + 4 + j), narrow_s32_s8(q[0], q[1], q[2], q[3]));
            bsums[j / 16] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
        }
        const float d = 1.0f / iscale;
        memcpy(y, &d, 4);
        memcpy(y + 260, bsums, 32);
    }
}

/* fcvtn: round to nearest even, overflow to inf, NaN kept quiet with its top
 * payload bits — what kvc_fp32_to_fp16 computes. */
void kvc_quantize_row_f16_neon(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) fp16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(x + i)), vld1q_f32(x + i + 4));
        vst1q_u8(y + 2 * i, vreinterpretq_u8_f16(h));
    }
    for (; i < n; i++) {
        const kvc_half h = kvc_fp32_to_fp16(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

/* bf16: NaN -> (bits >> 16) | 64, else round to nearest even (kvc_fp32_to_bf16). */
KVC_INLINE uint16x4_t bf16x4(float32x4_t v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rne = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
    const uint32x4_t nan = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(64));
    const uint32x4_t is_nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
    return vmovn_u32(vbslq_u32(is_nan, nan, rne));
}

void kvc_quantize_row_bf16_neon(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) bf16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vcombine_u16(bf16x4(vld1q_f32(x + i)), bf16x4(vld1q_f32(x + i + 4)));
        vst1q_u8(y + 2 * i, vreinterpretq_u8_u16(h));
    }
    for (; i < n; i++) {
        const uint16_t h = kvc_fp32_to_bf16(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

void kvc_dequantize_row_f16_neon(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) fp16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t lo, hi;
        ld_f16x8(x + 2 * i, &lo, &hi);
        vst1q_f32(y + i, lo);
        vst1q_f32(y + i + 4, hi);
    }
    for (; i < n; i++) y[i] = ld_fp16n(x + 2 * i);
}

void kvc_dequantize_row_bf16_neon(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) bf16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t lo, hi;
        ld_bf16x8(x + 2 * i, &lo, &hi);
        vst1q_f32(y + i, lo);
        vst1q_f32(y + i + 4, hi);
    }
    for (; i < n; i++) y[i] = kvc_bf16_to_fp32(kvc_ld_half(x + 2 * i));
}

/* 16 int8 -> 16 floats times d, stored at y. */
KVC_INLINE void store_s8_scaled(int8x16_t q, float d, float *y) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
    vst1q_f32(y + 0, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
    vst1q_f32(y + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d));
    vst1q_f32(y + 8, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
    vst1q_f32(y + 12, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d));
}

void kvc_dequantize_row_q8_0_neon(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n/32) blocks of 34 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 34, y += 32) {
        const float d = ld_fp16n(x);
        store_s8_scaled(ld_s8(x + 2), d, y);
        store_s8_scaled(ld_s8(x + 18), d, y + 16);
    }
}

void kvc_dequantize_row_q4_0_neon(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n/32) blocks of 18 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 18, y += 32) {
        const float d = ld_fp16n(x);
        const uint8x16_t qs = ld_u8(x + 2);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(qs, vdupq_n_u8(15))), vdupq_n_s8(8));
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(qs, 4)), vdupq_n_s8(8));
        store_s8_scaled(lo, d, y);
        store_s8_scaled(hi, d, y + 16);
    }
}

#endif /* __aarch64__ */
