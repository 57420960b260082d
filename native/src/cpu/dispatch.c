/* dispatch.c — run-time kernel selection and the kernel half of the C ABI
 * (kvc_cpu_impls, kvc_cpu_best_impl, kvc_type_info, kvc_quantize_row,
 * kvc_dequantize_row, kvc_vec_dot, kvc_gemm).
 *
 * CPU features are probed once (pthread_once, with the fp16 table the SIMD
 * kernels read) with __builtin_cpu_supports (x86) or getauxval / sysctl
 * (aarch64: NEON always, dotprod optional) and cached; KVC_FORCE_IMPL=scalar|
 * avx2|avx512|neon in the environment caps what AUTO resolves to (for A/B runs
 * of a whole model). The trait table maps each type to its sizes and, per
 * implementation, its kernels; a missing kernel at one level falls back to the
 * level below (AVX512 -> AVX2 -> SCALAR, NEON -> SCALAR); on aarch64 CPUs with
 * dotprod the NEON integer dot kernels are the *_neondot builds. The ABI
 * functions validate every argument and return KVC_ERR_INVALID /
 * KVC_ERR_UNSUPPORTED; they never abort or print. */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "kvc.h"
#include "quants.h"

/* ---------------- CPU features ---------------- */

float kvc_fp16_table[1 << 16];
static int g_impls;            /* bitmask of 1 << kvc_impl */
static int g_forced = -1;      /* KVC_FORCE_IMPL, if set to an available impl */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
#if defined(__aarch64__)
static int g_neon_dotprod; /* the CPU has ARMv8.2 dotprod (sdot/udot) */

static int probe_dotprod(void) {
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

static int probe_impls(void) {
    int m = 1 << KVC_IMPL_SCALAR;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("f16c");
    if (avx2) m |= 1 << KVC_IMPL_AVX2;
    /* Our AVX-512 kernels use VNNI (vpdpbusd/vpdpwssd) throughout; CPUs with
     * AVX-512 but no VNNI (Skylake-SP) run the AVX2 kernels. */
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        m |= 1 << KVC_IMPL_AVX512;
#elif defined(__aarch64__)
    m |= 1 << KVC_IMPL_NEON; /* ASIMD is mandatory on aarch64 */
    g_neon_dotprod = probe_dotprod();
#endif
    return m;
}

static void init_once(void) {
    for (int h = 0; h < (1 << 16); h++) kvc_fp16_table[h] = kvc_fp16_to_fp32((kvc_half)h);
    g_impls = probe_impls();
    const char *f = getenv("KVC_FORCE_IMPL");
    static const char *names[KVC_N_IMPL] = {"auto", "scalar", "avx2", "avx512", "neon"};
    for (int i = KVC_IMPL_SCALAR; f && i < KVC_N_IMPL; i++)
        if (!strcmp(f, names[i]) && (g_impls & (1 << i))) g_forced = i;
}

int kvc_cpu_impls(void) {
    pthread_once(&g_once, init_once);
    return g_impls;
}

int kvc_cpu_best_impl(void) {
    const int m = kvc_cpu_impls();
    if (g_forced >= 0) return g_forced;
    if (m & (1 << KVC_IMPL_AVX512)) return KVC_IMPL_AVX512;
    if (m & (1 << KVC_IMPL_AVX2)) return KVC_IMPL_AVX2;
    if (m & (1 << KVC_IMPL_NEON)) return KVC_IMPL_NEON;
    return KVC_IMPL_SCALAR;
}

/* ---------------- scalar gemm: a loop over the reference vec_dot ---------------- */

static void gemm_loop(kvc_vec_dot_fn dot, size_t w_row, size_t a_row, int64_t m, int64_t n_tok, int64_t k,
                      const void *w, const void *a, float *out, int64_t ldo) {
    const uint8_t *wb = w, *ab = a; // w: (m, w_row) bytes, a: (n_tok, a_row) bytes
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < m; r++) out[t * ldo + r] = dot(k, wb + (size_t)r * w_row, ab + (size_t)t * a_row);
}

#define GEMM_REF(name, wbs, wts, abs, ats)                                                             \
    static void kvc_gemm_##name##_ref(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                                      float *out, int64_t ldo) {                                       \
        gemm_loop(kvc_vec_dot_##name##_ref, (size_t)(k / wbs * wts), (size_t)(k / abs * ats), m, n_tok, k, \
                  w, a, out, ldo);                                                                     \
    }
GEMM_REF(f32_f32, 1, 4, 1, 4)
GEMM_REF(f16_f32, 1, 2, 1, 4)
GEMM_REF(bf16_f32, 1, 2, 1, 4)
GEMM_REF(q8_0_q8_0, 32, 34, 32, 34)
GEMM_REF(q4_0_q8_0, 32, 18, 32, 34)
GEMM_REF(q4_1_q8_1, 32, 20, 32, 36)
GEMM_REF(q5_0_q8_0, 32, 22, 32, 34)
GEMM_REF(q4_K_q8_K, 256, 144, 256, 292)
GEMM_REF(q6_K_q8_K, 256, 210, 256, 292)

/* ---------------- trait table ---------------- */

#define REF(q, dq, vd, gm) [KVC_IMPL_SCALAR] = {q, dq, vd, gm}

static const kvc_type_traits g_traits[KVC_TYPE_BF16 + 1] = {
    [KVC_TYPE_F32] = {"f32", 1, 4, KVC_TYPE_F32,
                      {REF(kvc_quantize_row_f32_ref, kvc_dequantize_row_f32_ref, kvc_vec_dot_f32_f32_ref,
                           kvc_gemm_f32_f32_ref),
#if defined(__x86_64__)
                       [KVC_IMPL_AVX2] = {NULL, NULL, kvc_vec_dot_f32_f32_avx2, kvc_gemm_f32_f32_avx2},
                       [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_f32_f32_avx512, kvc_gemm_f32_f32_avx512},
#elif defined(__aarch64__)
                       [KVC_IMPL_NEON] = {NULL, NULL, kvc_vec_dot_f32_f32_neon, kvc_gemm_f32_f32_neon},
#endif
                      }},
    [KVC_TYPE_F16] = {"f16", 1, 2, KVC_TYPE_F32,
                      {REF(kvc_quantize_row_f16_ref, kvc_dequantize_row_f16_ref, kvc_vec_dot_f16_f32_ref,
                           kvc_gemm_f16_f32_ref),
#if defined(__x86_64__)
                       [KVC_IMPL_AVX2] = {kvc_quantize_row_f16_avx2, kvc_dequantize_row_f16_avx2,
                                          kvc_vec_dot_f16_f32_avx2, kvc_gemm_f16_f32_avx2},
                       [KVC_IMPL_AVX512] = {NULL, NULL,
                                            kvc_vec_dot_f16_f32_avx512, kvc_gemm_f16_f32_avx512},
#elif defined(__aarch64__)
                       [KVC_IMPL_NEON] = {kvc_quantize_row_f16_neon, kvc_dequantize_row_f16_neon,
                                          kvc_vec_dot_f16_f32_neon, kvc_gemm_f16_f32_neon},
#endif
                      }},
    [KVC_TYPE_BF16] = {"bf16", 1, 2, KVC_TYPE_F32,
                       {REF(kvc_quantize_row_bf16_ref, kvc_dequantize_row_bf16_ref, kvc_vec_dot_bf16_f32_ref,
                            kvc_gemm_bf16_f32_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {kvc_quantize_row_bf16_avx2, kvc_dequantize_row_bf16_avx2,
                                           kvc_vec_dot_bf16_f32_avx2, kvc_gemm_bf16_f32_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL,
                                             kvc_vec_dot_bf16_f32_avx512, kvc_gemm_bf16_f32_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {kvc_quantize_row_bf16_neon, kvc_dequantize_row_bf16_neon,
                                           kvc_vec_dot_bf16_f32_neon, kvc_gemm_bf16_f32_neon},
#endif
                       }},
    [KVC_TYPE_Q8_0] = {"q8_0", QK8_0, sizeof(block_q8_0), KVC_TYPE_Q8_0,
                       {REF(kvc_quantize_row_q8_0_ref, kvc_dequantize_row_q8_0_ref, kvc_vec_dot_q8_0_q8_0_ref,
                            kvc_gemm_q8_0_q8_0_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {kvc_quantize_row_q8_0_avx2, kvc_dequantize_row_q8_0_avx2,
                                           kvc_vec_dot_q8_0_q8_0_avx2, kvc_gemm_q8_0_q8_0_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL,
                                             kvc_vec_dot_q8_0_q8_0_avx512, kvc_gemm_q8_0_q8_0_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {kvc_quantize_row_q8_0_neon, kvc_dequantize_row_q8_0_neon,
                                           kvc_vec_dot_q8_0_q8_0_neon, kvc_gemm_q8_0_q8_0_neon},
#endif
                       }},
    [KVC_TYPE_Q8_1] = {"q8_1", QK8_1, sizeof(block_q8_1), -1,
                       {REF(kvc_quantize_row_q8_1_ref, kvc_dequantize_row_q8_1_ref, NULL, NULL),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {kvc_quantize_row_q8_1_avx2, NULL, NULL, NULL},
                        [KVC_IMPL_AVX512] = {NULL, NULL, NULL, NULL},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {kvc_quantize_row_q8_1_neon, NULL, NULL, NULL},
#endif
                       }},
    [KVC_TYPE_Q8_K] = {"q8_K", QK_K, sizeof(block_q8_K), -1,
                       {REF(kvc_quantize_row_q8_K_ref, kvc_dequantize_row_q8_K_ref, NULL, NULL),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {kvc_quantize_row_q8_K_avx2, NULL, NULL, NULL},
                        [KVC_IMPL_AVX512] = {NULL, NULL, NULL, NULL},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {kvc_quantize_row_q8_K_neon, NULL, NULL, NULL},
#endif
                       }},
    [KVC_TYPE_Q4_0] = {"q4_0", QK4_0, sizeof(block_q4_0), KVC_TYPE_Q8_0,
                       {REF(kvc_quantize_row_q4_0_ref, kvc_dequantize_row_q4_0_ref, kvc_vec_dot_q4_0_q8_0_ref,
                            kvc_gemm_q4_0_q8_0_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {NULL, kvc_dequantize_row_q4_0_avx2, kvc_vec_dot_q4_0_q8_0_avx2,
                                           kvc_gemm_q4_0_q8_0_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_q4_0_q8_0_avx512,
                                             kvc_gemm_q4_0_q8_0_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {NULL, kvc_dequantize_row_q4_0_neon, kvc_vec_dot_q4_0_q8_0_neon,
                                           kvc_gemm_q4_0_q8_0_neon},
#endif
                       }},
    [KVC_TYPE_Q4_1] = {"q4_1", QK4_1, sizeof(block_q4_1), KVC_TYPE_Q8_1,
                       {REF(kvc_quantize_row_q4_1_ref, kvc_dequantize_row_q4_1_ref, kvc_vec_dot_q4_1_q8_1_ref,
                            kvc_gemm_q4_1_q8_1_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {NULL, NULL, kvc_vec_dot_q4_1_q8_1_avx2, kvc_gemm_q4_1_q8_1_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_q4_1_q8_1_avx512, kvc_gemm_q4_1_q8_1_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {NULL, NULL, kvc_vec_dot_q4_1_q8_1_neon, kvc_gemm_q4_1_q8_1_neon},
#endif
                       }},
    [KVC_TYPE_Q5_0] = {"q5_0", QK5_0, sizeof(block_q5_0), KVC_TYPE_Q8_0,
                       {REF(kvc_quantize_row_q5_0_ref, kvc_dequantize_row_q5_0_ref, kvc_vec_dot_q5_0_q8_0_ref,
                            kvc_gemm_q5_0_q8_0_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {NULL, NULL, kvc_vec_dot_q5_0_q8_0_avx2, kvc_gemm_q5_0_q8_0_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_q5_0_q8_0_avx512, kvc_gemm_q5_0_q8_0_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {NULL, NULL, kvc_vec_dot_q5_0_q8_0_neon, kvc_gemm_q5_0_q8_0_neon},
#endif
                       }},
    [KVC_TYPE_Q4_K] = {"q4_K", QK_K, sizeof(block_q4_K), KVC_TYPE_Q8_K,
                       {REF(NULL, kvc_dequantize_row_q4_K_ref, kvc_vec_dot_q4_K_q8_K_ref, kvc_gemm_q4_K_q8_K_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {NULL, NULL, kvc_vec_dot_q4_K_q8_K_avx2, kvc_gemm_q4_K_q8_K_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_q4_K_q8_K_avx512, kvc_gemm_q4_K_q8_K_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {NULL, NULL, kvc_vec_dot_q4_K_q8_K_neon, kvc_gemm_q4_K_q8_K_neon},
#endif
                       }},
    [KVC_TYPE_Q6_K] = {"q6_K", QK_K, sizeof(block_q6_K), KVC_TYPE_Q8_K,
                       {REF(NULL, kvc_dequantize_row_q6_K_ref, kvc_vec_dot_q6_K_q8_K_ref, kvc_gemm_q6_K_q8_K_ref),
#if defined(__x86_64__)
                        [KVC_IMPL_AVX2] = {NULL, NULL, kvc_vec_dot_q6_K_q8_K_avx2, kvc_gemm_q6_K_q8_K_avx2},
                        [KVC_IMPL_AVX512] = {NULL, NULL, kvc_vec_dot_q6_K_q8_K_avx512, kvc_gemm_q6_K_q8_K_avx512},
#elif defined(__aarch64__)
                        [KVC_IMPL_NEON] = {NULL, NULL, kvc_vec_dot_q6_K_q8_K_neon, kvc_gemm_q6_K_q8_K_neon},
#endif
                       }},
};

#if defined(__aarch64__)
/* With dotprod, the NEON integer dot kernels are the sdot builds (bit-identical
 * results, fewer instructions); the rest of the NEON column stays. */
#define NEONDOT(name) {NULL, NULL, kvc_vec_dot_##name##_neondot, kvc_gemm_##name##_neondot}
static const kvc_kernels g_neondot[KVC_TYPE_BF16 + 1] = {
    [KVC_TYPE_Q8_0] = NEONDOT(q8_0_q8_0), [KVC_TYPE_Q4_0] = NEONDOT(q4_0_q8_0),
    [KVC_TYPE_Q4_1] = NEONDOT(q4_1_q8_1), [KVC_TYPE_Q5_0] = NEONDOT(q5_0_q8_0),
    [KVC_TYPE_Q4_K] = NEONDOT(q4_K_q8_K), [KVC_TYPE_Q6_K] = NEONDOT(q6_K_q8_K),
};
#undef NEONDOT
#endif

const kvc_type_traits *kvc_traits(int type) {
    if (type < 0 || type > KVC_TYPE_BF16 || g_traits[type].name == NULL) return NULL;
    return &g_traits[type];
}

/* impl -> the impl to use (AUTO resolved), or a negative kvc status. */
static int check_impl(int impl) {
    if (impl < 0 || impl >= KVC_N_IMPL) return -KVC_ERR_INVALID;
    if (impl == KVC_IMPL_AUTO) return kvc_cpu_best_impl();
    if (!(kvc_cpu_impls() & (1 << impl))) return -KVC_ERR_UNSUPPORTED;
    return impl;
}

static int lower_impl(int impl) {
    switch (impl) {
    case KVC_IMPL_AVX512: return KVC_IMPL_AVX2;
    case KVC_IMPL_AVX2: return KVC_IMPL_SCALAR;
    case KVC_IMPL_NEON: return KVC_IMPL_SCALAR;
    default: return -1;
    }
}

/* Each kernel of `impl`, or of the nearest lower level that has one. */
static kvc_kernels resolve(const kvc_type_traits *t, int impl) {
    kvc_kernels r = {0};
#if defined(__aarch64__)
    if (impl == KVC_IMPL_NEON && g_neon_dotprod) r = g_neondot[t - g_traits];
#endif
    for (int i = impl; i >= KVC_IMPL_SCALAR; i = lower_impl(i)) {
        const kvc_kernels *k = &t->k[i];
        if (!r.quantize) r.quantize = k->quantize;
        if (!r.dequantize) r.dequantize = k->dequantize;
        if (!r.vec_dot) r.vec_dot = k->vec_dot;
        if (!r.gemm) r.gemm = k->gemm;
    }
    return r;
}

int kvc_kernels_for(int type, int impl, kvc_kernels *out) {
    const kvc_type_traits *t = kvc_traits(type);
    if (!t || !out) return KVC_ERR_INVALID;
    impl = check_impl(impl);
    if (impl < 0) return -impl;
    *out = resolve(t, impl);
    return KVC_OK;
}

/* ---------------- the ABI ---------------- */

int kvc_type_info(int type, int *block_size, int *type_size, int *vec_dot_type) {
    const kvc_type_traits *t = kvc_traits(type);
    if (!t) return KVC_ERR_INVALID;
    if (block_size) *block_size = t->block_size;
    if (type_size) *type_size = t->type_size;
    if (vec_dot_type) *vec_dot_type = t->vec_dot_type;
    return KVC_OK;
}

int kvc_quantize_row(int type, int impl, const float *x, void *y, long long n) {
    const kvc_type_traits *t = kvc_traits(type);
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    if ((impl = check_impl(impl)) < 0) return -impl;
    kvc_quantize_fn f = resolve(t, impl).quantize;
    if (!f) return KVC_ERR_UNSUPPORTED;
    if (n == 0) return KVC_OK;
    if (!x || !y) return KVC_ERR_INVALID;
    f(x, y, n);
    return KVC_OK;
}

int kvc_dequantize_row(int type, int impl, const void *x, float *y, long long n) {
    const kvc_type_traits *t = kvc_traits(type);
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    if ((impl = check_impl(impl)) < 0) return -impl;
    kvc_dequantize_fn f = resolve(t, impl).dequantize;
    if (!f) return KVC_ERR_UNSUPPORTED;
    if (n == 0) return KVC_OK;
    if (!x || !y) return KVC_ERR_INVALID;
    f(x, y, n);
    return KVC_OK;
}

/* n must be a multiple of both the weight's and the activation's block size. */
static int check_dot_type(const kvc_type_traits *t, long long n, const kvc_type_traits **at) {
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    if (t->vec_dot_type < 0) return KVC_ERR_UNSUPPORTED;
    *at = kvc_traits(t->vec_dot_type);
    if (n % (*at)->block_size) return KVC_ERR_INVALID;
    return KVC_OK;
}

int kvc_vec_dot(int type, int impl, long long n, const void *w, const void *a, float *out) {
    const kvc_type_traits *t = kvc_traits(type), *at;
    int st = check_dot_type(t, n, &at);
    if (st) return st;
    if ((impl = check_impl(impl)) < 0) return -impl;
    if (!out) return KVC_ERR_INVALID;
    if (n == 0) {
        *out = 0.0f;
        return KVC_OK;
    }
    if (!w || !a) return KVC_ERR_INVALID;
    *out = resolve(t, impl).vec_dot(n, w, a);
    return KVC_OK;
}

/* Blocked GEMM for prefill (and multi-row matvec for decode: n_tok = 1):
 * out[t*ldo + r] = dot(W row r, A row t) for r < m, t < n_tok. */
int kvc_gemm(int type, int impl, long long m, long long n_tok, long long k, const void *w, const void *a,
             float *out, long long ldo) {
    const kvc_type_traits *t = kvc_traits(type), *at;
    int st = check_dot_type(t, k, &at);
    if (st) return st;
    if (m < 0 || n_tok < 0 || (n_tok > 1 && ldo < m)) return KVC_ERR_INVALID;
    if ((impl = check_impl(impl)) < 0) return -impl;
    if (m == 0 || n_tok == 0) return KVC_OK;
    if (!out) return KVC_ERR_INVALID;
    if (k == 0) {
        for (long long i = 0; i < n_tok; i++)
            for (long long r = 0; r < m; r++) out[i * ldo + r] = 0.0f;
        return KVC_OK;
    }
    if (!w || !a) return KVC_ERR_INVALID;
    resolve(t, impl).gemm(m, n_tok, k, w, a, out, ldo);
    return KVC_OK;
}
