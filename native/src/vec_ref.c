/* vec_ref.c — scalar reference twins of the vector ops of the forward pass
 * (vec.h): the numbers cpu/vec_avx2.c and cpu/vec_neon.c are tested against.
 * Plain C, no processor-specific code. */
#include <math.h>

#include "vec.h"

static void softmax_ref(int n, float *x) { /* x: (n) in place */
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

static void rms_norm_ref(int n, const float *x, const float *w, float eps, float *out) { /* x, w, out: (n) */
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss = fmaf(x[i], x[i], ss);
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

static void silu_mul_ref(int n, const float *g, const float *u, float *out) { /* g, u, out: (n) */
    for (int i = 0; i < n; i++) out[i] = g[i] / (1.0f + kvc_expf_ref(-g[i])) * u[i];
}

void kvc_gelu_mul_ref(int n, const float *g, const float *u, float *out) { /* g, u, out: (n) */
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int i = 0; i < n; i++) {
        const float x = g[i];
        out[i] = 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x))) * u[i];
    }
}

static void axpy_ref(int n, float a, const float *x, float *y) { /* x, y: (n) */
    for (int i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void scale_ref(int n, float a, float *x) { /* x: (n) in place */
    for (int i = 0; i < n; i++) x[i] *= a;
}

static void axpy_rows_ref(int n, int r, const float *a, const float *const *x, float *y) { /* a: (r); x[k], y: (n) */
    for (int i = 0; i < n; i++) {
        float acc = y[i];
        for (int k = 0; k < r; k++) acc = fmaf(a[k], x[k][i], acc);
        y[i] = acc;
    }
}

const kvc_vec_ops kvc_vec_ops_ref = {softmax_ref, rms_norm_ref, silu_mul_ref, axpy_ref, scale_ref, axpy_rows_ref};
