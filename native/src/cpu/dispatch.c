/* dispatch.c — the kernel tables (kernels.h), one per instruction set, and the
 * one place where a table is chosen: kvc_kernel_table_for, kvc_cpu_impls,
 * kvc_cpu_best_impl.
 *
 * CPU features are probed once (pthread_once, together with the fp16 table the
 * x86 kernels read) with __builtin_cpu_supports (x86) or getauxval / sysctl
 * (aarch64: NEON always, dotprod optional). An impl is available when its table
 * is compiled in and the CPU runs it; on aarch64 the NEON slot holds the
 * neon_dotprod table on CPUs with dotprod. AUTO is the best available table;
 * KVC_FORCE_IMPL=scalar|avx2|avx512|neon in the environment pins AUTO to that one
 * (for A/B runs of a whole model). Every kernel a table lacks is the next lower
 * set's, written out in the table (AVX-512 -> AVX2 -> scalar, NEON -> scalar). */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "kernels.h"
#include "kvc.h"

/* ---------------- the tables ---------------- */

#define DOT(name, sfx) kvc_vec_dot_##name##_##sfx, kvc_gemm_##name##_##sfx
#define QREF(t) kvc_quantize_row_##t##_ref
#define DQREF(t) kvc_dequantize_row_##t##_ref

const kvc_kernel_table kvc_kernels_ref = {
    "scalar", KVC_IMPL_SCALAR,
    {
        [KVC_TYPE_F32] = {QREF(f32), DQREF(f32), DOT(f32_f32, ref)},
        [KVC_TYPE_F16] = {QREF(f16), DQREF(f16), DOT(f16_f32, ref)},
        [KVC_TYPE_BF16] = {QREF(bf16), DQREF(bf16), DOT(bf16_f32, ref)},
        [KVC_TYPE_Q8_0] = {QREF(q8_0), DQREF(q8_0), DOT(q8_0_q8_0, ref)},
        [KVC_TYPE_Q8_1] = {QREF(q8_1), DQREF(q8_1), NULL, NULL},
        [KVC_TYPE_Q8_K] = {QREF(q8_K), DQREF(q8_K), NULL, NULL},
        [KVC_TYPE_Q4_0] = {QREF(q4_0), DQREF(q4_0), DOT(q4_0_q8_0, ref)},
        [KVC_TYPE_Q4_1] = {QREF(q4_1), DQREF(q4_1), DOT(q4_1_q8_1, ref)},
        [KVC_TYPE_Q5_0] = {QREF(q5_0), DQREF(q5_0), DOT(q5_0_q8_0, ref)},
        [KVC_TYPE_Q5_1] = {QREF(q5_1), DQREF(q5_1), DOT(q5_1_q8_1, ref)},
        [KVC_TYPE_Q4_K] = {QREF(q4_K), DQREF(q4_K), DOT(q4_K_q8_K, ref)},
        [KVC_TYPE_Q5_K] = {QREF(q5_K), DQREF(q5_K), DOT(q5_K_q8_K, ref)},
        [KVC_TYPE_Q6_K] = {QREF(q6_K), DQREF(q6_K), DOT(q6_K_q8_K, ref)},
    },
    &kvc_vec_ops_ref, tq_encode_ref, tq_score_ref, tq_accum_ref, kvc_attn_tile_ref,
};

/* The per-type kernels of a SIMD table: quantize/dequantize from quants_<sfx>.c
 * (sfx: avx2 or neon; scalar where it has none), vec_dot/gemm with suffix int_sfx
 * for the integer weight types and flt_sfx for the float ones. Q5_1 and Q5_K (the
 * Q5_K_M mix; kvconvert writes them, the Hub's files hold them) have only the scalar
 * kernels so far; the k-quant quantizers are scalar in every table. */
#define SIMD_TYPES(sfx, int_sfx, flt_sfx)                                                                         \
    {                                                                                                             \
        [KVC_TYPE_F32] = {QREF(f32), DQREF(f32), DOT(f32_f32, flt_sfx)},                                          \
        [KVC_TYPE_F16] = {kvc_quantize_row_f16_##sfx, kvc_dequantize_row_f16_##sfx, DOT(f16_f32, flt_sfx)},       \
        [KVC_TYPE_BF16] = {kvc_quantize_row_bf16_##sfx, kvc_dequantize_row_bf16_##sfx, DOT(bf16_f32, flt_sfx)},   \
        [KVC_TYPE_Q8_0] = {kvc_quantize_row_q8_0_##sfx, kvc_dequantize_row_q8_0_##sfx, DOT(q8_0_q8_0, int_sfx)},  \
        [KVC_TYPE_Q8_1] = {kvc_quantize_row_q8_1_##sfx, DQREF(q8_1), NULL, NULL},                                 \
        [KVC_TYPE_Q8_K] = {kvc_quantize_row_q8_K_##sfx, DQREF(q8_K), NULL, NULL},                                 \
        [KVC_TYPE_Q4_0] = {QREF(q4_0), kvc_dequantize_row_q4_0_##sfx, DOT(q4_0_q8_0, int_sfx)},                   \
        [KVC_TYPE_Q4_1] = {QREF(q4_1), DQREF(q4_1), DOT(q4_1_q8_1, int_sfx)},                                     \
        [KVC_TYPE_Q5_0] = {QREF(q5_0), DQREF(q5_0), DOT(q5_0_q8_0, int_sfx)},                                     \
        [KVC_TYPE_Q5_1] = {QREF(q5_1), DQREF(q5_1), DOT(q5_1_q8_1, ref)}, /* scalar only */                      \
        [KVC_TYPE_Q4_K] = {KQUANT_##sfx(q4_K), DQREF(q4_K), DOT(q4_K_q8_K, int_sfx)},                             \
        [KVC_TYPE_Q5_K] = {KQUANT_##sfx(q5_K), DQREF(q5_K), DOT(q5_K_q8_K, ref)},                                 \
        [KVC_TYPE_Q6_K] = {KQUANT_##sfx(q6_K), DQREF(q6_K), DOT(q6_K_q8_K, int_sfx)},                             \
    }

/* k-quant quantizers: AVX2 has its own scale search (cpu/quantize_k_avx2.c), NEON the scalar one */
#define KQUANT_avx2(t) kvc_quantize_row_##t##_avx2
#define KQUANT_neon(t) QREF(t)

#if defined(__x86_64__)
const kvc_kernel_table kvc_kernels_avx2 = {
    "avx2", KVC_IMPL_AVX2, SIMD_TYPES(avx2, avx2, avx2),
    &kvc_vec_ops_avx2, tq_encode_avx2, tq_score_avx2, tq_accum_avx2, kvc_attn_tile_avx2,
};

/* AVX-512: its own dot/gemm kernels and TurboQuant kernels (the trellis search too);
 * quantize/dequantize and the (memory-bound) vector ops are AVX2's. */
const kvc_kernel_table kvc_kernels_avx512 = {
    "avx512", KVC_IMPL_AVX512, SIMD_TYPES(avx2, avx512, avx512),
    &kvc_vec_ops_avx2, tq_encode_avx512, tq_score_avx512, tq_accum_avx512, kvc_attn_tile_avx512,
};
#endif

#if defined(__aarch64__)
const kvc_kernel_table kvc_kernels_neon = {
    "neon", KVC_IMPL_NEON, SIMD_TYPES(neon, neon, neon),
    &kvc_vec_ops_neon, tq_encode_ref, tq_score_neon, tq_accum_neon, kvc_attn_tile_ref, /* NEON: the scalar twin so far */
};

/* With dotprod the integer dot kernels are the sdot builds (bit-identical
 * results, fewer instructions); everything else is the NEON table's. */
const kvc_kernel_table kvc_kernels_neon_dotprod = {
    "neon_dotprod", KVC_IMPL_NEON, SIMD_TYPES(neon, neondot, neon),
    &kvc_vec_ops_neon, tq_encode_ref, tq_score_neon, tq_accum_neon, kvc_attn_tile_ref, /* NEON: the scalar twin so far */
};
#endif

#undef SIMD_TYPES
#undef KQUANT_avx2
#undef KQUANT_neon
#undef DOT
#undef QREF
#undef DQREF

/* ---------------- CPU features ---------------- */

float kvc_fp16_table[1 << 16];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const kvc_kernel_table *g_tables[KVC_N_IMPL]; /* [impl]: its table if this CPU runs it, else NULL */
static const kvc_kernel_table *g_auto;               /* what AUTO resolves to */

#if defined(__aarch64__)
static int probe_dotprod(void) { /* the CPU has ARMv8.2 dotprod (sdot/udot) */
#if defined(__linux__)
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0 && v;
#else
    return 0; /* unknown OS: the baseline NEON kernels */
#endif
}
#endif

static void probe_tables(void) {
    g_tables[KVC_IMPL_SCALAR] = &kvc_kernels_ref;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("f16c");
    if (avx2) g_tables[KVC_IMPL_AVX2] = &kvc_kernels_avx2;
    /* Our AVX-512 kernels use VNNI (vpdpbusd/vpdpwssd) throughout; CPUs with
     * AVX-512 but no VNNI (Skylake-SP) run the AVX2 kernels. */
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        g_tables[KVC_IMPL_AVX512] = &kvc_kernels_avx512;
#elif defined(__aarch64__)
    /* ASIMD is mandatory on aarch64 */
    g_tables[KVC_IMPL_NEON] = probe_dotprod() ? &kvc_kernels_neon_dotprod : &kvc_kernels_neon;
#endif
}

static void init_once(void) {
    for (int h = 0; h < (1 << 16); h++) kvc_fp16_table[h] = kvc_fp16_to_fp32((kvc_half)h);
    probe_tables();
    static const int best_first[] = {KVC_IMPL_AVX512, KVC_IMPL_AVX2, KVC_IMPL_NEON, KVC_IMPL_SCALAR};
    for (int i = 0; !g_auto; i++) g_auto = g_tables[best_first[i]];
    const char *f = getenv("KVC_FORCE_IMPL");
    static const char *names[KVC_N_IMPL] = {"auto", "scalar", "avx2", "avx512", "neon"};
    for (int i = KVC_IMPL_SCALAR; f && i < KVC_N_IMPL; i++)
        if (!strcmp(f, names[i]) && g_tables[i]) g_auto = g_tables[i];
}

/* ---------------- the choice ---------------- */

int kvc_kernel_table_for(int impl, const kvc_kernel_table **out) {
    if (impl < 0 || impl >= KVC_N_IMPL) return KVC_ERR_INVALID;
    pthread_once(&g_once, init_once);
    *out = impl == KVC_IMPL_AUTO ? g_auto : g_tables[impl];
    return *out ? KVC_OK : KVC_ERR_UNSUPPORTED;
}

int kvc_cpu_impls(void) {
    pthread_once(&g_once, init_once);
    int m = 0;
    for (int i = KVC_IMPL_SCALAR; i < KVC_N_IMPL; i++)
        if (g_tables[i]) m |= 1 << i;
    return m;
}

int kvc_cpu_best_impl(void) {
    pthread_once(&g_once, init_once);
    return g_auto->impl;
}
