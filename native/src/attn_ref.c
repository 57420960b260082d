/* attn_ref.c — scalar twin of the flash-attention tile kernel (attn.h): the
 * numbers cpu/attn_tile.h's SIMD builds are tested against. Plain C with
 * explicit fmaf (the library builds with -ffp-contract=off). */
#include <float.h>
#include <math.h>
#include <stddef.h>

#include "attn.h"
#include "vec.h"

void kvc_attn_tile_ref(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                       const int *hi, float *m, float *l, float *o, float *st) {
    const int W = KVC_ATTN_ROWS;
    for (int j = 0; j < kc; j++) /* st (kc, W): scores */
        for (int i = 0; i < nq; i++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++) s = fmaf(k[(size_t)j * D + d], qt[(size_t)d * W + i], s);
            st[(size_t)j * W + i] = lo && (j < lo[i] || j >= hi[i]) ? -INFINITY : s * scale;
        }
    for (int i = 0; i < nq; i++) {
        float mn = m[i];
        for (int j = 0; j < kc; j++) mn = fmaxf(mn, st[(size_t)j * W + i]);
        const float ms = fmaxf(mn, -FLT_MAX);
        float sum = 0.0f;
        for (int j = 0; j < kc; j++) {
            float p = kvc_expf_ref(st[(size_t)j * W + i] - ms);
            st[(size_t)j * W + i] = p;
            sum += p;
        }
        const float a = kvc_expf_ref(m[i] - ms);
        l[i] = l[i] * a + sum;
        m[i] = mn;
        float *oi = o + (size_t)i * D; /* (D) */
        for (int d = 0; d < D; d++) {
            float acc = oi[d] * a;
            for (int j = 0; j < kc; j++) acc = fmaf(st[(size_t)j * W + i], v[(size_t)j * D + d], acc);
            oi[d] = acc;
        }
    }
}
