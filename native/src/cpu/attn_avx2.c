/* attn_avx2.c — AVX2 + FMA build of the flash-attention tile kernel (attn.h,
 * written once in cpu/attn_tile.h): 8 query rows per vector, score tiles of
 * 4 keys x 16 rows and value tiles of 4 rows x 16 channels (8 accumulators of
 * the 16 ymm registers). In the avx2 kernel table (cpu/dispatch.c). */
#if defined(__x86_64__)

#include "target_avx2.h"

#include "../vec.h"
#include "simd_x86.h"

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
#define VEXP(x) exp8(x) /* simd_x86.h */
#define RK 4
#define QG 2
#define RQ 4
#define DG 2

#include "attn_tile.h"

#include "target_end.h"

#endif
