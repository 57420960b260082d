/* tq_avx2.c — AVX2+FMA kernels for TurboQuant rows (twins of tq_score_ref and
 * tq_accum_ref in tq_ref.c; in the avx2 kernel table). Both take a block of queries
 * (query tokens × GQA group) with causal limits and decode each row once for
 * all of them, 8 rows at a time where they can. Codes are turned into
 * centroid values 8 at a time: ≤ 3-bit codebooks live in one register
 * (permutevar8x32), 4-bit ones in two (permute + blend on bit 3), wider ones
 * are gathered; trellis codes (tq.h) become states by shifted ORs of neighbouring
 * codes and are gathered. Results equal the scalar twins up to float summation order. */
#if defined(__x86_64__)
#include <string.h>

#include "target_avx2.h"

#include "../quants.h"
#include "../tq.h"
#include "simd_x86.h"

#define AVX2

/* 8 consecutive codes starting at code index i (i % 8 == 0) as int32 lanes. */
AVX2 static inline __m256i codes8(const uint8_t *codes, int i, int b) {
    if (b == 4) {
        uint32_t u;
        memcpy(&u, codes + i / 2, 4);
        const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u), sh), _mm256_set1_epi32(15));
    }
    if (b == 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i)));
    int v[8];
    if (b < 8) { /* 8 codes span exactly b bytes starting at byte i*b/8 (i % 8 == 0) */
        uint64_t bits = 0;
        memcpy(&bits, codes + (size_t)i * b / 8, (size_t)b);
        for (int k = 0; k < 8; k++) v[k] = (int)((bits >> (k * b)) & ((1u << b) - 1));
    } else {
        for (int k = 0; k < 8; k++) v[k] = (int)tq_get_code(codes, i + k, b);
    }
    return _mm256_loadu_si256((const __m256i *)v);
}

typedef struct {
    __m256 lo, hi; /* centroids 0..7 and 8..15 */
} cb_regs;

AVX2 static inline __m256 lookup(const tq_group *g, cb_regs r, __m256i idx) {
    if (g->bits <= 3) return _mm256_permutevar8x32_ps(r.lo, idx);
    if (g->bits == 4) {
        __m256 a = _mm256_permutevar8x32_ps(r.lo, idx), b = _mm256_permutevar8x32_ps(r.hi, idx);
        return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    }
    return _mm256_i32gather_ps(g->cb, idx, 4);
}

AVX2 static inline cb_regs load_cb(const tq_group *g) {
    cb_regs r = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    if (g->bits <= 4) {
        float tmp[16] = {0};
        memcpy(tmp, g->cb, sizeof(float) * (size_t)(1 << g->bits));
        r.lo = _mm256_loadu_ps(tmp);
        r.hi = _mm256_loadu_ps(tmp + 8);
    }
    return r;
}

/* ±1 lanes from 8 sign bits: bit set -> -0.0 xor mask */
AVX2 static inline __m256 sign_mask(uint8_t byte) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(byte), bit), bit);
    return _mm256_and_ps(_mm256_castsi256_ps(set), _mm256_set1_ps(-0.0f));
}

static int simd_ok(const tq_layout *L) { /* else the scalar kernels */
    for (int k = 0; k < L->n_groups; k++)
        if (L->g[k].m % 8) return 0;
    return 1;
}

/* s × the values of a trellis group's codes into vals (m) (tq.h tq_trellis_values): the codes as
 * int32 lanes with the ring's last span - 1 codes in front, each lane's state the OR of its code
 * and the span - 1 before it shifted into place, the values gathered from the state table */
AVX2 static inline void trellis8(const tq_group *g, const uint8_t *codes, __m256 s, float *vals) {
    const int b = g->bits, m = g->m, span = (b + g->tmem + b - 1) / b; /* span <= 7: fits the 8 in front */
    int32_t c[8 + TQ_TRELLIS_MAX_M] __attribute__((aligned(32))); /* c[8 + i]: code i; c[8 - k]: code m - k */
    _mm256_store_si256((__m256i *)c, _mm256_setzero_si256()); /* lanes no state reaches */
    for (int i = 0; i < m; i += 8) _mm256_store_si256((__m256i *)(c + 8 + i), codes8(codes, i, b));
    for (int k = 1; k < span; k++) c[8 - k] = c[8 + m - k];
    const __m256i mask = _mm256_set1_epi32((1 << (b + g->tmem)) - 1);
    for (int i = 0; i < m; i += 8) {
        __m256i st = _mm256_load_si256((const __m256i *)(c + 8 + i));
        for (int k = 1; k < span; k++)
            st = _mm256_or_si256(st, _mm256_sll_epi32(_mm256_loadu_si256((const __m256i *)(c + 8 + i - k)),
                                                      _mm_cvtsi32_si128(k * b)));
        _mm256_storeu_ps(vals + i, _mm256_mul_ps(s, _mm256_i32gather_ps(g->cb, _mm256_and_si256(st, mask), 4)));
    }
}

/* tq_viterbi_end over all S states (S % 8 == 0, cost aligned): the least cost, then the first state
 * holding it — the scalar scan's strict-less answer */
AVX2 static int viterbi_end8(const float *cost, int S) {
    __m256 lo = _mm256_load_ps(cost);
    for (int s = 8; s < S; s += 8) lo = _mm256_min_ps(lo, _mm256_load_ps(cost + s));
    __m128 l4 = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
    l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
    l4 = _mm_min_ss(l4, _mm_shuffle_ps(l4, l4, 1));
    const __m256 least = _mm256_set1_ps(_mm_cvtss_f32(l4));
    for (int s = 0;; s += 8) {
        const int eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_load_ps(cost + s), least, _CMP_EQ_OQ));
        if (eq) return s + __builtin_ctz((unsigned)eq);
    }
}

/* tq_viterbi_ref, 8 states per vector: for each predecessor context p (contiguous in the cost
 * array for a fixed dropped top t), the running minimum over t with strict-less blends (ties keep
 * the smaller t, as the scalar loop); then cost[s] = best[s >> b] + e·e, e = u_i − value[s], with
 * a separate multiply and add (no FMA), so every float is the scalar twin's. */
void tq_viterbi_avx2(const tq_group *g, const float *u, int wrap, unsigned *path) {
    const int b = g->bits, M = g->tmem, m = g->m, S = 1 << (b + M), P = 1 << M;
    if (P < 8) {
        tq_viterbi_ref(g, u, wrap, path);
        return;
    }
    float cost[1 << TQ_TRELLIS_MAX_STATE] __attribute__((aligned(32)));
    float best[(1 << TQ_TRELLIS_MAX_MEM) + 8] __attribute__((aligned(32))); /* + 8: the b < 3 loads */
    memset(best + P, 0, sizeof(float) * 8);
    uint8_t back[TQ_TRELLIS_MAX_M * TQ_TRELLIS_CTX]; /* (m, contexts) */
    tq_viterbi_first(g, u[0], wrap, cost);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 1; i < m; i++) {
        for (int p = 0; p < P; p += 8) {
            __m256 c = _mm256_load_ps(cost + p);
            __m256i bt = _mm256_setzero_si256();
            for (int t = 1; t < 1 << b; t++) {
                const __m256 x = _mm256_load_ps(cost + (t << M) + p);
                const __m256 lt = _mm256_cmp_ps(x, c, _CMP_LT_OQ);
                c = _mm256_blendv_ps(c, x, lt);
                bt = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bt),
                                                          _mm256_castsi256_ps(_mm256_set1_epi32(t)), lt));
            }
            _mm256_store_ps(best + p, c);
            const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(bt), _mm256_extracti128_si256(bt, 1));
            _mm_storel_epi64((__m128i *)(back + i * TQ_TRELLIS_CTX + p), _mm_packus_epi16(w16, w16));
        }
        const __m256 ui = _mm256_set1_ps(u[i]);
        for (int s = 0; s < S; s += 8) {
            /* lane k is state s + k, its context (s >> b) + (k >> b) (s % 8 == 0) */
            const __m256 bs = b >= 3 ? _mm256_set1_ps(best[s >> b])
                                     : _mm256_permutevar8x32_ps(_mm256_loadu_ps(best + (s >> b)),
                                                                _mm256_srli_epi32(lane, b));
            const __m256 e = _mm256_sub_ps(ui, _mm256_loadu_ps(g->cb + s));
            _mm256_store_ps(cost + s, _mm256_add_ps(bs, _mm256_mul_ps(e, e)));
        }
    }
    tq_viterbi_trace(g, wrap < 0 ? viterbi_end8(cost, S) : tq_viterbi_end(g, cost, wrap), back, path);
}

void tq_encode_avx2(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch) {
    tq_encode_with(L, scale_mode, x, row, scratch, tq_viterbi_avx2);
}

/* centroid values (scaled per group) of one row into vals (d): decoded once, used by every query */
AVX2 static inline void decode_row8(const tq_layout *L, const cb_regs *regs, const uint8_t *row, float *vals) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        const __m256 s = _mm256_set1_ps(tq_group_scale(g, row));
        const uint8_t *codes = row + g->codes_off;
        if (g->tmem) trellis8(g, codes, s, vals + start);
        else
            for (int i = 0; i < g->m; i += 8)
                _mm256_storeu_ps(vals + start + i, _mm256_mul_ps(s, lookup(g, regs[k], codes8(codes, i, g->bits))));
        start += g->m;
    }
}

/* ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)): the order of the 8-key transposed sums
 * below, so that a key's score does not depend on which path computed it */
AVX2 static inline float hsum_tile_order(__m256 v) {
    const __m256 h = _mm256_hadd_ps(v, v), h2 = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1)));
}

/* lanes k < cnt set (cnt in 1..7): the visible keys of a partial tile */
AVX2 static inline __m256i lanes_below(int cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* QJL term of every QJL group for query image w (d) against one row */
AVX2 static inline float qjl_term(const tq_layout *L, const uint8_t *row, const float *w) {
    float total = 0.0f;
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        if (g->qjl) {
            const uint8_t *bits = row + g->qjl_off;
            __m256 sj = _mm256_setzero_ps();
            for (int i = 0; i < g->m; i += 8)
                sj = _mm256_add_ps(sj, _mm256_xor_ps(_mm256_loadu_ps(w + start + i), sign_mask(bits[i / 8])));
            total += tq_group_rnorm(g, row) * g->qjl_c * hsum_ps_256(sj);
        }
        start += g->m;
    }
    return total;
}

void tq_score_avx2(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                   int ldo) {
    if (!simd_ok(L)) {
        tq_score_ref(L, q, nq, grp, n0, rows, out, ldo);
        return;
    }
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    cb_regs regs[TQ_MAX_GROUPS];
    for (int k = 0; k < L->n_groups; k++) regs[k] = load_cb(&L->g[k]);
    int any_qjl = 0;
    for (int k = 0; k < L->n_groups; k++) any_qjl |= L->g[k].qjl;
    float vals[TQ_MAX_DIM] __attribute__((aligned(32)));
    int j = 0;
    if (!any_qjl) {
        /* 8 keys at a time: decode them once, then for each query that sees any of
         * them reduce the 8 per-key accumulators together (transposed horizontal
         * sums) and store the visible ones; a score comes out the same whatever
         * block of queries it was computed in */
        float blk[8 * TQ_MAX_DIM] __attribute__((aligned(32))); /* (8, d); on the stack: a TLS buffer's
                                                                  * address is recomputed in the loops */
        for (; j + 8 <= n; j += 8) {
            for (int k = 0; k < 8; k++) decode_row8(L, regs, rows + (size_t)(j + k) * L->row_bytes, blk + k * d);
            for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
                const float *qr = q->qr + (size_t)r * d; /* (d) */
                __m256 a[8];
                for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
                for (int i = 0; i < d; i += 8) {
                    const __m256 qv = _mm256_loadu_ps(qr + i);
                    for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(_mm256_load_ps(blk + k * d + i), qv, a[k]);
                }
                __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
                __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
                __m256 s03 = _mm256_hadd_ps(s01, s23), s47 = _mm256_hadd_ps(s45, s67);
                __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(s03, s47, 0x20), _mm256_permute2f128_ps(s03, s47, 0x31));
                const int cnt = tq_visible(r, grp, n0) - j;
                if (cnt >= 8) _mm256_storeu_ps(out + (size_t)r * ldo + j, sum);
                else _mm256_maskstore_ps(out + (size_t)r * ldo + j, lanes_below(cnt), sum);
            }
        }
    }
    for (; j < n; j++) {
        const uint8_t *row = rows + (size_t)j * L->row_bytes;
        decode_row8(L, regs, row, vals);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            const float *qr = q->qr + (size_t)r * d; /* (d) */
            __m256 acc = _mm256_setzero_ps();
            for (int i = 0; i < d; i += 8)
                acc = _mm256_fmadd_ps(_mm256_load_ps(vals + i), _mm256_loadu_ps(qr + i), acc);
            float total = hsum_tile_order(acc);
            if (any_qjl) total += qjl_term(L, row, q->w + (size_t)r * d);
            out[(size_t)r * ldo + j] = total;
        }
    }
}

/* dst (d) += sum_{k < cnt} p[k] * blk row k, in key order (one fused multiply-add per key) */
AVX2 static inline void axpy_rows(int d, int cnt, const float *p, const float *blk, float *dst) {
    if (cnt == 8) {
        __m256 pk[8];
        for (int k = 0; k < 8; k++) pk[k] = _mm256_set1_ps(p[k]);
        for (int i = 0; i < d; i += 8) {
            __m256 a = _mm256_loadu_ps(dst + i);
            for (int k = 0; k < 8; k++) a = _mm256_fmadd_ps(pk[k], _mm256_load_ps(blk + k * d + i), a);
            _mm256_storeu_ps(dst + i, a);
        }
        return;
    }
    for (int k = 0; k < cnt; k++) {
        const __m256 a = _mm256_set1_ps(p[k]);
        for (int i = 0; i < d; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_fmadd_ps(a, _mm256_load_ps(blk + k * d + i), _mm256_loadu_ps(dst + i)));
    }
}

void tq_accum_avx2(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                   float *acc) {
    if (!simd_ok(L)) {
        tq_accum_ref(L, p, ldp, nq, grp, n0, rows, acc);
        return;
    }
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    cb_regs regs[TQ_MAX_GROUPS];
    for (int k = 0; k < L->n_groups; k++) regs[k] = load_cb(&L->g[k]);
    /* 8 rows at a time: each accumulator is loaded and stored once per 8 rows */
    float blk[8 * TQ_MAX_DIM] __attribute__((aligned(32))); /* (8, d) */
    for (int j = 0; j < n; j += 8) {
        const int nb = n - j < 8 ? n - j : 8;
        for (int k = 0; k < nb; k++) decode_row8(L, regs, rows + (size_t)(j + k) * L->row_bytes, blk + k * d);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            const int cnt = tq_visible(r, grp, n0) - j;
            axpy_rows(d, cnt < nb ? cnt : nb, p + (size_t)r * ldp + j, blk, acc + (size_t)r * d);
        }
    }
}

#include "target_end.h"
#endif
