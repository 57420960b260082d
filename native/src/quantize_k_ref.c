/* quantize_k_ref.c — scalar quantizers of the k-quants Q4_K, Q5_K and Q6_K
 * (256-element superblocks), plus the Q5_K and Q5_1 kernels (quantize Q5_1,
 * dequantize, vec_dot, gemm) the runtime needs to run a Q5_K_M file (Q5_1 is the
 * mix's type for rows not a multiple of 256). Plain C, no processor-specific code.
 *
 * Block layouts: quants.h (ggml/src/ggml-common.h, llama.cpp, MIT). The scale
 * search is the one ggml uses when no importance matrix is given — read in
 * ggml/src/ggml-quants.c (make_qkx2_quants for Q4_K/Q5_K, make_qx_quants with
 * rmse_type 1 for Q6_K, as called by quantize_row_q{4,5,6}_K_ref) and
 * re-written here:
 *
 *  Q4_K/Q5_K  per sub-block of 32, weights w_i = rms(x) + |x_i|: an affine fit
 *             x ~ s*l - m, l in 0..nmax, min clamped to <= 0; start from the
 *             range (s = (max-min)/nmax), then for nstep+1 trial inverse scales
 *             (nmax + rmin + rdelta*k)/(max-min) round, solve the 2x2 weighted
 *             least squares for (s, m) and keep the lowest weighted squared error.
 *             The 8 scales and 8 mins are then quantized to 6 bits against the
 *             superblock's largest (d = max_s/63, dmin = max_m/63, both fp16) and
 *             every element is re-rounded with the stored scale and min.
 *  Q6_K       per sub-block of 16, symmetric: l in -32..31 from 19 trial scales
 *             -(32 + 0.1k)/max, k = -9..9, keeping the best x²-weighted least-
 *             squares fit; the 16 scales are int8 against the largest (d =
 *             max/-128, fp16), then every element is re-rounded.
 *
 * The bytes equal ggml's quantizer's (tests/test_kquant.py, and every tensor of
 * SmolLM2-135M's Q4_K_M/Q5_K_M/Q6_K against llama-quantize's). A block could
 * still differ if ggml's build fused a*b+c into an FMA where we round twice
 * and that flipped a near-tie between two fits; either choice is a valid block. */

#include <math.h>

#include "quants.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define KQ_EPS 1e-15f /* ggml's GROUP_MAX_EPS: a group below this is all zero */

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Affine fit of x (n <= 32) with weights w to s*l + lo, l in 0..nmax (lo <= 0).
 * Writes l into L, returns s and stores -lo (>= 0) in *neg_lo. */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_lo,
                        float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0], sw = 0.0f, sx = 0.0f;
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        sw += w[i];
        sx += w[i] * x[i];
    }
    if (lo > 0.0f) lo = 0.0f;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_lo = -lo;
        return 0.0f;
    }
    float inv = (float)nmax / (hi - lo), s = 1.0f / inv, best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(kvc_nearest_int(inv * (x[i] - lo)), 0, nmax);
        const float e = s * L[i] + lo - x[i];
        best += w[i] * (e * e);
    }
    uint8_t trial[32];
    for (int k = 0; k <= nstep; k++) {
        inv = (rmin + rdelta * (float)k + (float)nmax) / (hi - lo);
        float sl = 0.0f, sll = 0.0f, sxl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(kvc_nearest_int(inv * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            sl += w[i] * l;
            sll += w[i] * l * l;
            sxl += w[i] * l * x[i];
        }
        const float det = sw * sll - sl * sl;
        if (!(det > 0.0f)) continue;
        float ts = (sw * sxl - sx * sl) / det, tlo = (sll * sx - sl * sxl) / det;
        if (tlo > 0.0f) { /* the offset must not be positive: refit the scale alone */
            tlo = 0.0f;
            ts = sxl / sll;
        }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            const float e = ts * trial[i] + tlo - x[i];
            err += w[i] * (e * e);
        }
        if (err < best) {
            memcpy(L, trial, (size_t)n);
            best = err;
            s = ts;
            lo = tlo;
        }
    }
    *neg_lo = -lo;
    return s;
}

/* Symmetric fit of x (n <= 16 elements) to s*l, l in -nmax..nmax-1, weights x²: the
 * scale of the best of 19 trial roundings, its levels l + nmax in L (0 for an all-zero x). */
static float fit_symmetric(int n, int nmax, const float *x, uint8_t *L) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    memset(L, 0, (size_t)n);
    if (amax < KQ_EPS) return 0.0f;
    float s = 0.0f, best = 0.0f;
    uint8_t trial[16];
    for (int k = 0; k <= 18; k++) {
        /* k = 0 is the plain -nmax/max; then nmax + 0.1*(-9..9), skipping 0 */
        const int off = k == 0 ? 0 : (k <= 9 ? k - 10 : k - 9);
        const float inv = -((float)nmax + 0.1f * (float)off) / max;
        float sxl = 0.0f, sll = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(kvc_nearest_int(inv * x[i]), -nmax, nmax - 1);
            trial[i] = (uint8_t)(l + nmax);
            const float w = x[i] * x[i];
            sxl += w * x[i] * l;
            sll += w * l * l;
        }
        if (k == 0 || (sll > 0.0f && sxl * sxl > best * sll)) {
            s = sll != 0.0f ? sxl / sll : 0.0f;
            best = s * sxl;
            memcpy(L, trial, (size_t)n);
        }
    }
    return s;
}

/* Pack Q4_K's/Q5_K's 6-bit scale sc[j] and min m[j] into scales[12] (the inverse
 * of kvc_q4k_scales in quants.h). */
static void pack_scales_k4(const uint8_t *sc, const uint8_t *m, uint8_t *q) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* The scale search of one Q4_K/Q5_K superblock, scalar: each sub-block j of 32 fitted
 * with weights rms + |x| (kvc_k4_fit_fn, quants.h). */
static void fit_k4_ref(const float *x, int nmax, float rmin, int nstep, float *sub_s, float *sub_m, uint8_t *L) {
    float w[32];
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float ss = 0.0f;
        for (int l = 0; l < 32; l++) ss += xs[l] * xs[l];
        const float rms = sqrtf(ss / 32.0f);
        for (int l = 0; l < 32; l++) w[l] = rms + fabsf(xs[l]);
        sub_s[j] = fit_affine(32, nmax, xs, w, L + 32 * j, &sub_m[j], rmin, 0.1f, nstep);
    }
}

/* The common part of Q4_K and Q5_K for one superblock x (256): fit the 8 sub-blocks,
 * quantize their scales/mins to 6 bits into dd = {d, dmin}, scales[12], and re-round every
 * element with the stored values into L (256, 0..nmax). */
static void quantize_affine_superblock(const float *x, int nmax, float rmin, int nstep, kvc_k4_fit_fn fit,
                                       kvc_half dd[2], uint8_t *scales, uint8_t *L) {
    float sub_s[8], sub_m[8], max_s = 0.0f, max_m = 0.0f;
    fit(x, nmax, rmin, nstep, sub_s, sub_m, L);
    for (int j = 0; j < 8; j++) {
        max_s = sub_s[j] > max_s ? sub_s[j] : max_s;
        max_m = sub_m[j] > max_m ? sub_m[j] : max_m;
    }
    const float inv_s = max_s > 0.0f ? 63.0f / max_s : 0.0f, inv_m = max_m > 0.0f ? 63.0f / max_m : 0.0f;
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)clampi(kvc_nearest_int(inv_s * sub_s[j]), 0, 63);
        m[j] = (uint8_t)clampi(kvc_nearest_int(inv_m * sub_m[j]), 0, 63);
    }
    pack_scales_k4(sc, m, scales);
    dd[0] = kvc_fp32_to_fp16(max_s / 63.0f);
    dd[1] = kvc_fp32_to_fp16(max_m / 63.0f);
    const float d = kvc_fp16_to_fp32(dd[0]), dmin = kvc_fp16_to_fp32(dd[1]);
    for (int j = 0; j < 8; j++) { /* a zero scale keeps the fit's levels (any level gives -dm), as ggml */
        const float ds = d * (float)sc[j], dm = dmin * (float)m[j];
        for (int l = 0; ds != 0.0f && l < 32; l++)
            L[32 * j + l] = (uint8_t)clampi(kvc_nearest_int((x[32 * j + l] + dm) / ds), 0, nmax);
    }
}

void kvc_quantize_row_q4_K_with(const float *x, void *vy, int64_t n, kvc_k4_fit_fn fit) {
    block_q4_K *y = vy; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        block_q4_K b;
        uint8_t L[QK_K];
        kvc_half dd[2];
        quantize_affine_superblock(x, 15, -1.0f, 20, fit, dd, b.scales, L);
        b.d = dd[0];
        b.dmin = dd[1];
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) b.qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
        memcpy(&y[i], &b, sizeof b);
    }
}

void kvc_quantize_row_q5_K_with(const float *x, void *vy, int64_t n, kvc_k4_fit_fn fit) {
    block_q5_K *y = vy; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        block_q5_K b;
        uint8_t L[QK_K];
        kvc_half dd[2];
        quantize_affine_superblock(x, 31, -0.5f, 15, fit, dd, b.scales, L);
        b.d = dd[0];
        b.dmin = dd[1];
        memset(b.qh, 0, sizeof b.qh);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                const int a = L[64 * c + l], h = L[64 * c + 32 + l];
                b.qs[32 * c + l] = (uint8_t)((a & 15) | ((h & 15) << 4));
                b.qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((h >> 4) << (2 * c + 1)));
            }
        }
        memcpy(&y[i], &b, sizeof b);
    }
}

void kvc_quantize_row_q4_K_ref(const float *x, void *y, int64_t n) { kvc_quantize_row_q4_K_with(x, y, n, fit_k4_ref); }
void kvc_quantize_row_q5_K_ref(const float *x, void *y, int64_t n) { kvc_quantize_row_q5_K_with(x, y, n, fit_k4_ref); }

/* The Q6_K scale search of one superblock, scalar (kvc_k6_fit_fn, quants.h). */
static void fit_k6_ref(const float *x, float *sub_s, uint8_t *L) {
    for (int j = 0; j < 16; j++) sub_s[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
}

void kvc_quantize_row_q6_K_with(const float *x, void *vy, int64_t n, kvc_k6_fit_fn fit) {
    block_q6_K *y = vy; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        block_q6_K b;
        memset(&b, 0, sizeof b);
        float sub_s[16], max_s = 0.0f, amax_s = 0.0f;
        uint8_t L[QK_K]; /* q + 32, 0..63 */
        fit(x, sub_s, L);
        for (int j = 0; j < 16; j++) {
            if (fabsf(sub_s[j]) > amax_s) {
                amax_s = fabsf(sub_s[j]);
                max_s = sub_s[j];
            }
        }
        if (amax_s < KQ_EPS) { /* all zero: d = 0, every field zero */
            memcpy(&y[i], &b, sizeof b);
            continue;
        }
        const float inv = -128.0f / max_s;
        b.d = kvc_fp32_to_fp16(1.0f / inv);
        for (int j = 0; j < 16; j++) {
            const int v = kvc_nearest_int(inv * sub_s[j]);
            b.scales[j] = (int8_t)(v < 127 ? v : 127);
        }
        const float d = kvc_fp16_to_fp32(b.d);
        for (int j = 0; j < 16; j++) { /* a zero scale keeps the fit's levels (they dequantize to 0), as ggml */
            const float ds = d * (float)b.scales[j];
            for (int l = 0; ds != 0.0f && l < 16; l++)
                L[16 * j + l] = (uint8_t)(clampi(kvc_nearest_int(x[16 * j + l] / ds), -32, 31) + 32);
        }
        /* per half of 128 (layout: quants_ref.c, kvc_dequantize_row_q6_K_ref) */
        for (int h = 0; h < 2; h++) {
            const uint8_t *Lh = L + 128 * h;
            uint8_t *ql = b.ql + 64 * h, *qh = b.qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 15) | ((Lh[l + 64] & 15) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 15) | ((Lh[l + 96] & 15) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
        memcpy(&y[i], &b, sizeof b);
    }
}

void kvc_quantize_row_q6_K_ref(const float *x, void *y, int64_t n) { kvc_quantize_row_q6_K_with(x, y, n, fit_k6_ref); }

/* ---------------- Q5_K: dequantize, vec_dot, gemm (scalar only) ---------------- */

/* Same products in the same order as gguf-py's Q5_K.dequantize_blocks: (d*sc)*q - dmin*m. */
void kvc_dequantize_row_q5_K_ref(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx; // (n/256) blocks
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d));
        const float dmin = kvc_fp16_to_fp32(kvc_ld_half(&x[i].dmin));
        uint8_t sc[8], m[8];
        kvc_q4k_scales(x[i].scales, sc, m);
        const uint8_t *q = x[i].qs, *qh = x[i].qh;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            const float d1 = d * (float)sc[2 * c], m1 = dmin * (float)m[2 * c];
            const float d2 = d * (float)sc[2 * c + 1], m2 = dmin * (float)m[2 * c + 1];
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)((q[l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4)) - m1;
            for (int l = 0; l < 32; l++)
                y[l + 32] = d2 * (float)((q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
        }
    }
}

/* As Q4_K's: d_a * (d_w * sum_j sc_j (q . a)_j - dmin_w * sum_j m_j asum_j), exact int sums. */
float kvc_vec_dot_q5_K_q8_K_ref(int64_t n, const void *vw, const void *va) {
    const block_q5_K *w = vw; // (n/256) blocks
    const block_q8_K *a = va; // (n/256) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], m[8];
        kvc_q4k_scales(w[i].scales, sc, m);
        int16_t bsums[16];
        memcpy(bsums, a[i].bsums, sizeof bsums);
        const uint8_t *q = w[i].qs, *qh = w[i].qh;
        const int8_t *qa = a[i].qs;
        int sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++, q += 32, qa += 64) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += ((q[l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4)) * qa[l];
                hi += ((q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) * qa[l + 32];
            }
            sumi += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; j++) summ += m[j] * (bsums[2 * j] + bsums[2 * j + 1]);
        const float da = kvc_ld_f32(&a[i].d);
        const float dw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)), dmin = kvc_fp16_to_fp32(kvc_ld_half(&w[i].dmin));
        s += da * (dw * (float)sumi - dmin * (float)summ);
    }
    return s;
}

/* out[t*ldo + r] = dot(w row r, a row t) */
void kvc_gemm_q5_K_q8_K_ref(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                            int64_t ldo) {
    const size_t w_row = (size_t)(k / QK_K) * sizeof(block_q5_K), a_row = (size_t)(k / QK_K) * sizeof(block_q8_K);
    const uint8_t *wb = w, *ab = a;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < m; r++)
            out[t * ldo + r] = kvc_vec_dot_q5_K_q8_K_ref(k, wb + (size_t)r * w_row, ab + (size_t)t * a_row);
}

/* ---------------- Q5_1: Q5_K_M's type for rows not a multiple of 256 ---------------- */

/* ggml's quantize_row_q5_1_ref rounding: d = (max - min) / 31, m = min,
 * q = min(31, trunc((x - min) / d + 0.5)); 5th bits gathered in qh. */
void kvc_quantize_row_q5_1_ref(const float *x, void *vy, int64_t n) {
    block_q5_1 *y = vy; // (n/32) blocks
    for (int64_t i = 0; i < n / QK5_1; i++, x += QK5_1) {
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < QK5_1; j++) {
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        const float d = (hi - lo) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        block_q5_1 b;
        uint32_t qh = 0;
        b.d = kvc_fp32_to_fp16(d);
        b.m = kvc_fp32_to_fp16(lo);
        for (int j = 0; j < QK5_1 / 2; j++) {
            int q0 = (int)((x[j] - lo) * id + 0.5f), q1 = (int)((x[j + 16] - lo) * id + 0.5f);
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

/* gguf-py's order: d * q + m. */
void kvc_dequantize_row_q5_1_ref(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx; // (n/32) blocks
    for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
        const float d = kvc_fp16_to_fp32(kvc_ld_half(&x[i].d)), m = kvc_fp16_to_fp32(kvc_ld_half(&x[i].m));
        const uint32_t qh = kvc_ld_u32(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            y[j] = d * (float)((x[i].qs[j] & 15) | (int)(((qh >> j) & 1) << 4)) + m;
            y[j + 16] = d * (float)((x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) + m;
        }
    }
}

/* As Q4_1's: sum_q * (d_w d_a) + m_w * s_a, with s_a = fp16(d_a * sum(a)) from Q8_1. */
float kvc_vec_dot_q5_1_q8_1_ref(int64_t n, const void *vw, const void *va) {
    const block_q5_1 *w = vw; // (n/32) blocks
    const block_q8_1 *a = va; // (n/32) blocks
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        const uint32_t qh = kvc_ld_u32(w[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            sumi += ((w[i].qs[j] & 15) | (int)(((qh >> j) & 1) << 4)) * a[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) * a[i].qs[j + 16];
        }
        const float dw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].d)), mw = kvc_fp16_to_fp32(kvc_ld_half(&w[i].m));
        const float da = kvc_fp16_to_fp32(kvc_ld_half(&a[i].d)), sa = kvc_fp16_to_fp32(kvc_ld_half(&a[i].s));
        s += (float)sumi * (dw * da) + mw * sa;
    }
    return s;
}

void kvc_gemm_q5_1_q8_1_ref(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                            int64_t ldo) {
    const size_t w_row = (size_t)(k / QK5_1) * sizeof(block_q5_1), a_row = (size_t)(k / QK8_1) * sizeof(block_q8_1);
    const uint8_t *wb = w, *ab = a;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < m; r++)
            out[t * ldo + r] = kvc_vec_dot_q5_1_q8_1_ref(k, wb + (size_t)r * w_row, ab + (size_t)t * a_row);
}
