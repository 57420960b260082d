/* kv_recent.h — exact rows beside a TurboQuant cache (docs/design.md §4): the
 * formulas the attention sinks (kv_cache.c) and the recent window share, and the
 * recent window itself.
 *
 * Recent window (n_recent = w > 0): a query at position p also uses keys
 * max(p - w + 1, n_sink, its sliding window's first) .. p exactly: its score from
 * the f16 key, its value through the f16 correction v − v̂ (v̂: the decoded TQ
 * row) with the same attention weight, exactly as the sinks do. A batch's
 * exact rows go to a batch buffer (n_batch rows, shared by the layers: one layer
 * at a time), its queries read positions before the batch from a ring of
 * R = w + n_rewind (default KV_RECENT_SLACK) rows per (layer, KV head) at slot pos % R, and once the
 * layer's attention is done its last rows are committed to the ring. So the
 * window costs w + slack rows per layer, not w + n_batch. After a rewind the ring
 * still holds the positions rec_lo .. n_past - 1: the slack lets a rewind go back
 * n_rewind positions (kv_recent_floor), as a chat's re-tokenized turn end
 * needs; further back the caller evaluates from 0 again. */
#ifndef KVC_KV_RECENT_H
#define KVC_KV_RECENT_H

#include "backend_cpu.h"

#define KV_MAX_RECENT 256  /* kvc_context_params.n_recent's limit */
#define KV_RECENT_SLACK 16 /* ring rows beyond the window (n_rewind 0): how far back a rewind may go */
#define KV_MAX_REWIND 4096 /* kvc_context_params.n_rewind's limit */

/* The shared formulas. k16/r16: (D) fp16 rows; kf: (D) scratch. */
void kv_exact_load(const uint16_t *k16, int D, float *kf);     /* kf = f32(k16), exact */
float kv_exact_dot(const float *q, const float *kf, int D);     /* the exact score q · k */
void kv_exact_value(float p, const float *rf, int D, float *acc); /* acc (D) += p * (v − v̂) */
void kv_exact_key(const float *k, int D, uint16_t *out);          /* out = fp16(k) */
/* out = fp16(v − v̂) (D) for v (D) and its encoded row (layout L); scratch: (2D) floats. */
void kv_exact_residual(const tq_layout *L, const float *v, const uint8_t *row, int D, float *scratch, uint16_t *out);

/* Validate and allocate the window (p->n_recent; off unless a cache is TurboQuant). */
int kv_recent_init(cpu_ctx *c, const kvc_context_params *p, char *err, int err_len);
void kv_recent_free(cpu_ctx *c);
/* fp16 (D) exact row of position pos (K: is_v 0, V: 1), layer l, KV head h: the batch buffer for
 * pos >= n_past (the batch being evaluated), else the ring. */
uint16_t *kv_recent_row(const cpu_ctx *c, int is_v, int l, int h, int pos);
/* After the layer's attention over positions n_past .. n_past + T - 1: its batch rows into the ring. */
void kv_recent_commit(cpu_ctx *c, int layer, int T);
/* The first key of the exact window of the query at position pos in layer l (keys first .. pos). */
int kv_recent_first(const cpu_ctx *c, int layer, int pos);
/* Smallest n_past > 0 a rewind may go to (1: any) and, before a batch, rec_lo's reset at 0. */
int kv_recent_floor(const cpu_ctx *c);
void kv_recent_check(cpu_ctx *c);
/* Bytes of the ring and the batch buffer (K and V), fixed for the context's life. */
long long kv_recent_bytes(const cpu_ctx *c);

/* As the sink block of kv_scores: for the block's query rows (token i's n_rep rows at
 * q + i * q_stride, (n_rep, D); token i at position n0 - 1 + i), overwrite the scores of
 * the keys in each row's window by the exact ones. scores (nq, ld), column j = key k0 + j. */
void kv_recent_scores(const cpu_ctx *c, int layer, int h, const float *q, size_t q_stride, int nt, int n0, int k0,
                      float *scores, int ld, float *kf);
/* As the sink block of kv_values: acc (nq, D) (unrotated, row i = query row i) += p · (v − v̂)
 * over each row's window; p (nq, ld) the attention weights, column j = key k0 + j. */
void kv_recent_values(const cpu_ctx *c, int layer, int h, const float *p, int ld, int nt, int n0, int k0, float *acc,
                      float *kf);

#endif
