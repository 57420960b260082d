/* quants_avx512_dot.c — AVX-512 (F/BW/VL/DQ + VNNI) vec_dot and gemm kernels:
 * the register-tiled kernels of dot_x86.h compiled with VNNI integer dots
 * (vpdpbusd: u8 x s8 -> int32, vpdpwssd: s16 x s16 -> int32; no saturation),
 * larger tiles (32 vector registers), 512-bit float-weight kernels, and a
 * prefill tile for the 32-blocks that pairs tokens in 512-bit vectors.
 * Q8_0 x Q8_0: weights biased to unsigned (w ^ 0x80 = w + 128), the
 * 128 * sum(a) excess starts the accumulator negative. Never AMX.
 * Tile sizes were tuned on a Sapphire Rapids VM; -D overrides them for
 * experiments. */

#if defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif

#include "simd_x86.h"

#define SFX avx512
#ifndef NIB_X16
#define NIB_X16 1
#endif
#define DOT_US8(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define DOT_S16(acc, x, y) _mm256_dpwssd_epi32((acc), (x), (y))
#define Q8_0_W(q) _mm256_xor_si256((q), _mm256_set1_epi8((char)0x80))
#define Q8_0_ACC0(a) \
    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), (a)))
#define Q8_0_DOT(acc0, q, qx, a) _mm256_dpbusd_epi32((acc0), (qx), (a))
#define Q5_HIGH_BIT(q, p) q5_high_bit_avx512((q), (p))

/* q | 16 in the bytes whose bit is set in the 32 bits at p (mask register from
 * memory, zero-masked move, or). */
static inline __attribute__((always_inline)) __m256i q5_high_bit_avx512(__m256i q, const uint8_t *p) {
    return _mm256_or_si256(q, _mm256_maskz_mov_epi8(_cvtu32_mask32(kvc_ld_u32(p)), _mm256_set1_epi8(16)));
}

static inline __attribute__((always_inline)) float hsum_ps_512(__m512 v) {
    return hsum_ps_256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

#define FV __m512
#define FV_N 16
#define FV_ZERO() _mm512_setzero_ps()
#define FV_LOAD_F32(p) _mm512_loadu_ps((const void *)(p))
#define FV_LOAD_F16(p) _mm512_cvtph_ps(loadu256(p))
#define FV_LOAD_BF16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(loadu256(p)), 16))
#define FV_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define FV_HSUM(v) hsum_ps_512(v)

#ifndef RM_Q
#define RM_Q 8
#endif
#ifndef TM_Q
#define TM_Q 4
#endif
#ifndef RM_K
#define RM_K 2
#endif
#ifndef TM_K
#define TM_K 4
#endif
#ifndef RM_F
#define RM_F 4
#endif
#ifndef TM_F
#define TM_F 4
#endif

#include "dot_x86.h"

/* GEMM tile for the 32-blocks with tokens in pairs: one zmm holds the 8 int32
 * lanes of token 2p (low half) and 2p+1 (high half), so the per-block float
 * work (convert, scale, accumulate) runs on 512-bit vectors, halving its uops.
 * Each lane sees exactly the operations of tile_q32, so results are identical
 * to vec_dot. T must be even. */
KVC_INLINE __m512 pair_ps(__m256 lo, __m256 hi) { return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1); }

_Static_assert(TM_Q % 2 == 0 && TM_Q <= 8, "token pairs, Q4_1 min terms in one ymm");

KVC_INLINE void tile_q32_pairs(const int kind, const int R, const int T, int64_t nb, const uint8_t *const *wp,
                               const uint8_t *const *ap, float *res) {
    enum { P = TM_Q / 2 };
    const int ws = kw_size[kind], wq = kw_qs[kind], as = ka_size[kind], aq = kind == K_Q4_1 ? 4 : 2;
    const int x16 = NIB_X16 && (kind == K_Q4_0 || kind == K_Q4_1);
    const __m256 ls = x16 ? _mm256_setr_ps(1, 1, 1, 1, 0.0625f, 0.0625f, 0.0625f, 0.0625f) : _mm256_set1_ps(1);
    /* 128-bit lanes: low nibbles, high nibbles, low, high (the ymm layout twice) */
    const long long lo4 = 0x0f0f0f0f0f0f0f0f, hi4 = (long long)0xf0f0f0f0f0f0f0f0;
    const long long lo8 = 0x0808080808080808, hi8 = (long long)0x8080808080808080;
    const __m512i nib_mask = x16 ? _mm512_set_epi64(hi4, hi4, lo4, lo4, hi4, hi4, lo4, lo4) : _mm512_set1_epi8(15);
    const __m512i offs = kind == K_Q5_0 ? _mm512_set1_epi8(16)
                         : x16          ? _mm512_set_epi64(hi8, hi8, lo8, lo8, hi8, hi8, lo8, lo8)
                                        : _mm512_set1_epi8(8);
    __m512 acc[RA_Q][P];
    __m256 macc[RA_Q]; /* Q4_1: lane t = sum of m_w * s_a of token t */
    for (int r = 0; r < R; r++) {
        for (int p = 0; p < T / 2; p++) acc[r][p] = _mm512_setzero_ps();
        macc[r] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        __m512i av[P], a0[P];
        __m512 da[P];
        float sa[8] = {0};
        for (int p = 0; p < T / 2; p++) {
            const uint8_t *p0 = ap[2 * p] + b * as, *p1 = ap[2 * p + 1] + b * as;
            av[p] = _mm512_inserti64x4(_mm512_castsi256_si512(loadu256(p0 + aq)), loadu256(p1 + aq), 1);
            da[p] = pair_ps(_mm256_mul_ps(_mm256_set1_ps(ld_fp16(p0)), ls), _mm256_mul_ps(_mm256_set1_ps(ld_fp16(p1)), ls));
            if (kind == K_Q4_1) sa[2 * p] = ld_fp16(p0 + 2), sa[2 * p + 1] = ld_fp16(p1 + 2);
            if (kind == K_Q4_0 || kind == K_Q5_0)
                a0[p] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offs, av[p]));
            else if (kind == K_Q8_0)
                a0[p] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                         _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), av[p]));
            else
                a0[p] = _mm512_setzero_si512();
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *p = wp[r] + b * ws;
            const __m512 dw = _mm512_set1_ps(ld_fp16(p));
            __m512i q; /* the row's block in both halves */
            if (kind == K_Q8_0) {
                q = _mm512_xor_si512(_mm512_broadcast_i64x4(loadu256(p + wq)), _mm512_set1_epi8((char)0x80));
            } else if (x16) {
                q = _mm512_and_si512(_mm512_broadcast_i32x4(loadu128(p + wq)), nib_mask);
            } else {
                q = _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i32x4(loadu128(p + wq)),
                                                       _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)),
                                     nib_mask);
                if (kind == K_Q5_0) {
                    const __mmask64 hb = _cvtu64_mask64(kvc_ld_u32(p + 2) * 0x100000001ull);
                    q = _mm512_or_si512(q, _mm512_maskz_mov_epi8(hb, _mm512_set1_epi8(16)));
                }
            }
            const float mw = kind == K_Q4_1 ? ld_fp16(p + 2) : 0.0f;
            for (int pp = 0; pp < T / 2; pp++) {
                const __m512i s = _mm512_dpbusd_epi32(a0[pp], q, av[pp]);
                acc[r][pp] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), da[pp]), dw, acc[r][pp]);
            }
            if (kind == K_Q4_1) macc[r] = _mm256_fmadd_ps(_mm256_set1_ps(mw), _mm256_loadu_ps(sa), macc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        float m[8];
        _mm256_storeu_ps(m, macc[r]);
        for (int p = 0; p < T / 2; p++) {
            res[r * T + 2 * p] = hsum_ps_256(_mm512_castps512_ps256(acc[r][p])) + m[2 * p];
            res[r * T + 2 * p + 1] = hsum_ps_256(_mm512_extractf32x8_ps(acc[r][p], 1)) + m[2 * p + 1];
        }
    }
}

#define Q32_PAIRS_CALL(Rc, Tc) tile_q32_pairs(KIND, (Rc), (Tc), k / 32, wp, apt, res)

DEFINE_INT_KERNELS(Q32_PAIRS_CALL)
DEFINE_FLOAT_KERNELS()

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif /* __x86_64__ */
