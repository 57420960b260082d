/* vec.h — small float vector ops of the forward pass (norms, softmax, SwiGLU,
 * axpy, scale, axpy_rows): their signatures as one group of function pointers, one group
 * per instruction set (the kernel table of kernels.h points at it), and the
 * exp both variants share.
 *
 * The AVX2 and NEON variants (cpu/vec_avx2.c, cpu/vec_neon.c) evaluate the
 * same formulas in the same order with the same fused multiply-adds as the
 * scalar twins (vec_ref.c), so they agree bit for bit on exp-based ops and within
 * summation-order rounding on reductions (tests/test_runtime_ops.py and
 * tests/test_neon.py state the tolerances). */
#ifndef KVC_VEC_H
#define KVC_VEC_H

#include <math.h>

/* Every array is (n) floats; n >= 1. Pure functions (thread-safe). */
typedef struct {
    void (*softmax)(int n, float *x); /* in place */
    /* out = x * (1/sqrt(mean(x^2) + eps)) * w */
    void (*rms_norm)(int n, const float *x, const float *w, float eps, float *out);
    void (*silu_mul)(int n, const float *g, const float *u, float *out); /* silu(g) * u */
    void (*axpy)(int n, float a, const float *x, float *y);             /* y += a * x */
    void (*scale)(int n, float a, float *x);                            /* x *= a */
    /* y += sum_k a[k] * x[k] over r >= 1 rows x[k] (n each): per element one fused multiply-add per
     * row, rows in order, so every variant gives the scalar twin's bits (the K-centering correction
     * of kv_cache.c: y a query's scores, x[k] the cos or sin of a RoPE pair at each key) */
    void (*axpy_rows)(int n, int r, const float *a, const float *const *x, float *y);
} kvc_vec_ops;

extern const kvc_vec_ops kvc_vec_ops_ref;  /* vec_ref.c: the scalar twins */
/* out = gelu(g) * u, GELU's tanh approximation (GeGLU MLPs; vec_ref.c). Scalar only: the
 * MLP's matrix products dominate; out may alias g. */
void kvc_gelu_mul_ref(int n, const float *g, const float *u, float *out);
#if defined(__x86_64__)
extern const kvc_vec_ops kvc_vec_ops_avx2; /* cpu/vec_avx2.c (the AVX-512 table uses it too: memory-bound ops) */
#endif
#if defined(__aarch64__)
extern const kvc_vec_ops kvc_vec_ops_neon; /* cpu/vec_neon.c: NEON is on every aarch64 CPU */
#endif

/* The vector ops of impl (KVC_IMPL_*; AUTO: the run-time choice), NULL if this
 * CPU or build has none: the vec field of kvc_kernel_table_for's table (cpu/dispatch.c). */
const kvc_vec_ops *kvc_vec_ops_for(int impl);

/* exp(x) for x in float range, ~1e-7 relative error; 0 below -87. Shared by both
 * variants: Cody–Waite range reduction x = n ln2 + r, |r| <= ln2/2, then the
 * degree-7 Taylor polynomial of e^r (truncation error < 6e-9) times 2^n. */
#define KVC_EXP_LOG2E 1.44269504088896341f
#define KVC_EXP_LN2_HI 0.693145751953125f
#define KVC_EXP_LN2_LO 1.42860682030941723212e-6f
#define KVC_EXP_C2 (1.0f / 2)
#define KVC_EXP_C3 (1.0f / 6)
#define KVC_EXP_C4 (1.0f / 24)
#define KVC_EXP_C5 (1.0f / 120)
#define KVC_EXP_C6 (1.0f / 720)
#define KVC_EXP_C7 (1.0f / 5040)

static inline float kvc_expf_ref(float x) {
    if (x != x) return x;  /* NaN (e.g. from corrupt weights) stays NaN; (int)NaN below would be undefined */
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) x = 88.0f;
    float n = nearbyintf(x * KVC_EXP_LOG2E);
    float r = fmaf(-n, KVC_EXP_LN2_HI, x);
    r = fmaf(-n, KVC_EXP_LN2_LO, r);
    float p = KVC_EXP_C7;
    p = fmaf(p, r, KVC_EXP_C6);
    p = fmaf(p, r, KVC_EXP_C5);
    p = fmaf(p, r, KVC_EXP_C4);
    p = fmaf(p, r, KVC_EXP_C3);
    p = fmaf(p, r, KVC_EXP_C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union { float f; int i; } s = {.i = ((int)n + 127) << 23};
    return p * s.f;
}

#endif
