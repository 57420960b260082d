/* kernels.h — the kernel table: every compute kernel of the CPU runtime behind
 * one struct of function pointers, one filled table per instruction set.
 *
 *   kvc_kernels_ref           scalar twins (quants_ref.c, vec_ref.c, tq_ref.c, attn_ref.c): the reference
 *   kvc_kernels_avx2          AVX2 + FMA + F16C (cpu/: *_avx2*.c)            x86-64
 *   kvc_kernels_avx512        AVX-512 F/BW/VL/DQ + VNNI (cpu/: *_avx512*.c)  x86-64
 *   kvc_kernels_neon          baseline ARMv8 NEON (cpu/: *_neon*.c)          aarch64
 *   kvc_kernels_neon_dotprod  NEON with the ARMv8.2 dotprod integer dots   aarch64
 *
 * The tables are filled in cpu/dispatch.c, which also picks one once per process
 * (CPU probe, KVC_FORCE_IMPL): the forward pass calls through the table its
 * context took at creation, and the kernel half of the C ABI (kernels.c, tq.c)
 * through the table of the impl it is asked for. A slot an instruction set has
 * no faster kernel for holds the next lower set's (AVX-512 -> AVX2 -> scalar,
 * NEON -> scalar), so every table is complete; a NULL kernel means the
 * operation does not exist for that type (e.g. vec_dot of Q8_K, an activation type). */
#ifndef KVC_KERNELS_H
#define KVC_KERNELS_H

#include "attn.h"
#include "quants.h"
#include "tq.h"
#include "vec.h"

/* kvc.h (no include guard: each .c includes it once, before this) is not included
 * here; kernels.c checks these against its enums. */
#define KVC_N_TYPES 31 /* kvc_type ids index kvc_kernel_table.type: 0 .. KVC_TYPE_BF16 */
#define KVC_N_IMPL 5   /* kvc_impl values: AUTO, SCALAR, AVX2, AVX512, NEON */

typedef struct {
    const char *name;              /* "scalar", "avx2", "avx512", "neon", "neon_dotprod" */
    int impl;                      /* the kvc_impl it implements */
    kvc_kernels type[KVC_N_TYPES]; /* per kvc_type: quantize, dequantize, vec_dot, gemm */
    const kvc_vec_ops *vec;        /* softmax, rms_norm, silu_mul, axpy, scale */
    tq_encode_fn tq_encode;        /* TurboQuant rows: encode a head vector */
    tq_score_fn tq_score;          /* score a block of queries against the rows */
    tq_accum_fn tq_accum;          /* accumulate weighted rows (V) */
    kvc_attn_tile_fn attn_tile;    /* one key tile of flash attention, standard caches (attn.h) */
} kvc_kernel_table;

extern const kvc_kernel_table kvc_kernels_ref;
#if defined(__x86_64__)
extern const kvc_kernel_table kvc_kernels_avx2, kvc_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const kvc_kernel_table kvc_kernels_neon, kvc_kernels_neon_dotprod;
#endif

/* The table of impl (a kvc_impl; AUTO: the one chosen for this process) into *out.
 * KVC_ERR_INVALID if impl is not a kvc_impl, KVC_ERR_UNSUPPORTED if this CPU or
 * build cannot run it. Runs the one-time init the SIMD kernels need (fp16 table). */
int kvc_kernel_table_for(int impl, const kvc_kernel_table **out);

/* Sizes and activation type of a kvc_type (NULL if unknown): kernels.c. */
typedef struct {
    const char *name;
    int block_size, type_size; /* elements and bytes per block */
    int vec_dot_type;          /* -1: not usable as a weight (activation-only types) */
} kvc_type_traits;
const kvc_type_traits *kvc_traits(int type);

#endif /* KVC_KERNELS_H */
