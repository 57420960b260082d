/* quantize_k_avx2.c — the k-quant scale searches (kvc_k4_fit_fn, kvc_k6_fit_fn in
 * quants.h) in AVX2: 8 sub-blocks of a superblock run in the 8 lanes (Q6_K: its 16 in
 * two passes), each lane doing exactly the scalar twin's arithmetic (fit_affine,
 * fit_symmetric in quantize_k_ref.c) in the same order, so
 * the bytes are the scalar quantizer's (tests/test_kquant.py). Lanes never mix: no
 * horizontal sums, only lane-wise IEEE add/mul/div/sqrt (no FMA: the build has
 * -ffp-contract=off and nothing here is fused by hand). */

#if defined(__x86_64__)

#include "target_avx2.h"

#include <immintrin.h>

#include "../quants.h"

/* kvc_nearest_int per lane: the 1.5 * 2^23 trick (round half to even), |v| < 2^22. */
static inline __m256i nearest_int_256(__m256 v) {
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, magic));
    return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

static inline __m256i clamp_256(__m256i v, int nmax) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(nmax));
}

static void fit_k4_avx2(const float *x, int nmax, float rmin, int nstep, float *sub_s, float *sub_m, uint8_t *L) {
    const __m256i idx = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    __m256 X[32], W[32];
    __m256i Lv[32], T[32]; /* levels: best so far, this trial; lane j = sub-block j */
    for (int i = 0; i < 32; i++) X[i] = _mm256_i32gather_ps(x + i, idx, 4);

    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 ss = zero;
    for (int i = 0; i < 32; i++) ss = _mm256_add_ps(ss, _mm256_mul_ps(X[i], X[i]));
    const __m256 rms = _mm256_sqrt_ps(_mm256_div_ps(ss, _mm256_set1_ps(32.0f)));
    for (int i = 0; i < 32; i++) W[i] = _mm256_add_ps(rms, _mm256_and_ps(X[i], absmask));

    __m256 lo = X[0], hi = X[0], sw = zero, sx = zero;
    for (int i = 0; i < 32; i++) {
        lo = _mm256_min_ps(X[i], lo); /* x < lo ? x : lo */
        hi = _mm256_max_ps(X[i], hi); /* x > hi ? x : hi */
        sw = _mm256_add_ps(sw, W[i]);
        sx = _mm256_add_ps(sx, _mm256_mul_ps(W[i], X[i]));
    }
    lo = _mm256_blendv_ps(lo, zero, _mm256_cmp_ps(lo, zero, _CMP_GT_OQ));
    const __m256 flat = _mm256_cmp_ps(hi, lo, _CMP_EQ_OQ); /* lanes whose x is constant */

    __m256 inv = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(hi, lo));
    __m256 s = _mm256_div_ps(_mm256_set1_ps(1.0f), inv), best = zero;
    for (int i = 0; i < 32; i++) {
        Lv[i] = clamp_256(nearest_int_256(_mm256_mul_ps(inv, _mm256_sub_ps(X[i], lo))), nmax);
        const __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(s, _mm256_cvtepi32_ps(Lv[i])), lo), X[i]);
        best = _mm256_add_ps(best, _mm256_mul_ps(W[i], _mm256_mul_ps(e, e)));
    }
    for (int k = 0; k <= nstep; k++) {
        const float num = rmin + 0.1f * (float)k + (float)nmax;
        inv = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(hi, lo)); /* lo moves with the best fit */
        __m256 sl = zero, sll = zero, sxl = zero;
        for (int i = 0; i < 32; i++) {
            T[i] = clamp_256(nearest_int_256(_mm256_mul_ps(inv, _mm256_sub_ps(X[i], lo))), nmax);
            const __m256 l = _mm256_cvtepi32_ps(T[i]), wl = _mm256_mul_ps(W[i], l);
            sl = _mm256_add_ps(sl, wl);
            sll = _mm256_add_ps(sll, _mm256_mul_ps(wl, l));
            sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, X[i]));
        }
        const __m256 det = _mm256_sub_ps(_mm256_mul_ps(sw, sll), _mm256_mul_ps(sl, sl));
        const __m256 ok = _mm256_cmp_ps(det, zero, _CMP_GT_OQ);
        if (_mm256_movemask_ps(ok) == 0) continue;
        __m256 ts = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sw, sxl), _mm256_mul_ps(sx, sl)), det);
        __m256 tlo = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sll, sx), _mm256_mul_ps(sl, sxl)), det);
        const __m256 pos = _mm256_cmp_ps(tlo, zero, _CMP_GT_OQ);
        tlo = _mm256_blendv_ps(tlo, zero, pos);
        ts = _mm256_blendv_ps(ts, _mm256_div_ps(sxl, sll), pos);
        __m256 err = zero;
        for (int i = 0; i < 32; i++) {
            const __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts, _mm256_cvtepi32_ps(T[i])), tlo), X[i]);
            err = _mm256_add_ps(err, _mm256_mul_ps(W[i], _mm256_mul_ps(e, e)));
        }
        const __m256 better = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
        const __m256i bi = _mm256_castps_si256(better);
        for (int i = 0; i < 32; i++) Lv[i] = _mm256_blendv_epi8(Lv[i], T[i], bi);
        best = _mm256_blendv_ps(best, err, better);
        s = _mm256_blendv_ps(s, ts, better);
        lo = _mm256_blendv_ps(lo, tlo, better);
    }
    /* constant lanes: scale 0, levels 0, offset -lo (as the scalar twin's early return) */
    s = _mm256_blendv_ps(s, zero, flat);
    const __m256i fi = _mm256_castps_si256(flat);
    for (int i = 0; i < 32; i++) Lv[i] = _mm256_andnot_si256(fi, Lv[i]);
    _mm256_storeu_ps(sub_s, s);
    _mm256_storeu_ps(sub_m, _mm256_xor_ps(lo, _mm256_set1_ps(-0.0f))); /* -lo, a sign flip like C's unary minus */
    int32_t t[8];
    for (int i = 0; i < 32; i++) {
        _mm256_storeu_si256((__m256i *)t, Lv[i]);
        for (int j = 0; j < 8; j++) L[32 * j + i] = (uint8_t)t[j];
    }
}

/* Q6_K: sub-blocks 8h..8h+7 of 16 in the lanes, h = 0, 1. */
static void fit_k6_avx2(const float *x, float *sub_s, uint8_t *L) {
    const int nmax = 32;
    const __m256i idx = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lo_l = _mm256_set1_epi32(-nmax), hi_l = _mm256_set1_epi32(nmax - 1), off = _mm256_set1_epi32(nmax);
    for (int h = 0; h < 2; h++) {
        const float *xh = x + 128 * h;
        __m256 X[16], amax = zero, max = zero;
        __m256i Lv[16], T[16];
        for (int i = 0; i < 16; i++) {
            X[i] = _mm256_i32gather_ps(xh + i, idx, 4);
            const __m256 ax = _mm256_and_ps(X[i], absmask), gt = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);
            amax = _mm256_blendv_ps(amax, ax, gt);
            max = _mm256_blendv_ps(max, X[i], gt);
            Lv[i] = _mm256_setzero_si256();
        }
        const __m256 tiny = _mm256_cmp_ps(amax, _mm256_set1_ps(1e-15f), _CMP_LT_OQ); /* all-zero lanes */
        __m256 s = zero, best = zero;
        for (int k = 0; k <= 18; k++) {
            const int o = k == 0 ? 0 : (k <= 9 ? k - 10 : k - 9);
            const __m256 inv = _mm256_div_ps(_mm256_set1_ps(-((float)nmax + 0.1f * (float)o)), max);
            __m256 sxl = zero, sll = zero;
            for (int i = 0; i < 16; i++) {
                const __m256i l = _mm256_min_epi32(_mm256_max_epi32(nearest_int_256(_mm256_mul_ps(inv, X[i])), lo_l), hi_l);
                T[i] = _mm256_add_epi32(l, off);
                const __m256 lf = _mm256_cvtepi32_ps(l), w = _mm256_mul_ps(X[i], X[i]);
                sxl = _mm256_add_ps(sxl, _mm256_mul_ps(_mm256_mul_ps(w, X[i]), lf));
                sll = _mm256_add_ps(sll, _mm256_mul_ps(_mm256_mul_ps(w, lf), lf));
            }
            __m256 take;
            if (k == 0) {
                take = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
                s = _mm256_blendv_ps(_mm256_div_ps(sxl, sll), zero, _mm256_cmp_ps(sll, zero, _CMP_EQ_OQ));
                best = _mm256_mul_ps(s, sxl);
            } else {
                take = _mm256_and_ps(_mm256_cmp_ps(sll, zero, _CMP_GT_OQ),
                                     _mm256_cmp_ps(_mm256_mul_ps(sxl, sxl), _mm256_mul_ps(best, sll), _CMP_GT_OQ));
                s = _mm256_blendv_ps(s, _mm256_div_ps(sxl, sll), take);
                best = _mm256_blendv_ps(best, _mm256_mul_ps(s, sxl), take);
            }
            const __m256i ti = _mm256_castps_si256(take);
            for (int i = 0; i < 16; i++) Lv[i] = _mm256_blendv_epi8(Lv[i], T[i], ti);
        }
        s = _mm256_blendv_ps(s, zero, tiny);
        const __m256i zi = _mm256_castps_si256(tiny);
        _mm256_storeu_ps(sub_s + 8 * h, s);
        int32_t t[8];
        for (int i = 0; i < 16; i++) {
            _mm256_storeu_si256((__m256i *)t, _mm256_andnot_si256(zi, Lv[i]));
            for (int j = 0; j < 8; j++) L[128 * h + 16 * j + i] = (uint8_t)t[j];
        }
    }
}

void kvc_quantize_row_q4_K_avx2(const float *x, void *y, int64_t n) { kvc_quantize_row_q4_K_with(x, y, n, fit_k4_avx2); }
void kvc_quantize_row_q5_K_avx2(const float *x, void *y, int64_t n) { kvc_quantize_row_q5_K_with(x, y, n, fit_k4_avx2); }
void kvc_quantize_row_q6_K_avx2(const float *x, void *y, int64_t n) { kvc_quantize_row_q6_K_with(x, y, n, fit_k6_avx2); }

#include "target_end.h"

#endif /* __x86_64__ */
