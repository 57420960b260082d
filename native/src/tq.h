/* tq.h — TurboQuant KV-cache rows (docs/design.md §4): the layout of a head row
 * and its rotations (tq.c), the kernels (encode, score, accumulate) with their
 * scalar twins (tq_ref.c) and SIMD variants (cpu/tq_avx2.c, cpu/tq_avx512.c,
 * cpu/tq_neon.c); which one runs is the kernel table's choice (kernels.h).
 *
 * A head row is the concatenation of its groups; a group of m channels with
 * b-bit codes is laid out as
 *     [scale: fp16, or 1 byte (8-bit scales)][fp16 residual norm, QJL only]
 *     [codes: m*b bits, little-endian bitstream][QJL sign bits: m bits, QJL only]
 * Trellis codes (tmem > 0, docs/design.md §4) store the same m*b bits, but code i decodes to
 * cb[state_i], state_i = the last b + tmem bits of the code ring up to code i (tq_trellis_values);
 * the encoder picks the codes by a tail-biting Viterbi search (tq_ref.c).
 * An 8-bit scale is a step e of a log grid: ŝ = 2^((e + base)/32) for e = 1..255 and
 * ŝ = 0 for e = 0, base chosen per layer and side (tq_scale8_value; docs/design.md §4).
 * Every arithmetic detail (signs, block Walsh–Hadamard order, rounding of the
 * codes) matches kvconvert's numpy twin of the cache, so both produce identical codes. */
#ifndef KVC_TQ_H
#define KVC_TQ_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

#define TQ_MAX_GROUPS 2
#define TQ_MAX_BITS 10
#define TQ_MAX_DIM 1024
#define TQ_SCALE8_BASE_MIN (-2048) /* range of an 8-bit scale grid's base: ŝ within [2^-64, 2^72] */
#define TQ_SCALE8_BASE_MAX 2048
#define TQ_TRELLIS_MAX_MEM 6     /* trellis memory bits; states 1 << (bits + tmem) */
#define TQ_TRELLIS_MAX_STATE 12  /* bits + tmem */
#define TQ_TRELLIS_MAX_M 256     /* channels of a trellis group (the encoder's stack buffers) */
#define TQ_TRELLIS_CTX (1 << TQ_TRELLIS_MAX_MEM) /* row stride of a trellis search's back pointers */

typedef struct {
    int m, bits, qjl;
    int off;              /* byte offset of the group within the head row */
    int codes_off, qjl_off, rnorm_off, bytes;
    float *scale_lut;     /* (256) 8-bit scales: ŝ of each step e, owned; NULL: fp16 scales */
    double *scale_mid;    /* (255) midpoints between consecutive scale_lut entries, owned */
    const float *cb;      /* (1 << bits) centroids, or (1 << (bits + tmem)) trellis values */
    double *bounds;       /* (1 << bits) - 1 midpoints, owned; NULL for trellis codes */
    int tmem;             /* trellis memory bits (1..TQ_TRELLIS_MAX_MEM), 0: Lloyd–Max codes */
    float *signs, *signs2; /* (m) ±1 for the rotation and (QJL) the JL map, owned */
    int16_t *mix;         /* (m) cross-block mixing order (tq_mix_order), owned; NULL when m is a power of two */
    float *mix_signs;     /* (m) ±1 applied after it (stream 2 of seed 0), owned, or NULL */
    float qjl_c;          /* sqrt(pi/2) / sqrt(m) */
} tq_group;

typedef struct {
    int d, n_groups, row_bytes;
    tq_group g[TQ_MAX_GROUPS];
    const int *perm;      /* (d) channel order, or NULL */
    const float *basis;   /* (n_head_kv, d, d) K basis (kvc_tq_layer.basis), or NULL; not owned */
    const float *qbasis;  /* (n_head_kv, d, d) its query twin, or NULL; not owned */
    int basis_block;      /* > 0: the basis follows RoPE in blocks of this many positions (kvc_tq_layer) */
} tq_layout;

/* Build a layout for one layer (free with tq_layout_free). scale8: 1 for 8-bit scales on the
 * grid of scale_base (TQ_SCALE8_BASE_MIN..MAX), 0 for fp16 scales. trellis: memory bits of
 * trellis codes for each group that can hold them (bits + trellis <= TQ_TRELLIS_MAX_STATE, at most
 * TQ_TRELLIS_MAX_M channels); the other keeps Lloyd–Max codes; QJL, or no group that can: refused
 * (0: Lloyd–Max codes). Returns 0 or a kvc status. */
int tq_layout_init(tq_layout *L, int d, int n_hi, int hi_bits, int lo_bits, int qjl_hi, int qjl_lo,
                   const float *cb_hi, const float *cb_lo, const int *perm, uint64_t seed, int layer, int scale8,
                   int scale_base, int trellis);
void tq_layout_free(tq_layout *L);

long long tq_group_bytes(int m, int bits, int qjl, int scale8);
/* ŝ of step e (1..255) of the grid with this base, as float: 2^((e + base)/32), built from
 * the float32 values of 2^(k/32), k = 0..31, times a power of two (exact; turboquant.py
 * builds the same) */
float tq_scale8_value(int e, int base);

/* a group's decoded scale, and (QJL groups) its residual norm, in row */
static inline float tq_group_scale(const tq_group *g, const uint8_t *row) {
    return g->scale_lut ? g->scale_lut[row[g->off]] : kvc_fp16_to_fp32(kvc_ld_half(row + g->off));
}
static inline float tq_group_rnorm(const tq_group *g, const uint8_t *row) {
    return kvc_fp16_to_fp32(kvc_ld_half(row + g->rnorm_off));
}
void tq_signs(uint64_t seed, int layer, int group, int stream, int m, float *out);
void tq_wht(float *v, int m); /* block Walsh–Hadamard, orthonormal and its own inverse */
void tq_mix_order(int m, int16_t *order); /* (m) z[j] = y[order[j]] between the two block transforms */
/* v (m = g->m) in place: v <- R v, R the group's rotation with these signs (g->signs, or
 * g->signs2 for the QJL map); tmp: (m) scratch */
void tq_rotate(const tq_group *g, const float *signs, float *v, float *tmp);

/* x: (d) head vector, in cache channel order (already permuted) -> row. scratch: (2*d) floats.
 * A group's rotation is R = H·diag(signs) for a power-of-two size; otherwise
 * H·diag(mix_signs)·P·H·diag(signs) with H the block transform of the binary expansion and
 * P the mixing order, so that energy spreads across blocks too. */
typedef void (*tq_encode_fn)(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch);
void tq_encode_ref(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch); /* tq_ref.c */
/* Least-squares state path (m) of u (m = g->m, unit-norm coordinates) through a trellis group's
 * states (kvcache/trellis.py's _viterbi: the same float32 arithmetic in the same order, ties to the
 * smaller state; float32 costs: twice the states per SIMD vector of doubles, and a path differs
 * from the float64 one only where two paths' errors agree to ~1e-7). wrap < 0: free ends; else
 * the path starts in a state whose top tmem bits are wrap and ends in one whose low tmem bits are
 * wrap. Implementations give identical paths. */
typedef void (*tq_viterbi_fn)(const tq_group *g, const float *u, int wrap, unsigned *path);
void tq_viterbi_ref(const tq_group *g, const float *u, int wrap, unsigned *path); /* tq_ref.c */
/* Its ends, shared by every implementation (tq_ref.c): cost (1 << (bits + tmem)) of the first
 * coordinate u0, states outside wrap's start set at +inf; after the last coordinate the end state,
 * the first allowed state of least cost (wrap < 0: any; else those whose low tmem bits are wrap;
 * the SIMD tables find the same state their own way on a full scan); and the path (m) traced back
 * from it through back (m rows of TQ_TRELLIS_CTX: each context's dropped top bits of its best
 * predecessor). */
void tq_viterbi_first(const tq_group *g, float u0, int wrap, float *cost);
int tq_viterbi_end(const tq_group *g, const float *cost, int wrap);
void tq_viterbi_trace(const tq_group *g, int end, const uint8_t *back, unsigned *path);
/* tq_encode_ref with another trellis search (the SIMD tables' encoders are this with their own) */
void tq_encode_with(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch,
                    tq_viterbi_fn viterbi);

/* Queries prepared for scoring, packed: row r of qr is query r rotated per group,
 * row r of w its JL image (written and read for QJL groups only). */
typedef struct {
    float *qr; /* (nq, d) */
    float *w;  /* (nq, d) */
} tq_query;
void tq_prepare_query(const tq_layout *L, const float *q, float *qr, float *w); /* q (d) permuted -> qr, w (d) */

/* Kernels, scalar twins (tq_ref.c) and SIMD (cpu/tq_*.c), for nq queries sharing
 * the rows (a block of query tokens × their GQA group), decoding each row once.
 * Causal visibility: query r sees rows 0 .. tq_visible(r, grp, n0) - 1, i.e. grp
 * consecutive queries per token and token i sees n0 + i rows (grp = nq: all see
 * n0). Rows are read at stride row_bytes up to the last visible one.
 * score: out[r*ldo + j] = <q_r, key j> estimate for visible j; other entries untouched.
 * accum: acc[r*d ..] (rotated domain) += sum over visible j of p[r*ldp + j] * decoded row j. */
static inline int tq_visible(int r, int grp, int n0) { return n0 + r / grp; }
static inline int tq_first_seeing(int j, int grp, int n0) { return j < n0 ? 0 : (j - n0 + 1) * grp; } /* of row j */
static inline int tq_rows_read(int nq, int grp, int n0) { return nq > 0 ? tq_visible(nq - 1, grp, n0) : 0; }
typedef void (*tq_score_fn)(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows,
                            float *out, int ldo);
typedef void (*tq_accum_fn)(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0,
                            const uint8_t *rows, float *acc);
void tq_score_ref(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                  int ldo);
void tq_accum_ref(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                  float *acc);
#if defined(__x86_64__)
/* cpu/tq_avx2.c (AVX2 + FMA) and cpu/tq_avx512.c (AVX-512 F/BW/VL/DQ); pure functions over their arguments */
void tq_viterbi_avx2(const tq_group *g, const float *u, int wrap, unsigned *path);
void tq_encode_avx2(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch);
void tq_viterbi_avx512(const tq_group *g, const float *u, int wrap, unsigned *path);
void tq_encode_avx512(const tq_layout *L, int scale_mode, const float *x, uint8_t *row, float *scratch);
void tq_score_avx2(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                   int ldo);
void tq_accum_avx2(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                   float *acc);
void tq_score_avx512(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                     int ldo);
void tq_accum_avx512(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                     float *acc);
#endif
#if defined(__aarch64__)
/* cpu/tq_neon.c (NEON is on every aarch64 CPU); pure functions over their arguments */
void tq_score_neon(const tq_layout *L, const tq_query *q, int nq, int grp, int n0, const uint8_t *rows, float *out,
                   int ldo);
void tq_accum_neon(const tq_layout *L, const float *p, int ldp, int nq, int grp, int n0, const uint8_t *rows,
                   float *acc);
#endif

/* Test entry point, exported but not part of the C ABI (tests load it with ctypes):
 * encode keys (n, d) with the layout given (no permutation, least-squares scales),
 * score the nq queries q (nq, d) against them into scores (nq, n) and accumulate
 * p (nq, n) into acc (nq, d) (zeroed first; returned unrotated), with the causal
 * visibility (grp, n0) above. Entries of scores past a query's visibility are left
 * untouched. Returns a kvc status. */
int kvc_tq_block_test(int impl, int d, int n_hi, int hi_bits, int lo_bits, int qjl_hi, int qjl_lo, const float *cb_hi,
                      const float *cb_lo, unsigned long long seed, int layer, int scale8, int scale_base, int trellis,
                      const float *keys, int n, const float *q, int nq, int grp, int n0, const float *p, float *scores,
                      float *acc);

/* Rotated-domain accumulator (d) -> head vector (d) in cache channel order. */
void tq_unrotate(const tq_layout *L, float *acc);

/* code i of a b-bit little-endian bitstream */
static inline unsigned tq_get_code(const uint8_t *codes, int i, int b) {
    unsigned bit = (unsigned)i * (unsigned)b, byte = bit >> 3, sh = bit & 7;
    unsigned v = codes[byte] | ((unsigned)codes[byte + 1] << 8) | ((unsigned)codes[byte + 2] << 16);
    return (v >> sh) & ((1u << b) - 1);
}

/* vals (g->m): the values of a trellis group's codes. State i is the last bits + tmem bits of
 * the code ring up to code i (code i lowest), so the ring's last codes start it (kvcache/trellis.py's
 * states); m·bits >= bits + tmem (tq_layout_init) keeps a state within one lap. */
static inline void tq_trellis_values(const tq_group *g, const uint8_t *codes, float *vals) {
    const int b = g->bits, m = g->m;
    const unsigned mask = (1u << (b + g->tmem)) - 1;
    const int span = (b + g->tmem + b - 1) / b; /* codes a state spans */
    unsigned s = 0;
    for (int i = m - span + 1; i < m; i++) s = (s << b) | tq_get_code(codes, i, b);
    for (int i = 0; i < m; i++) {
        s = ((s << b) | tq_get_code(codes, i, b)) & mask;
        vals[i] = g->cb[s];
    }
}

#endif
