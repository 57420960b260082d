/* vec_neon.c — aarch64 NEON variants of the vector ops in vec.h. Element-wise
 * ops (exp, silu, axpy, scale, axpy_rows) evaluate kvc_expf_ref's formulas with the same
 * fused multiply-adds, so they match the scalar twins bit for bit; reductions
 * (softmax sum, rms) differ only by summation order (4 lanes x 2 chains). */
#if defined(__aarch64__)

#include "../vec.h"
#include "simd_neon.h"

/* kvc_expf_ref on 4 lanes: frintn is nearbyintf (round to nearest even),
 * fmls/fmla are the twin's fmaf calls. */
KVC_INLINE float32x4_t exp4(float32x4_t x) {
    const uint32x4_t zero_mask = vcltq_f32(x, vdupq_n_f32(-87.0f));
    x = vminq_f32(x, vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(KVC_EXP_LOG2E)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(KVC_EXP_LN2_HI)); /* fmaf(-n, hi, x) */
    r = vfmsq_f32(r, n, vdupq_n_f32(KVC_EXP_LN2_LO));
    float32x4_t p = vdupq_n_f32(KVC_EXP_C7);
    p = vfmaq_f32(vdupq_n_f32(KVC_EXP_C6), p, r); /* fmaf(p, r, c6) */
    p = vfmaq_f32(vdupq_n_f32(KVC_EXP_C5), p, r);
    p = vfmaq_f32(vdupq_n_f32(KVC_EXP_C4), p, r);
    p = vfmaq_f32(vdupq_n_f32(KVC_EXP_C3), p, r);
    p = vfmaq_f32(vdupq_n_f32(KVC_EXP_C2), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t out = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(out), zero_mask));
}

static void softmax_neon(int n, float *x) {
    int i = 0;
    float32x4_t vmx = vdupq_n_f32(-INFINITY);
    for (; i + 4 <= n; i += 4) vmx = vmaxq_f32(vmx, vld1q_f32(x + i));
    float mx = vmaxvq_f32(vmx);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const float32x4_t m = vdupq_n_f32(mx);
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    for (i = 0; i + 8 <= n; i += 8) {
        const float32x4_t e0 = exp4(vsubq_f32(vld1q_f32(x + i), m)), e1 = exp4(vsubq_f32(vld1q_f32(x + i + 4), m));
        vst1q_f32(x + i, e0);
        vst1q_f32(x + i + 4, e1);
        s0 = vaddq_f32(s0, e0);
        s1 = vaddq_f32(s1, e1);
    }
    float sum = hsum_f32x4(vaddq_f32(s0, s1));
    for (; i < n; i++) {
        x[i] = kvc_expf_ref(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= inv;
}

static void rms_norm_neon(int n, const float *x, const float *w, float eps, float *out) {
    int i = 0;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    for (; i + 8 <= n; i += 8) {
        const float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + 4);
        a0 = vfmaq_f32(a0, v0, v0);
        a1 = vfmaq_f32(a1, v1, v1);
    }
    float ss = hsum_f32x4(vaddq_f32(a0, a1));
    for (; i < n; i++) ss = fmaf(x[i], x[i], ss);
    const float inv = 1.0f / sqrtf(ss / n + eps);
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), inv), vld1q_f32(w + i)));
    for (; i < n; i++) out[i] = x[i] * inv * w[i];
}

static void silu_mul_neon(int n, const float *g, const float *u, float *out) {
    int i = 0;
    const float32x4_t one = vdupq_n_f32(1.0f);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(g + i);
        const float32x4_t s = vdivq_f32(v, vaddq_f32(one, exp4(vnegq_f32(v))));
        vst1q_f32(out + i, vmulq_f32(s, vld1q_f32(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + kvc_expf_ref(-g[i])) * u[i];
}

static void axpy_neon(int n, float a, const float *x, float *y) {
    int i = 0;
    const float32x4_t va = vdupq_n_f32(a);
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void scale_neon(int n, float a, float *x) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), a));
    for (; i < n; i++) x[i] *= a;
}

/* 16 elements of y in four registers across all r rows, then 4, then one by one (row order per
 * element, as the twin) */
static void axpy_rows_neon(int n, int r, const float *a, const float *const *x, float *y) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t acc[4];
        for (int c = 0; c < 4; c++) acc[c] = vld1q_f32(y + i + 4 * c);
        for (int k = 0; k < r; k++) {
            const float32x4_t ak = vdupq_n_f32(a[k]);
            for (int c = 0; c < 4; c++) acc[c] = vfmaq_f32(acc[c], ak, vld1q_f32(x[k] + i + 4 * c));
        }
        for (int c = 0; c < 4; c++) vst1q_f32(y + i + 4 * c, acc[c]);
    }
    for (; i + 4 <= n; i += 4) {
        float32x4_t acc = vld1q_f32(y + i);
        for (int k = 0; k < r; k++) acc = vfmaq_f32(acc, vdupq_n_f32(a[k]), vld1q_f32(x[k] + i));
        vst1q_f32(y + i, acc);
    }
    for (; i < n; i++) {
        float acc = y[i];
        for (int k = 0; k < r; k++) acc = fmaf(a[k], x[k][i], acc);
        y[i] = acc;
    }
}

const kvc_vec_ops kvc_vec_ops_neon = {softmax_neon, rms_norm_neon, silu_mul_neon, axpy_neon, scale_neon,
                                      axpy_rows_neon};

#endif /* __aarch64__ */
