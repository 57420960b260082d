/* rope.c — RoPE for the CPU backend: the cos/sin table of a range of positions (forward.c builds
 * one per distinct table set and batch) and the rotation of head rows by it. kv_basis.c turns a
 * key or query back by a block start with the same two functions (a table at −P). */
#include "backend_cpu.h"

#include <math.h>

void rope_table(const kvc_model *m, int set, int pos0, int T, float *cs) {
    const int P = m->head_dim / 2;
    const float *freqs = m->rope_freqs + (size_t)set * P;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < P; j++) {
            double a = (double)(pos0 + t) * (double)freqs[j];
            cs[((size_t)t * P + j) * 2] = (float)cos(a);
            cs[((size_t)t * P + j) * 2 + 1] = (float)sin(a);
        }
}

void rope_apply(const kvc_model *m, const int *src, int T, int n_heads, float *x, const float *cs) {
    const int D = m->head_dim, P = D / 2;
    const int stride = m->rope_pairing == KVC_ROPE_NEOX ? 1 : 2; /* index step between pairs */
    const int partner = m->rope_pairing == KVC_ROPE_NEOX ? P : 1;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * D;
            const float *tc = cs + (size_t)t * P * 2;
            for (int j = 0; j < P; j++) {
                float *a = v + j * stride, *b = a + partner;
                float c0 = tc[2 * src[j]], s0 = tc[2 * src[j] + 1];
                float xa = *a, xb = *b;
                *a = xa * c0 - xb * s0;
                *b = xa * s0 + xb * c0;
            }
        }
}
