/* quants_avx2_dot.c — AVX2 (+FMA, F16C) vec_dot and gemm kernels: the
 * register-tiled kernels of dot_x86.h compiled with maddubs/madd integer dots.
 * maddubs saturates int16 pair sums at 32767: safe here because unsigned
 * weights are <= 31, and Q8_0 x Q8_0 uses ggml's sign trick (|w| <= 128 times
 * activations in -127..127, which our quantizers guarantee). */

#if defined(__x86_64__)

#include "target_avx2.h"

#include "simd_x86.h"

#define SFX avx2
#define DOT_US8(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define DOT_S16(acc, x, y) _mm256_add_epi32((acc), _mm256_madd_epi16((x), (y)))
#define Q8_0_W(q) _mm256_sign_epi8((q), (q))
#define Q8_0_ACC0(a) _mm256_setzero_si256()
#define Q8_0_DOT(acc0, q, qx, a) DOT_US8((acc0), (qx), _mm256_sign_epi8((a), (q)))
#define Q5_HIGH_BIT(q, p) _mm256_or_si256((q), _mm256_and_si256(bits_32(p), _mm256_set1_epi8(16)))

#define FV __m256
#define FV_N 8
#define FV_ZERO() _mm256_setzero_ps()
#define FV_LOAD_F32(p) _mm256_loadu_ps((const float *)(const void *)(p))
#define FV_LOAD_F16(p) _mm256_cvtph_ps(loadu128(p))
#define FV_LOAD_BF16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(loadu128(p)), 16))
#define FV_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define FV_HSUM(v) hsum_ps_256(v)

/* tile sizes: the defaults of gemm_tiles.h */

#include "dot_x86.h"

DEFINE_INT_KERNELS(Q32_CALL)
DEFINE_FLOAT_KERNELS()

#include "target_end.h"

#endif /* __x86_64__ */
