/* dot_x86.h — vec_dot and gemm kernels for x86, written once and compiled per
 * instruction set: quants_avx2_dot.c and quants_avx512_dot.c set the target
 * pragma and the macros below, include this file (no include guard: it is
 * compiled once per instruction set) and expand DEFINE_INT_KERNELS and
 * DEFINE_FLOAT_KERNELS (gemm_tiles.h).
 *
 * Everything is a register tile: R weight rows x T tokens share each loaded and
 * unpacked block. vec_dot is the 1 x 1 tile; kvc_gemm uses RD x 1 tiles for
 * decode (n_tok = 1: a multi-row matvec, the fast way to run decode) and
 * RM x TM tiles for prefill. The integer types' products are bit-identical to
 * the scalar reference (quants_ref.c) — exact integer block sums, then its
 * float steps in its order — so vec_dot, every gemm tile shape and AVX-512's
 * packed panels for 8+ tokens (gemm_panel.h) agree bit for bit, and a row's
 * result does not depend on how many tokens share the call. The float types
 * sum per lane (gemm and vec_dot still bit-identical).
 *
 * Integer dot products (the ggml approach, ggml-cpu/arch/x86/quants.c): weights
 * unpacked to unsigned bytes u, activations kept as signed bytes s, and
 *   DOT_US8(acc, u, s):  acc + sums over groups of 4 of u*s, int32 lanes
 *   DOT_S16(acc, x, y):  acc + sums over pairs of x*y (int16 in), int32 lanes
 * Offset weights (Q4_0: q - 8, Q5_0: q - 16) subtract o * sum(a) per block,
 * precomputed per token block and used as the accumulator's start value.
 * All integer sums are exact. Block scales are read through kvc_fp16_table.
 *
 * The block sizes, tile sizes and the drivers that turn the tiles below into
 * kvc_vec_dot_* / kvc_gemm_* are shared with dot_neon.h: gemm_tiles.h.
 *
 * Includer defines: SFX (function suffix); DOT_US8, DOT_S16; for Q8_0 x Q8_0
 * (both signed) Q8_0_W(q) (weight prep), Q8_0_ACC0(a) (start value per token
 * block) and Q8_0_DOT(acc0, q, qx, a); Q5_HIGH_BIT(q, p) (q | 16 where bit j of
 * the 32 bits at p is set); optionally NIB_X16 and the tile sizes of
 * gemm_tiles.h; and the float-vector macros FV, FV_N, FV_ZERO,
 * FV_LOAD_F32, FV_LOAD_F16, FV_LOAD_BF16, FV_FMA, FV_HSUM. */

#include "gemm_tiles.h"

/* ---------------- 32-element blocks: Q8_0, Q4_0, Q5_0 x Q8_0 and Q4_1 x Q8_1 ---------------- */

/* With NIB_X16 (VNNI only: vpdpbusd does not saturate) Q4_0/Q4_1 nibbles are
 * not shifted: the high nibbles stay in bits 4-7 (16 q) and their int32 lanes
 * (the upper four) are scaled by 1/16 with the activation scale; exact, as
 * 16 q a < 2^24 and 1/16 is a power of two. Saves a shift per weight block. */
#ifndef NIB_X16
#define NIB_X16 0
#endif

/* res[r*T + t] = dot(wp[r], ap[t]) over nb blocks. pf: prefetch distance in
 * bytes (the next tile's rows, for decode), 0 for none. Each block's integer
 * sum is reduced to one int32 (exact) and accumulated in float exactly as the
 * scalar reference does: s += (float)sumi * (d_w * d_a) [+ m_w * s_a]. So every
 * product is bit-identical to quants_ref.c, whatever the tile shape or the
 * number of tokens (and to AVX-512's packed panels: gemm_panel.h). */
/* The int32 totals of a, b, c, d (8 lanes each) in lanes 0..3: exact. */
KVC_INLINE __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

KVC_INLINE void tile_q32(const int kind, const int R, const int T, int64_t nb, const uint8_t *const *wp,
                         const uint8_t *const *ap, float *res, int64_t pf) {
    const int ws = kw_size[kind], wq = kw_qs[kind], as = ka_size[kind], aq = kind == K_Q4_1 ? 4 : 2;
    const int x16 = NIB_X16 && (kind == K_Q4_0 || kind == K_Q4_1);
    /* x16: the upper four lanes hold 16 x their sums (exact multiples of 16): >> 4 is exact */
    const __m256i lane_shift = x16 ? _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4) : _mm256_setzero_si256();
    const __m256i nib_mask = x16 ? _mm256_setr_epi64x(0x0f0f0f0f0f0f0f0f, 0x0f0f0f0f0f0f0f0f, (long long)0xf0f0f0f0f0f0f0f0,
                                                      (long long)0xf0f0f0f0f0f0f0f0)
                                 : _mm256_set1_epi8(15);
    /* per-lane o for the offset correction (x16: 16 * 8 in the high half) */
    const __m256i offs = kind == K_Q5_0 ? _mm256_set1_epi8(16)
                         : x16          ? _mm256_setr_epi64x(0x0808080808080808, 0x0808080808080808,
                                                             (long long)0x8080808080808080, (long long)0x8080808080808080)
                                        : _mm256_set1_epi8(8);
    /* rows in quads: lane i of acc[q][t] is row 4q + i (R = 1, vec_dot: lanes 1..3 unused);
     * every lane takes the scalar reference's float steps */
    const int NQ = (R + 3) / 4;
    __m128 acc[(RA_Q + 3) / 4][TM_Q];
    for (int q = 0; q < NQ; q++)
        for (int t = 0; t < T; t++) acc[q][t] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i av[TM_Q], a0[TM_Q];
        __m128 da[TM_Q], sa[TM_Q];
        for (int t = 0; t < T; t++) {
            const uint8_t *p = ap[t] + b * as;
            av[t] = loadu256(p + aq);
            da[t] = _mm_set1_ps(ld_fp16(p));
            sa[t] = kind == K_Q4_1 ? _mm_set1_ps(ld_fp16(p + 2)) : _mm_setzero_ps();
            if (kind == K_Q4_0 || kind == K_Q5_0) /* -o * sum(a) per lane group */
                a0[t] = _mm256_sub_epi32(_mm256_setzero_si256(), DOT_US8(_mm256_setzero_si256(), offs, av[t]));
            else if (kind == K_Q8_0)
                a0[t] = Q8_0_ACC0(av[t]);
            else
                a0[t] = _mm256_setzero_si256();
        }
        for (int q4 = 0; q4 < NQ; q4++) {
            __m256i s[4][TM_Q];
            float dw[4] = {0}, mw[4] = {0};
            for (int i = 0; i < 4; i++) {
                const int r = 4 * q4 + i < R ? 4 * q4 + i : R - 1; /* R = 1: lanes repeat row 0 */
                const uint8_t *p = wp[r] + b * ws;
                if (pf && i < R) _mm_prefetch((const char *)p + pf, _MM_HINT_T0);
                dw[i] = ld_fp16(p);
                __m256i q;
                if (kind == K_Q8_0) q = loadu256(p + wq);
                else if (x16) q = _mm256_and_si256(_mm256_broadcastsi128_si256(loadu128(p + wq)), nib_mask);
                else q = nibbles_32(p + wq);
                if (kind == K_Q5_0) q = Q5_HIGH_BIT(q, p + 2);
                if (kind == K_Q4_1) mw[i] = ld_fp16(p + 2);
                const __m256i qx = kind == K_Q8_0 ? Q8_0_W(q) : q;
                for (int t = 0; t < T; t++) {
                    s[i][t] = kind == K_Q8_0 ? Q8_0_DOT(a0[t], q, qx, av[t]) : DOT_US8(a0[t], q, av[t]);
                    if (x16) s[i][t] = _mm256_srav_epi32(s[i][t], lane_shift);
                }
            }
            /* built in registers (no store-to-load forwarding stall) */
            const __m128 dw4 = _mm_setr_ps(dw[0], dw[1], dw[2], dw[3]);
            for (int t = 0; t < T; t++) {
                const __m128 si = _mm_cvtepi32_ps(hsum4_epi32(s[0][t], s[1][t], s[2][t], s[3][t]));
                const __m128 prod = _mm_mul_ps(si, _mm_mul_ps(dw4, da[t]));
                if (kind == K_Q4_1)
                    acc[q4][t] = _mm_add_ps(acc[q4][t], _mm_add_ps(prod, _mm_mul_ps(_mm_setr_ps(mw[0], mw[1], mw[2], mw[3]), sa[t])));
                else
                    acc[q4][t] = _mm_add_ps(acc[q4][t], prod);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float v[4];
            _mm_storeu_ps(v, acc[r / 4][t]);
            res[r * T + t] = v[r % 4];
        }
}

/* ---------------- 256-element superblocks: Q4_K, Q6_K x Q8_K ---------------- */

/* Prefetch the lines of `bytes` bytes at p (pf ahead), for decode. */
KVC_INLINE void prefetch_block(const uint8_t *p, int64_t pf, int bytes) {
    if (pf)
        for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + pf + o, _MM_HINT_T0);
}

/* The K-quant tiles sum each superblock exactly in int32 lanes, reduce them and
 * accumulate in float as the scalar reference does: bit-identical to it. */
KVC_INLINE void tile_q4_K(const int R, const int T, int64_t nb, const uint8_t *const *wp, const uint8_t *const *ap,
                          float *res, int64_t pf) {
    float acc[RA_K][TM_K];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        __m128i bs[TM_K]; /* bsums pairs: asum of each 32-element sub-block */
        float da[TM_K];
        for (int t = 0; t < T; t++) {
            const uint8_t *p = ap[t] + b * Q8K_SIZE;
            da[t] = kvc_ld_f32(p + Q8K_D);
            bs[t] = _mm_hadd_epi16(loadu128(p + Q8K_BSUMS), loadu128(p + Q8K_BSUMS + 16));
        }
        /* scale j as the int16 pair (sc_j, sc_j) in a dword: its broadcast is the
         * 16 x int16 multiplier of sub-block j */
        int32_t scw[RA_K][8];
        __m256i isum[RA_K][TM_K], isum2[RA_K][TM_K]; /* two chains: vpdpwssd has latency 5 */
        __m128i mins[RA_K];
        for (int r = 0; r < R; r++) {
            prefetch_block(wp[r] + b * Q4K_SIZE, pf, Q4K_SIZE);
            const __m128i sm = q4k_scales_mins(wp[r] + b * Q4K_SIZE + 4); /* sc[0..7], m[0..7] */
            const __m128i sc16 = _mm_cvtepu8_epi16(sm);
            _mm_storeu_si128((__m128i *)&scw[r][0], _mm_unpacklo_epi16(sc16, sc16));
            _mm_storeu_si128((__m128i *)&scw[r][4], _mm_unpackhi_epi16(sc16, sc16));
            mins[r] = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
            for (int t = 0; t < T; t++) isum[r][t] = isum2[r][t] = _mm256_setzero_si256();
        }
        for (int i = 0; i < 4; i++) { /* 64 elements: 32 low nibbles, then 32 high nibbles */
            __m256i alo[TM_K], ahi[TM_K];
            for (int t = 0; t < T; t++) {
                alo[t] = loadu256(ap[t] + b * Q8K_SIZE + Q8K_QS + 64 * i);
                ahi[t] = loadu256(ap[t] + b * Q8K_SIZE + Q8K_QS + 64 * i + 32);
            }
            for (int r = 0; r < R; r++) {
                const __m256i qb = loadu256(wp[r] + b * Q4K_SIZE + 16 + 32 * i);
                const __m256i qlo = _mm256_and_si256(qb, _mm256_set1_epi8(15));
                const __m256i qhi = _mm256_and_si256(_mm256_srli_epi16(qb, 4), _mm256_set1_epi8(15));
                const __m256i slo = _mm256_set1_epi32(scw[r][2 * i]), shi = _mm256_set1_epi32(scw[r][2 * i + 1]);
                for (int t = 0; t < T; t++) {
                    isum[r][t] = DOT_S16(isum[r][t], slo, _mm256_maddubs_epi16(qlo, alo[t]));
                    isum2[r][t] = DOT_S16(isum2[r][t], shi, _mm256_maddubs_epi16(qhi, ahi[t]));
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *p = wp[r] + b * Q4K_SIZE;
            const float dw = ld_fp16(p), dmin = ld_fp16(p + 2);
            for (int t = 0; t < T; t++) { /* exact int sums, then the scalar reference's float steps */
                const int sumi = hsum_epi32_256(_mm256_add_epi32(isum[r][t], isum2[r][t]));
                const int summ = hsum_epi32_256(_mm256_zextsi128_si256(_mm_madd_epi16(mins[r], bs[t])));
                acc[r][t] += da[t] * (dw * (float)sumi - dmin * (float)summ);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

KVC_INLINE void tile_q6_K(const int R, const int T, int64_t nb, const uint8_t *const *wp, const uint8_t *const *ap,
                          float *res, int64_t pf) {
    float acc[RA_K][TM_K];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; b++) {
        __m256i isum[RA_K][TM_K], isum2[RA_K][TM_K], sc16[RA_K]; /* two chains (vpdpwssd latency) */
        __m128i sc8[RA_K];
        for (int r = 0; r < R; r++) {
            prefetch_block(wp[r] + b * Q6K_SIZE, pf, Q6K_SIZE);
            sc8[r] = loadu128(wp[r] + b * Q6K_SIZE + Q6K_SCALES);
            sc16[r] = _mm256_cvtepi8_epi16(sc8[r]);
            /* start at -32 * sum_j sc_j * asum_j: the q - 32 offset, via bsums */
            for (int t = 0; t < T; t++) isum2[r][t] = _mm256_setzero_si256();
            for (int t = 0; t < T; t++)
                isum[r][t] = _mm256_slli_epi32(
                    _mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_madd_epi16(sc16[r], loadu256(ap[t] + b * Q8K_SIZE + Q8K_BSUMS))), 5);
        }
        for (int h = 0; h < 2; h++) { /* halves of 128 elements */
            __m256i q[RA_K][4];
            for (int r = 0; r < R; r++) {
                const uint8_t *p = wp[r] + b * Q6K_SIZE;
                const __m256i l0 = loadu256(p + 64 * h), l1 = loadu256(p + 64 * h + 32), hb = loadu256(p + 128 + 32 * h);
                q[r][0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
                q[r][1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
                q[r][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
                q[r][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
            }
            for (int g = 0; g < 4; g++) { /* 32 elements, scales sc[8h + 2g], sc[8h + 2g + 1] */
                __m256i av[TM_K];
                for (int t = 0; t < T; t++) av[t] = loadu256(ap[t] + b * Q8K_SIZE + Q8K_QS + 128 * h + 32 * g);
                for (int r = 0; r < R; r++) {
                    const int j = 8 * h + 2 * g;
                    const __m128i sel = _mm_set_epi64x(0x0101010101010101LL * (j + 1), 0x0101010101010101LL * j);
                    const __m256i s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8[r], sel));
                    for (int t = 0; t < T; t++) {
                        const __m256i p16 = _mm256_maddubs_epi16(q[r][g], av[t]);
                        if (g & 1) isum2[r][t] = DOT_S16(isum2[r][t], s, p16);
                        else isum[r][t] = DOT_S16(isum[r][t], s, p16);
                    }
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float dw = ld_fp16(wp[r] + b * Q6K_SIZE + Q6K_D);
            for (int t = 0; t < T; t++) {
                const int sumi = hsum_epi32_256(_mm256_add_epi32(isum[r][t], isum2[r][t]));
                acc[r][t] += dw * kvc_ld_f32(ap[t] + b * Q8K_SIZE + Q8K_D) * (float)sumi;
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) res[r * T + t] = acc[r][t];
}

/* ---------------- float weights x float activations ---------------- */

KVC_INLINE FV fv_load_w(const int kind, const uint8_t *p) {
    return kind == K_F32 ? FV_LOAD_F32(p) : kind == K_F16 ? FV_LOAD_F16(p) : FV_LOAD_BF16(p);
}

KVC_INLINE float ld_w_scalar(const int kind, const uint8_t *p) {
    return kind == K_F32 ? kvc_ld_f32(p) : kind == K_F16 ? ld_fp16(p) : kvc_bf16_to_fp32(kvc_ld_half(p));
}

KVC_INLINE void tile_f(const int kind, const int R, const int T, int64_t k, const uint8_t *const *wp,
                       const uint8_t *const *ap, float *res, int64_t pf) {
    const int es = kind == K_F32 ? 4 : 2;
    FV acc[RA_F][TM_F];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = FV_ZERO();
    int64_t i = 0;
    for (; i + FV_N <= k; i += FV_N) {
        FV wv[RA_F];
        for (int r = 0; r < R; r++) {
            if (pf) _mm_prefetch((const char *)wp[r] + i * es + pf, _MM_HINT_T0);
            wv[r] = fv_load_w(kind, wp[r] + i * es);
        }
        for (int t = 0; t < T; t++) {
            const FV av = FV_LOAD_F32(ap[t] + i * 4);
            for (int r = 0; r < R; r++) acc[r][t] = FV_FMA(wv[r], av, acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = FV_HSUM(acc[r][t]);
            for (int64_t j = i; j < k; j++) s += ld_w_scalar(kind, wp[r] + j * es) * kvc_ld_f32(ap[t] + j * 4);
            res[r * T + t] = s;
        }
}
