/* tq_avx512.c — AVX-512 kernels for TurboQuant rows (twins of tq_score_ref and
 * tq_accum_ref in tq_ref.c, siblings of cpu/tq_avx2.c; in the avx512 kernel table when
 * the CPU has KVC_IMPL_AVX512). Same structure as the AVX2 file: a block of
 * queries (query tokens × GQA group) with causal limits, each row decoded once
 * for all of them, 16 rows (a tile) at a time.
 *
 * Codes become centroid values 16 at a time, one zmm: ≤ 4-bit codebooks are one
 * register (vpermps), 5-bit two (vpermt2ps), 6-bit four (two vpermt2ps and a
 * blend on bit 5); 7- and 8-bit ones are gathered, 9- and 10-bit codes are read
 * one by one and gathered; trellis codes (tq.h) become states by shifted ORs of
 * neighbouring codes and are gathered. Up to 8 bits, a lane's code is picked out of the
 * row's bitstream by a byte shuffle and a variable shift. A group of
 * m % 16 == 8 channels ends with a half vector (masked loads and stores); only
 * layouts with a group of m % 8 != 0 run the scalar twins, as in AVX2.
 *
 * Scores: a tile's 16 keys are reduced together (a transposed tree, QJL terms
 * alike); the rows after the last whole tile use hsum16, which adds each key's
 * lanes in the same tree, so a key's score does not depend on the block of
 * queries it was computed in. Accumulation adds keys in order, one fused
 * multiply-add each, two queries at a time. Results equal the scalar twins up to
 * float summation order (not the AVX2 results bit for bit). AVX-512 F/BW/VL/DQ
 * only; never AMX. */
#if defined(__x86_64__)
#include <string.h>

#include "target_avx512.h"

#include "../quants.h"
#include "../tq.h"
#include "simd_x86.h"

#define AVX512

typedef struct {
    __m512 cb[4];        /* centroids 0..63, zero past 1 << bits (bits <= 6) */
    __m512i pick, shift; /* lane k: bytes k*b/8, +1 of the 16-byte window into a dword, then >> k*b % 8 */
    __m512i mask;        /* (1 << bits) - 1 */
    __mmask16 ld16, ld8; /* the bytes of 16 / 8 codes (bits <= 8) */
} grp_regs;

AVX512 static void load_grp(const tq_group *g, grp_regs *r) {
    const int b = g->bits;
    float tmp[64] = {0};
    if (b <= 6) memcpy(tmp, g->cb, sizeof(float) << b);
    for (int t = 0; t < 4; t++) r->cb[t] = _mm512_loadu_ps(tmp + 16 * t);
    uint32_t pick[16];
    int shift[16];
    for (int k = 0; k < 16; k++) {
        const int bit = k * b;
        const uint32_t byte = (uint32_t)(bit >> 3) & 15;
        pick[k] = byte | (byte < 15 ? byte + 1 : 0x80u) << 8 | 0x8080u << 16; /* 0x80: a zero byte */
        shift[k] = bit & 7;
    }
    r->pick = _mm512_loadu_si512(pick);
    r->shift = _mm512_loadu_si512(shift);
    r->mask = _mm512_set1_epi32((1 << b) - 1);
    r->ld16 = (__mmask16)(b <= 8 ? (1u << 2 * b) - 1 : 0);
    r->ld8 = (__mmask16)(b <= 8 ? (1u << b) - 1 : 0);
}

/* codes i .. i+nc-1 of a b-bit group (nc 16, or 8 at its end; i % 8 == 0) as
 * int32 lanes; lanes >= nc are zero where the lookup gathers. Bits above the code
 * are left where the lookup ignores them (vpermps reads 4 index bits, vpermt2ps
 * 5). Reads only the bytes of those codes: 16 codes of b <= 8 bits are the 2b
 * bytes from byte i*b/8, a broadcast load when that is 2, 4, 8 or 16 bytes, else
 * a masked load. */
KVC_INLINE __m512i codes16(const int b, const grp_regs *r, const uint8_t *codes, int i, int nc) {
    if (b > 8) {
        int v[16] = {0};
        for (int k = 0; k < nc; k++) v[k] = (int)tq_get_code(codes, i + k, b);
        return _mm512_loadu_si512(v);
    }
    const uint8_t *p = codes + (size_t)i * b / 8;
    const int bytes = nc * b / 8;
    __m512i v;
    if (bytes == 2) v = _mm512_set1_epi16((short)(p[0] | p[1] << 8));
    else if (bytes == 4) v = _mm512_set1_epi32((int)kvc_ld_u32(p));
    else if (bytes == 8 && b == 4) {
        uint64_t u;
        memcpy(&u, p, 8);
        v = _mm512_set1_epi64((long long)u);
    } else if (bytes == 16) v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
    else v = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(nc == 16 ? r->ld16 : r->ld8, p));
    /* repeated bytes past the codes (2 and 4 bytes) only reach lanes >= nc or bits above a code */
    v = _mm512_srlv_epi32(_mm512_shuffle_epi8(v, r->pick), r->shift);
    return b >= 4 && b <= 6 ? v : _mm512_and_si512(v, r->mask);
}

KVC_INLINE __m512 lookup16(const int b, const tq_group *g, const grp_regs *r, __m512i idx) {
    if (b <= 4) return _mm512_permutexvar_ps(idx, r->cb[0]);
    if (b == 5) return _mm512_permutex2var_ps(r->cb[0], idx, r->cb[1]);
    if (b == 6) {
        const __m512 lo = _mm512_permutex2var_ps(r->cb[0], idx, r->cb[1]);
        const __m512 hi = _mm512_permutex2var_ps(r->cb[2], idx, r->cb[3]);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
    }
    return _mm512_i32gather_ps(idx, g->cb, 4);
}

/* scale × centroid of each code of a b-bit group into vals (m); the last 8 a masked store */
KVC_INLINE void decode_group(const int b, const tq_group *g, const grp_regs *r, const uint8_t *row, float *vals) {
    const __m512 s = _mm512_set1_ps(tq_group_scale(g, row));
    const uint8_t *codes = row + g->codes_off;
    int i = 0;
    for (; i + 16 <= g->m; i += 16)
        _mm512_storeu_ps(vals + i, _mm512_mul_ps(s, lookup16(b, g, r, codes16(b, r, codes, i, 16))));
    if (i < g->m)
        _mm512_mask_storeu_ps(vals + i, 0xFF, _mm512_mul_ps(s, lookup16(b, g, r, codes16(b, r, codes, i, 8))));
}

static int simd_ok(const tq_layout *L) { /* else the scalar kernels */
    for (int k = 0; k < L->n_groups; k++)
        if (L->g[k].m % 8) return 0;
    return 1;
}

/* tq_viterbi_end over all S states (S % 16 == 0, cost aligned): the least cost, then the first state
 * holding it — the scalar scan's strict-less answer */
AVX512 static int viterbi_end16(const float *cost, int S) {
    __m512 lo = _mm512_load_ps(cost);
    for (int s = 16; s < S; s += 16) lo = _mm512_min_ps(lo, _mm512_load_ps(cost + s));
    const __m512 least = _mm512_set1_ps(_mm512_reduce_min_ps(lo));
    for (int s = 0;; s += 16) {
        const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_load_ps(cost + s), least, _CMP_EQ_OQ);
        if (eq) return s + __builtin_ctz((unsigned)eq);
    }
}

/* tq_viterbi_ref (tq_avx2.c's twin), 16 states per vector: strict-less masked blends keep the
 * scalar ties, a separate multiply and add keep its floats. */
void tq_viterbi_avx512(const tq_group *g, const float *u, int wrap, unsigned *path) {
    const int b = g->bits, M = g->tmem, m = g->m, S = 1 << (b + M), P = 1 << M;
    if (P < 16) {
        tq_viterbi_ref(g, u, wrap, path);
        return;
    }
    float cost[1 << TQ_TRELLIS_MAX_STATE] __attribute__((aligned(64)));
    float best[(1 << TQ_TRELLIS_MAX_MEM) + 16] __attribute__((aligned(64))); /* + 16: the b < 4 loads */
    memset(best + P, 0, sizeof(float) * 16);
    uint8_t back[TQ_TRELLIS_MAX_M * TQ_TRELLIS_CTX]; /* (m, contexts) */
    tq_viterbi_first(g, u[0], wrap, cost);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 1; i < m; i++) {
        for (int p = 0; p < P; p += 16) {
            __m512 c = _mm512_load_ps(cost + p);
            __m512i bt = _mm512_setzero_si512();
            for (int t = 1; t < 1 << b; t++) {
                const __m512 x = _mm512_load_ps(cost + (t << M) + p);
                const __mmask16 lt = _mm512_cmp_ps_mask(x, c, _CMP_LT_OQ);
                c = _mm512_mask_blend_ps(lt, c, x);
                bt = _mm512_mask_blend_epi32(lt, bt, _mm512_set1_epi32(t));
            }
            _mm512_store_ps(best + p, c);
            _mm_storeu_si128((__m128i *)(back + i * TQ_TRELLIS_CTX + p), _mm512_cvtepi32_epi8(bt));
        }
        const __m512 ui = _mm512_set1_ps(u[i]);
        for (int s = 0; s < S; s += 16) {
            /* lane k is state s + k, its context (s >> b) + (k >> b) (s % 16 == 0) */
            const __m512 bs = b >= 4 ? _mm512_set1_ps(best[s >> b])
                                     : _mm512_permutexvar_ps(_mm512_srli_epi32(lane, (unsigned)b),
                                                             _mm512_loadu_ps(best + (s >> b)));
            const __m512 e = _mm512_sub_ps(ui, _mm512_loadu_ps(g->cb + s));
            _mm512_store_ps(cost + s, _mm512_add_ps(bs, _mm512_mul_ps(e, e)));
        }
    }
    tq_viterbi_trace(g, wrap < 0 ? viterbi_end16(cost, S) : tq_viterbi_end(g, cost, wrap), back, path);
}

void tq_encode_avx512(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch) {
    tq_encode_with(L, scale_mode, x, row, scratch, tq_viterbi_avx512);
}

/* s × the values of a trellis group's codes into vals (m), 16 lanes at a time (tq_avx2.c's
 * trellis8: states as shifted ORs of neighbouring codes, values gathered) */
AVX512 static void trellis16(const tq_group *g, const grp_regs *r, const uint8_t *row, float *vals) {
    const int b = g->bits, m = g->m, span = (b + g->tmem + b - 1) / b; /* span <= 7 */
    const uint8_t *codes = row + g->codes_off;
    int32_t c[16 + TQ_TRELLIS_MAX_M] __attribute__((aligned(64))); /* c[16 + i]: code i; c[16 - k]: code m - k */
    for (int i = 0; i < m; i += 16) {
        const int nc = m - i >= 16 ? 16 : 8;
        _mm512_store_si512(c + 16 + i, _mm512_and_si512(codes16(b, r, codes, i, nc), r->mask));
    }
    _mm512_store_si512(c, _mm512_setzero_si512()); /* lanes no state reaches */
    for (int k = 1; k < span; k++) c[16 - k] = c[16 + m - k];
    const __m512i mask = _mm512_set1_epi32((1 << (b + g->tmem)) - 1);
    const __m512 s = _mm512_set1_ps(tq_group_scale(g, row));
    for (int i = 0; i < m; i += 16) {
        __m512i st = _mm512_load_si512(c + 16 + i);
        for (int k = 1; k < span; k++)
            st = _mm512_or_si512(st, _mm512_sll_epi32(_mm512_loadu_si512(c + 16 + i - k), _mm_cvtsi32_si128(k * b)));
        const __m512 v = _mm512_mul_ps(s, _mm512_i32gather_ps(_mm512_and_si512(st, mask), g->cb, 4));
        if (m - i >= 16) _mm512_storeu_ps(vals + i, v);
        else _mm512_mask_storeu_ps(vals + i, 0xFF, v);
    }
}

/* centroid values (scaled per group) of one row into vals (d): decoded once, used
 * by every query. One loop per code width (a call per row, not inlined everywhere). */
AVX512 static void decode_row16(const tq_layout *L, const grp_regs *regs, const uint8_t *row, float *vals) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        float *v = vals + start;
        if (g->tmem) {
            trellis16(g, &regs[k], row, v);
            start += g->m;
            continue;
        }
        switch (g->bits) {
        case 1: decode_group(1, g, &regs[k], row, v); break;
        case 2: decode_group(2, g, &regs[k], row, v); break;
        case 3: decode_group(3, g, &regs[k], row, v); break;
        case 4: decode_group(4, g, &regs[k], row, v); break;
        case 5: decode_group(5, g, &regs[k], row, v); break;
        case 6: decode_group(6, g, &regs[k], row, v); break;
        case 7: decode_group(7, g, &regs[k], row, v); break;
        case 8: decode_group(8, g, &regs[k], row, v); break;
        case 9: decode_group(9, g, &regs[k], row, v); break; /* 9, 10: codes read one by one */
        default: decode_group(10, g, &regs[k], row, v); break;
        }
        start += g->m;
    }
}

/* sum of the 16 lanes as ((v0+v8)+(v4+v12)) + ((v2+v10)+(v6+v14)) + (odd lanes
 * alike): the per-key order of reduce16 below */
AVX512 static inline float hsum16(__m512 v) {
    return hsum_ps_256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* a[16] (one vector per key) -> their 16 lane sums, each in hsum16's order, in
 * lane order: lane 4L + p holds key L + 4p (KEY_LANES maps between the two) */
AVX512 static inline __m512 reduce16(const __m512 *a) {
    __m512 b[8], c[4], e[2];
    for (int k = 0; k < 8; k++) /* key 2k, 2k+1: lane l + lane l+8 */
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++) /* keys 4k .. 4k+3 in 128-bit quarters: l + l+4 */
        c[k] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++) /* quarter L: keys 8k+L, 8k+4+L, two lanes each: l + l+2 */
        e[k] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * k], c[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * k], c[2 * k + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}
#define KEY_LANES _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15) /* its own inverse */

/* lanes k < cnt (cnt >= 1): the visible keys of a tile */
static inline __mmask16 lanes_below(int cnt) { return (__mmask16)(cnt >= 16 ? 0xFFFF : (1u << cnt) - 1); }

/* sign bits of channels i .. i+15 of a QJL group (i .. i+7 when half) as a lane mask */
static inline __mmask16 signs16(const uint8_t *bits, int i, int half) {
    return (__mmask16)(half ? bits[i / 8] : bits[i / 8] | (unsigned)bits[i / 8 + 1] << 8);
}

/* sum over channels of ±w (minus where the key's QJL bit is set), per 16-lane
 * chunk, one vector per key: w (m) of the group, bits[k] the keys' QJL bytes */
AVX512 static inline void qjl_sums(const tq_group *g, const float *w, const uint8_t *const *bits, int nk, __m512 *s) {
    const __m512 neg = _mm512_set1_ps(-0.0f);
    for (int k = 0; k < nk; k++) s[k] = _mm512_setzero_ps();
    for (int i = 0; i < g->m; i += 16) {
        const int half = i + 16 > g->m;
        const __m512 wv = half ? _mm512_maskz_loadu_ps(0xFF, w + i) : _mm512_loadu_ps(w + i);
        for (int k = 0; k < nk; k++)
            s[k] = _mm512_add_ps(s[k], _mm512_mask_xor_ps(wv, signs16(bits[k], i, half), wv, neg));
    }
}

/* <vals, qr> per 16-lane chunk into one vector (vals, qr: (d)); the last chunk
 * may be half (masked, zero lanes) */
AVX512 static inline __m512 dot_lanes(int d, const float *vals, const float *qr) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= d; i += 16) acc = _mm512_fmadd_ps(_mm512_load_ps(vals + i), _mm512_loadu_ps(qr + i), acc);
    if (i < d) acc = _mm512_fmadd_ps(_mm512_maskz_load_ps(0xFF, vals + i), _mm512_maskz_loadu_ps(0xFF, qr + i), acc);
    return acc;
}

/* one tile of 16 keys (rows j .. j+15) against queries r0 .. nq-1 */
AVX512 static void score_tile(const tq_layout *L, const grp_regs *regs, const tq_query *q, int r0, int nq, int grp,
                              int n0, int j, const uint8_t *tile, float *blk, float *out, int ldo) {
    const int d = L->d, dp = (d + 15) & ~15, rb = L->row_bytes;
    for (int k = 0; k < 16; k++) decode_row16(L, regs, tile + (size_t)k * rb, blk + k * dp);
    __m512 rnc[TQ_MAX_GROUPS]; /* QJL groups: residual norm × qjl_c per key, lane order */
    const uint8_t *bits[TQ_MAX_GROUPS][16];
    for (int g = 0; g < L->n_groups; g++) {
        if (!L->g[g].qjl) continue;
        float t[16];
        for (int k = 0; k < 16; k++) {
            const uint8_t *row = tile + (size_t)k * rb;
            t[k] = tq_group_rnorm(&L->g[g], row) * L->g[g].qjl_c;
            bits[g][k] = row + L->g[g].qjl_off;
        }
        rnc[g] = _mm512_permutexvar_ps(KEY_LANES, _mm512_loadu_ps(t));
    }
    for (int r = r0; r < nq; r++) {
        const float *qr = q->qr + (size_t)r * d; /* (d) */
        __m512 a[16];
        for (int k = 0; k < 16; k++) a[k] = _mm512_setzero_ps();
        int i = 0;
        for (; i + 16 <= d; i += 16) {
            const __m512 qv = _mm512_loadu_ps(qr + i);
            for (int k = 0; k < 16; k++) a[k] = _mm512_fmadd_ps(_mm512_load_ps(blk + k * dp + i), qv, a[k]);
        }
        if (i < d) {
            const __m512 qv = _mm512_maskz_loadu_ps(0xFF, qr + i);
            for (int k = 0; k < 16; k++)
                a[k] = _mm512_fmadd_ps(_mm512_maskz_load_ps(0xFF, blk + k * dp + i), qv, a[k]);
        }
        __m512 sum = reduce16(a);
        int start = 0;
        for (int g = 0; g < L->n_groups; g++) {
            if (L->g[g].qjl) {
                qjl_sums(&L->g[g], q->w + (size_t)r * d + start, bits[g], 16, a);
                sum = _mm512_add_ps(sum, _mm512_mul_ps(rnc[g], reduce16(a)));
            }
            start += L->g[g].m;
        }
        const int cnt = tq_visible(r, grp, n0) - j;
        _mm512_mask_storeu_ps(out + (size_t)r * ldo + j, lanes_below(cnt), _mm512_permutexvar_ps(KEY_LANES, sum));
    }
}

void tq_score_avx512(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                     int ldo) {
    if (!simd_ok(L)) {
        tq_score_ref(L, q, nq, grp, n0, rows, out, ldo);
        return;
    }
    const int d = L->d, n = tq_rows_read(nq, grp, n0);
    grp_regs regs[TQ_MAX_GROUPS];
    for (int k = 0; k < L->n_groups; k++) load_grp(&L->g[k], &regs[k]);
    /* (16, dp) decoded tile, dp = d rounded up to 16; on the stack: a TLS buffer's
     * address is recomputed in the loops */
    float blk[16 * TQ_MAX_DIM] __attribute__((aligned(64)));
    int j = 0;
    for (; j + 16 <= n; j += 16)
        score_tile(L, regs, q, tq_first_seeing(j, grp, n0), nq, grp, n0, j, rows + (size_t)j * L->row_bytes, blk, out,
                   ldo);
    for (; j < n; j++) { /* the last rows one at a time, in the tile's per-key order */
        const uint8_t *row = rows + (size_t)j * L->row_bytes;
        decode_row16(L, regs, row, blk);
        for (int r = tq_first_seeing(j, grp, n0); r < nq; r++) {
            float total = hsum16(dot_lanes(d, blk, q->qr + (size_t)r * d));
            int start = 0;
            for (int g = 0; g < L->n_groups; g++) {
                const tq_group *G = &L->g[g];
                if (G->qjl) {
                    const uint8_t *bits = row + G->qjl_off;
                    __m512 s;
                    qjl_sums(G, q->w + (size_t)r * d + start, &bits, 1, &s);
                    total += tq_group_rnorm(G, row) * G->qjl_c * hsum16(s);
                }
                start += G->m;
            }
            out[(size_t)r * ldo + j] = total;
        }
    }
}

/* dst[t] (d) += sum_{k < cnt} p[t][k] * blk row k (blk: (cnt, dp)) for nt = 1 or 2
 * queries t at once, in key order (one fused multiply-add per key): 64 channels
 * at a time, so each row chunk is loaded once for both and 4-8 sums are in
 * flight; then 16 at a time, a half last chunk masked */
KVC_INLINE void axpy_tile(const int nt, int d, int dp, int cnt, const float *const *p, const float *blk,
                          float *const *dst) {
    int i = 0;
    for (; i + 64 <= d; i += 64) {
        __m512 a[2][4];
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < 4; c++) a[t][c] = _mm512_loadu_ps(dst[t] + i + 16 * c);
        for (int k = 0; k < cnt; k++) {
            const float *v = blk + k * dp + i;
            for (int c = 0; c < 4; c++) {
                const __m512 x = _mm512_load_ps(v + 16 * c);
                for (int t = 0; t < nt; t++) a[t][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[t][k]), x, a[t][c]);
            }
        }
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(dst[t] + i + 16 * c, a[t][c]);
    }
    for (; i < d; i += 16) {
        const __mmask16 m = i + 16 <= d ? 0xFFFF : 0xFF;
        __m512 a[2];
        for (int t = 0; t < nt; t++) a[t] = _mm512_maskz_loadu_ps(m, dst[t] + i);
        for (int k = 0; k < cnt; k++) {
            const __m512 x = _mm512_maskz_load_ps(m, blk + k * dp + i);
            for (int t = 0; t < nt; t++) a[t] = _mm512_fmadd_ps(_mm512_set1_ps(p[t][k]), x, a[t]);
        }
        for (int t = 0; t < nt; t++) _mm512_mask_storeu_ps(dst[t] + i, m, a[t]);
    }
}

void tq_accum_avx512(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                     float *acc) {
    if (!simd_ok(L)) {
        tq_accum_ref(L, p, ldp, nq, grp, n0, rows, acc);
        return;
    }
    const int d = L->d, dp = (d + 15) & ~15, n = tq_rows_read(nq, grp, n0);
    grp_regs regs[TQ_MAX_GROUPS];
    for (int k = 0; k < L->n_groups; k++) load_grp(&L->g[k], &regs[k]);
    /* 16 rows at a time: each accumulator is loaded and stored once per 16 rows */
    float blk[16 * TQ_MAX_DIM] __attribute__((aligned(64))); /* (16, dp) */
    for (int j = 0; j < n; j += 16) {
        const int nb = n - j < 16 ? n - j : 16;
        for (int k = 0; k < nb; k++) decode_row16(L, regs, rows + (size_t)(j + k) * L->row_bytes, blk + k * dp);
        for (int r = tq_first_seeing(j, grp, n0); r < nq;) {
            const int cnt = tq_visible(r, grp, n0) - j < nb ? tq_visible(r, grp, n0) - j : nb;
            const int two = r + 1 < nq && cnt == nb; /* then query r + 1 sees all nb rows too */
            const float *pr[2] = {p + (size_t)r * ldp + j, two ? p + (size_t)(r + 1) * ldp + j : NULL};
            float *dr[2] = {acc + (size_t)r * d, two ? acc + (size_t)(r + 1) * d : NULL}; /* (d) each */
            if (two) axpy_tile(2, d, dp, cnt, pr, blk, dr);
            else axpy_tile(1, d, dp, cnt, pr, blk, dr);
            r += 1 + two;
        }
    }
}

#include "target_end.h"
#endif
