/* kvc_metal.h — what the Metal kernels (*.metal) and the C/Objective-C host
 * (backend_metal.m, the Linux harness tests/metal/check.cpp) share: the weight
 * block structs, the TurboQuant layout a kernel reads, and every kernel's
 * argument struct, with static_asserts on sizes on both sides (as ggml shares
 * ggml-metal-impl.h / ggml-common.h between its host and its shaders).
 *
 * Compiled three ways: as MSL (__METAL_VERSION__), as C++ against the Linux shim
 * (KVM_SHIM, native/src/metal/shim/), and as C (the host; the field offsets are
 * checked against native/src/quants.h and tq.h in tests/metal/offsets.c).
 * Only fixed-width fields: int32_t, float, and 16-bit halves; no pointers. */
#ifndef KVC_METAL_H
#define KVC_METAL_H

#if defined(__METAL_VERSION__) || defined(KVM_SHIM)
typedef half kvm_half; /* MSL's (the shim's: _Float16) binary16 */
#else
#include <assert.h>
#include <stdint.h>
typedef uint16_t kvm_half; /* IEEE binary16 bits (quants.h's kvc_half) */
#endif

/* ---- weight blocks: GGUF's layouts (quants.h), 2-byte aligned ---- */
#define KVM_QK 32     /* Q8_0, Q4_0 block; the matvec's chunk of K */
#define KVM_QK_K 256  /* Q4_K, Q6_K super-block */

typedef struct {
    kvm_half d;       /* x = d * (q - 8) */
    uint8_t qs[16];   /* element j: low nibble of qs[j]; j + 16: high nibble */
} kvm_block_q4_0;

typedef struct {
    kvm_half d;       /* x = q * d */
    int8_t qs[32];
} kvm_block_q8_0;

typedef struct {
    kvm_half d, dmin; /* x = d * sc[j] * q - dmin * m[j], 6-bit sc/m packed in scales */
    uint8_t scales[12];
    uint8_t qs[128];  /* qs[32*i + l]: low nibble element 64i + l, high 64i + 32 + l */
} kvm_block_q4_K;

typedef struct {
    uint8_t ql[128];  /* 4 low bits */
    uint8_t qh[64];   /* 2 high bits */
    int8_t scales[16];
    kvm_half d;       /* x = d * scales[j] * (q - 32) */
} kvm_block_q6_K;

static_assert(sizeof(kvm_half) == 2, "kvm_half size");
static_assert(sizeof(kvm_block_q4_0) == 18, "kvm_block_q4_0 size");
static_assert(sizeof(kvm_block_q8_0) == 34, "kvm_block_q8_0 size");
static_assert(sizeof(kvm_block_q4_K) == 144, "kvm_block_q4_K size");
static_assert(sizeof(kvm_block_q6_K) == 210, "kvm_block_q6_K size");

/* Weight types the matvec runs: kvc_type ids (kvc.h / GGML). */
#define KVM_TYPE_F32 0
#define KVM_TYPE_F16 1
#define KVM_TYPE_Q4_0 2
#define KVM_TYPE_Q8_0 8
#define KVM_TYPE_Q4_K 12
#define KVM_TYPE_Q6_K 14
#define KVM_TYPE_BF16 30

/* ---- TurboQuant (tq.h, docs/design.md §4) ----
 * A layer's layout as kernels read it. Per-layer tables live in two buffers:
 * a float table (codebooks, boundaries, ±1 signs) and an int table (channel
 * permutation, mixing orders); the fields below are offsets into them, -1 when
 * absent. Built from a tq_layout by kvm_tq_tables (tq_tables.h). */
#define KVM_TQ_MAX_GROUPS 2
#define KVM_TQ_MAX_DIM 256  /* head_dim the kernels' threadgroup buffers are sized for */
#define KVM_TQ_MAX_CB 1024  /* centroids of one group: up to 10 bits */

typedef struct {
    int32_t m, bits, qjl, start;                  /* channels [start, start + m) of the head vector */
    int32_t off, codes_off, qjl_off, bytes;       /* bytes within a row, as tq_group */
    int32_t cb, bounds, signs, signs2, mix_signs; /* float-table offsets: (2^bits), (2^bits - 1), (m), (m), (m) */
    int32_t mix;                                  /* int-table offset of the mixing order (m), -1: m a power of two */
    float qjl_c;                                  /* sqrt(pi/2) / sqrt(m) */
    int32_t pad;
} kvm_tq_group;

typedef struct {
    int32_t d, n_groups, row_bytes;
    int32_t perm; /* int-table offset of the channel order (d), -1: none */
    kvm_tq_group g[KVM_TQ_MAX_GROUPS];
} kvm_tq_layout;

static_assert(sizeof(kvm_tq_group) == 64, "kvm_tq_group size");
static_assert(sizeof(kvm_tq_layout) == 16 + 2 * 64, "kvm_tq_layout size");

/* ---- kernel arguments (buffer 0 of each kernel, setBytes) ---- */

/* kvm_rms_norm: rows of n floats; out = x / sqrt(mean(x²) + eps) * w (w: (n), shared by rows) */
typedef struct {
    int32_t n, n_rows;
    float eps;
    int32_t pad;
} kvm_norm_args;

/* kvm_rope: x (T, n_heads, D) in place. Pair j of a head is (j, j + D/2) (NEOX) or
 * (2j, 2j + 1) (interleaved) and rotates by column src[j] of cs (T, D/2, 2): the
 * host's cos/sin table (angles in double, as the CPU's rope_table). has_mean: first
 * subtract mean (n_heads, D) from every token (K centering, before RoPE). */
typedef struct {
    int32_t D, n_heads, T, pairing; /* pairing: KVC_ROPE_NEOX 0, KVC_ROPE_INTERLEAVED 1 */
    int32_t has_mean;
    int32_t pad[3];
} kvm_rope_args;

/* kvm_swiglu / kvm_geglu: out = act(g) * u over n floats; kvm_add: out = a + b;
 * kvm_scale: x *= s */
typedef struct {
    int32_t n;
    float s;
    int32_t pad[2];
} kvm_elem_args;

/* kvm_matvec_<type>: y[t*ldy + r] = dot(w row r, x[t*ldx ..]) (+ bias[r]) for rows r < M,
 * tokens t < T; w rows are row_bytes apart. K a multiple of 32 (256 for the K-quants). */
typedef struct {
    int32_t K, M, T, row_bytes;
    int32_t ldx, ldy, has_bias;
    int32_t pad;
} kvm_matvec_args;
#define KVM_MATVEC_SG 4     /* rows (one per simdgroup) per threadgroup */
#define KVM_MATVEC_TOKENS 8 /* tokens per threadgroup: each weight chunk read once for them */

/* kvm_tq_store: encode T tokens × n_kv_head head vectors into one layer's cache,
 * rows at cache + (h * n_ctx + pos0 + t) * L.row_bytes. kind 0 (K): x is post-RoPE
 * (and centered), permuted by L.perm before encoding; positions < n_sink also
 * keep fp16(x) (unpermuted) in sink (n_kv_head, n_sink, D). kind 1 (V): x − mean
 * (has_mean) is encoded; positions < n_sink keep fp16(value − decoded row). One
 * threadgroup per (token, head), threads = KVM_STORE_THREADS. */
typedef struct {
    int32_t D, n_kv_head, T, pos0;
    int32_t n_ctx, scale_mode, kind, has_mean;
    int32_t n_sink;
    int32_t pad[3];
    kvm_tq_layout L;
} kvm_tq_store_args;
#define KVM_STORE_THREADS 64

/* kvm_attention: one threadgroup per (query token t, query head hq), the row
 * q + t*q_stride + hq*D; token t sees keys 0 .. n_past + t (window: the last
 * `window` of them). Scores from the compressed K rows (TQ: from the codes,
 * codebook in threadgroup memory; f16: the halves), exact sink scores, the
 * centering correction, ×scale, softmax; V accumulated from the codes in the
 * rotated domain and un-rotated once, sinks' corrections and the V mean added.
 * scores: (T * n_head, n_ctx) device scratch. */
typedef struct {
    int32_t D, n_head, n_kv_head, T;
    int32_t n_ctx, n_past, window, q_stride;
    float scale;
    int32_t k_tq, v_tq;     /* 1: TurboQuant rows (layouts below), 0: f16 rows of D halves */
    int32_t n_sink;         /* TQ sinks: fp16 rows beside the codes (kvm_tq_store_args) */
    int32_t k_center;       /* add q·R_pos·mean: k_mean (n_kv_head, D), k_pairs (n_kv_head, D/2) */
    int32_t pairing;        /* RoPE pairing, for the centered pairs' channels */
    int32_t has_v_mean;     /* add v_mean (n_kv_head, D) */
    int32_t pad;
    kvm_tq_layout LK, LV;
} kvm_attn_args;
#define KVM_ATTN_THREADS 128

static_assert(sizeof(kvm_norm_args) == 16, "kvm_norm_args size");
static_assert(sizeof(kvm_rope_args) == 32, "kvm_rope_args size");
static_assert(sizeof(kvm_elem_args) == 16, "kvm_elem_args size");
static_assert(sizeof(kvm_matvec_args) == 32, "kvm_matvec_args size");
static_assert(sizeof(kvm_tq_store_args) == 48 + 144, "kvm_tq_store_args size");
static_assert(sizeof(kvm_attn_args) == 64 + 2 * 144, "kvm_attn_args size");

#endif /* KVC_METAL_H */
