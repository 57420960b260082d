/* dot_neon.h — vec_dot and gemm kernels for aarch64, written once and compiled
 * twice: quants_neon_dot.c (baseline ARMv8 NEON: widening multiplies) and
 * quants_neon_dotprod.c (ARMv8.2 SDOT). Each sets the macros below, includes
 * this file (no include guard: it is compiled once per instruction set) and
 * expands the DEFINE_* macros at the end.
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
 * the tile sizes RD_x (decode rows), RM_x/TM_x (gemm rows x tokens) for x = Q
 * (32-blocks), K (K-quants), F (float weights). Defaults are untuned guesses
 * sized for NEON's 32 vector registers. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SFX)

#define MIN_(a, b) ((a) < (b) ? (a) : (b))

#ifndef RD_Q
#define RD_Q 4
#endif
#ifndef RM_Q
#define RM_Q 4
#endif
#ifndef TM_Q
#define TM_Q 2
#endif
#ifndef RD_K
#define RD_K 2
#endif
#ifndef RM_K
#define RM_K 2
#endif
#ifndef TM_K
#define TM_K 2
#endif
#ifndef RD_F
#define RD_F 4
#endif
#ifndef RM_F
#define RM_F 4
#endif
#ifndef TM_F
#define TM_F 2
#endif
#define RA_Q (RD_Q > RM_Q ? RD_Q : RM_Q)
#define RA_K (RD_K > RM_K ? RD_K : RM_K)
#define RA_F (RD_F > RM_F ? RD_F : RM_F)

/* Prefetch the lines of `bytes` bytes at p + pf (pf = 0: none), for decode. */
KVC_INLINE void prefetch_n(const uint8_t *p, int64_t pf, int bytes) {
    if (pf)
        for (int o = 0; o < bytes; o += 64) __builtin_prefetch(p + pf + o);
}

/* ---------------- 32-element blocks: Q8_0, Q4_0, Q5_0 x Q8_0 and Q4_1 x Q8_1 ---------------- */

enum { K_Q8_0, K_Q4_0, K_Q5_0, K_Q4_1 };

static const int kw_size[] = {34, 18, 22, 20}; /* weight block bytes per kind */
static const int ka_size[] = {34, 34, 34, 36}; /* activation block bytes (q8_0 / q8_1) */

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

/* Q8_K activation block fields. */
#define Q8K_D 0
#define Q8K_QS 4
#define Q8K_BSUMS 260

KVC_INLINE void tile_q4_K(const int R, const int T, int64_t nb, const uint8_t *const *wp, const uint8_t *const *ap,
                          float *res, int64_t pf) {
    float acc[RA_K][TM_K];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float da[TM_K];
        int16x8_t asum[TM_K]; /* sum of the activations of each 32-element sub-block */
        for (int t = 0; t < T; t++) {
            const uint8_t *p = ap[t] + b * 292;
            da[t] = kvc_ld_f32(p + Q8K_D);
            asum[t] = vpaddq_s16(vreinterpretq_s16_u8(ld_u8(p + Q8K_BSUMS)),
                                 vreinterpretq_s16_u8(ld_u8(p + Q8K_BSUMS + 16)));
        }
        uint8_t sc[RA_K][8], mn[RA_K][8];
        int32x4_t isum[RA_K][TM_K];
        for (int r = 0; r < R; r++) {
            prefetch_n(wp[r] + b * 144, pf, 144);
            kvc_q4k_scales(wp[r] + b * 144 + 4, sc[r], mn[r]);
            for (int t = 0; t < T; t++) isum[r][t] = vdupq_n_s32(0);
        }
        for (int i = 0; i < 4; i++) { /* 64 elements: 32 low nibbles, then 32 high nibbles */
            int8x16_t a[TM_K][4];
            for (int t = 0; t < T; t++)
                for (int l = 0; l < 4; l++) a[t][l] = ld_s8(ap[t] + b * 292 + Q8K_QS + 64 * i + 16 * l);
            for (int r = 0; r < R; r++) {
                const uint8_t *q = wp[r] + b * 144 + 16 + 32 * i;
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
            const uint8_t *p = wp[r] + b * 144;
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
            prefetch_n(wp[r] + b * 210, pf, 210);
            for (int t = 0; t < T; t++) isum[r][t] = vdupq_n_s32(0);
        }
        for (int h = 0; h < 2; h++) {
            int8x16_t q[RA_K][4][2]; /* (row, group, 16-element half): q - 32 */
            for (int r = 0; r < R; r++) {
                const uint8_t *p = wp[r] + b * 210;
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
                    for (int k = 0; k < 2; k++) a[t][k] = ld_s8(ap[t] + b * 292 + Q8K_QS + 128 * h + 32 * g + 16 * k);
                for (int r = 0; r < R; r++) {
                    const int8_t *sc = (const int8_t *)(wp[r] + b * 210 + 192 + 8 * h + 2 * g);
                    for (int t = 0; t < T; t++) {
                        isum[r][t] = vmlaq_n_s32(isum[r][t], DOT_S8(vdupq_n_s32(0), q[r][g][0], a[t][0]), sc[0]);
                        isum[r][t] = vmlaq_n_s32(isum[r][t], DOT_S8(vdupq_n_s32(0), q[r][g][1], a[t][1]), sc[1]);
                    }
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float dw = ld_fp16n(wp[r] + b * 210 + 208);
            for (int t = 0; t < T; t++)
                acc[r][t] += dw * kvc_ld_f32(ap[t] + b * 292 + Q8K_D) * (float)vaddvq_s32(isum[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

/* ---------------- float weights x float activations ---------------- */

#if WITH_FLOAT
enum { K_F32, K_F16, K_BF16 };

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

/* ---------------- drivers (as dot_x86.h) ---------------- */

/* Row tiles outer, token tiles inner; w_row/a_row: bytes per row. Edge tiles
 * repeat the last valid row/token pointer and drop the duplicate results. */
#define GEMM_TILES(RMAX, TMAX, TILE_CALL)                                                           \
    for (int64_t r0 = 0; r0 < m; r0 += RMAX) {                                                     \
        const int rn = (int)MIN_(RMAX, m - r0);                                                    \
        const uint8_t *wp[RMAX];                                                                   \
        for (int r = 0; r < RMAX; r++) wp[r] = (const uint8_t *)w + (r0 + MIN_(r, rn - 1)) * w_row; \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TMAX) {                                             \
            const int tn = (int)MIN_(TMAX, n_tok - t0);                                            \
            const uint8_t *apt[TMAX];                                                              \
            for (int t = 0; t < TMAX; t++) apt[t] = (const uint8_t *)a + (t0 + MIN_(t, tn - 1)) * a_row; \
            float res[RMAX * TMAX];                                                                \
            TILE_CALL(RMAX, TMAX);                                                                 \
            for (int t = 0; t < tn; t++)                                                           \
                for (int r = 0; r < rn; r++) out[(t0 + t) * ldo + r0 + r] = res[r * TMAX + t];      \
        }                                                                                          \
    }

/* RDEC x 1 tiles for decode (prefetching the next tile's rows), RMAX x TMAX otherwise. */
#define GEMM_DRIVER(RDEC, RMAX, TMAX, CALL) \
    if (n_tok == 1) {                       \
        GEMM_TILES(RDEC, 1, CALL)           \
    } else {                                \
        GEMM_TILES(RMAX, TMAX, CALL)        \
    }

#define Q32_CALL(Rc, Tc) tile_q32(KIND, (Rc), (Tc), k / 32, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define K_CALL_tile_q4_K(Rc, Tc) tile_q4_K((Rc), (Tc), k / QK_K, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define K_CALL_tile_q6_K(Rc, Tc) tile_q6_K((Rc), (Tc), k / QK_K, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define F_CALL(Rc, Tc) tile_f(KIND, (Rc), (Tc), k, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)

#define DEFINE_Q32(name, kind)                                                                    \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                     \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                 \
        float res[1];                                                                             \
        tile_q32(kind, 1, 1, n / 32, wp, ap, res, 0);                                             \
        return res[0];                                                                            \
    }                                                                                             \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                               float *out, int64_t ldo) {                                         \
        enum { KIND = kind };                                                                     \
        const int64_t w_row = k / 32 * kw_size[kind], a_row = k / 32 * ka_size[kind];             \
        GEMM_DRIVER(RD_Q, RM_Q, TM_Q, Q32_CALL)                                                   \
    }

#define DEFINE_K(name, tile, wsize)                                                               \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                     \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                 \
        float res[1];                                                                             \
        tile(1, 1, n / QK_K, wp, ap, res, 0);                                                     \
        return res[0];                                                                            \
    }                                                                                             \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                               float *out, int64_t ldo) {                                         \
        const int64_t w_row = k / QK_K * (wsize), a_row = k / QK_K * 292;                         \
        GEMM_DRIVER(RD_K, RM_K, TM_K, K_CALL_##tile)                                              \
    }

#define DEFINE_F(name, kind, wes)                                                                 \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                     \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                 \
        float res[1];                                                                             \
        tile_f(kind, 1, 1, n, wp, ap, res, 0);                                                    \
        return res[0];                                                                            \
    }                                                                                             \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                               float *out, int64_t ldo) {                                         \
        enum { KIND = kind };                                                                     \
        const int64_t w_row = k * (wes), a_row = k * 4;                                           \
        GEMM_DRIVER(RD_F, RM_F, TM_F, F_CALL)                                                     \
    }

/* The integer kernels (both builds). */
#define DEFINE_INT_KERNELS()                                                                      \
    DEFINE_Q32(q8_0_q8_0, K_Q8_0)                                                                 \
    DEFINE_Q32(q4_0_q8_0, K_Q4_0)                                                                 \
    DEFINE_Q32(q5_0_q8_0, K_Q5_0)                                                                 \
    DEFINE_Q32(q4_1_q8_1, K_Q4_1)                                                                 \
    DEFINE_K(q4_K_q8_K, tile_q4_K, 144)                                                           \
    DEFINE_K(q6_K_q8_K, tile_q6_K, 210)

/* The float-weight kernels (baseline build only: no integer dots in them). */
#define DEFINE_FLOAT_KERNELS()                                                                    \
    DEFINE_F(f32_f32, K_F32, 4)                                                                   \
    DEFINE_F(f16_f32, K_F16, 2)                                                                   \
    DEFINE_F(bf16_f32, K_BF16, 2)
