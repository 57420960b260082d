/* attn_avx2.c — AVX2 + FMA build of the flash-attention tile kernel (attn.h,
 * written once in cpu/attn_tile.h): 8 query rows per vector, score tiles of
 * 4 keys x 16 rows and value tiles of 4 rows x 16 channels (8 accumulators of
 * the 16 ymm registers). In the avx2 kernel table (cpu/dispatch.c). */
#if defined(__x86_64__)

#include "target_avx2.h"

#include "../vec.h"
#include "simd_x86.h"

/* exp per lane, the operations of kvc_expf_ref (vec.h; as cpu/vec_avx2.c) */
KVC_INLINE __m256 exp8(__m256 x) {
    const __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KVC_EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KVC_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KVC_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KVC_EXP_C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#define SFX avx2
#define VF __m256
#define VN 8
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_storeu_ps((p), (x))
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VADD(a, b) _mm256_add_ps((a), (b))
#define VSUB(a, b) _mm256_sub_ps((a), (b))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#define VEXP(x) exp8(x)
#define RK 4
#define QG 2
#define RQ 4
#define DG 2

#include "attn_tile.h"

#include "target_end.h"

#endif
