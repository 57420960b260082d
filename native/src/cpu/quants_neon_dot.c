/* quants_neon_dot.c — baseline aarch64 NEON vec_dot and gemm kernels for every
 * weight type: the tiles of dot_neon.h with integer dots built from widening
 * multiplies (smull/smull2 + sadalp: exact for all int8 operands). CPUs with
 * the dotprod extension run quants_neon_dotprod.c's integer kernels instead
 * (the neon_dotprod table of dispatch.c); the float-weight kernels (F32, F16, BF16) are only here. */

#if defined(__aarch64__)

/* The block scales are applied with the scalar twins' products, unfused. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "simd_neon.h"

/* acc + w * a summed in groups of 4 bytes (int16 products, pairwise into int32). */
KVC_INLINE int32x4_t dot_s8_mull(int32x4_t acc, int8x16_t w, int8x16_t a) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(a)));
    return vpadalq_s16(acc, vmull_high_s8(w, a));
}

#define SFX neon
#define DOT_S8(acc, w, a) dot_s8_mull((acc), (w), (a))
#define WITH_FLOAT 1

#include "dot_neon.h"

DEFINE_INT_KERNELS(Q32_CALL)
DEFINE_FLOAT_KERNELS()

#endif /* __aarch64__ */
