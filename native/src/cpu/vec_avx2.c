/* vec_avx2.c — AVX2+FMA variants of the vector ops in vec.h. Element-wise ops
 * (exp, silu, axpy) match the scalar twins bit for bit; reductions (softmax
 * sum, rms) differ only by summation order. */
#if defined(__x86_64__)

#include "target_avx2.h"

#include "../vec.h"
#include "simd_x86.h"

#define AVX2

AVX2 static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static void softmax_avx2(int n, float *x) {
    int i = 0;
    __m256 vmx = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(x + i));
    float mx = hmax8(vmx);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    __m256 vsum = _mm256_setzero_ps(), m = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum_ps_256(vsum);
    for (; i < n; i++) {
        x[i] = kvc_expf_ref(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    for (; i < n; i++) x[i] *= inv;
}

AVX2 static void rms_norm_avx2(int n, const float *x, const float *w, float eps, float *out) {
    int i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum_ps_256(acc);
    for (; i < n; i++) ss = fmaf(x[i], x[i], ss);
    float inv = 1.0f / sqrtf(ss / n + eps);
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) out[i] = x[i] * inv * w[i];
}

AVX2 static void silu_mul_avx2(int n, const float *g, const float *u, float *out) {
    int i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_xor_ps(v, neg))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + kvc_expf_ref(-g[i])) * u[i];
}

AVX2 static void axpy_avx2(int n, float a, const float *x, float *y) {
    int i = 0;
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

AVX2 static void scale_avx2(int n, float a, float *x) {
    int i = 0;
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(va, _mm256_loadu_ps(x + i)));
    for (; i < n; i++) x[i] *= a;
}

/* 32 elements of y held in four registers across all r rows (one load of each row chunk per
 * multiply-add), then 8 at a time, then one by one: each element's sum in row order, as the twin */
AVX2 static void axpy_rows_avx2(int n, int r, const float *a, const float *const *x, float *y) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 acc[4];
        for (int c = 0; c < 4; c++) acc[c] = _mm256_loadu_ps(y + i + 8 * c);
        for (int k = 0; k < r; k++) {
            const __m256 ak = _mm256_set1_ps(a[k]);
            for (int c = 0; c < 4; c++) acc[c] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(x[k] + i + 8 * c), acc[c]);
        }
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(y + i + 8 * c, acc[c]);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_loadu_ps(y + i);
        for (int k = 0; k < r; k++) acc = _mm256_fmadd_ps(_mm256_set1_ps(a[k]), _mm256_loadu_ps(x[k] + i), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++) {
        float acc = y[i];
        for (int k = 0; k < r; k++) acc = fmaf(a[k], x[k][i], acc);
        y[i] = acc;
    }
}

const kvc_vec_ops kvc_vec_ops_avx2 = {softmax_avx2, rms_norm_avx2, silu_mul_avx2, axpy_avx2, scale_avx2,
                                      axpy_rows_avx2};

#include "target_end.h"
#endif
