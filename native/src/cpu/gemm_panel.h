/* gemm_panel.h — the packed-panel GEMM for prefill (many tokens against one
 * weight matrix): 32-element block weights (Q8_0, Q4_0, Q5_0 x Q8_0; Q4_1 x
 * Q8_1) and the K-quants Q4_K, Q6_K x Q8_K; AVX-512 VNNI: gemm_panel_avx512.c. The x86 tiled gemm hands a product
 * to it first (gemm_tiles.h, Q32_GEMM_PANEL) and runs its own tiles when it
 * declines.
 *
 * Why: the register tiles (dot_x86.h) convert and scale every block's eight
 * partial sums in float, three float instructions per VNNI dot. Here 16 weight
 * rows are unpacked once into bytes and interleaved (lane r of a vector is
 * row r), so one VNNI dot per 4 elements accumulates 16 rows' block sums
 * exactly in int32, and the float work is one convert, two multiplies and an
 * add per 16 rows x 32 elements.
 *
 * Results are bit-identical to the scalar reference (quants_ref.c): the same
 * exact integer sums per block, then its float operations in its order. */
#ifndef KVC_GEMM_PANEL_H
#define KVC_GEMM_PANEL_H

#include <stdint.h>

/* Fewest tokens the panel path takes: below this, packing costs more than the
 * register tiles lose (decode is n_tok = 1). The tiles round the same way
 * (dot_x86.h), so the choice never changes a result. */
#define KVC_PANEL_MIN_TOK 8

/* out[t*ldo + r] = dot(w row r, a row t) for kind (gemm_tiles.h: K_Q8_0, K_Q4_0,
 * K_Q5_0, K_Q4_1). Returns 1 when computed; 0 (nothing written) when the product
 * is not one it takes (too few tokens) or its scratch cannot be allocated. */
int kvc_gemm_panel_q32_avx512(int kind, int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,
                              float *out, int64_t ldo);

/* The same for Q4_K and Q6_K weights x Q8_K activations (n_tok >= KVC_PANEL_MIN_TOK). */
int kvc_gemm_panel_q4_K_avx512(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                               int64_t ldo);
int kvc_gemm_panel_q6_K_avx512(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out,
                               int64_t ldo);

#endif /* KVC_GEMM_PANEL_H */
