/* attn.h — one key tile of flash attention (online softmax) for a block of query
 * rows of one KV head: the kernel the standard (f32/f16/q8_0/q4_0) KV caches
 * attend with (cpu/kv_cache.c: kv_attend), per instruction set in the kernel
 * table (kernels.h). The scalar twin is attn_ref.c; cpu/attn_tile.h holds the
 * SIMD build (cpu/attn_avx2.c, cpu/attn_avx512.c), which computes the same
 * formulas in the same order with the same fused multiply-adds, so it agrees
 * with the twin bit for bit (tests/test_runtime_ops.py).
 *
 * For query row i (< nq <= KVC_ATTN_ROWS) and tile key j (< kc):
 *   s[j][i] = (sum over d ascending of fma(k[j][d], qt[d][i])) * scale   (-inf where row i
 *             does not see key j: j < lo[i] or j >= hi[i])
 *   mn      = max(m[i], max_j s[j][i]);  ms = max(mn, -FLT_MAX)  (a row that has
 *             seen nothing yet keeps exp(-inf - ms) = 0)
 *   p[j][i] = exp(s[j][i] - ms);  a = exp(m[i] - ms)
 *   l[i]    = l[i] * a + sum over j ascending of p[j][i];  m[i] = mn
 *   o[i][d] = o[i][d] * a, then += p[j][i] * v[j][d] over j ascending (fma)
 * After the last tile, row i's attention output is o[i] / l[i]. */
#ifndef KVC_ATTN_H
#define KVC_ATTN_H

#define KVC_ATTN_ROWS 64 /* query rows per call at most; the column count of qt and st */
#define KVC_ATTN_KEYS 64 /* keys per tile at most (kc) */

/* scale: the attention scale (the scores are multiplied by it, a rounding of its own)
 * qt (D, KVC_ATTN_ROWS): the rows' queries, transposed (column i: row i; columns >= nq
 *     finite, e.g. 0)
 * k, v (kc, D): the tile's key and value rows as floats
 * lo, hi (nq): row i sees tile keys lo[i] <= j < hi[i]; both NULL: every row sees all kc
 * m, l (KVC_ATTN_ROWS): running max and sum of each row (start: -inf, 0)
 * o (nq, D): running weighted sum of values (start: 0)
 * st (kc, KVC_ATTN_ROWS): scratch (the tile's scores, then weights)
 * D >= 1; SIMD builds run the scalar twin when D is not a multiple of their width. */
typedef void (*kvc_attn_tile_fn)(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v,
                                 const int *lo, const int *hi, float *m, float *l, float *o, float *st);

void kvc_attn_tile_ref(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                       const int *hi, float *m, float *l, float *o, float *st);
#if defined(__x86_64__)
void kvc_attn_tile_avx2(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                        const int *hi, float *m, float *l, float *o, float *st);
void kvc_attn_tile_avx512(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                          const int *hi, float *m, float *l, float *o, float *st);
#endif

#endif
