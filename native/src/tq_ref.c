/* tq_ref.c — the scalar TurboQuant kernels: encode a head vector into a row,
 * and the reference twins of scoring and V accumulation that cpu/tq_avx2.c,
 * cpu/tq_avx512.c and cpu/tq_neon.c are tested against (tests/test_tq_native.py,
 * tests/test_neon.py). Every kernel table encodes with this code; for trellis
 * codes (tq.h) its Viterbi search is tq_viterbi_ref here and a bit-identical SIMD
 * twin in the x86 tables (cpu/tq_avx2.c, cpu/tq_avx512.c, through tq_encode_with). AVX2 and
 * AVX-512 decode trellis codes too; NEON falls back to these kernels. Plain C, no
 * processor-specific code; the row format and the rotations are in tq.c. */
#include <math.h>
#include <string.h>

#include "quants.h"
#include "tq.h"

/* double -> fp16 with one correct rounding (as numpy's astype(float16)): round to
 * float toward zero and make it odd if inexact ("round to odd"), which keeps the
 * following float -> fp16 round-to-nearest-even from rounding twice. */
static kvc_half fp16_from_double(double d) {
    float f = (float)d;
    if (fabs((double)f) > fabs(d)) f = nextafterf(f, 0.0f);
    if ((double)f != d) {
        uint32_t u = kvc_f32_bits(f) | 1u;
        f = kvc_bits_f32(u);
    }
    return kvc_fp32_to_fp16(f);
}

static void put_code(uint8_t *codes, int i, int b, unsigned c) {
    unsigned bit = (unsigned)i * (unsigned)b;
    for (int k = 0; k < b; k++, bit++)
        if (c >> k & 1) codes[bit >> 3] |= (uint8_t)(1u << (bit & 7));
}

static unsigned nearest(const tq_group *g, double u) { /* number of boundaries below u */
    int lo = 0, hi = (1 << g->bits) - 1; /* answer in [lo, hi] */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (g->bounds[mid] < u) lo = mid + 1;
        else hi = mid;
    }
    return (unsigned)lo;
}

void tq_viterbi_first(const tq_group *g, float u0, int wrap, float *cost) {
    for (int s = 0; s < 1 << (g->bits + g->tmem); s++) {
        const float e = u0 - g->cb[s];
        cost[s] = wrap >= 0 && (s >> g->bits) != wrap ? INFINITY : e * e;
    }
}

int tq_viterbi_end(const tq_group *g, const float *cost, int wrap) {
    const int S = 1 << (g->bits + g->tmem), step = wrap < 0 ? 1 : 1 << g->tmem; /* allowed: s ≡ wrap mod 2^tmem */
    int end = wrap < 0 ? 0 : wrap;
    for (int s = end + step; s < S; s += step)
        if (cost[s] < cost[end]) end = s;
    return end;
}

void tq_viterbi_trace(const tq_group *g, int end, const uint8_t *back, unsigned *path) {
    const int b = g->bits, M = g->tmem, m = g->m;
    path[m - 1] = (unsigned)end;
    for (int i = m - 1; i > 0; i--) {
        const unsigned p = path[i] >> b;
        path[i - 1] = (unsigned)back[(size_t)i * TQ_TRELLIS_CTX + p] << M | p;
    }
}

void tq_viterbi_ref(const tq_group *g, const float *u, int wrap, unsigned *path) {
    const int b = g->bits, M = g->tmem, m = g->m, S = 1 << (b + M), P = 1 << M;
    float cost[1 << TQ_TRELLIS_MAX_STATE], best[TQ_TRELLIS_CTX];
    uint8_t back[TQ_TRELLIS_MAX_M * TQ_TRELLIS_CTX]; /* (m, contexts): dropped top bits of the best predecessor */
    tq_viterbi_first(g, u[0], wrap, cost);
    for (int i = 1; i < m; i++) {
        for (int p = 0; p < P; p++) { /* predecessors of the states s with s >> b == p: (t << M) | p */
            float c = cost[p];
            int bt = 0;
            for (int t = 1; t < 1 << b; t++)
                if (cost[(t << M) | p] < c) c = cost[(t << M) | p], bt = t;
            best[p] = c, back[i * TQ_TRELLIS_CTX + p] = (uint8_t)bt;
        }
        for (int s = 0; s < S; s++) {
            const float e = u[i] - g->cb[s];
            cost[s] = best[s >> b] + e * e;
        }
    }
    tq_viterbi_trace(g, tq_viterbi_end(g, cost, wrap), back, path);
}

/* The codes of a trellis group: a closed ring found in two passes (trellis.encode_states): the
 * group rolled by m/2 fixes the tmem bits at the seam, then a pass constrained to them. */
static void trellis_path(const tq_group *g, const float *u, unsigned *path, tq_viterbi_fn viterbi) {
    const int m = g->m, h = m / 2;
    float rolled[TQ_TRELLIS_MAX_M];
    for (int i = 0; i < m; i++) rolled[i] = u[(i + h) % m];
    viterbi(g, rolled, -1, path);
    viterbi(g, u, (int)(path[m - 1 - h] & ((1u << g->tmem) - 1)), path);
}

static void encode_group(const tq_group *g, int scale_mode, const float *x, uint8_t *row, float *y,
                         tq_viterbi_fn viterbi) {
    const int m = g->m;
    float *tmp = y + m; /* y: (2m) scratch */
    memcpy(y, x, sizeof(float) * (size_t)m);
    tq_rotate(g, g->signs, y, tmp);
    double n2 = 0;
    for (int i = 0; i < m; i++) n2 += (double)y[i] * (double)y[i];
    const double norm = sqrt(n2);
    uint8_t *codes = row + g->codes_off;
    memset(codes, 0, (size_t)(m * g->bits + 7) / 8);
    double num = 0, den = 0;
    if (g->tmem) {
        float u[TQ_TRELLIS_MAX_M]; /* y/‖y‖ in float64, rounded once (as turboquant.encode) */
        unsigned path[TQ_TRELLIS_MAX_M];
        for (int i = 0; i < m; i++) u[i] = norm > 0 ? (float)((double)y[i] / norm) : 0.0f;
        trellis_path(g, u, path, viterbi);
        for (int i = 0; i < m; i++) {
            put_code(codes, i, g->bits, path[i] & ((1u << g->bits) - 1));
            num += (double)y[i] * (double)g->cb[path[i]];
            den += (double)g->cb[path[i]] * (double)g->cb[path[i]];
        }
    } else {
        for (int i = 0; i < m; i++) {
            unsigned c = nearest(g, norm > 0 ? (double)y[i] / norm : 0.0);
            put_code(codes, i, g->bits, c);
            num += (double)y[i] * (double)g->cb[c];
            den += (double)g->cb[c] * (double)g->cb[c];
        }
    }
    /* 0 norm: ‖y‖; 1 ls: the least-squares scale of the chosen codes; 2 proj: ‖y‖²/⟨y, c⟩,
     * so that ⟨ŷ, y⟩ = ‖y‖² (no (1 − D_b) shrinkage of ⟨q, x̂⟩) — as turboquant.py */
    double s = scale_mode == 1 ? (den > 0 ? num / den : 0.0) : scale_mode == 2 ? (num != 0 ? n2 / num : 0.0) : norm;
    float sf;
    if (g->scale_lut) { /* the nearest step of the grid (0 included; ties to the lower) */
        int lo = 0, hi = 255; /* answer in [lo, hi]: the number of midpoints below s */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (g->scale_mid[mid] < s) lo = mid + 1;
            else hi = mid;
        }
        row[g->off] = (uint8_t)lo;
        sf = g->scale_lut[lo];
    } else {
        kvc_half hs = fp16_from_double(s);
        memcpy(row + g->off, &hs, 2);
        sf = kvc_fp16_to_fp32(hs);
    }
    if (!g->qjl) return;
    float *r = y; /* reuse: y is no longer needed once the codes are known */
    for (int i = 0; i < m; i++) r[i] = r[i] - sf * g->cb[tq_get_code(codes, i, g->bits)];
    double r2 = 0;
    for (int i = 0; i < m; i++) r2 += (double)r[i] * (double)r[i];
    kvc_half hr = fp16_from_double(sqrt(r2));
    memcpy(row + g->rnorm_off, &hr, 2);
    tq_rotate(g, g->signs2, r, tmp);
    uint8_t *bits = row + g->qjl_off;
    memset(bits, 0, (size_t)(m + 7) / 8);
    for (int i = 0; i < m; i++)
        if (r[i] < 0) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

void tq_encode_with(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch,
                    tq_viterbi_fn viterbi) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        encode_group(&L->g[k], scale_mode, x + start, row, scratch, viterbi);
        start += L->g[k].m;
    }
}

void tq_encode_ref(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch) {
    tq_encode_with(L, scale_mode, x, row, scratch, tq_viterbi_ref);
}

/* centroid values of one row, in rotated order: vals (d) */
static void decode_row(const tq_layout *L, const uint8_t *row, float *vals, float *scale) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        const uint8_t *codes = row + g->codes_off;
        if (g->tmem) tq_trellis_values(g, codes, vals + start);
        else
            for (int i = 0; i < g->m; i++) vals[start + i] = g->cb[tq_get_code(codes, i, g->bits)];
        scale[k] = tq_group_scale(g, row);
        start += g->m;
    }
}

void tq_score_ref(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                  int ldo) {
    float vals[TQ_MAX_DIM], scale[TQ_MAX_GROUPS];
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    for (int j = 0; j < n; j++) {
        const uint8_t *row = rows + (size_t)j * L->row_bytes;
        decode_row(L, row, vals, scale);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            const float *qr = q->qr + (size_t)r * d, *w = q->w + (size_t)r * d; /* (d) */
            float total = 0.0f;
            int start = 0;
            for (int k = 0; k < L->n_groups; k++) {
                const tq_group *g = &L->g[k];
                float acc = 0.0f;
                for (int i = 0; i < g->m; i++) acc += qr[start + i] * vals[start + i];
                total += scale[k] * acc;
                if (g->qjl) {
                    const uint8_t *bits = row + g->qjl_off;
                    float sj = 0.0f;
                    for (int i = 0; i < g->m; i++) sj += (bits[i >> 3] >> (i & 7) & 1) ? -w[start + i] : w[start + i];
                    total += tq_group_rnorm(g, row) * g->qjl_c * sj;
                }
                start += g->m;
            }
            out[(size_t)r * ldo + j] = total;
        }
    }
}

void tq_accum_ref(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                  float *acc) {
    float vals[TQ_MAX_DIM], scale[TQ_MAX_GROUPS];
    const int n = tq_rows_read(nq, grp, n0);
    for (int j = 0; j < n; j++) {
        decode_row(L, rows + (size_t)j * L->row_bytes, vals, scale);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            float *a = acc + (size_t)r * L->d; /* (d) */
            int start = 0;
            for (int k = 0; k < L->n_groups; k++) {
                const float c = p[(size_t)r * ldp + j] * scale[k];
                for (int i = 0; i < L->g[k].m; i++) a[start + i] += c * vals[start + i];
                start += L->g[k].m;
            }
        }
    }
}
