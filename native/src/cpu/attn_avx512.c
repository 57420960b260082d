/* attn_avx512.c — AVX-512 build of the flash-attention tile kernel (attn.h,
 * written once in cpu/attn_tile.h): 16 query rows per vector, score tiles of
 * 6 keys x 64 rows and value tiles of 6 rows x 64 channels (24 accumulators).
 * In the avx512 kernel table (cpu/dispatch.c). AVX-512 F only; never AMX. */
#if defined(__x86_64__)

#include "target_avx512.h"

#include "../vec.h"
#include "simd_x86.h"

/* exp per lane, the operations of kvc_expf_ref (vec.h) */
KVC_INLINE __m512 exp16(__m512 x) {
    const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(KVC_EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KVC_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KVC_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(KVC_EXP_C7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVC_EXP_C6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVC_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVC_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVC_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVC_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(~zero, p, _mm512_castsi512_ps(e));
}

#define SFX avx512
#define VF __m512
#define VN 16
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_storeu_ps((p), (x))
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VEXP(x) exp16(x)
#define RK 6
#define QG 4
#define RQ 6
#define DG 4

#include "attn_tile.h"

#include "target_end.h"

#endif
