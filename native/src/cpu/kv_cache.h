/* kv_cache.h — the CPU backend's KV cache of a context (cpu_ctx): allocation for every cache type
 * (f32/f16/q8_0/q4_0 rows, TurboQuant rows with per-layer layouts), K
 * mean-centering with its exact positional correction, and the three things
 * attention does with the cache: store new rows, score a block of query tokens
 * (each a GQA group) against the keys, accumulate the values. */
#ifndef KVC_KV_CACHE_H
#define KVC_KV_CACHE_H

#include "backend_cpu.h"

int kv_init(cpu_ctx *c, const kvc_context_params *p, char *err, int err_len);
void kv_free(cpu_ctx *c);

/* Before a batch: the sliding-window layers still hold every key the next token may see
 * (after kvc_set_n_past rewound past what they kept: an error naming it; n_past 0 always
 * works). KVC_OK or KVC_ERR_INVALID with a message in err. */
int kv_check_window(cpu_ctx *c, char *err, int err_len);
/* The first cached position the queries at positions >= n0 - 1 (n0 keys visible to the
 * first) can see in layer l: 0, or n0 - window in a sliding-window layer. */
int kv_first_key(const cpu_ctx *c, int layer, int n0);
/* The smallest n_past > 0 from which every layer still holds what the next token sees. */
int kv_rewind_floor(const kvc_context *ctx);

/* Before RoPE: subtract the K mean from c->k (T, Hk, D) of this layer (taking the
 * mean from this batch first if the context has none yet). */
void kv_center(cpu_ctx *c, int layer, int T);
/* After RoPE: append the batch's K/V rows (positions n_past .. n_past+T-1). */
void kv_store(cpu_ctx *c, int layer, int T);

/* Query tokens per attention work item (>= 1): a block of up to this many tokens is
 * scored and accumulated per cached row read (and, TurboQuant, decoded). */
int kv_block_tokens(const cpu_ctx *c);

/* A block of nt consecutive query tokens of KV head h: token i's n_rep query rows
 * (post-RoPE) are at q + i*q_stride (n_rep, D) and it sees keys 0 .. n0+i-1.
 * scores (nt*n_rep, ld): row i*n_rep + r = that query · each key it sees from
 * k0 = kv_first_key(c, layer, n0) on (column j: key k0 + j), including the centering
 * correction, not yet scaled; entries past a row's keys are unspecified.
 * ld >= n0 - k0 + nt - 1; nt <= kv_block_tokens(c). */
void kv_scores(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *q, size_t q_stride, int nt, int n0,
               float *scores, int ld);
/* The whole attention of a block (when c->flash): token i's n_rep query rows at q + i*q_stride
 * (n_rep, D), seeing the keys kv_scores describes (and the sliding window), scaled by scale,
 * softmax over the keys, weights times the values, into out + i*out_stride (n_rep, D). Keys are
 * read in tiles of KVC_ATTN_KEYS with an online softmax, so nothing of size n_ctx is
 * written; nt * n_rep <= KVC_ATTN_ROWS (kv_block_tokens). */
void kv_attend(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *q, size_t q_stride, int nt, int n0,
               float scale, float *out, size_t out_stride);
/* out token i at out + i*out_stride (n_rep, D): row r = sum over keys k0 + j < n0+i of
 * p[(i*n_rep + r)*ld + j] * value k0 + j of KV head h (k0 as kv_scores). */
void kv_values(cpu_ctx *c, attn_scratch *s, int layer, int h, const float *p, int ld, int nt, int n0, float *out,
               size_t out_stride);

#endif
