/* kv_cache.h — the KV cache of a context: allocation for every cache type
 * (f32/f16/q8_0/q4_0 rows, TurboQuant rows with per-layer layouts), K
 * mean-centering with its exact positional correction, and the three things
 * attention does with the cache: store new rows, score a query group against
 * the keys, accumulate the values. */
#ifndef KVC_KV_CACHE_H
#define KVC_KV_CACHE_H

#include "model.h"

int kv_init(kvc_context *c, const kvc_context_params *p, char *err, int err_len);
void kv_free(kvc_context *c);

/* Before RoPE: subtract the K mean from c->k (T, Hk, D) of this layer (taking the
 * mean from this batch first if the context has none yet). */
void kv_center(kvc_context *c, int layer, int T);
/* After RoPE: append the batch's K/V rows (positions n_past .. n_past+T-1). */
void kv_store(kvc_context *c, int layer, int T);

/* scores (n_rep, n_keys) = q (n_rep, D, post-RoPE) · keys 0..n_keys-1 of KV head h,
 * including the centering correction; not yet scaled by 1/sqrt(D). */
void kv_scores(kvc_context *c, attn_scratch *s, int layer, int h, const float *q, int n_rep, int n_keys,
               float *scores);
/* out (n_rep, D) = sum_j p[r, j] * value j of KV head h. */
void kv_values(kvc_context *c, attn_scratch *s, int layer, int h, const float *p, int n_rep, int n_keys,
               float *out);

#endif
