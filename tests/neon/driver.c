/* driver.c — freestanding glue that lets tests/test_neon.py run the NEON kernels
 * and their scalar twins bare in an emulator (no OS, no libc): the few libc
 * functions the compiled code calls (memcpy, memmove, memset; malloc, calloc and
 * free as a bump allocator for tq_layout_init), stand-ins for dispatch.c's CPU
 * probe, two helpers, and the table of entry points the tests call, which is
 * what keeps the linker from dropping them. Nothing prints: Python reads every
 * result from memory. Compiled with -ffreestanding so the loops below are not
 * turned back into memcpy calls. */
#include <stddef.h>
#include <stdint.h>

#include "kvc.h"
#include "quants.h"
#include "tq.h"
#include "vec.h"

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s)
        while (n--) *d++ = *s++;
    else
        while (n--) d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

static unsigned char g_heap[1 << 20] __attribute__((aligned(16)));
static size_t g_heap_used;

void *malloc(size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof g_heap - g_heap_used) return NULL;
    void *p = g_heap + g_heap_used;
    g_heap_used += n;
    return p;
}

void *calloc(size_t count, size_t size) {
    void *p = malloc(count * size);
    return p ? memset(p, 0, count * size) : NULL;
}

void free(void *p) { (void)p; }

/* tq_layout_init(L, cfg = {d, n_hi, hi_bits, lo_bits, qjl_hi, qjl_lo, scale8, scale_base}, no
 * permutation, seed 0, layer 0) on a fresh heap; info (1 + 3 * TQ_MAX_GROUPS) = row_bytes, then
 * (byte offset, qjl, residual norm offset) per group. Returns the kvc status. */
int kvc_neon_test_tq_layout(tq_layout *L, const int *cfg, const float *cb_hi, const float *cb_lo, int *info) {
    g_heap_used = 0;
    const int st = tq_layout_init(L, cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cb_hi, cb_lo, NULL, 0, 0, cfg[6],
                                  cfg[7], 0);
    if (st != KVC_OK) return st;
    info[0] = L->row_bytes;
    for (int k = 0; k < TQ_MAX_GROUPS; k++) {
        info[1 + 3 * k] = k < L->n_groups ? L->g[k].off : -1;
        info[2 + 3 * k] = k < L->n_groups ? L->g[k].qjl : 0;
        info[3 + 3 * k] = k < L->n_groups ? L->g[k].rnorm_off : -1;
    }
    return KVC_OK;
}

/* dispatch.c is not in the image (it needs pthreads); vec.c's and tq.c's table
 * lookups may ask which impls the CPU has: the emulated one has NEON. */
int kvc_cpu_impls(void) { return 1 << KVC_IMPL_SCALAR | 1 << KVC_IMPL_NEON; }
int kvc_cpu_best_impl(void) { return KVC_IMPL_NEON; }

/* The scalar twins of the vector ops: vec.c's table (its functions are static). */
const kvc_vec_ops *kvc_neon_test_vec_ref(void) { return kvc_vec_ops_for(KVC_IMPL_SCALAR); }

#define DOTS(name, sfx) (const void *)kvc_vec_dot_##name##_##sfx, (const void *)kvc_gemm_##name##_##sfx
#define INT_DOTS(sfx) \
    DOTS(q8_0_q8_0, sfx), DOTS(q4_0_q8_0, sfx), DOTS(q4_1_q8_1, sfx), DOTS(q5_0_q8_0, sfx), DOTS(q4_K_q8_K, sfx), \
        DOTS(q6_K_q8_K, sfx)

static const void *const g_exports[] = {
    (const void *)kvc_neon_test_tq_layout, (const void *)kvc_neon_test_vec_ref, (const void *)&kvc_vec_ops_neon,
    (const void *)tq_score_neon, (const void *)tq_accum_neon, (const void *)tq_score_ref, (const void *)tq_accum_ref,
    INT_DOTS(neon), INT_DOTS(neondot), DOTS(f32_f32, neon), DOTS(f16_f32, neon), DOTS(bf16_f32, neon),
    (const void *)kvc_vec_dot_f32_f32_ref, (const void *)kvc_vec_dot_f16_f32_ref,
    (const void *)kvc_vec_dot_bf16_f32_ref, (const void *)kvc_vec_dot_q8_0_q8_0_ref,
    (const void *)kvc_vec_dot_q4_0_q8_0_ref, (const void *)kvc_vec_dot_q4_1_q8_1_ref,
    (const void *)kvc_vec_dot_q5_0_q8_0_ref, (const void *)kvc_vec_dot_q4_K_q8_K_ref,
    (const void *)kvc_vec_dot_q6_K_q8_K_ref,
    (const void *)kvc_quantize_row_q8_0_neon, (const void *)kvc_quantize_row_q8_1_neon,
    (const void *)kvc_quantize_row_q8_K_neon, (const void *)kvc_quantize_row_f16_neon,
    (const void *)kvc_quantize_row_bf16_neon, (const void *)kvc_quantize_row_q8_0_ref,
    (const void *)kvc_quantize_row_q8_1_ref, (const void *)kvc_quantize_row_q8_K_ref,
    (const void *)kvc_quantize_row_f16_ref, (const void *)kvc_quantize_row_bf16_ref,
    (const void *)kvc_dequantize_row_f16_neon, (const void *)kvc_dequantize_row_bf16_neon,
    (const void *)kvc_dequantize_row_q8_0_neon, (const void *)kvc_dequantize_row_q4_0_neon,
    (const void *)kvc_dequantize_row_f16_ref, (const void *)kvc_dequantize_row_bf16_ref,
    (const void *)kvc_dequantize_row_q8_0_ref, (const void *)kvc_dequantize_row_q4_0_ref,
};

/* The image's entry point (never run): its closure is everything the tests call. */
const void *const *kvc_neon_test_entry(void) { return g_exports; }
