/* gemm_tiles.h — what the x86 (dot_x86.h) and aarch64 (dot_neon.h) vec_dot/gemm
 * kernels share, defined once: the block kinds and their sizes/offsets (from the
 * block structs of quants.h), the default tile sizes, and the drivers that walk
 * a (m rows) x (n_tok tokens) product in register tiles and instantiate each
 * weight type's vec_dot and gemm from its ISA's tile function.
 *
 * The ISA header defines tile_q32(kind, R, T, nb, wp, ap, res, pf), tile_q4_K,
 * tile_q6_K (R, T, nb, wp, ap, res, pf) and tile_f(kind, R, T, k, wp, ap, res, pf):
 * res[r*T + t] = dot(weight row wp[r], activation row ap[t]) over nb blocks (k
 * floats), prefetching pf bytes ahead (0: none). The includer sets SFX (function
 * suffix) and may override the tile sizes before including. Included once per
 * kernel file (each .c is one instruction set). */
#ifndef KVC_GEMM_TILES_H
#define KVC_GEMM_TILES_H

#include <stddef.h>

#include "quants.h"

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SFX) /* kvc_vec_dot_q8_0_q8_0 -> kvc_vec_dot_q8_0_q8_0_<SFX> */

#define MIN_(a, b) ((a) < (b) ? (a) : (b))

/* ---- block kinds and layouts ---- */

/* 32-element blocks: Q8_0, Q4_0, Q5_0 x Q8_0 and Q4_1 x Q8_1 */
enum { K_Q8_0, K_Q4_0, K_Q5_0, K_Q4_1 };
static const int kw_size[] = {sizeof(block_q8_0), sizeof(block_q4_0), sizeof(block_q5_0),
                              sizeof(block_q4_1)}; /* weight block bytes per kind */
static const int kw_qs[] = {offsetof(block_q8_0, qs), offsetof(block_q4_0, qs), offsetof(block_q5_0, qs),
                            offsetof(block_q4_1, qs)}; /* offset of the weight quants in the block */
static const int ka_size[] = {sizeof(block_q8_0), sizeof(block_q8_0), sizeof(block_q8_0),
                              sizeof(block_q8_1)}; /* activation block bytes (q8_0 / q8_1) */

/* 256-element superblocks: Q4_K, Q6_K x Q8_K */
#define Q4K_SIZE ((int)sizeof(block_q4_K))
#define Q6K_SIZE ((int)sizeof(block_q6_K))
#define Q6K_SCALES ((int)offsetof(block_q6_K, scales))
#define Q6K_D ((int)offsetof(block_q6_K, d))
#define Q8K_SIZE ((int)sizeof(block_q8_K))
#define Q8K_D ((int)offsetof(block_q8_K, d))
#define Q8K_QS ((int)offsetof(block_q8_K, qs))
#define Q8K_BSUMS ((int)offsetof(block_q8_K, bsums))

/* float weights x float activations */
enum { K_F32, K_F16, K_BF16 };

/* ---- tile sizes: RD_x rows per decode tile (n_tok = 1), RM_x x TM_x rows x tokens
 * per gemm tile, for x = Q (32-blocks), K (K-quants), F (float weights) ---- */
#ifndef RD_Q
#define RD_Q 4
#endif
#ifndef RM_Q
#define RM_Q 4
#endif
#ifndef TM_Q
#define TM_Q 2
#endif
#ifndef RD_K
#define RD_K 2
#endif
#ifndef RM_K
#define RM_K 2
#endif
#ifndef TM_K
#define TM_K 2
#endif
#ifndef RD_F
#define RD_F 4
#endif
#ifndef RM_F
#define RM_F 4
#endif
#ifndef TM_F
#define TM_F 2
#endif
/* array bounds for the tiles: the larger of the decode and gemm row counts */
#define RA_Q (RD_Q > RM_Q ? RD_Q : RM_Q)
#define RA_K (RD_K > RM_K ? RD_K : RM_K)
#define RA_F (RD_F > RM_F ? RD_F : RM_F)

/* ---- drivers ---- */

/* Row tiles outer (RMAX weight rows stay in L1 while all tokens stream past),
 * token tiles inner; w_row/a_row: bytes per row. Edge tiles repeat the last
 * valid row/token pointer and drop the duplicate results. */
#define GEMM_TILES(RMAX, TMAX, TILE_CALL)                                                           \
    for (int64_t r0 = 0; r0 < m; r0 += RMAX) {                                                     \
        const int rn = (int)MIN_(RMAX, m - r0);                                                    \
        const uint8_t *wp[RMAX];                                                                   \
        for (int r = 0; r < RMAX; r++) wp[r] = (const uint8_t *)w + (r0 + MIN_(r, rn - 1)) * w_row; \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TMAX) {                                             \
            const int tn = (int)MIN_(TMAX, n_tok - t0);                                            \
            const uint8_t *apt[TMAX];                                                              \
            for (int t = 0; t < TMAX; t++) apt[t] = (const uint8_t *)a + (t0 + MIN_(t, tn - 1)) * a_row; \
            float res[RMAX * TMAX];                                                                \
            TILE_CALL(RMAX, TMAX);                                                                 \
            for (int t = 0; t < tn; t++)                                                           \
                for (int r = 0; r < rn; r++) out[(t0 + t) * ldo + r0 + r] = res[r * TMAX + t];      \
        }                                                                                          \
    }

/* Two tile shapes per kernel: RDEC x 1 for decode (n_tok = 1) and RMAX x TMAX.
 * Decode streams each weight once (from DRAM on a real model): its tiles
 * prefetch the next tile's rows (RDEC * w_row bytes ahead), which doubles the
 * bandwidth reached from memory on x86 hardware. */
#define GEMM_DRIVER(RDEC, DEC_CALL, RMAX, TMAX, GEMM_CALL)                                          \
    if (n_tok == 1) {                                                                              \
        GEMM_TILES(RDEC, 1, DEC_CALL)                                                              \
    } else {                                                                                       \
        GEMM_TILES(RMAX, TMAX, GEMM_CALL)                                                          \
    }

/* CALL(Rc, Tc) computes the Rc x Tc tile from wp, apt into res. */
#define Q32_CALL(Rc, Tc) tile_q32(KIND, (Rc), (Tc), k / 32, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define K_CALL_tile_q4_K(Rc, Tc) tile_q4_K((Rc), (Tc), k / QK_K, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define K_CALL_tile_q6_K(Rc, Tc) tile_q6_K((Rc), (Tc), k / QK_K, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)
#define F_CALL(Rc, Tc) tile_f(KIND, (Rc), (Tc), k, wp, apt, res, (Tc) == 1 ? (Rc) * w_row : 0)

/* vec_dot is the 1 x 1 tile; gemm the driver. GEMM_CALL: the gemm tile of the
 * 32-blocks (Q32_CALL, or an ISA's own, e.g. AVX-512's token pairs). An ISA may
 * define Q32_GEMM_PANEL(kind, m, n_tok, k, w, a, out, ldo): a whole-product path
 * tried first (nonzero: done), e.g. AVX-512's packed panels for prefill. */
#ifndef Q32_GEMM_PANEL
#define Q32_GEMM_PANEL(kind, m, n_tok, k, w, a, out, ldo) 0
#endif
/* K_GEMM_PANEL(tile, ...): the same for the K-quants (tile: tile_q4_K, tile_q6_K) */
#ifndef K_GEMM_PANEL
#define K_GEMM_PANEL(tile, m, n_tok, k, w, a, out, ldo) 0
#endif
#define DEFINE_Q32(name, kind, GEMM_CALL)                                                          \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                      \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                  \
        float res[1];                                                                              \
        tile_q32(kind, 1, 1, n / 32, wp, ap, res, 0);                                              \
        return res[0];                                                                             \
    }                                                                                              \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,  \
                               float *out, int64_t ldo) {                                          \
        enum { KIND = kind };                                                                      \
        if (Q32_GEMM_PANEL(kind, m, n_tok, k, w, a, out, ldo)) return;                             \
        const int64_t w_row = k / 32 * kw_size[kind], a_row = k / 32 * ka_size[kind];              \
        GEMM_DRIVER(RD_Q, Q32_CALL, RM_Q, TM_Q, GEMM_CALL)                                         \
    }

#define DEFINE_K(name, tile, wsize)                                                                \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                      \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                  \
        float res[1];                                                                              \
        tile(1, 1, n / QK_K, wp, ap, res, 0);                                                      \
        return res[0];                                                                             \
    }                                                                                              \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,  \
                               float *out, int64_t ldo) {                                          \
        if (K_GEMM_PANEL(tile, m, n_tok, k, w, a, out, ldo)) return;                               \
        const int64_t w_row = k / QK_K * (wsize), a_row = k / QK_K * Q8K_SIZE;                     \
        GEMM_DRIVER(RD_K, K_CALL_##tile, RM_K, TM_K, K_CALL_##tile)                                \
    }

#define DEFINE_F(name, kind, wes)                                                                  \
    float NAME(kvc_vec_dot_##name)(int64_t n, const void *w, const void *a) {                      \
        const uint8_t *wp[1] = {w}, *ap[1] = {a};                                                  \
        float res[1];                                                                              \
        tile_f(kind, 1, 1, n, wp, ap, res, 0);                                                     \
        return res[0];                                                                             \
    }                                                                                              \
    void NAME(kvc_gemm_##name)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,  \
                               float *out, int64_t ldo) {                                          \
        enum { KIND = kind };                                                                      \
        const int64_t w_row = k * (wes), a_row = k * 4;                                            \
        GEMM_DRIVER(RD_F, F_CALL, RM_F, TM_F, F_CALL)                                              \
    }

/* The integer weight types' kernels. */
#define DEFINE_INT_KERNELS(Q32_GEMM_CALL)                                                          \
    DEFINE_Q32(q8_0_q8_0, K_Q8_0, Q32_GEMM_CALL)                                                   \
    DEFINE_Q32(q4_0_q8_0, K_Q4_0, Q32_GEMM_CALL)                                                   \
    DEFINE_Q32(q5_0_q8_0, K_Q5_0, Q32_GEMM_CALL)                                                   \
    DEFINE_Q32(q4_1_q8_1, K_Q4_1, Q32_GEMM_CALL)                                                   \
    DEFINE_K(q4_K_q8_K, tile_q4_K, Q4K_SIZE)                                                       \
    DEFINE_K(q6_K_q8_K, tile_q6_K, Q6K_SIZE)

/* The float weight types' kernels. */
#define DEFINE_FLOAT_KERNELS()                                                                     \
    DEFINE_F(f32_f32, K_F32, 4)                                                                    \
    DEFINE_F(f16_f32, K_F16, 2)                                                                    \
    DEFINE_F(bf16_f32, K_BF16, 2)

#endif /* KVC_GEMM_TILES_H */
