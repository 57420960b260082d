/* twin.h — the CPU twin of the Metal store and attention kernels (twin.c): one
 * layer of the CPU backend's KV cache, stored and attended with its own code. */
#ifndef KVM_TWIN_H
#define KVM_TWIN_H

#include <stddef.h>
#include <stdint.h>

#include "tq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int D, H, Hk, n_ctx, pairing;
    int k_tq, v_tq; /* else f16 rows */
    int n_hi_k, hi_bits_k, lo_bits_k, qjl_hi, qjl_lo;
    const float *cbk_hi, *cbk_lo;
    const int *perm; /* (D) K channel order or NULL */
    int n_hi_v, hi_bits_v, lo_bits_v;
    const float *cbv_hi, *cbv_lo;
    unsigned long long seed;
    int scale_mode, n_sink, k_center, k_center_pairs;
    const float *k_mean, *v_mean; /* (Hk, D) or NULL */
    int window;
    float scale;
    const int *rope_src;     /* (D/2) or NULL: identity */
    const float *rope_freqs; /* (D/2) */
} twin_cfg;

typedef struct twin twin;
int twin_create(const twin_cfg *cfg, twin **out); /* a kvc status; twin_free in any case */
/* k, v (T, Hk, D): post-RoPE (centered) keys and values of positions n_past .. n_past + T - 1 */
void twin_store(twin *t, float *k, float *v, int T, int n_past);
/* q (T, H*D) post-RoPE queries of positions n_past ..; out (T, H*D) */
void twin_attend(twin *t, const float *q, int T, int n_past, float *out);
const uint8_t *twin_rows(const twin *t, int kind); /* kind 0 K, 1 V: (Hk, n_ctx) rows */
size_t twin_row_bytes(const twin *t, int kind);
const uint16_t *twin_sink(const twin *t, int kind); /* (Hk, n_sink, D) fp16 or NULL */
const tq_layout *twin_layout(const twin *t, int kind); /* NULL for f16 */
const float *twin_rope_all(const twin *t);   /* (n_ctx, D/2, 2) or NULL */
const float *twin_k_mean(const twin *t);     /* (Hk, D) after pair selection, or NULL */
const int *twin_k_pairs(const twin *t);      /* (Hk, D/2) or NULL */
const float *twin_v_mean(const twin *t);
void twin_free(twin *t);

#ifdef __cplusplus
}
#endif
#endif
