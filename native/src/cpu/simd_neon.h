/* simd_neon.h — small NEON helpers shared by the aarch64 kernel files
 * (quants_neon*.c, vec_neon.c, tq_neon.c).
 *
 * NEON (ASIMD) is part of every aarch64 CPU, so nothing here needs a target
 * attribute; the dotprod kernels add theirs (target_neon_dotprod.h). fp16 block
 * scales are converted by the hardware (fcvt, exact like kvc_fp16_table), so the
 * kernels need none of the runtime's one-time init: they are pure functions over
 * pointers, which is how tests/test_neon.py runs them bare in an emulator.
 * Pointers are unaligned byte pointers (loads are byte loads: no alignment UB). */
#ifndef KVC_SIMD_NEON_H
#define KVC_SIMD_NEON_H

#include <arm_neon.h>

#include "quants.h"

#define KVC_INLINE static inline __attribute__((always_inline))

/* fp16 at p -> float, exact (the fcvt instruction). */
KVC_INLINE float ld_fp16n(const void *p) {
    __fp16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

KVC_INLINE int8x16_t ld_s8(const void *p) { return vld1q_s8((const int8_t *)p); }
KVC_INLINE uint8x16_t ld_u8(const void *p) { return vld1q_u8((const uint8_t *)p); }
KVC_INLINE float32x4_t ld_f32(const void *p) { return vreinterpretq_f32_u8(vld1q_u8((const uint8_t *)p)); }

/* 8 halves at p -> 2 x 4 floats (exact). */
KVC_INLINE void ld_f16x8(const void *p, float32x4_t *lo, float32x4_t *hi) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8((const uint8_t *)p));
    *lo = vcvt_f32_f16(vget_low_f16(h));
    *hi = vcvt_high_f32_f16(h);
}

/* 8 bf16 at p -> 2 x 4 floats (bits << 16, exact). */
KVC_INLINE void ld_bf16x8(const void *p, float32x4_t *lo, float32x4_t *hi) {
    const uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8((const uint8_t *)p));
    *lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
    *hi = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
}

/* ((v0 + v1) + (v2 + v3)), spelled out so every reduction of 4 lanes rounds alike. */
KVC_INLINE float hsum_f32x4(float32x4_t v) {
    const float32x4_t p = vpaddq_f32(v, v);
    return vgetq_lane_f32(p, 0) + vgetq_lane_f32(p, 1);
}

/* 16 bits of b -> 16 bytes: byte j = 0xFF if bit j is set, else 0. */
KVC_INLINE uint8x16_t bits_16(uint32_t b) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)b), vdup_n_u8((uint8_t)(b >> 8)));
    return vtstq_u8(v, vld1q_u8(bit));
}

/* 4 int32x4 (values in -128..127) -> 16 int8 in order. */
KVC_INLINE int8x16_t narrow_s32_s8(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b)), cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
    return vcombine_s8(vmovn_s16(ab), vmovn_s16(cd));
}

#endif /* KVC_SIMD_NEON_H */
