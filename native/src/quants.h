/* quants.h — block layouts of the weight/activation types, fp16/bf16 scalar
 * conversions, and the signatures of the weight kernels (quantize, dequantize,
 * vec_dot, gemm): the scalar twins (quants_ref.c) and the SIMD builds
 * (cpu/quants_avx2*.c, cpu/quants_avx512*.c, cpu/quants_neon*.c) that the
 * kernel tables of cpu/dispatch.c (kernels.h) point at.
 *
 * Block layouts are GGUF's and must stay bit-compatible with llama.cpp files:
 * they follow ggml/src/ggml-common.h (llama.cpp, MIT), sizes checked below.
 * Kernels take unaligned byte pointers (a tensor in a mmapped GGUF has no
 * alignment guarantee beyond 1), so multi-byte fields are read with memcpy. */
#ifndef KVC_QUANTS_H
#define KVC_QUANTS_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <assert.h>

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t kvc_half; /* IEEE binary16 bits */

/* Blocks have no padding; packed makes their alignment 1 so that block pointers
 * at any byte offset are valid C (the sizes are unchanged, checked below). */
#if defined(__GNUC__)
#define KVC_PACKED __attribute__((packed))
#else
#define KVC_PACKED
#endif

typedef struct KVC_PACKED {
    kvc_half d;          /* x = d * (q - 8) */
    uint8_t qs[QK4_0 / 2]; /* element j in the low nibble of qs[j], j+16 in the high one */
} block_q4_0;
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

typedef struct KVC_PACKED {
    kvc_half d, m;       /* x = d * q + m */
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

typedef struct KVC_PACKED {
    kvc_half d;          /* x = d * (q - 16), q = nibble | (bit j of qh) << 4 */
    uint8_t qh[4];       /* little-endian uint32: bit j = 5th bit of element j */
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

typedef struct KVC_PACKED {
    kvc_half d, m;       /* x = d * q + m, q = nibble | (bit j of qh) << 4 (as Q5_0) */
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

typedef struct KVC_PACKED {
    kvc_half d;          /* x = d * q */
    int8_t qs[QK8_0];
} block_q8_0;
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

typedef struct KVC_PACKED {
    kvc_half d;          /* x = d * q */
    kvc_half s;          /* fp16(d * sum(qs)): lets Q4_1's min term skip the quants */
    int8_t qs[QK8_1];
} block_q8_1;
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");

/* 8 sub-blocks of 32: x = d * sc[j] * q - dmin * m[j]; 6-bit sc/m packed in
 * scales[12] (see kvc_q4k_scales). qs[32*i + l]: low nibble = element 64*i + l,
 * high nibble = element 64*i + 32 + l. */
typedef struct KVC_PACKED {
    kvc_half d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

/* 8 sub-blocks of 32 as Q4_K, 5-bit q: x = d * sc[j] * q - dmin * m[j]. Chunk c
 * (64 elements): qs[32*c + l] low nibble = element 64*c + l, high nibble =
 * element 64*c + 32 + l; their 5th bits are bits 2c and 2c+1 of qh[l]. */
typedef struct KVC_PACKED {
    kvc_half d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

/* 16 sub-blocks of 16: x = d * scales[j] * (q - 32), q 6-bit = 4 low bits in
 * ql and 2 high bits in qh (layout in quants_ref.c, dequantize_row_q6_K_ref). */
typedef struct KVC_PACKED {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    kvc_half d;
} block_q6_K;
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

/* Activation type for the K-quants: fp32 scale, bsums[j] = sum(qs[16j..16j+15]). */
typedef struct KVC_PACKED {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

/* ---- scalar fp16 / bf16 conversions (exact, no processor-specific code) ---- */

static inline uint32_t kvc_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float kvc_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* binary16 -> binary32, exact for every input (NaN payloads are kept, like numpy). */
static inline float kvc_fp16_to_fp32(kvc_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return kvc_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return kvc_bits_f32(sign);
        /* subnormal: man * 2^-24, exact in fp32 */
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return kvc_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

/* binary32 -> binary16, round to nearest even; overflow -> inf; NaN -> quiet NaN. */
static inline kvc_half kvc_fp32_to_fp16(float f) {
    uint32_t x = kvc_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (kvc_half)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x47800000u) return (kvc_half)(sign | 0x7c00); /* >= 65536 (or inf): inf */
    if (ax < 0x38800000u) {
        /* result is subnormal or zero: round ax * 2^24 to an integer, RNE */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        if (e < 102) return (kvc_half)sign; /* < 2^-25: rounds to 0 */
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (kvc_half)(sign | q);
    }
    /* normal: rebias and round the 13 dropped mantissa bits (a carry into the
     * exponent is the correct result, including overflow to inf) */
    uint32_t r = ax - 0x38000000u;
    r += 0xfff + ((r >> 13) & 1);
    return (kvc_half)(sign | (r >> 13));
}

static inline float kvc_bf16_to_fp32(uint16_t h) { return kvc_bits_f32((uint32_t)h << 16); }

/* Same rounding as ggml_compute_fp32_to_bf16: NaN forced quiet, else RNE. */
static inline uint16_t kvc_fp32_to_bf16(float f) {
    uint32_t u = kvc_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* fp16 -> fp32 for every half: filled once (kvc_cpu_impls' one-time init, which
 * every entry point into the kernels passes through) from kvc_fp16_to_fp32. SIMD
 * kernels read block scales through it: a table load is cheaper than F16C's
 * shuffle-port conversion plus broadcast (ggml does the same). */
extern float kvc_fp16_table[1 << 16];

/* Unaligned little-endian field reads (blocks sit at any byte offset). */
static inline kvc_half kvc_ld_half(const void *p) { kvc_half h; memcpy(&h, p, 2); return h; }
static inline float kvc_ld_f32(const void *p) { float f; memcpy(&f, p, 4); return f; }
static inline uint32_t kvc_ld_u32(const void *p) { uint32_t u; memcpy(&u, p, 4); return u; }

/* Q4_K: unpack the 8 six-bit scales and mins from scales[12] into sc[8], m[8].
 * Bit layout from ggml's get_scale_min_k4: j < 4: sc = q[j] & 63, m = q[j+4] & 63;
 * j >= 4: sc = (q[j+4] & 15) | (q[j-4] >> 6) << 4, m = (q[j+4] >> 4) | (q[j] >> 6) << 4. */
static inline void kvc_q4k_scales(const uint8_t *q, uint8_t *sc, uint8_t *m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 15) | ((q[j] >> 6) << 4);
        m[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
}

/* ggml's nearest_int: round half to even via the 1.5 * 2^23 trick; |f| < 2^22. */
static inline int kvc_nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ---- kernel signatures ----
 * quantize:   x (n) floats -> y (n / block) blocks
 * dequantize: x (n / block) blocks -> y (n) floats
 * vec_dot:    returns dot(w, a); w (n) of the weight type, a (n) of its vec_dot_type
 * gemm:       out[t*ldo + r] = dot(w row r, a row t), r < m, t < n_tok; w rows are
 *             k/block*type_size bytes apart, a rows k/vblock*vtype_size bytes apart.
 * Preconditions (checked by the ABI in kernels.c, not here): n, k multiples of the block
 * sizes, n > 0, pointers valid. Kernels are pure functions (thread-safe). */
typedef void (*kvc_quantize_fn)(const float *x, void *y, int64_t n);
typedef void (*kvc_dequantize_fn)(const void *x, float *y, int64_t n);
typedef float (*kvc_vec_dot_fn)(int64_t n, const void *w, const void *a);
typedef void (*kvc_gemm_fn)(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a,
                            float *out, int64_t ldo);

typedef struct {
    kvc_quantize_fn quantize;
    kvc_dequantize_fn dequantize;
    kvc_vec_dot_fn vec_dot;
    kvc_gemm_fn gemm;
} kvc_kernels; /* the kernels of one type in one instruction set (kernels.h) */

/* ---- scalar reference twins (quants_ref.c) ---- */
void kvc_quantize_row_f32_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_f16_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_bf16_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q4_0_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
/* k-quants (quantize_k_ref.c): ggml's scale search without an importance matrix */
void kvc_quantize_row_q4_K_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q5_K_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q6_K_ref(const float *x, void *y, int64_t n);
void kvc_quantize_row_q5_1_ref(const float *x, void *y, int64_t n); /* Q5_K_M's fallback type */
/* The Q4_K/Q5_K scale search of one superblock x (256) — the hot loop, so a SIMD table can
 * bring its own (bit-identical) one: per sub-block j < 8 its scale sub_s[j], its negated
 * offset sub_m[j] >= 0 and levels L[32j..32j+31] in 0..nmax. The rest of the quantizer
 * (6-bit scales, re-rounding, packing) is kvc_quantize_row_q{4,5}_K_with's. */
typedef void (*kvc_k4_fit_fn)(const float *x, int nmax, float rmin, int nstep, float *sub_s, float *sub_m,
                              uint8_t *L);
void kvc_quantize_row_q4_K_with(const float *x, void *y, int64_t n, kvc_k4_fit_fn fit);
void kvc_quantize_row_q5_K_with(const float *x, void *y, int64_t n, kvc_k4_fit_fn fit);
/* Q6_K's scale search of one superblock x (256): per sub-block j < 16 of 16 its symmetric
 * scale sub_s[j] and levels + 32 in L[16j..16j+15] (0 for an all-zero sub-block). */
typedef void (*kvc_k6_fit_fn)(const float *x, float *sub_s, uint8_t *L);
void kvc_quantize_row_q6_K_with(const float *x, void *y, int64_t n, kvc_k6_fit_fn fit);

void kvc_dequantize_row_f32_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_f16_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_bf16_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q8_0_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q8_1_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q8_K_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q4_0_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q4_1_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q5_0_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q4_K_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q6_K_ref(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q5_K_ref(const void *x, float *y, int64_t n); /* quantize_k_ref.c */
void kvc_dequantize_row_q5_1_ref(const void *x, float *y, int64_t n); /* quantize_k_ref.c */

float kvc_vec_dot_f32_f32_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_f16_f32_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_bf16_f32_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q8_0_q8_0_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q4_0_q8_0_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q4_1_q8_1_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q5_0_q8_0_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q4_K_q8_K_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q6_K_q8_K_ref(int64_t n, const void *w, const void *a);
float kvc_vec_dot_q5_K_q8_K_ref(int64_t n, const void *w, const void *a); /* quantize_k_ref.c */
float kvc_vec_dot_q5_1_q8_1_ref(int64_t n, const void *w, const void *a); /* quantize_k_ref.c */

/* gemm twins: a loop over the vec_dot twin of the type */
#define KVC_DECLARE_GEMM_REF(name) \
    void kvc_gemm_##name##_ref(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, float *out, int64_t ldo);
KVC_DECLARE_GEMM_REF(f32_f32)
KVC_DECLARE_GEMM_REF(f16_f32)
KVC_DECLARE_GEMM_REF(bf16_f32)
KVC_DECLARE_GEMM_REF(q8_0_q8_0)
KVC_DECLARE_GEMM_REF(q4_0_q8_0)
KVC_DECLARE_GEMM_REF(q4_1_q8_1)
KVC_DECLARE_GEMM_REF(q5_0_q8_0)
KVC_DECLARE_GEMM_REF(q4_K_q8_K)
KVC_DECLARE_GEMM_REF(q6_K_q8_K)
KVC_DECLARE_GEMM_REF(q5_K_q8_K)
KVC_DECLARE_GEMM_REF(q5_1_q8_1)
#undef KVC_DECLARE_GEMM_REF

/* ---- x86 SIMD kernels (cpu/quants_avx2*.c, cpu/quants_avx512*.c) ----
 * Called only through a kernel table cpu/dispatch.c hands out after checking
 * the CPU features. */
#if defined(__x86_64__)
/* quantize/dequantize: AVX2 only (the AVX512 impl falls back to these). */
void kvc_quantize_row_f16_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_bf16_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_0_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_1_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);
void kvc_dequantize_row_f16_avx2(const void *x, float *y, int64_t n);
void kvc_dequantize_row_bf16_avx2(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q8_0_avx2(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q4_0_avx2(const void *x, float *y, int64_t n);
/* k-quant quantizers with the scale search in AVX2 (cpu/quantize_k_avx2.c): the ref's bytes */
void kvc_quantize_row_q4_K_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_q5_K_avx2(const float *x, void *y, int64_t n);
void kvc_quantize_row_q6_K_avx2(const float *x, void *y, int64_t n);

/* vec_dot and gemm per impl (cpu/dot_x86.h instantiated twice). */
#define KVC_DECLARE_DOT(name, sfx)                                                                  \
    float kvc_vec_dot_##name##_##sfx(int64_t n, const void *w, const void *a);                     \
    void kvc_gemm_##name##_##sfx(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                                 float *out, int64_t ldo);
#define KVC_DECLARE_SIMD(sfx)                                                                       \
    KVC_DECLARE_DOT(f32_f32, sfx)                                                                   \
    KVC_DECLARE_DOT(f16_f32, sfx)                                                                   \
    KVC_DECLARE_DOT(bf16_f32, sfx)                                                                  \
    KVC_DECLARE_DOT(q8_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_1_q8_1, sfx)                                                                 \
    KVC_DECLARE_DOT(q5_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_K_q8_K, sfx)                                                                 \
    KVC_DECLARE_DOT(q6_K_q8_K, sfx)
KVC_DECLARE_SIMD(avx2)
KVC_DECLARE_SIMD(avx512)
#undef KVC_DECLARE_DOT
#undef KVC_DECLARE_SIMD
#endif

/* ---- aarch64 NEON kernels (cpu/quants_neon*.c) ----
 * Pure functions over pointers (no one-time init needed). The *_neondot
 * integer kernels use the ARMv8.2 dotprod extension: the neon_dotprod kernel
 * table (cpu/dispatch.c) has them, picked when the CPU has it; the *_neon
 * ones run on every aarch64 CPU. */
#if defined(__aarch64__)
void kvc_quantize_row_f16_neon(const float *x, void *y, int64_t n);
void kvc_quantize_row_bf16_neon(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_0_neon(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_1_neon(const float *x, void *y, int64_t n);
void kvc_quantize_row_q8_K_neon(const float *x, void *y, int64_t n);
void kvc_dequantize_row_f16_neon(const void *x, float *y, int64_t n);
void kvc_dequantize_row_bf16_neon(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q8_0_neon(const void *x, float *y, int64_t n);
void kvc_dequantize_row_q4_0_neon(const void *x, float *y, int64_t n);

#define KVC_DECLARE_DOT(name, sfx)                                                                  \
    float kvc_vec_dot_##name##_##sfx(int64_t n, const void *w, const void *a);                     \
    void kvc_gemm_##name##_##sfx(int64_t m, int64_t n_tok, int64_t k, const void *w, const void *a, \
                                 float *out, int64_t ldo);
#define KVC_DECLARE_INT(sfx)                                                                        \
    KVC_DECLARE_DOT(q8_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_1_q8_1, sfx)                                                                 \
    KVC_DECLARE_DOT(q5_0_q8_0, sfx)                                                                 \
    KVC_DECLARE_DOT(q4_K_q8_K, sfx)                                                                 \
    KVC_DECLARE_DOT(q6_K_q8_K, sfx)
KVC_DECLARE_INT(neon)
KVC_DECLARE_INT(neondot)
KVC_DECLARE_DOT(f32_f32, neon)
KVC_DECLARE_DOT(f16_f32, neon)
KVC_DECLARE_DOT(bf16_f32, neon)
#undef KVC_DECLARE_DOT
#undef KVC_DECLARE_INT
#endif

#endif /* KVC_QUANTS_H */
