/* quants_avx512_dot.c — AVX-512 (F/BW/VL/DQ + VNNI) vec_dot and gemm kernels:
 * the register-tiled kernels of dot_x86.h compiled with VNNI integer dots
 * (vpdpbusd: u8 x s8 -> int32, vpdpwssd: s16 x s16 -> int32; no saturation),
 * larger tiles (32 vector registers), 512-bit float-weight kernels, and for
 * prefill (8+ tokens) of the integer types the packed panels (gemm_panel.h).
 * Q8_0 x Q8_0: weights biased to unsigned (w ^ 0x80 = w + 128), the
 * 128 * sum(a) excess starts the accumulator negative. Never AMX.
 * Tile sizes were tuned on a Sapphire Rapids VM; -D overrides them for
 * experiments. */

#if defined(__x86_64__)

#include "target_avx512.h"

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

/* prefill (n_tok >= KVC_PANEL_MIN_TOK): packed panels (gemm_panel.h) */
#include "gemm_panel.h"
#define Q32_GEMM_PANEL(kind, m, n_tok, k, w, a, out, ldo) kvc_gemm_panel_q32_avx512(kind, m, n_tok, k, w, a, out, ldo)
#define K_GEMM_PANEL(tile, m, n_tok, k, w, a, out, ldo) PANEL_##tile(m, n_tok, k, w, a, out, ldo)
#define PANEL_tile_q4_K kvc_gemm_panel_q4_K_avx512
#define PANEL_tile_q6_K kvc_gemm_panel_q6_K_avx512

#include "dot_x86.h"

DEFINE_INT_KERNELS(Q32_CALL)
DEFINE_FLOAT_KERNELS()

#include "target_end.h"

#endif /* __x86_64__ */
