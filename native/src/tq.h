/* tq.h — TurboQuant KV-cache rows (DESIGN §4): layout of a head row, encode,
 * and the scalar scoring/accumulation kernels; SIMD variants in cpu/tq_avx2.c.
 *
 * A head row is the concatenation of its groups; a group of m channels with
 * b-bit codes is laid out as
 *     [fp16 scale][fp16 residual norm, QJL only][codes: m*b bits, little-endian
 *     bitstream][QJL sign bits: m bits, QJL only]
 * Every arithmetic detail (signs, block Walsh–Hadamard order, rounding of the
 * codes) matches kvconvert/turboquant.py, so both produce identical codes. */
#ifndef KVC_TQ_H
#define KVC_TQ_H

#include <stddef.h>
#include <stdint.h>

#define TQ_MAX_GROUPS 2
#define TQ_MAX_BITS 10
#define TQ_MAX_DIM 1024

typedef struct {
    int m, bits, qjl;
    int off;              /* byte offset of the group within the head row */
    int codes_off, qjl_off, bytes;
    const float *cb;      /* (1 << bits) centroids */
    double *bounds;       /* (1 << bits) - 1 midpoints, owned */
    float *signs, *signs2; /* (m) ±1 for the rotation and (QJL) the JL map, owned */
    float qjl_c;          /* sqrt(pi/2) / sqrt(m) */
} tq_group;

typedef struct {
    int d, n_groups, row_bytes;
    tq_group g[TQ_MAX_GROUPS];
    const int *perm;      /* (d) channel order, or NULL */
} tq_layout;

/* Build a layout for one layer (free with tq_layout_free). Returns 0 or a kvc status. */
int tq_layout_init(tq_layout *L, int d, int n_hi, int hi_bits, int lo_bits, int qjl_hi, int qjl_lo,
                   const float *cb_hi, const float *cb_lo, const int *perm, uint64_t seed, int layer);
void tq_layout_free(tq_layout *L);

long long tq_group_bytes(int m, int bits, int qjl);
void tq_signs(uint64_t seed, int layer, int group, int stream, int m, float *out);
void tq_wht(float *v, int m); /* block Walsh–Hadamard, orthonormal and its own inverse */

/* x: (d) head vector, in cache channel order (already permuted) -> row. scratch: (2*d) floats */
void tq_encode(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch);

/* A query prepared for scoring: per group the rotated query and (QJL) its JL image. */
typedef struct {
    float qr[TQ_MAX_DIM];
    float w[TQ_MAX_DIM];
} tq_query;
void tq_prepare_query(const tq_layout *L, const float *q, tq_query *out); /* q: (d) permuted */

/* Kernels, scalar twins (tq.c) and SIMD (cpu/tq_avx2.c), for nq queries sharing
 * the rows (a GQA group), decoding each row once:
 * score: out[r*n + j] = <q[r], key j> estimate, for n rows at stride row_bytes.
 * accum: acc[r*d ..] (rotated domain) += sum_j p[r*n + j] * decoded row j. */
typedef void (*tq_score_fn)(const tq_layout *L, const tq_query *q, int nq, const uint8_t *rows, int n, float *out);
typedef void (*tq_accum_fn)(const tq_layout *L, const float *p, int nq, const uint8_t *rows, int n, float *acc);
void tq_score_ref(const tq_layout *L, const tq_query *q, int nq, const uint8_t *rows, int n, float *out);
void tq_accum_ref(const tq_layout *L, const float *p, int nq, const uint8_t *rows, int n, float *acc);
tq_score_fn tq_score_for(int impl);
tq_accum_fn tq_accum_for(int impl);

/* Rotated-domain accumulator (d) -> head vector (d) in cache channel order. */
void tq_unrotate(const tq_layout *L, float *acc);

/* code i of a b-bit little-endian bitstream */
static inline unsigned tq_get_code(const uint8_t *codes, int i, int b) {
    unsigned bit = (unsigned)i * (unsigned)b, byte = bit >> 3, sh = bit & 7;
    unsigned v = codes[byte] | ((unsigned)codes[byte + 1] << 8) | ((unsigned)codes[byte + 2] << 16);
    return (v >> sh) & ((1u << b) - 1);
}

#endif
