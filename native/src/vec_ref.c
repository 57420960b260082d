/* vec.c — scalar reference twins of the vector ops (see vec.h), the dispatch
 * table, and their kvc_op_* ABI wrappers. Plain C, no processor-specific code. */
#include "vec.h"

#include <stddef.h>

#include "kvc.h"

static void softmax_ref(int n, float *x) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = kvc_expf_ref(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

static void rms_norm_ref(int n, const float *x, const float *w, float eps, float *out) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss = fmaf(x[i], x[i], ss);
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

static void silu_mul_ref(int n, const float *g, const float *u, float *out) {
    for (int i = 0; i < n; i++) out[i] = g[i] / (1.0f + kvc_expf_ref(-g[i])) * u[i];
}

static void axpy_ref(int n, float a, const float *x, float *y) {
    for (int i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void scale_ref(int n, float a, float *x) {
    for (int i = 0; i < n; i++) x[i] *= a;
}

static const kvc_vec_ops ops_ref = {softmax_ref, rms_norm_ref, silu_mul_ref, axpy_ref, scale_ref};

#if defined(__x86_64__)
extern const kvc_vec_ops kvc_vec_ops_avx2;
static int have_avx2(void) { return (kvc_cpu_impls() >> KVC_IMPL_AVX2) & 1; }
#endif

const kvc_vec_ops *kvc_vec_ops_for(int impl) {
    switch (impl) {
    case KVC_IMPL_SCALAR: return &ops_ref;
#if defined(__x86_64__)
    case KVC_IMPL_AVX2:
    case KVC_IMPL_AVX512: /* these ops are memory-bound: AVX-512 CPUs use the AVX2 code */
        return have_avx2() ? &kvc_vec_ops_avx2 : NULL;
    case KVC_IMPL_AUTO: return have_avx2() ? &kvc_vec_ops_avx2 : &ops_ref;
#elif defined(__aarch64__)
    case KVC_IMPL_NEON: return &kvc_vec_ops_neon;
    /* AUTO follows kvc_cpu_best_impl, so KVC_FORCE_IMPL=scalar selects the scalar twins */
    case KVC_IMPL_AUTO: return kvc_cpu_best_impl() == KVC_IMPL_NEON ? &kvc_vec_ops_neon : &ops_ref;
#else
    case KVC_IMPL_AUTO: return &ops_ref;
#endif
    default: return NULL;
    }
}

int kvc_op_softmax(int impl, int n, float *x) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x) return KVC_ERR_INVALID;
    o->softmax(n, x);
    return KVC_OK;
}

int kvc_op_rms_norm(int impl, int n, const float *x, const float *w, float eps, float *out) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x || !w || !out) return KVC_ERR_INVALID;
    o->rms_norm(n, x, w, eps, out);
    return KVC_OK;
}

int kvc_op_silu_mul(int impl, int n, const float *g, const float *u, float *out) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !g || !u || !out) return KVC_ERR_INVALID;
    o->silu_mul(n, g, u, out);
    return KVC_OK;
}

int kvc_op_axpy(int impl, int n, float a, const float *x, float *y) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x || !y) return KVC_ERR_INVALID;
    o->axpy(n, a, x, y);
    return KVC_OK;
}
