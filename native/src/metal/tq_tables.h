/* tq_tables.h — a TurboQuant layout (tq.h, built by tq_layout_init) flattened
 * for the Metal kernels: the kvm_tq_layout of kvc_metal.h plus its float table
 * (codebooks, boundaries as floats, the ±1 sign streams) and int table (channel
 * permutation, mixing orders). C only (host and Linux harness), header-only so
 * that the portable build compiles nothing of the Metal backend off macOS. */
#ifndef KVC_TQ_TABLES_H
#define KVC_TQ_TABLES_H

#include "../tq.h"
#include "kvc_metal.h"

/* Table sizes of L, in floats and ints. */
static inline void kvm_tq_table_sizes(const tq_layout *L, int *n_float, int *n_int) {
    int nf = 0, ni = L->perm ? L->d : 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        nf += (1 << g->bits) + (1 << g->bits) - 1 + 3 * g->m;
        if (g->mix) ni += g->m;
    }
    *n_float = nf, *n_int = ni;
}

/* Fill out, ftab (n_float) and itab (n_int) from L. Returns 0, or -1 when L does not fit
 * the kernels (head_dim > KVM_TQ_MAX_DIM, more than KVM_TQ_MAX_GROUPS groups). */
static inline int kvm_tq_tables(const tq_layout *L, kvm_tq_layout *out, float *ftab, int32_t *itab) {
    if (L->d > KVM_TQ_MAX_DIM || L->n_groups > KVM_TQ_MAX_GROUPS) return -1;
    memset(out, 0, sizeof *out);
    out->d = L->d, out->n_groups = L->n_groups, out->row_bytes = L->row_bytes, out->perm = -1;
    int nf = 0, ni = 0, start = 0;
    if (L->perm) {
        out->perm = ni;
        for (int i = 0; i < L->d; i++) itab[ni++] = L->perm[i];
    }
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        kvm_tq_group *o = &out->g[k];
        const int nc = 1 << g->bits;
        o->m = g->m, o->bits = g->bits, o->qjl = g->qjl, o->start = start;
        o->off = g->off, o->codes_off = g->codes_off, o->qjl_off = g->qjl_off, o->bytes = g->bytes;
        o->qjl_c = g->qjl_c;
        o->cb = nf;
        for (int c = 0; c < nc; c++) ftab[nf++] = g->cb[c];
        o->bounds = nf;
        for (int c = 0; c + 1 < nc; c++) ftab[nf++] = (float)g->bounds[c];
        o->signs = nf;
        for (int i = 0; i < g->m; i++) ftab[nf++] = g->signs[i];
        o->signs2 = nf;
        for (int i = 0; i < g->m; i++) ftab[nf++] = g->signs2[i];
        o->mix_signs = -1, o->mix = -1;
        if (g->mix) {
            o->mix_signs = nf;
            for (int i = 0; i < g->m; i++) ftab[nf++] = g->mix_signs[i];
            o->mix = ni;
            for (int i = 0; i < g->m; i++) itab[ni++] = g->mix[i];
        } else {
            nf += g->m; /* kvm_tq_table_sizes counts 3m per group */
        }
        start += g->m;
    }
    return 0;
}

#endif /* KVC_TQ_TABLES_H */
