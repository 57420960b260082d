/* kv_basis.h — a TurboQuant K layer's calibrated basis (kvc_tq_layer.basis, kvcache/kbasis.py):
 * the key written and the queries scoring it, each turned into the basis's coordinates.
 * With basis_block > 0 the basis follows RoPE: the keys of positions [P, P + block) are turned
 * back by RoPE's rotation at P first, and so are the queries that score them, so kv_scores
 * scores a context one block of keys at a time (kv_basis_query per block). */
#ifndef KVC_KV_BASIS_H
#define KVC_KV_BASIS_H

#include "backend_cpu.h"

/* First position of the block of position pos (0 when the basis does not follow RoPE). */
static inline int kv_basis_start(const tq_layout *L, int pos) {
    return L->basis_block > 0 ? pos - pos % L->basis_block : 0;
}

/* out (D) = the key k (D; post-RoPE, centered, file channel order) of KV head h at position pos as
 * the layer codes it: turned back to its block's start, permuted, times basis[h]. scratch: (2D). */
void kv_basis_key(const cpu_ctx *c, int layer, int h, int pos, const float *k, float *out, float *scratch);

/* out (D) = the query q (D; post-RoPE, file channel order) of KV head h's group, to be scored
 * against the keys of the block starting at p0 (kv_basis_start): turned back by p0, permuted,
 * times qbasis[h]. scratch: (2D). */
void kv_basis_query(const cpu_ctx *c, int layer, int h, int p0, const float *q, float *out, float *scratch);

#endif
