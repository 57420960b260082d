/* quants_neon_dotprod.c — the integer vec_dot and gemm kernels of dot_neon.h
 * compiled for ARMv8.2 dotprod (sdot: 16 byte products summed into 4 int32
 * lanes per instruction). The neon_dotprod table (dispatch.c) has them instead of quants_neon_dot.c's
 * when the CPU reports HWCAP_ASIMDDP; results are bit-identical to both the
 * baseline NEON kernels and the scalar twins. */

#if defined(__aarch64__)

#include "target_neon_dotprod.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "simd_neon.h"

#define SFX neondot
#define DOT_S8(acc, w, a) vdotq_s32((acc), (w), (a))
#define WITH_FLOAT 0

#include "dot_neon.h"

DEFINE_INT_KERNELS(Q32_CALL)

#include "target_end.h"

#endif /* __aarch64__ */
