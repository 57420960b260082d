/* tq_neon.c — aarch64 NEON kernels for TurboQuant rows (twins of tq_score_ref
 * and tq_accum_ref in tq_ref.c; the same algorithm as tq_avx2.c). Both take a
 * block of queries (query tokens × GQA group) with causal limits and decode
 * each row once for all of them, 8 rows at a time where they can. Codes become
 * centroid values 8 at a time: codebooks of <= 4 bits (<= 16 floats) are looked
 * up with one tbl over their 64 bytes, wider ones are read per code. A key's
 * score is the same whichever path (8-key block or single row) computed it, so
 * a prefill block scores exactly as token-by-token decode does. Results equal
 * the scalar twins up to float summation order. Groups whose size is not a
 * multiple of 8 fall back to the scalar twins. */
#if defined(__aarch64__)
#include <string.h>

#include "../tq.h"
#include "simd_neon.h"

typedef struct {
    uint8x16x4_t t; /* a <= 4-bit codebook, zero-padded to 16 floats, as 64 table bytes */
} cb_tbl;

static inline cb_tbl load_cb(const tq_group *g) {
    float tmp[16] = {0};
    if (g->bits <= 4) memcpy(tmp, g->cb, sizeof(float) * (size_t)(1 << g->bits));
    cb_tbl r;
    for (int k = 0; k < 4; k++) r.t.val[k] = vld1q_u8((const uint8_t *)(tmp + 4 * k));
    return r;
}

/* centroids of 4 codes (<= 4 bits): byte lookups of bytes 4c .. 4c + 3 */
KVC_INLINE float32x4_t lookup4(const cb_tbl *tb, uint32x4_t c) {
    const uint32x4_t idx = vmlaq_n_u32(vdupq_n_u32(0x03020100u), c, 0x04040404u);
    return vreinterpretq_f32_u8(vqtbl4q_u8(tb->t, vreinterpretq_u8_u32(idx)));
}

/* centroid values of the 8 codes from code index i (i % 8 == 0) into v[0..7] */
KVC_INLINE void centroids8(const tq_group *g, const cb_tbl *tb, const uint8_t *codes, int i, float32x4_t v[2]) {
    const int b = g->bits;
    if (b == 4) {
        static const int32x4_t sh_lo = {0, -4, -8, -12}, sh_hi = {-16, -20, -24, -28};
        const uint32x4_t u = vdupq_n_u32(kvc_ld_u32(codes + i / 2)), m = vdupq_n_u32(15);
        v[0] = lookup4(tb, vandq_u32(vshlq_u32(u, sh_lo), m));
        v[1] = lookup4(tb, vandq_u32(vshlq_u32(u, sh_hi), m));
        return;
    }
    uint32_t c[8];
    if (b < 8) { /* 8 codes span exactly b bytes starting at byte i*b/8 (i % 8 == 0) */
        uint64_t bits = 0;
        memcpy(&bits, codes + (size_t)i * b / 8, (size_t)b);
        for (int k = 0; k < 8; k++) c[k] = (uint32_t)((bits >> (k * b)) & ((1u << b) - 1));
    } else {
        for (int k = 0; k < 8; k++) c[k] = tq_get_code(codes, i + k, b);
    }
    if (b < 4) {
        v[0] = lookup4(tb, vld1q_u32(c));
        v[1] = lookup4(tb, vld1q_u32(c + 4));
        return;
    }
    float f[8];
    for (int k = 0; k < 8; k++) f[k] = g->cb[c[k]];
    v[0] = vld1q_f32(f);
    v[1] = vld1q_f32(f + 4);
}

static int simd_ok(const tq_layout *L) { /* else the scalar kernels (trellis codes: no NEON decode yet) */
    for (int k = 0; k < L->n_groups; k++)
        if (L->g[k].m % 8 || L->g[k].tmem) return 0;
    return 1;
}

/* centroid values (scaled per group) of one row into vals (d): decoded once, used by every query */
KVC_INLINE void neon_decode_row(const tq_layout *L, const cb_tbl *tb, const uint8_t *row, float *vals) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        const float s = tq_group_scale(g, row);
        const uint8_t *codes = row + g->codes_off;
        for (int i = 0; i < g->m; i += 8) {
            float32x4_t v[2];
            centroids8(g, &tb[k], codes, i, v);
            vst1q_f32(vals + start + i, vmulq_n_f32(v[0], s));
            vst1q_f32(vals + start + i + 4, vmulq_n_f32(v[1], s));
        }
        start += g->m;
    }
}

/* -0.0 in lane k where bit k of nib (bits 0..3) is set: xor flips the sign */
KVC_INLINE uint32x4_t sign4(uint32_t nib) {
    static const uint32x4_t bit = {1, 2, 4, 8};
    return vandq_u32(vtstq_u32(vdupq_n_u32(nib), bit), vdupq_n_u32(0x80000000u));
}

/* QJL term of every QJL group for query image w (d) against one row */
KVC_INLINE float qjl_term(const tq_layout *L, const uint8_t *row, const float *w) {
    float total = 0.0f;
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        if (g->qjl) {
            const uint8_t *bits = row + g->qjl_off;
            float32x4_t sj = vdupq_n_f32(0.0f);
            for (int i = 0; i < g->m; i += 8) {
                const uint32x4_t w0 = vreinterpretq_u32_f32(vld1q_f32(w + start + i));
                const uint32x4_t w1 = vreinterpretq_u32_f32(vld1q_f32(w + start + i + 4));
                sj = vaddq_f32(sj, vreinterpretq_f32_u32(veorq_u32(w0, sign4(bits[i / 8] & 15u))));
                sj = vaddq_f32(sj, vreinterpretq_f32_u32(veorq_u32(w1, sign4(bits[i / 8] >> 4))));
            }
            total += tq_group_rnorm(g, row) * g->qjl_c * hsum_f32x4(sj);
        }
        start += g->m;
    }
    return total;
}

void tq_score_neon(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                   int ldo) {
    if (!simd_ok(L)) {
        tq_score_ref(L, q, nq, grp, n0, rows, out, ldo);
        return;
    }
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    cb_tbl tb[TQ_MAX_GROUPS];
    int any_qjl = 0;
    for (int k = 0; k < L->n_groups; k++) {
        tb[k] = load_cb(&L->g[k]);
        any_qjl |= L->g[k].qjl;
    }
    int j = 0;
    if (!any_qjl) {
        /* 8 keys at a time: decode them once, then for each query that sees any of
         * them reduce the 8 per-key accumulators pairwise (faddp), in the order
         * hsum_f32x4 uses for a single key, and store the visible ones */
        float blk[8 * TQ_MAX_DIM]; /* (8, d) */
        for (; j + 8 <= n; j += 8) {
            for (int k = 0; k < 8; k++) neon_decode_row(L, tb, rows + (size_t)(j + k) * L->row_bytes, blk + k * d);
            for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
                const float *qr = q->qr + (size_t)r * d; /* (d) */
                float32x4_t a[8];
                for (int k = 0; k < 8; k++) a[k] = vdupq_n_f32(0.0f);
                for (int i = 0; i < d; i += 4) {
                    const float32x4_t qv = vld1q_f32(qr + i);
                    for (int k = 0; k < 8; k++) a[k] = vfmaq_f32(a[k], vld1q_f32(blk + k * d + i), qv);
                }
                const float32x4_t s03 = vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
                const float32x4_t s47 = vpaddq_f32(vpaddq_f32(a[4], a[5]), vpaddq_f32(a[6], a[7]));
                const int cnt = tq_visible(r, grp, n0) - j;
                float *o = out + (size_t)r * ldo + j;
                if (cnt >= 8) {
                    vst1q_f32(o, s03);
                    vst1q_f32(o + 4, s47);
                } else {
                    float tmp[8];
                    vst1q_f32(tmp, s03);
                    vst1q_f32(tmp + 4, s47);
                    for (int k = 0; k < cnt; k++) o[k] = tmp[k];
                }
            }
        }
    }
    float vals[TQ_MAX_DIM];
    for (; j < n; j++) {
        const uint8_t *row = rows + (size_t)j * L->row_bytes;
        neon_decode_row(L, tb, row, vals);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            const float *qr = q->qr + (size_t)r * d; /* (d) */
            float32x4_t acc = vdupq_n_f32(0.0f);
            for (int i = 0; i < d; i += 4) acc = vfmaq_f32(acc, vld1q_f32(vals + i), vld1q_f32(qr + i));
            float total = hsum_f32x4(acc);
            if (any_qjl) total += qjl_term(L, row, q->w + (size_t)r * d);
            out[(size_t)r * ldo + j] = total;
        }
    }
}

/* dst (d) += sum_{k < cnt} p[k] * blk row k, in key order (one fused multiply-add per key) */
KVC_INLINE void axpy_rows(int d, int cnt, const float *p, const float *blk, float *dst) {
    if (cnt == 8) {
        float32x4_t pk[8];
        for (int k = 0; k < 8; k++) pk[k] = vdupq_n_f32(p[k]);
        for (int i = 0; i < d; i += 4) {
            float32x4_t a = vld1q_f32(dst + i);
            for (int k = 0; k < 8; k++) a = vfmaq_f32(a, pk[k], vld1q_f32(blk + k * d + i));
            vst1q_f32(dst + i, a);
        }
        return;
    }
    for (int k = 0; k < cnt; k++) {
        const float32x4_t pk = vdupq_n_f32(p[k]);
        for (int i = 0; i < d; i += 4)
            vst1q_f32(dst + i, vfmaq_f32(vld1q_f32(dst + i), pk, vld1q_f32(blk + k * d + i)));
    }
}

void tq_accum_neon(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                   float *acc) {
    if (!simd_ok(L)) {
        tq_accum_ref(L, p, ldp, nq, grp, n0, rows, acc);
        return;
    }
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    cb_tbl tb[TQ_MAX_GROUPS];
    for (int k = 0; k < L->n_groups; k++) tb[k] = load_cb(&L->g[k]);
    /* 8 rows at a time: each accumulator is loaded and stored once per 8 rows */
    float blk[8 * TQ_MAX_DIM]; /* (8, d) */
    for (int j = 0; j < n; j += 8) {
        const int nb = n - j < 8 ? n - j : 8;
        for (int k = 0; k < nb; k++) neon_decode_row(L, tb, rows + (size_t)(j + k) * L->row_bytes, blk + k * d);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            const int cnt = tq_visible(r, grp, n0) - j;
            axpy_rows(d, cnt < nb ? cnt : nb, p + (size_t)r * ldp + j, blk, acc + (size_t)r * d);
        }
    }
}

#endif /* __aarch64__ */
