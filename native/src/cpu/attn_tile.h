/* attn_tile.h — the flash-attention tile kernel of attn.h, written once over a
 * float vector of VN lanes and compiled per instruction set: cpu/attn_avx2.c
 * and cpu/attn_avx512.c set the target, define the macros below and include
 * this file (no include guard: once per instruction set).
 *
 * Everything is vectorised across query rows (lanes = rows, qt and st have
 * KVC_ATTN_ROWS columns) except the value product, which is vectorised along D:
 *   scores:  RK keys x QG row-vectors of accumulators; per channel d, QG loads
 *            of qt and one broadcast of k[j][d] per key (keys converted to
 *            float once per tile, queries loaded once per RK keys)
 *   softmax: vertical max / exp / sum over the tile's keys per row-vector
 *   values:  RQ rows x DG D-vectors of accumulators held across all kc keys;
 *            per key, DG loads of v[j] and one broadcast of p[j][i] per row
 * Per element the operations and their order are those of the scalar twin
 * (attn_ref.c), so results are bit-identical to it.
 *
 * Includer defines: SFX (function suffix), VF (vector type), VN (lanes), VZERO(),
 * VLOAD(p), VSTORE(p, x), VSET1(x), VFMA(a, b, c) (a*b + c, fused), VMUL, VADD,
 * VMAX, VEXP(x) (bit-identical to kvc_expf_ref per lane), and the tile sizes
 * RK, QG (scores) and RQ, DG (values), each <= the bounds below. */

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "../attn.h"

#define AT_CAT_(a, b) a##_##b
#define AT_CAT(a, b) AT_CAT_(a, b)
#define AT_W KVC_ATTN_ROWS
#define AT_RK_MAX 6
#define AT_QG_MAX 4
#define AT_RQ_MAX 6
#define AT_DG_MAX 4

/* st rows j0..j0+R-1, row-vectors g0..g0+G-1 = k rows (R, D) . qt columns */
KVC_INLINE void at_scores(const int R, const int G, int D, float scale, const float *qt, const float *k, float *st) {
    VF acc[AT_RK_MAX][AT_QG_MAX];
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) acc[r][g] = VZERO();
    for (int d = 0; d < D; d++) {
        VF q[AT_QG_MAX];
        for (int g = 0; g < G; g++) q[g] = VLOAD(qt + (size_t)d * AT_W + g * VN);
        for (int r = 0; r < R; r++) {
            const VF kb = VSET1(k[(size_t)r * D + d]);
            for (int g = 0; g < G; g++) acc[r][g] = VFMA(kb, q[g], acc[r][g]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) VSTORE(st + (size_t)r * AT_W + g * VN, VMUL(acc[r][g], VSET1(scale)));
}

/* o rows i0..i0+R-1, channels d0..d0+G*VN-1: scale by a, then add p . v over kc keys */
KVC_INLINE void at_values(const int R, const int G, int D, int kc, const float *st, const float *v, const float *a,
                          float *o) {
    VF acc[AT_RQ_MAX][AT_DG_MAX];
    for (int r = 0; r < R; r++) {
        const VF ar = VSET1(a[r]);
        for (int g = 0; g < G; g++) acc[r][g] = VMUL(VLOAD(o + (size_t)r * D + g * VN), ar);
    }
    for (int j = 0; j < kc; j++) {
        VF x[AT_DG_MAX];
        for (int g = 0; g < G; g++) x[g] = VLOAD(v + (size_t)j * D + g * VN);
        for (int r = 0; r < R; r++) {
            const VF p = VSET1(st[(size_t)j * AT_W + r]);
            for (int g = 0; g < G; g++) acc[r][g] = VFMA(p, x[g], acc[r][g]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) VSTORE(o + (size_t)r * D + g * VN, acc[r][g]);
}

#define AT_S_CASE(r, g) \
    case (r) * 8 + (g): at_scores(r, g, D, scale, qt, k, st); break;
#define AT_S_CASES(r) AT_S_CASE(r, 1) AT_S_CASE(r, 2) AT_S_CASE(r, 3) AT_S_CASE(r, 4)
static void at_scores_any(int R, int G, int D, float scale, const float *qt, const float *k, float *st) {
    switch (R * 8 + G) {
        AT_S_CASES(1) AT_S_CASES(2) AT_S_CASES(3) AT_S_CASES(4) AT_S_CASES(5) AT_S_CASES(6)
    }
}
#define AT_V_CASE(r, g) \
    case (r) * 8 + (g): at_values(r, g, D, kc, st, v, a, o); break;
#define AT_V_CASES(r) AT_V_CASE(r, 1) AT_V_CASE(r, 2) AT_V_CASE(r, 3) AT_V_CASE(r, 4)
static void at_values_any(int R, int G, int D, int kc, const float *st, const float *v, const float *a, float *o) {
    switch (R * 8 + G) {
        AT_V_CASES(1) AT_V_CASES(2) AT_V_CASES(3) AT_V_CASES(4) AT_V_CASES(5) AT_V_CASES(6)
    }
}

void AT_CAT(kvc_attn_tile, SFX)(int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v,
                                const int *lo, const int *hi, float *m, float *l, float *o, float *st) {
    if (D % VN) {
        kvc_attn_tile_ref(nq, D, kc, scale, qt, k, v, lo, hi, m, l, o, st);
        return;
    }
    const int nv = (nq + VN - 1) / VN; /* row-vectors */
    for (int g0 = 0; g0 < nv; g0 += QG)
        for (int j0 = 0; j0 < kc; j0 += RK)
            at_scores_any(kc - j0 < RK ? kc - j0 : RK, nv - g0 < QG ? nv - g0 : QG, D, scale, qt + g0 * VN,
                          k + (size_t)j0 * D, st + (size_t)j0 * AT_W + g0 * VN);
    if (lo)
        for (int j = 0; j < kc; j++)
            for (int i = 0; i < nq; i++)
                if (j < lo[i] || j >= hi[i]) st[(size_t)j * AT_W + i] = -INFINITY;
    float a[AT_W];
    for (int g = 0; g < nv; g++) {
        const int c = g * VN;
        VF mx = VLOAD(m + c);
        const VF m0 = mx;
        for (int j = 0; j < kc; j++) mx = VMAX(mx, VLOAD(st + (size_t)j * AT_W + c));
        const VF ms = VMAX(mx, VSET1(-FLT_MAX));
        VF sum = VZERO();
        for (int j = 0; j < kc; j++) {
            const VF p = VEXP(VSUB(VLOAD(st + (size_t)j * AT_W + c), ms));
            VSTORE(st + (size_t)j * AT_W + c, p);
            sum = VADD(sum, p);
        }
        const VF av = VEXP(VSUB(m0, ms));
        VSTORE(a + c, av);
        VSTORE(l + c, VADD(VMUL(VLOAD(l + c), av), sum));
        VSTORE(m + c, mx);
    }
    for (int d0 = 0; d0 < D; d0 += DG * VN) {
        const int G = (D - d0) / VN < DG ? (D - d0) / VN : DG;
        for (int i0 = 0; i0 < nq; i0 += RQ)
            at_values_any(nq - i0 < RQ ? nq - i0 : RQ, G, D, kc, st + i0, v + d0, a + i0, o + (size_t)i0 * D + d0);
    }
}

#undef AT_S_CASE
#undef AT_S_CASES
#undef AT_V_CASE
#undef AT_V_CASES
