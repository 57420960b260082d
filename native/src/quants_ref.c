/* quants_ref.c — scalar reference twins of every weight/activation kernel:
 * quantize, dequantize, vec_dot and gemm (a loop over vec_dot). Plain C, no processor-specific
 * instructions: these define the numbers the SIMD kernels are tested against
 * (tests/test_kernels.py) and are the fallback on CPUs without a SIMD impl.
 *
 * Quantizers round exactly like ggml's *_ref functions (ggml/src/ggml-quants.c,
 * llama.cpp, MIT) and gguf-py's numpy ports, so files we write match
 * llama.cpp's. Dequantizers multiply in the same order as gguf-py's
 * dequantize so results are bit-identical. vec_dot sums integer products per
 * block exactly, then accumulates the scaled block sums in float, in order. */

#include <math.h>

#include "quants.h"

/* Products must round like numpy's (d * q - m rounded twice), not be fused. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ggml's nearest_int: round half to even via the 1.5 * 2^23 trick; |f| < 2^22. */
static inline int nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ---------------- quantize ---------------- */

void kvc_quantize_row_f32_ref(const float *x, void *y, int64_t n) { memmove(y, x, (size_t)n * 4); }

void kvc_quantize_row_f16_ref(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) fp16
    for (int64_t i = 0; i < n; i++) {
        kvc_half h = kvc_fp32_to_fp16(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

void kvc_quantize_row_bf16_ref(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) bf16
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = kvc_fp32_to_bf16(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

/* d = amax / 127 (kept in fp32 for the quants, stored as fp16), q = roundf(x / d). */
void kvc_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q8_0 b;
        b.d = kvc_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) b.qs[j] = (int8_t)roundf(x[j] * id);
        memcpy(&y[i], &b, sizeof b);
    }
}

/* As Q8_0, plus s = fp16(d * sum(q)) for Q4_1's min term. */
void kvc_quantize_row_q8_1_ref(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q8_1 b;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            b.qs[j] = (int8_t)roundf(x[j] * id);
            sum += b.qs[j];
        }
        b.d = kvc_fp32_to_fp16(d);
        b.s = kvc_fp32_to_fp16((float)sum * d);
        memcpy(&y[i], &b, sizeof b);
    }
}

/* ggml's quantize_row_q8_K_ref: the signed element of largest magnitude (first
 * one on ties) maps to -127; q = nearest_int(-127/max * x) (half to even).
 * An all-zero block gets d = 0, q = 0, bsums = 0 (ggml leaves bsums unset). */
void kvc_quantize_row_q8_K_ref(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        block_q8_K b;
        memset(&b, 0, sizeof b);
        if (amax != 0.0f) {
            const float iscale = -127.0f / max;
            for (int j = 0; j < QK_K; j++) {
                int v = nearest_int(iscale * x[j]);
                b.qs[j] = (int8_t)(v < 127 ? v : 127);
            }
            for (int j = 0; j < QK_K / 16; j++) {
                int sum = 0;
                for (int l = 0; l < 16; l++) sum += b.qs[16 * j + l];
                b.bsums[j] = (int16_t)sum;
            }
            b.d = 1.0f / iscale;
        }
        memcpy(&y[i], &b, sizeof b);
    }
}

/* d = max / -8 with max the signed element of largest magnitude;
 * q = min(15, trunc(x / d + 8.5)). */
void kvc_quantize_row_q4_0_ref(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK4_0; i++, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q4_0 b;
        b.d = kvc_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b.qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
        memcpy(&y[i], &b, sizeof b);
    }
}

/* d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5)). */
void kvc_quantize_row_q4_1_ref(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK4_1; i++, x += QK4_1) {
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < QK4_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q4_1 b;
        b.d = kvc_fp32_to_fp16(d);
        b.m = kvc_fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = (int8_t)((x[j] - min) * id + 0.5f), q1 = (int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b.qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
        memcpy(&y[i], &b, sizeof b);
    }
}

/* d = max / -16; q = min(31, trunc(x / d + 16.5)), 5th bits gathered in qh. */
void kvc_quantize_row_q5_0_ref(const float *x, void *vy, int64_t n) {
    block_q5_0 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK5_0; i++, x += QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q5_0 b;
        uint32_t qh = 0;
        b.d = kvc_fp32_to_fp16(d);
        for (int j = 0; j < QK5_0 / 2; j++) {
            int q0 = (int8_t)(x[j] * id + 16.5f), q1 = (int8_t)(x[j + 16] * id + 16.5f);
            q0 = q0 < 31 ? q0 : 31;
            q1 = q1 < 31 ? q1 : 31;
            b.qs[j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b.qh, &qh, 4);
        memcpy(&y[i], &b, sizeof b);
    }
}

/* ---------------- dequantize ---------------- */

void kvc_dequantize_row_f32_ref(const void *x, float *y, int64_t n) { memmove(y, x, (size_t)n * 4); }

void kvc_dequantize_row_f16_ref(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) fp16
    for (int64_t i = 0; i < n; i++) y[i] = kvc_fp16_to_fp32(kvc_ld_half(x + 2 * i));
}

void kvc_dequantize_row_bf16_ref(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) bf16
    for (int64_t i = 0; i < n; i++) y[i] = kvc_bf16_to_fp32(kvc_ld_half(x + 2 * i));
}

void kvc_dequantize_row_q8_0_ref(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        for (int j = 0; j < QK8_0; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

void kvc_dequantize_row_q8_1_ref(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK8_1; i++, y += QK8_1) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        for (int j = 0; j < QK8_1; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

void kvc_dequantize_row_q8_K_ref(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = kvc_ld_f32(&x[i].d);
        for (int j = 0; j < QK_K; j++) y[j] = d * (float)x[i].qs[j];
    }
}

void kvc_dequantize_row_q4_0_ref(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = d * (float)((x[i].qs[j] & 15) - 8);
            y[j + 16] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
    }
}

void kvc_dequantize_row_q4_1_ref(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        const float m = kvc_fp16_to_fp32(kvc_ld_half(&x[i].m));
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = d * (float)(x[i].qs[j] & 15) + m;
            y[j + 16] = d * (float)(x[i].qs[j] >> 4) + m;
        }
    }
}

void kvc_dequantize_row_q5_0_ref(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        const uint32_t qh = kvc_ld_u32(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int q0 = (x[i].qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
            const int q1 = (x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

void kvc_dequantize_row_q4_K_ref(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        const float dmin = kvc_fp16_to_fp32(kvc_ld_half(&x[i].dmin));
        uint8_t sc[8], m[8];
        kvc_q4k_scales(x[i].scales, sc, m);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < 4; j++, q += 32, y += 64) {
            const float d1 = d * (float)sc[2 * j], m1 = dmin * (float)m[2 * j];
            const float d2 = d * (float)sc[2 * j + 1], m2 = dmin * (float)m[2 * j + 1];
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 15) - m1;
            for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* Within each half of 128: element l (< 32) takes ql[l] low nibble and qh[l]
 * bits 0-1; l+32: ql[l+32] low, qh bits 2-3; l+64: ql[l] high, qh bits 4-5;
 * l+96: ql[l+32] high, qh bits 6-7. Scale index = element / 16. */
void kvc_dequantize_row_q6_K_ref(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* ---------------- vec_dot ---------------- */

float kvc_vec_dot_f32_f32_ref(int64_t n, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va; // (n) floats each, any alignment
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += kvc_ld_f32(w + 4 * i) * kvc_ld_f32(a + 4 * i);
    return s;
}

float kvc_vec_dot_f16_f32_ref(int64_t n, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va; // w: (n) fp16, a: (n) float
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += kvc_fp16_to_fp32(kvc_ld_half(w + 2 * i)) * kvc_ld_f32(a + 4 * i);
    return s;
}

float kvc_vec_dot_bf16_f32_ref(int64_t n, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va; // w: (n) bf16, a: (n) float
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += kvc_bf16_to_fp32(kvc_ld_half(w + 2 * i)) * kvc_ld_f32(a + 4 * i);
    return s;
}

float kvc_vec_dot_q8_0_q8_0_ref(int64_t n, const void *vw, const void *va) {
    const block_q8_0 *w = vw, *a = va; // (n/32) blocks each
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += w[i].qs[j] * a[i].qs[j];
        s += (float)sumi * (kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)) * kvc_fp16_to_fp32(kvc_ld_half(&a[i].d)));
    }
    return s;
}

float kvc_vec_dot_q4_0_q8_0_ref(int64_t n, const void *vw, const void *va) {
    const block_q4_0 *w = vw; // (n/32) blocks
    const block_q8_0 *a = va; // (n/32) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            sumi += ((w[i].qs[j] & 15) - 8) * a[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        }
        s += (float)sumi * (kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)) * kvc_fp16_to_fp32(kvc_ld_half(&a[i].d)));
    }
    return s;
}

/* sum(d_w q + m_w) d_a a = d_w d_a sum(q a) + m_w * s_a, s_a = d_a sum(a). */
float kvc_vec_dot_q4_1_q8_1_ref(int64_t n, const void *vw, const void *va) {
    const block_q4_1 *w = vw; // (n/32) blocks
    const block_q8_1 *a = va; // (n/32) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_1 / 2; j++) {
            sumi += (w[i].qs[j] & 15) * a[i].qs[j];
            sumi += (w[i].qs[j] >> 4) * a[i].qs[j + 16];
        }
        const float dw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)), mw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].m));
        const float da = kvc_fp16_to_fp32(kvc_ld_half(&a[i].d)), sa = kvc_fp16_to_fp32(kvc_ld_half(&a[i].s));
        s += (float)sumi * (dw * da) + mw * sa;
    }
    return s;
}

float kvc_vec_dot_q5_0_q8_0_ref(int64_t n, const void *vw, const void *va) {
    const block_q5_0 *w = vw; // (n/32) blocks
    const block_q8_0 *a = va; // (n/32) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        const uint32_t qh = kvc_ld_u32(w[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int q0 = (w[i].qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
            const int q1 = (w[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            sumi += (q0 - 16) * a[i].qs[j] + (q1 - 16) * a[i].qs[j + 16];
        }
        s += (float)sumi * (kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)) * kvc_fp16_to_fp32(kvc_ld_half(&a[i].d)));
    }
    return s;
}

/* Per superblock: d_a * (d_w * sum_j sc_j (q . a)_j - dmin_w * sum_j m_j asum_j),
 * both inner sums exact in int32 (|.| < 2^26). asum_j comes from bsums. */
float kvc_vec_dot_q4_K_q8_K_ref(int64_t n, const void *vw, const void *va) {
    const block_q4_K *w = vw; // (n/256) blocks
    const block_q8_K *a = va; // (n/256) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], m[8];
        kvc_q4k_scales(w[i].scales, sc, m);
        int16_t bsums[16];
        memcpy(bsums, a[i].bsums, sizeof bsums);
        const uint8_t *q = w[i].qs;
        const int8_t *qa = a[i].qs;
        int sumi = 0, summ = 0;
        for (int j = 0; j < 4; j++, q += 32, qa += 64) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += (q[l] & 15) * qa[l];
                hi += (q[l] >> 4) * qa[l + 32];
            }
            sumi += sc[2 * j] * lo + sc[2 * j + 1] * hi;
        }
        for (int j = 0; j < 8; j++) summ += m[j] * (bsums[2 * j] + bsums[2 * j + 1]);
        const float da = kvc_ld_f32(&a[i].d);
        const float dw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)), dmin = kvc_fp16_to_fp32(kvc_ld_half(&w[i].dmin));
        s += da * (dw * (float)sumi - dmin * (float)summ);
    }
    return s;
}

/* Per superblock: d_w d_a sum_j sc_j sum_{l in j} (q_l - 32) a_l, exact in int32. */
float kvc_vec_dot_q6_K_q8_K_ref(int64_t n, const void *vw, const void *va) {
    const block_q6_K *w = vw; // (n/256) blocks
    const block_q8_K *a = va; // (n/256) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
        const int8_t *sc = w[i].scales, *qa = a[i].qs;
        int sumi = 0;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, qa += 128) {
            int sub[8] = {0}; /* sums per 16-element scale group of this half */
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                sub[is + 0] += (((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32) * qa[l];
                sub[is + 2] += (((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32) * qa[l + 32];
                sub[is + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * qa[l + 64];
                sub[is + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * qa[l + 96];
            }
            for (int j = 0; j < 8; j++) sumi += sc[j] * sub[j];
        }
        s += kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)) * kvc_ld_f32(&a[i].d) * (float)sumi;
    }
    return s;
}

/* ---------------- gemm: a loop over vec_dot ---------------- */

/* out[t*ldo + r] = dot(w row r, a row t): w (m, w_row bytes), a (n_tok, a_row bytes). */
static void gemm_loop(kvc_vec_dot_fn dot, size_t w_row, size_t a_row, int64_t m, int64_t n_tok, int64_t k,
                      const void *w, const void *a, float *out, int64_t ldo) {
    const uint8_t *wb = w, *ab = a;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < m; r++) out[t * ldo + r] = dot(k, wb + (size_t)r * w_row, ab + (size_t)t * a_row);
}

/* name: weight_activation; elements and bytes per block of the weight and of the activation */
#define GEMM_REF(name, w_elems, w_bytes, a_elems, a_bytes)                                                   \
    void kvc_gemm_##name##_ref(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out, \
                               int64_t ldo) {                                                                \
        gemm_loop(kvc_vec_dot_##name##_ref, (size_t)(k / (w_elems) * (w_bytes)),                            \
                  (size_t)(k / (a_elems) * (a_bytes)), m, n_tok, k, w, a, out, ldo);                         \
    }
GEMM_REF(f32_f32, 1, 4, 1, 4)
GEMM_REF(f16_f32, 1, 2, 1, 4)
GEMM_REF(bf16_f32, 1, 2, 1, 4)
GEMM_REF(q8_0_q8_0, QK8_0, sizeof(block_q8_0), QK8_0, sizeof(block_q8_0))
GEMM_REF(q4_0_q8_0, QK4_0, sizeof(block_q4_0), QK8_0, sizeof(block_q8_0))
GEMM_REF(q4_1_q8_1, QK4_1, sizeof(block_q4_1), QK8_1, sizeof(block_q8_1))
GEMM_REF(q5_0_q8_0, QK5_0, sizeof(block_q5_0), QK8_0, sizeof(block_q8_0))
GEMM_REF(q4_K_q8_K, QK_K, sizeof(block_q4_K), QK_K, sizeof(block_q8_K))
GEMM_REF(q6_K_q8_K, QK_K, sizeof(block_q6_K), QK_K, sizeof(block_q8_K))
#undef GEMM_REF
