/* quants_avx2.c — AVX2 (+FMA, F16C) quantize and dequantize kernels. They are
 * bit-identical to the scalar twins in quants_ref.c (tested), which is why
 * rounding is spelled out below instead of using ggml's faster-but-different
 * SIMD rounding. The AVX-512 impl reuses these (activation quantization is a
 * small part of a matmul). vec_dot / gemm: quants_avx2_dot.c. */

#if defined(__x86_64__)

#include "target_avx2.h"

#include <math.h>

#include "simd_x86.h"

/* C roundf (half away from zero), exactly: t = trunc(x); t += sign(x) if |x - t| >= 0.5. */
KVC_INLINE __m256 roundf_256(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, x));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

/* 4 x 8 int32 (values in -128..127) -> 32 int8 in order. */
KVC_INLINE __m256i pack_i32_i8(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i a = _mm256_packs_epi32(i0, i1), b = _mm256_packs_epi32(i2, i3);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

KVC_INLINE float hmax_ps_256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

KVC_INLINE uint16_t fp32_to_fp16_f16c(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

/* One 32-element block of Q8_0/Q8_1: returns the quants, *d and the int sum. */
KVC_INLINE __m256i quant_block_32(const float *x, float *d_out, int *sum_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    const float d = hmax_ps_256(amax) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    __m256i q[4];
    for (int j = 0; j < 4; j++) q[j] = _mm256_cvttps_epi32(roundf_256(_mm256_mul_ps(v[j], _mm256_set1_ps(id))));
    *d_out = d;
    if (sum_out)
        *sum_out = hsum_epi32_256(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    return pack_i32_i8(q[0], q[1], q[2], q[3]);
}

void kvc_quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/32) blocks of 34 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 32, y += 34) {
        float d;
        const __m256i q = quant_block_32(x, &d, NULL);
        const uint16_t h = fp32_to_fp16_f16c(d);
        memcpy(y, &h, 2);
        _mm256_storeu_si256((__m256i *)(y + 2), q);
    }
}

void kvc_quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/32) blocks of 36 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 32, y += 36) {
        float d;
        int sum;
        const __m256i q = quant_block_32(x, &d, &sum);
        const uint16_t h[2] = {fp32_to_fp16_f16c(d), fp32_to_fp16_f16c((float)sum * d)};
        memcpy(y, h, 4);
        _mm256_storeu_si256((__m256i *)(y + 4), q);
    }
}

/* Q8_K: like quantize_row_q8_K_ref — the first element of largest magnitude
 * maps to -127, round half to even (_mm256_round_ps nearest == nearest_int). */
void kvc_quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n/256) blocks of 292 bytes
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, y += 292) {
        __m256 amax_v = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) amax_v = _mm256_max_ps(amax_v, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        const float amax = hmax_ps_256(amax_v);
        if (amax == 0.0f) {
            memset(y, 0, 292);
            continue;
        }
        float max = 0.0f;
        for (int j = 0; j < QK_K; j += 8) {
            const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j));
            const int mask = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(amax), _CMP_EQ_OQ));
            if (mask) {
                max = x[j + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        int16_t bsums[16];
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int l = 0; l < 4; l++) {
                const __m256 v = _mm256_round_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * l)),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                q[l] = _mm256_min_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(127));
            }
            _mm256_storeu_si256((__m256i *)(y + 4 + j), pack_i32_i8(q[0], q[1], q[2], q[3]));
            bsums[j / 16] = (int16_t)hsum_epi32_256(_mm256_add_epi32(q[0], q[1]));
            bsums[j / 16 + 1] = (int16_t)hsum_epi32_256(_mm256_add_epi32(q[2], q[3]));
        }
        const float d = 1.0f / iscale;
        memcpy(y, &d, 4);
        memcpy(y + 260, bsums, 32);
    }
}

void kvc_quantize_row_f16_avx2(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) fp16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) {
        const uint16_t h = fp32_to_fp16_f16c(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

/* bf16: NaN -> (bits >> 16) | 64, else round to nearest even (kvc_fp32_to_bf16). */
void kvc_quantize_row_bf16_avx2(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy; // (n) bf16
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h[2];
        for (int j = 0; j < 2; j++) {
            const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i + 8 * j));
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            const __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
            const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
            const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                                      _mm256_set1_epi32(0x7f800000));
            h[j] = _mm256_blendv_epi8(rne, nan, is_nan);
        }
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h[0], h[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + 2 * i), p);
    }
    for (; i < n; i++) {
        const uint16_t h = kvc_fp32_to_bf16(x[i]);
        memcpy(y + 2 * i, &h, 2);
    }
}

void kvc_dequantize_row_f16_avx2(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) fp16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(loadu128(x + 2 * i)));
    for (; i < n; i++) y[i] = ld_fp16(x + 2 * i);
}

void kvc_dequantize_row_bf16_avx2(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n) bf16
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_slli_epi32(_mm256_cvtepu16_epi32(loadu128(x + 2 * i)), 16));
    for (; i < n; i++) y[i] = kvc_bf16_to_fp32(kvc_ld_half(x + 2 * i));
}

void kvc_dequantize_row_q8_0_avx2(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n/32) blocks of 34 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 34, y += 32) {
        const __m256 d = _mm256_set1_ps(ld_fp16(x));
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + 2 + 8 * j)));
            _mm256_storeu_ps(y + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

void kvc_dequantize_row_q4_0_avx2(const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx; // (n/32) blocks of 18 bytes
    for (int64_t i = 0; i < n / 32; i++, x += 18, y += 32) {
        const __m256 d = _mm256_set1_ps(ld_fp16(x));
        const __m256i q = _mm256_sub_epi8(nibbles_32(x + 2), _mm256_set1_epi8(8));
        const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        const __m256i q32[4] = {_mm256_cvtepi8_epi32(lo), _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)),
                                _mm256_cvtepi8_epi32(hi), _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))};
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q32[j])));
    }
}

#include "target_end.h"

#endif /* __x86_64__ */
