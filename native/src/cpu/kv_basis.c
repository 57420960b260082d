/* kv_basis.c — see kv_basis.h. The turn by RoPE's rotation at a block start P is the rotation by
 * −P·θ_j of every pair j, the same angles (and table set, pair order) forward.c's RoPE uses, so
 * for a key at p the turned key is the key RoPE would give at p − P. A rotation is orthogonal:
 * turning the query by the same −P keeps ⟨q, k⟩. The numpy twin: kvcache/kbasis.py (read_back
 * with block starts). */
#include "kv_basis.h"

#include <string.h>

/* out (D) = x[perm] · B, B (D, D) row-major (row i = input channel i); perm NULL: x as is.
 * out must not alias x. Sums in float, in index order. */
static void basis_apply(const float *x, const int *perm, const float *B, int D, float *out) {
    for (int j = 0; j < D; j++) out[j] = 0.0f;
    for (int i = 0; i < D; i++) {
        const float xi = x[perm ? perm[i] : i];
        const float *row = B + (size_t)i * D;
        for (int j = 0; j < D; j++) out[j] += xi * row[j];
    }
}

/* out (D) = x turned by −p0 in every RoPE pair of layer's table: RoPE itself at position −p0;
 * cs: (D) scratch. */
static void turn_back(const kvc_model *m, int layer, int p0, const float *x, float *out, float *cs) {
    memcpy(out, x, sizeof(float) * (size_t)m->head_dim);
    rope_table(m, m->layers[layer].rope_set, -p0, 1, cs);
    rope_apply(m, m->rope_src + (size_t)layer * (m->head_dim / 2), 1, 1, out, cs);
}

static void transform(const cpu_ctx *c, int layer, int p0, const float *x, const float *B, float *out, float *scratch) {
    const tq_layout *L = &c->tq_k[layer];
    const int D = c->m->head_dim;
    if (p0 > 0) {
        turn_back(c->m, layer, p0, x, scratch, scratch + D);
        x = scratch;
    }
    basis_apply(x, L->perm, B, D, out);
}

void kv_basis_key(const cpu_ctx *c, int layer, int h, int pos, const float *k, float *out, float *scratch) {
    const tq_layout *L = &c->tq_k[layer];
    const int D = c->m->head_dim;
    transform(c, layer, kv_basis_start(L, pos), k, L->basis + (size_t)h * D * D, out, scratch);
}

void kv_basis_query(const cpu_ctx *c, int layer, int h, int p0, const float *q, float *out, float *scratch) {
    const tq_layout *L = &c->tq_k[layer];
    const int D = c->m->head_dim;
    transform(c, layer, p0, q, L->qbasis + (size_t)h * D * D, out, scratch);
}
