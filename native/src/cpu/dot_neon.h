/* dot_neon.h — vec_dot and gemm kernels for aarch64, written once and compiled
 * twice: quants_neon_dot.c (baseline ARMv8 NEON: widening multiplies) and
 * quants_neon_dotprod.c (ARMv8.2 SDOT). Each sets the macros below, includes
 * this file (no include guard: it is compiled once per instruction set) and
 * expands DEFINE_INT_KERNELS (and DEFINE_FLOAT_KERNELS) of gemm_tiles.h, which
 * holds the block and tile sizes and the drivers shared with dot_x86.h.
 *
 * Tiles as in dot_x86.h: R weight rows x T tokens share each loaded and
 * unpacked block; vec_dot is the 1 x 1 tile; kvc_gemm uses RD x 1 tiles for
 * decode (n_tok = 1, each decode tile prefetching the next one's rows) and
 * RM x TM tiles for prefill. gemm and vec_dot give bit-identical results.
 *
 * Weights are unpacked to signed bytes (Q4_0: q - 8, Q5_0: q - 16, Q6_K: q - 32;
 * Q4_1 and Q4_K nibbles 0..15 as they are) and multiplied with the signed
 * activation bytes by
 *   DOT_S8(acc, w, a): acc (int32x4) + the products w*a summed in groups of 4,
 * exact for every int8 input (so Q8_0 weights of -128 are fine). Each block's
 * integer sum is reduced to one int32 and then scaled and accumulated in float
 * exactly as the scalar twin in quants_ref.c does, in the same order: for the
 * quantized types the results are bit-identical to the scalar twins (and the
 * two builds to each other). Float weights (F32, F16, BF16; WITH_FLOAT) use
 * 2 x 4 fused multiply-add lanes: only the summation order differs from the
 * twins.
 *
 * Includer defines: SFX (function suffix), DOT_S8, WITH_FLOAT (0/1); optionally
 * the tile sizes of gemm_tiles.h (its defaults are untuned guesses on NEON's 32
 * vector registers). */

#include "gemm_tiles.h"

/* Prefetch the lines of `bytes` bytes at p + pf (pf = 0: none), for decode. */
KVC_INLINE void prefetch_n(const uint8_t *p, int64_t pf, int bytes) {
    if (pf)
        for (int o = 0; o < bytes; o += 64) __builtin_prefetch(p + pf + o);
}

/* ---------------- 32-element blocks: Q8_0, Q4_0, Q5_0 x Q8_0 and Q4_1 x Q8_1 ---------------- */

/* The 32 weights of the block at p as signed bytes: w[0] = elements 0..15, w[1] = 16..31. */
KVC_INLINE void unpack_q32(const int kind, const uint8_t *p, int8x16_t w[2]) {
    if (kind == K_Q8_0) {
        w[0] = ld_s8(p + 2);
        w[1] = ld_s8(p + 18);
        return;
    }
    const uint8x16_t qs = ld_u8(p + (kind == K_Q5_0 ? 6 : kind == K_Q4_1 ? 4 : 2));
    uint8x16_t lo = vandq_u8(qs, vdupq_n_u8(15)), hi = vshrq_n_u8(qs, 4);
    if (kind == K_Q5_0) { /* bit j of qh is the 5th bit of element j */
        const uint32_t qh = kvc_ld_u32(p + 2);
        lo = vorrq_u8(lo, vandq_u8(bits_16(qh), vdupq_n_u8(16)));
        hi = vorrq_u8(hi, vandq_u8(bits_16(qh >> 16), vdupq_n_u8(16)));
    }
    const uint8x16_t off = vdupq_n_u8(kind == K_Q4_0 ? 8 : kind == K_Q5_0 ? 16 : 0);
    w[0] = vreinterpretq_s8_u8(vsubq_u8(lo, off));
    w[1] = vreinterpretq_s8_u8(vsubq_u8(hi, off));
}

/* res[r*T + t] = dot(wp[r], ap[t]) over nb blocks. pf: prefetch distance in bytes
 * (the next tile's rows, for decode), 0 for none. */
KVC_INLINE void tile_q32(const int kind, const int R, const int T, int64_t nb, const uint8_t *const *wp,
                         const uint8_t *const *ap, float *res, int64_t pf) {
    const int ws = kw_size[kind], as = ka_size[kind], aq = kind == K_Q4_1 ? 4 : 2;
    float acc[RA_Q][TM_Q];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t av[TM_Q][2];
        float da[TM_Q], sa[TM_Q];
        for (int t = 0; t < T; t++) {
            const uint8_t *p = ap[t] + b * as;
            av[t][0] = ld_s8(p + aq);
            av[t][1] = ld_s8(p + aq + 16);
            da[t] = ld_fp16n(p);
            sa[t] = kind == K_Q4_1 ? ld_fp16n(p + 2) : 0.0f;
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *p = wp[r] + b * ws;
            prefetch_n(p, pf, 1);
            int8x16_t w[2];
            unpack_q32(kind, p, w);
            const float dw = ld_fp16n(p), mw = kind == K_Q4_1 ? ld_fp16n(p + 2) : 0.0f;
            for (int t = 0; t < T; t++) {
                const int sumi = vaddvq_s32(DOT_S8(DOT_S8(vdupq_n_s32(0), w[0], av[t][0]), w[1], av[t][1]));
                /* the scalar twin's expressions, operand for operand */
                if (kind == K_Q4_1) acc[r][t] += (float)sumi * (dw * da[t]) + mw * sa[t];
                else acc[r][t] += (float)sumi * (dw * da[t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

/* ---------------- 256-element superblocks: Q4_K, Q6_K x Q8_K ---------------- */

KVC_INLINE void tile_q4_K(const int R, const int T, int64_t nb, const uint8_t *const *wp, const uint8_t *const *ap,
                          float *res, int64_t pf) {
    float acc[RA_K][TM_K];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float da[TM_K];
        int16x8_t asum[TM_K]; /* sum of the activations of each 32-element sub-block */
        for (int t = 0; t < T; t++) {
            const uint8_t *p = ap[t] + b * Q8K_SIZE;
            da[t] = kvc_ld_f32(p + Q8K_D);
            asum[t] = vpaddq_s16(vreinterpretq_s16_u8(ld_u8(p + Q8K_BSUMS)),
                                 vreinterpretq_s16_u8(ld_u8(p + Q8K_BSUMS + 16)));
        }
        uint8_t sc[RA_K][8], mn[RA_K][8];
        int32x4_t isum[RA_K][TM_K];
        for (int r = 0; r < R; r++) {
            prefetch_n(wp[r] + b * Q4K_SIZE, pf, Q4K_SIZE);
            kvc_q4k_scales(wp[r] + b * Q4K_SIZE + 4, sc[r], mn[r]);
            for (int t = 0; t < T; t++) isum[r][t] = vdupq_n_s32(0);
        }
        for (int i = 0; i < 4; i++) { /* 64 elements: 32 low nibbles, then 32 high nibbles */
            int8x16_t a[TM_K][4];
            for (int t = 0; t < T; t++)
                for (int l = 0; l < 4; l++) a[t][l] = ld_s8(ap[t] + b * Q8K_SIZE + Q8K_QS + 64 * i + 16 * l);
            for (int r = 0; r < R; r++) {
                const uint8_t *q = wp[r] + b * Q4K_SIZE + 16 + 32 * i;
                const uint8x16_t q0 = ld_u8(q), q1 = ld_u8(q + 16);
                const int8x16_t lo0 = vreinterpretq_s8_u8(vandq_u8(q0, vdupq_n_u8(15)));
                const int8x16_t lo1 = vreinterpretq_s8_u8(vandq_u8(q1, vdupq_n_u8(15)));
                const int8x16_t hi0 = vreinterpretq_s8_u8(vshrq_n_u8(q0, 4));
                const int8x16_t hi1 = vreinterpretq_s8_u8(vshrq_n_u8(q1, 4));
                for (int t = 0; t < T; t++) {
                    const int32x4_t dlo = DOT_S8(DOT_S8(vdupq_n_s32(0), lo0, a[t][0]), lo1, a[t][1]);
                    const int32x4_t dhi = DOT_S8(DOT_S8(vdupq_n_s32(0), hi0, a[t][2]), hi1, a[t][3]);
                    isum[r][t] = vmlaq_n_s32(isum[r][t], dlo, sc[r][2 * i]);
                    isum[r][t] = vmlaq_n_s32(isum[r][t], dhi, sc[r][2 * i + 1]);
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *p = wp[r] + b * Q4K_SIZE;
            const float dw = ld_fp16n(p), dmin = ld_fp16n(p + 2);
            const int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn[r])));
            for (int t = 0; t < T; t++) {
                const int32x4_t mlo = vmull_s16(vget_low_s16(m16), vget_low_s16(asum[t]));
                const int summ = vaddvq_s32(vmlal_high_s16(mlo, m16, asum[t])); /* sum_j m_j * asum_j */
                const int sumi = vaddvq_s32(isum[r][t]);
                acc[r][t] += da[t] * (dw * (float)sumi - dmin * (float)summ);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

/* Q6_K: in each half of 128 elements, group g (32 elements) takes 4 bits from ql
 * (bytes 0..31 for g = 0, 2, bytes 32..63 for g = 1, 3; low nibbles for g < 2,
 * high for g >= 2) and bits 2g, 2g+1 of qh; its two 16-element scales are
 * sc[8h + 2g], sc[8h + 2g + 1] (dequantize_row_q6_K_ref). */
KVC_INLINE void tile_q6_K(const int R, const int T, int64_t nb, const uint8_t *const *wp, const uint8_t *const *ap,
                          float *res, int64_t pf) {
    float acc[RA_K][TM_K];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3), o32 = vdupq_n_u8(32);
    for (int64_t b = 0; b < nb; b++) {
        int32x4_t isum[RA_K][TM_K];
        for (int r = 0; r < R; r++) {
            prefetch_n(wp[r] + b * Q6K_SIZE, pf, Q6K_SIZE);
            for (int t = 0; t < T; t++) isum[r][t] = vdupq_n_s32(0);
        }
        for (int h = 0; h < 2; h++) {
            int8x16_t q[RA_K][4][2]; /* (row, group, 16-element half): q - 32 */
            for (int r = 0; r < R; r++) {
                const uint8_t *p = wp[r] + b * Q6K_SIZE;
                for (int k = 0; k < 2; k++) {
                    const uint8x16_t l0 = ld_u8(p + 64 * h + 16 * k), l1 = ld_u8(p + 64 * h + 32 + 16 * k);
                    const uint8x16_t hb = ld_u8(p + 128 + 32 * h + 16 * k);
                    const uint8x16_t g0 = vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(hb, m3), 4));
                    const uint8x16_t g1 = vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4));
                    const uint8x16_t g2 = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4));
                    const uint8x16_t g3 = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
                    q[r][0][k] = vreinterpretq_s8_u8(vsubq_u8(g0, o32));
                    q[r][1][k] = vreinterpretq_s8_u8(vsubq_u8(g1, o32));
                    q[r][2][k] = vreinterpretq_s8_u8(vsubq_u8(g2, o32));
                    q[r][3][k] = vreinterpretq_s8_u8(vsubq_u8(g3, o32));
                }
            }
            for (int g = 0; g < 4; g++) {
                int8x16_t a[TM_K][2];
                for (int t = 0; t < T; t++)
                    for (int k = 0; k < 2; k++) a[t][k] = ld_s8(ap[t] + b * Q8K_SIZE + Q8K_QS + 128 * h + 32 * g + 16 * k);
                for (int r = 0; r < R; r++) {
                    const int8_t *sc = (const int8_t *)(wp[r] + b * Q6K_SIZE + Q6K_SCALES + 8 * h + 2 * g);
                    for (int t = 0; t < T; t++) {
                        isum[r][t] = vmlaq_n_s32(isum[r][t], DOT_S8(vdupq_n_s32(0), q[r][g][0], a[t][0]), sc[0]);
                        isum[r][t] = vmlaq_n_s32(isum[r][t], DOT_S8(vdupq_n_s32(0), q[r][g][1], a[t][1]), sc[1]);
                    }
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float dw = ld_fp16n(wp[r] + b * Q6K_SIZE + Q6K_D);
            for (int t = 0; t < T; t++)
                acc[r][t] += dw * kvc_ld_f32(ap[t] + b * Q8K_SIZE + Q8K_D) * (float)vaddvq_s32(isum[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

/* ---------------- float weights x float activations ---------------- */

#if WITH_FLOAT

/* 8 weights at p as floats */
KVC_INLINE void ld_w8(const int kind, const uint8_t *p, float32x4_t *lo, float32x4_t *hi) {
    if (kind == K_F32) {
        *lo = ld_f32(p);
        *hi = ld_f32(p + 16);
    } else if (kind == K_F16) {
        ld_f16x8(p, lo, hi);
    } else {
        ld_bf16x8(p, lo, hi);
    }
}

KVC_INLINE float ld_w1(const int kind, const uint8_t *p) {
    return kind == K_F32 ? kvc_ld_f32(p) : kind == K_F16 ? ld_fp16n(p) : kvc_bf16_to_fp32(kvc_ld_half(p));
}

KVC_INLINE void tile_f(const int kind, const int R, const int T, int64_t k, const uint8_t *const *wp,
                       const uint8_t *const *ap, float *res, int64_t pf) {
    const int es = kind == K_F32 ? 4 : 2;
    float32x4_t acc[RA_F][TM_F][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t][0] = acc[r][t][1] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        float32x4_t w[RA_F][2];
        for (int r = 0; r < R; r++) {
            if (pf) __builtin_prefetch(wp[r] + i * es + pf);
            ld_w8(kind, wp[r] + i * es, &w[r][0], &w[r][1]);
        }
        for (int t = 0; t < T; t++) {
            const float32x4_t a0 = ld_f32(ap[t] + i * 4), a1 = ld_f32(ap[t] + i * 4 + 16);
            for (int r = 0; r < R; r++) {
                acc[r][t][0] = vfmaq_f32(acc[r][t][0], w[r][0], a0);
                acc[r][t][1] = vfmaq_f32(acc[r][t][1], w[r][1], a1);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = hsum_f32x4(vaddq_f32(acc[r][t][0], acc[r][t][1]));
            for (int64_t j = i; j < k; j++) s += ld_w1(kind, wp[r] + j * es) * kvc_ld_f32(ap[t] + j * 4);
            res[r * T + t] = s;
        }
}
#endif
