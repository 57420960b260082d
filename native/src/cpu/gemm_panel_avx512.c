/* gemm_panel_avx512.c — packed-panel GEMM for prefill, AVX-512 VNNI (contract
 * and rationale: gemm_panel.h).
 *
 * Weights: each panel of 16 rows is unpacked to unsigned bytes v and
 * interleaved so that the 4 bytes of group G (elements 4G..4G+3) of row r sit in
 * int32 lane r of vector G. One vpdpbusd with the broadcast 4 activation bytes
 * of group G then adds group G's products of all 16 rows, exactly.
 * Activations: copied once per call into tiles of 8 tokens (PT), block by
 * block, with what each block's float step needs beside its quants, so a tile
 * is one pointer with constant offsets (no per-token pointers in registers).
 * A short last tile repeats its last token. The panel (640 bytes per 32-block,
 * ~5.5 KB per superblock) stays in L1/L2 while every tile streams past it.
 *
 * 32-blocks (w = v - o: o = 128 for Q8_0, 8 for Q4_0, 16 for Q5_0, 0 for Q4_1):
 *   s    = -o * sum(a) + sum_G vpdpbusd(v_G, a_G)     (int32, exact)
 *   acc += (float)s * (d_w * d_a)  [+ m_w * s_a]        (16 rows at once)
 * K-quants: per sub-block j the exact dot t_j times its scale sc_j (vpmulld,
 * exact: |sc_j t_j| < 2^24) summed in int32; mins / the q - 32 offset from
 * the activation's bsums (16-element sums), one vpdpwssd per pair of them:
 *   Q4_K: acc += d_a * (d_w * sumi - dmin_w * sum_j m_j (bsum_2j + bsum_2j+1))
 *   Q6_K: acc += (d_w * d_a) * (sum_j sc_j (v . a)_j - 32 sum_j sc_j bsum_j)
 * All of it the scalar reference's arithmetic (quants_ref.c), lane by lane. */

#if defined(__x86_64__)

#include "target_avx512.h"

#include <stdlib.h>
#include <string.h>

#include "gemm_panel.h"
#include "gemm_tiles.h"
#include "simd_x86.h"

enum { PR = 16, /* rows per panel: the int32 lanes of a zmm */
       PT = 8 /* tokens per tile: 8 accumulators + 8 weight vectors in registers */ };

#define UNROLL _Pragma("GCC unroll 16")

/* ---------------- layouts ---------------- */

typedef struct { /* a 32-block of a 16-row panel */
    uint8_t q[8][64]; /* q[G][4r + e]: v of row r, element 4G + e */
    float d[PR];      /* d_w per row */
    float m[PR];      /* m_w per row (Q4_1; zero otherwise) */
} panel_q32;
_Static_assert(sizeof(panel_q32) == 640, "panel 32-block: 8 x 64 quant bytes, 16 scales, 16 mins");

typedef struct { /* a Q4_K superblock of a panel */
    uint8_t q[64][64];
    int32_t sc[8][PR]; /* sub-block scale per row */
    int32_t mm[8][PR]; /* (m_j, m_j) as two int16 per row: pairs with (bsum_2j, bsum_2j+1) */
    float d[PR], dmin[PR];
} panel_q4_K;
_Static_assert(sizeof(panel_q4_K) == 4096 + 512 + 512 + 128, "Q4_K panel superblock");

typedef struct { /* a Q6_K superblock of a panel */
    uint8_t q[64][64];
    int32_t sc[16][PR]; /* 16-element sub-block scale per row */
    int32_t sp[8][PR];  /* (sc_2i, sc_2i+1) as two int16 per row: pairs with (bsum_2i, bsum_2i+1) */
    float d[PR];
} panel_q6_K;
_Static_assert(sizeof(panel_q6_K) == 4096 + 1024 + 512 + 64, "Q6_K panel superblock");

typedef struct { /* a 32-block of a tile of PT tokens (Q8_0 / Q8_1 activations) */
    uint8_t q[PT][32];
    int32_t off[PT]; /* -o * sum(a) */
    float d[PT];     /* d_a */
    float s[PT];     /* s_a (Q8_1; zero otherwise) */
} act_q32;
_Static_assert(sizeof(act_q32) == PT * 44, "act 32-block");

typedef struct { /* a Q8_K superblock of a tile of PT tokens */
    uint8_t q[PT][256];
    int16_t bsums[PT][16];
    float d[PT];
} act_q8_K;
_Static_assert(sizeof(act_q8_K) == PT * 292, "act superblock");

/* ---------------- packing ---------------- */

/* Store the 8 groups of 32 elements e of row r at groups G0.. of q. */
KVC_INLINE void scatter_groups(uint8_t (*q)[64], int G0, int r, __m256i e) {
    const __m256i lanes = _mm256_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448);
    _mm256_i32scatter_epi32(&q[G0][4 * r], lanes, e, 1);
}

static void pack_q32(const int kind, const uint8_t *w, int rn, int64_t nb, int64_t w_row, panel_q32 *pb) {
    memset(pb, 0, (size_t)nb * sizeof *pb); /* rows past rn stay zero */
    const int ws = kw_size[kind];
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < rn; r++) {
            const uint8_t *p = w + r * w_row + b * ws;
            __m256i v;
            if (kind == K_Q8_0) {
                v = _mm256_xor_si256(loadu256(p + 2), _mm256_set1_epi8((char)0x80));
            } else {
                v = nibbles_32(p + kw_qs[kind]);
                if (kind == K_Q5_0)
                    v = _mm256_or_si256(v, _mm256_maskz_mov_epi8(_cvtu32_mask32(kvc_ld_u32(p + 2)), _mm256_set1_epi8(16)));
            }
            scatter_groups(pb[b].q, 0, r, v);
            pb[b].d[r] = ld_fp16(p);
            pb[b].m[r] = kind == K_Q4_1 ? ld_fp16(p + 2) : 0.0f;
        }
}

static void pack_q4_K(const int kind, const uint8_t *w, int rn, int64_t nb, int64_t w_row, panel_q4_K *pb) {
    (void)kind;
    memset(pb, 0, (size_t)nb * sizeof *pb);
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < rn; r++) {
            const uint8_t *p = w + r * w_row + b * Q4K_SIZE;
            uint8_t sm[16]; /* sc[0..7], m[0..7] */
            _mm_storeu_si128((__m128i *)sm, q4k_scales_mins(p + 4));
            for (int j = 0; j < 8; j++) {
                pb[b].sc[j][r] = sm[j];
                pb[b].mm[j][r] = (int32_t)((uint32_t)sm[8 + j] * 0x10001u);
            }
            pb[b].d[r] = ld_fp16(p), pb[b].dmin[r] = ld_fp16(p + 2);
            for (int i = 0; i < 4; i++) { /* 32 bytes: low nibbles = elements 64i.., high = 64i+32.. */
                const __m256i qb = loadu256(p + 16 + 32 * i);
                scatter_groups(pb[b].q, 16 * i, r, _mm256_and_si256(qb, _mm256_set1_epi8(15)));
                scatter_groups(pb[b].q, 16 * i + 8, r, _mm256_and_si256(_mm256_srli_epi16(qb, 4), _mm256_set1_epi8(15)));
            }
        }
}

static void pack_q6_K(const int kind, const uint8_t *w, int rn, int64_t nb, int64_t w_row, panel_q6_K *pb) {
    (void)kind;
    memset(pb, 0, (size_t)nb * sizeof *pb);
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < rn; r++) {
            const uint8_t *p = w + r * w_row + b * Q6K_SIZE;
            const int8_t *sc = (const int8_t *)(p + Q6K_SCALES);
            for (int j = 0; j < 16; j++) pb[b].sc[j][r] = sc[j];
            for (int i = 0; i < 8; i++)
                pb[b].sp[i][r] = (int32_t)(((uint32_t)(uint16_t)sc[2 * i + 1] << 16) | (uint16_t)sc[2 * i]);
            pb[b].d[r] = ld_fp16(p + Q6K_D);
            for (int h = 0; h < 2; h++) { /* halves of 128 elements (layout: quants_ref.c) */
                const __m256i l0 = loadu256(p + 64 * h), l1 = loadu256(p + 64 * h + 32), hb = loadu256(p + 128 + 32 * h);
                const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4);
                const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4);
                const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4);
                const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4);
                scatter_groups(pb[b].q, 32 * h, r, _mm256_or_si256(_mm256_and_si256(l0, m4), h0));
                scatter_groups(pb[b].q, 32 * h + 8, r, _mm256_or_si256(_mm256_and_si256(l1, m4), h1));
                scatter_groups(pb[b].q, 32 * h + 16, r, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2));
                scatter_groups(pb[b].q, 32 * h + 24, r, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3));
            }
        }
}

/* Token tile i (tokens PT*i.., the last repeated past n_tok), block b: the row of a. */
KVC_INLINE const uint8_t *tile_token(const uint8_t *a, int64_t a_row, int64_t n_tok, int64_t i, int t) {
    return a + MIN_(PT * i + t, n_tok - 1) * a_row;
}

static void prep_q32(const int kind, const uint8_t *a, int64_t n_tok, int64_t nb, act_q32 *x) {
    const int as = ka_size[kind], aq = kind == K_Q4_1 ? 4 : 2;
    const int o = kind == K_Q8_0 ? 128 : kind == K_Q4_0 ? 8 : kind == K_Q5_0 ? 16 : 0;
    for (int64_t i = 0; i < (n_tok + PT - 1) / PT; i++)
        for (int t = 0; t < PT; t++) {
            const uint8_t *row = tile_token(a, nb * as, n_tok, i, t);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *p = row + b * as;
                act_q32 *y = x + i * nb + b;
                const __m256i q = loadu256(p + aq);
                _mm256_storeu_si256((__m256i *)y->q[t], q);
                /* sum(a) = sum(a + 128) - 32 * 128, the biased sum by vpsadbw */
                const __m256i u = _mm256_sad_epu8(_mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
                const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
                y->off[t] = -o * ((int)(_mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1)) - 32 * 128);
                y->d[t] = ld_fp16(p);
                y->s[t] = kind == K_Q4_1 ? ld_fp16(p + 2) : 0.0f;
            }
        }
}

static void prep_q8_K(const int kind, const uint8_t *a, int64_t n_tok, int64_t nb, act_q8_K *x) {
    (void)kind;
    for (int64_t i = 0; i < (n_tok + PT - 1) / PT; i++)
        for (int t = 0; t < PT; t++) {
            const uint8_t *row = tile_token(a, nb * Q8K_SIZE, n_tok, i, t);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *p = row + b * Q8K_SIZE;
                act_q8_K *y = x + i * nb + b;
                memcpy(y->q[t], p + Q8K_QS, 256);
                memcpy(y->bsums[t], p + Q8K_BSUMS, 32);
                y->d[t] = kvc_ld_f32(p + Q8K_D);
            }
        }
}

/* ---------------- tiles: acc[t] (16 rows) = panel . token t of the tile ---------------- */

/* The int32 at p broadcast (a memory operand of the VNNI instruction). */
KVC_INLINE __m512i bcast32(const void *p) { return _mm512_set1_epi32((int)kvc_ld_u32(p)); }

KVC_INLINE void tile_q32(const int kind, const panel_q32 *pb, const act_q32 *x, int64_t nb, __m512 *acc) {
    UNROLL for (int t = 0; t < PT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const panel_q32 *p = pb + b;
        const act_q32 *y = x + b;
        __m512i v[8];
        UNROLL for (int g = 0; g < 8; g++) v[g] = _mm512_load_si512(p->q[g]);
        const __m512 dw = _mm512_load_ps(p->d);
        UNROLL for (int t = 0; t < PT; t++) {
            __m512i s = _mm512_set1_epi32(y->off[t]);
            UNROLL for (int g = 0; g < 8; g++) s = _mm512_dpbusd_epi32(s, v[g], bcast32(&y->q[t][4 * g]));
            const __m512 prod = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(y->d[t])));
            if (kind == K_Q4_1)
                acc[t] = _mm512_add_ps(acc[t], _mm512_add_ps(prod, _mm512_mul_ps(_mm512_load_ps(p->m),
                                                                                 _mm512_set1_ps(y->s[t]))));
            else
                acc[t] = _mm512_add_ps(acc[t], prod);
        }
    }
}

KVC_INLINE void tile_q4_K(const int kind, const panel_q4_K *pb, const act_q8_K *x, int64_t nb, __m512 *acc) {
    (void)kind;
    UNROLL for (int t = 0; t < PT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const panel_q4_K *p = pb + b;
        const act_q8_K *y = x + b;
        __m512i isum[PT];
        UNROLL for (int t = 0; t < PT; t++) isum[t] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) { /* sub-block j: elements 32j.. = groups 8j.. */
            __m512i v[8];
            UNROLL for (int g = 0; g < 8; g++) v[g] = _mm512_load_si512(p->q[8 * j + g]);
            const __m512i sc = _mm512_load_si512(p->sc[j]);
            UNROLL for (int t = 0; t < PT; t++) {
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], bcast32(&y->q[t][32 * j]));
                UNROLL for (int g = 1; g < 8; g++) s = _mm512_dpbusd_epi32(s, v[g], bcast32(&y->q[t][32 * j + 4 * g]));
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s, sc));
            }
        }
        const __m512 dw = _mm512_load_ps(p->d), dmin = _mm512_load_ps(p->dmin);
        UNROLL for (int t = 0; t < PT; t++) {
            __m512i summ = _mm512_setzero_si512();
            UNROLL for (int j = 0; j < 8; j++)
                summ = _mm512_dpwssd_epi32(summ, _mm512_load_si512(p->mm[j]), bcast32(&y->bsums[t][2 * j]));
            const __m512 z = _mm512_sub_ps(_mm512_mul_ps(dw, _mm512_cvtepi32_ps(isum[t])),
                                           _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(summ)));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_set1_ps(y->d[t]), z));
        }
    }
}

KVC_INLINE void tile_q6_K(const int kind, const panel_q6_K *pb, const act_q8_K *x, int64_t nb, __m512 *acc) {
    (void)kind;
    UNROLL for (int t = 0; t < PT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const panel_q6_K *p = pb + b;
        const act_q8_K *y = x + b;
        __m512i isum[PT];
        UNROLL for (int t = 0; t < PT; t++) isum[t] = _mm512_setzero_si512();
        for (int j = 0; j < 16; j += 2) { /* two 16-element sub-blocks: groups 4j.. */
            __m512i v[8];
            UNROLL for (int g = 0; g < 8; g++) v[g] = _mm512_load_si512(p->q[4 * j + g]);
            const __m512i sc0 = _mm512_load_si512(p->sc[j]), sc1 = _mm512_load_si512(p->sc[j + 1]);
            UNROLL for (int t = 0; t < PT; t++) {
                const uint8_t *q = &y->q[t][16 * j];
                __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], bcast32(q));
                __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[4], bcast32(q + 16));
                UNROLL for (int g = 1; g < 4; g++) {
                    s0 = _mm512_dpbusd_epi32(s0, v[g], bcast32(q + 4 * g));
                    s1 = _mm512_dpbusd_epi32(s1, v[4 + g], bcast32(q + 16 + 4 * g));
                }
                isum[t] = _mm512_add_epi32(isum[t], _mm512_add_epi32(_mm512_mullo_epi32(s0, sc0),
                                                                     _mm512_mullo_epi32(s1, sc1)));
            }
        }
        const __m512 dw = _mm512_load_ps(p->d);
        UNROLL for (int t = 0; t < PT; t++) {
            __m512i off = _mm512_setzero_si512(); /* sum_j sc_j bsum_j: the q - 32 offset, times 32 below */
            UNROLL for (int i = 0; i < 8; i++)
                off = _mm512_dpwssd_epi32(off, _mm512_load_si512(p->sp[i]), bcast32(&y->bsums[t][2 * i]));
            const __m512i is = _mm512_sub_epi32(isum[t], _mm512_slli_epi32(off, 5));
            const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(y->d[t]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(sc, _mm512_cvtepi32_ps(is)));
        }
    }
}

/* ---------------- the walk ---------------- */

/* Pack 16 rows at a time; stream every token tile past the panel. ELEMS: elements
 * per weight block; WSIZE: bytes per weight block. */
#define PANEL_GEMM(KIND, PANEL_T, ACT_T, PACK, PREP, TILE, ELEMS, WSIZE)                  \
    do {                                                                                           \
        if (n_tok < KVC_PANEL_MIN_TOK || m <= 0 || k < (ELEMS)) return 0;                          \
        const int64_t nb = k / (ELEMS), w_row = nb * (WSIZE), n_tiles = (n_tok + PT - 1) / PT;     \
        const size_t panel_bytes = ((size_t)nb * sizeof(PANEL_T) + 63) / 64 * 64;                  \
        const size_t act_bytes = ((size_t)(n_tiles * nb) * sizeof(ACT_T) + 63) / 64 * 64;         \
        uint8_t *buf = aligned_alloc(64, panel_bytes + act_bytes); /* size: a multiple of 64 */    \
        if (!buf) return 0;                                                                        \
        PANEL_T *pb = (PANEL_T *)buf;                                                              \
        ACT_T *x = (ACT_T *)(buf + panel_bytes);                                                   \
        PREP(KIND, (const uint8_t *)a, n_tok, nb, x);                                              \
        for (int64_t r0 = 0; r0 < m; r0 += PR) {                                                   \
            const int rn = (int)MIN_(PR, m - r0);                                                  \
            PACK(KIND, (const uint8_t *)w + r0 * w_row, rn, nb, w_row, pb);                        \
            for (int64_t i = 0; i < n_tiles; i++) {                                                \
                __m512 acc[PT];                                                                    \
                TILE(KIND, pb, x + i * nb, nb, acc);                                               \
                for (int t = 0; t < (int)MIN_(PT, n_tok - PT * i); t++)                            \
                    _mm512_mask_storeu_ps(out + (PT * i + t) * ldo + r0, (__mmask16)((1u << rn) - 1), acc[t]); \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
        return 1;                                                                                  \
    } while (0)

/* One instance per kind: the kind is a constant inside the loops. */
#define Q32_INSTANCE(KIND)                                                                         \
    static int panel_##KIND(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out, \
                            int64_t ldo) {                                                         \
        PANEL_GEMM(KIND, panel_q32, act_q32, pack_q32, prep_q32, tile_q32, 32, kw_size[KIND]); \
    }
Q32_INSTANCE(K_Q8_0)
Q32_INSTANCE(K_Q4_0)
Q32_INSTANCE(K_Q5_0)
Q32_INSTANCE(K_Q4_1)

int kvc_gemm_panel_q32_avx512(int kind, int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,
                              float *out, int64_t ldo) {
    switch (kind) {
    case K_Q8_0: return panel_K_Q8_0(m, n_tok, k, w, a, out, ldo);
    case K_Q4_0: return panel_K_Q4_0(m, n_tok, k, w, a, out, ldo);
    case K_Q5_0: return panel_K_Q5_0(m, n_tok, k, w, a, out, ldo);
    case K_Q4_1: return panel_K_Q4_1(m, n_tok, k, w, a, out, ldo);
    default: return 0;
    }
}

int kvc_gemm_panel_q4_K_avx512(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                               int64_t ldo) {
    PANEL_GEMM(0, panel_q4_K, act_q8_K, pack_q4_K, prep_q8_K, tile_q4_K, QK_K, Q4K_SIZE);
}

int kvc_gemm_panel_q6_K_avx512(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                               int64_t ldo) {
    PANEL_GEMM(0, panel_q6_K, act_q8_K, pack_q6_K, prep_q8_K, tile_q6_K, QK_K, Q6K_SIZE);
}

#include "target_end.h"

#endif /* __x86_64__ */
