/* tq.c — TurboQuant rows (docs/design.md §4): the layout of a row, the sign
 * streams, the block Walsh–Hadamard rotations, query preparation, and the
 * kvc_tq_* entry points the tests call (they run the kernels of the table
 * kvc_kernel_table_for picks). The kernels themselves: tq_ref.c (scalar) and
 * cpu/tq_*.c (SIMD). Plain C. */
#include "tq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kvc.h"

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void tq_signs(uint64_t seed, int layer, int group, int stream, int m, float *out) {
    uint64_t state = seed ^ ((uint64_t)layer * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)(group + 1) * 0xD1B54A32D192ED03ULL) ^
                     ((uint64_t)stream * 0x8CB92BA72F3D8DD7ULL);
    uint64_t word = 0;
    for (int i = 0; i < m; i++) {
        if (i % 64 == 0) word = splitmix64(&state);
        out[i] = (word >> (i % 64)) & 1 ? -1.0f : 1.0f;
    }
}

void tq_wht(float *v, int m) {
    int start = 0;
    for (int B = 1 << 30; B >= 1; B >>= 1) {
        if (!(m & B)) continue; /* blocks: the binary expansion of m, largest first */
        float *x = v + start;
        for (int h = 1; h < B; h <<= 1)
            for (int i = 0; i < B; i++)
                if (!(i & h)) {
                    float a = x[i], b = x[i + h];
                    x[i] = a + b;
                    x[i + h] = a - b;
                }
        const float s = (float)(1.0 / sqrt((double)B));
        for (int i = 0; i < B; i++) x[i] *= s;
        start += B;
    }
}

/* Mixing order of a non-power-of-two group (docs/design.md §4): the blocks of the binary
 * expansion of m are interleaved in proportion to their sizes — element r of a
 * block of size B sorts by (2r + 1)·(S / B), S the largest block, ties by block —
 * and the sorted sequence is cut back into blocks. Each new block then takes from
 * every old block a share proportional to the old block's size, so after a second
 * block transform every coordinate carries ~1/m of the energy even when the
 * blocks' energies differ (the calibrated channel order sorts them, so they do).
 * order (m): z[j] = y[order[j]]. Same order as tq_rotation._mix_order. */
void tq_mix_order(int m, int16_t *order) {
    int S = 1, n = 0;
    while (S * 2 <= m) S *= 2;
    int idx[32], size[32], start = 0; /* cursor of each block */
    for (int B = S; B >= 1; B >>= 1)
        if (m & B) idx[n] = start, size[n] = B, start += B, n++;
    int next[32] = {0};
    for (int j = 0; j < m; j++) { /* a merge of the n blocks by key */
        int best = -1;
        long long best_key = 0;
        for (int b = 0; b < n; b++) {
            if (next[b] >= size[b]) continue;
            long long key = (2LL * next[b] + 1) * (S / size[b]);
            if (best < 0 || key < best_key) best = b, best_key = key;
        }
        order[j] = (int16_t)(idx[best] + next[best]++);
    }
}

/* v (m) in place: v ← R v with R = H·diag(signs) for a power-of-two m, else
 * R = H·diag(mix_signs)·P·H·diag(signs) (P: g->mix; the fixed mix_signs keep the
 * second H from partly undoing the first); tmp: (m) */
void tq_rotate(const tq_group *g, const float *signs, float *v, float *tmp) {
    const int m = g->m;
    for (int i = 0; i < m; i++) v[i] *= signs[i];
    tq_wht(v, m);
    if (!g->mix) return;
    for (int j = 0; j < m; j++) tmp[j] = v[g->mix[j]] * g->mix_signs[j];
    tq_wht(tmp, m);
    memcpy(v, tmp, sizeof(float) * (size_t)m);
}

/* v (m) in place: v ← Rᵀ v (each H block is symmetric and its own inverse) */
static void unrotate(const tq_group *g, float *v, float *tmp) {
    const int m = g->m;
    tq_wht(v, m);
    if (g->mix) {
        for (int j = 0; j < m; j++) tmp[g->mix[j]] = v[j] * g->mix_signs[j];
        tq_wht(tmp, m);
        memcpy(v, tmp, sizeof(float) * (size_t)m);
    }
    for (int i = 0; i < m; i++) v[i] *= g->signs[i];
}

long long tq_group_bytes(int m, int bits, int qjl, int scale8) {
    return (scale8 ? 1 : 2) + (qjl ? 2 : 0) + ((long long)m * bits + 7) / 8 + (qjl ? (m + 7) / 8 : 0);
}

/* float32(2^(k/32)), k = 0..31, correctly rounded (turboquant._SCALE8_STEPS holds the same hex values) */
static const float scale8_steps[32] = {
    0x1.0p+0f, 0x1.059b0ep+0f, 0x1.0b5586p+0f, 0x1.11301ep+0f, 0x1.172b84p+0f, 0x1.1d4874p+0f,
    0x1.2387a6p+0f, 0x1.29e9ep+0f, 0x1.306fep+0f, 0x1.371a74p+0f, 0x1.3dea64p+0f, 0x1.44e086p+0f,
    0x1.4bfdaep+0f, 0x1.5342b6p+0f, 0x1.5ab07ep+0f, 0x1.6247ecp+0f, 0x1.6a09e6p+0f, 0x1.71f75ep+0f,
    0x1.7a1148p+0f, 0x1.82589ap+0f, 0x1.8ace54p+0f, 0x1.93737cp+0f, 0x1.9c4918p+0f, 0x1.a5503cp+0f,
    0x1.ae89fap+0f, 0x1.b7f77p+0f, 0x1.c199bep+0f, 0x1.cb720ep+0f, 0x1.d5818ep+0f, 0x1.dfc974p+0f,
    0x1.ea4afap+0f, 0x1.f50766p+0f};

float tq_scale8_value(int e, int base) {
    const int t = e + base, oct = t >= 0 ? t / 32 : -((31 - t) / 32); /* floor(t / 32), in -64..72 */
    return scale8_steps[t - 32 * oct] * kvc_bits_f32((uint32_t)(oct + 127) << 23); /* × 2^oct, exact */
}

static int group_init(tq_group *g, int m, int bits, int qjl, const float *cb, int off, uint64_t seed, int layer,
                      int group, int scale8, int scale_base, int tmem) {
    memset(g, 0, sizeof *g);
    if (m <= 0 || m > TQ_MAX_DIM || bits < 1 || bits > TQ_MAX_BITS || !cb) return KVC_ERR_INVALID;
    if (scale8 && (scale_base < TQ_SCALE8_BASE_MIN || scale_base > TQ_SCALE8_BASE_MAX)) return KVC_ERR_INVALID;
    if (tmem && (tmem < 0 || tmem > TQ_TRELLIS_MAX_MEM || bits + tmem > TQ_TRELLIS_MAX_STATE || qjl ||
                 m > TQ_TRELLIS_MAX_M || m * bits < bits + tmem))
        return KVC_ERR_INVALID; /* trellis codes: no QJL, a state within one lap of the ring */
    g->m = m, g->bits = bits, g->qjl = qjl, g->cb = cb, g->off = off, g->tmem = tmem;
    g->rnorm_off = off + (scale8 ? 1 : 2);
    g->codes_off = g->rnorm_off + (qjl ? 2 : 0);
    g->qjl_off = g->codes_off + (m * bits + 7) / 8;
    g->bytes = (int)tq_group_bytes(m, bits, qjl, scale8);
    if (scale8) {
        g->scale_lut = malloc(sizeof(float) * 256);
        g->scale_mid = malloc(sizeof(double) * 255);
        if (!g->scale_lut || !g->scale_mid) return KVC_ERR_NOMEM;
        g->scale_lut[0] = 0.0f;
        for (int e = 1; e < 256; e++) g->scale_lut[e] = tq_scale8_value(e, scale_base);
        for (int e = 0; e < 255; e++) g->scale_mid[e] = ((double)g->scale_lut[e] + (double)g->scale_lut[e + 1]) / 2;
    }
    g->qjl_c = (float)(sqrt(M_PI / 2) / sqrt((double)m));
    int n = 1 << bits;
    g->signs = malloc(sizeof(float) * (size_t)m);
    g->signs2 = malloc(sizeof(float) * (size_t)m);
    if (!g->signs || !g->signs2) return KVC_ERR_NOMEM;
    if (!tmem) { /* Lloyd–Max codes: nearest centroid through the midpoints (trellis tables have no order) */
        for (int k = 1; k < n; k++)
            if (!(cb[k] > cb[k - 1])) return KVC_ERR_INVALID; /* codebook must ascend */
        g->bounds = malloc(sizeof(double) * (size_t)(n - 1));
        if (!g->bounds) return KVC_ERR_NOMEM;
        for (int k = 0; k + 1 < n; k++) g->bounds[k] = ((double)cb[k] + (double)cb[k + 1]) / 2;
    }
    tq_signs(seed, layer, group, 0, m, g->signs);
    tq_signs(seed, layer, group, 1, m, g->signs2);
    if (m & (m - 1)) {
        g->mix = malloc(sizeof(int16_t) * (size_t)m);
        g->mix_signs = malloc(sizeof(float) * (size_t)m);
        if (!g->mix || !g->mix_signs) return KVC_ERR_NOMEM;
        tq_mix_order(m, g->mix);
        tq_signs(0, 0, 0, 2, m, g->mix_signs); /* fixed per m (tq_rotation._mix_signs) */
    }
    return KVC_OK;
}

void tq_layout_free(tq_layout *L) {
    for (int i = 0; i < TQ_MAX_GROUPS; i++) {
        free(L->g[i].bounds);
        free(L->g[i].signs);
        free(L->g[i].signs2);
        free(L->g[i].mix);
        free(L->g[i].mix_signs);
        free(L->g[i].scale_lut);
        free(L->g[i].scale_mid);
    }
    memset(L, 0, sizeof *L);
}

/* the trellis memory bits a group of m channels and bits-bit codes takes from its layer's
 * trellis setting: all of them when the group can hold such codes (bits + trellis <= 12, at most
 * 256 channels, a state within one lap of the ring), else 0 — Lloyd–Max codes
 * (turboquant.py's KConfig.groups, the same rule) */
static int group_tmem(int trellis, int m, int bits) {
    if (trellis <= 0 || trellis > TQ_TRELLIS_MAX_MEM) return trellis; /* group_init refuses a bad value */
    return bits + trellis <= TQ_TRELLIS_MAX_STATE && m <= TQ_TRELLIS_MAX_M && m * bits >= bits + trellis ? trellis : 0;
}

int tq_layout_init(tq_layout *L, int d, int n_hi, int hi_bits, int lo_bits, int qjl_hi, int qjl_lo,
                   const float *cb_hi, const float *cb_lo, const int *perm, uint64_t seed, int layer, int scale8,
                   int scale_base, int trellis) {
    memset(L, 0, sizeof *L);
    if (d <= 0 || d > TQ_MAX_DIM || n_hi < 0 || n_hi >= d) return KVC_ERR_INVALID;
    if ((qjl_hi && n_hi % 8) || (qjl_lo && (d - n_hi) % 8)) return KVC_ERR_INVALID;
    const int tm_hi = n_hi > 0 ? group_tmem(trellis, n_hi, hi_bits) : 0;
    const int tm_lo = group_tmem(trellis, d - n_hi, lo_bits);
    if (trellis && ((qjl_hi && n_hi > 0) || qjl_lo || (!tm_hi && !tm_lo)))
        return KVC_ERR_INVALID; /* trellis codes take no QJL, and some group must hold them */
    L->d = d, L->perm = perm;
    int st = KVC_OK, off = 0;
    if (n_hi > 0) {
        st = group_init(&L->g[0], n_hi, hi_bits, qjl_hi, cb_hi, 0, seed, layer, 0, scale8, scale_base, tm_hi);
        off = L->g[0].bytes;
        L->n_groups = 1;
    }
    if (st == KVC_OK)
        st = group_init(&L->g[L->n_groups], d - n_hi, lo_bits, qjl_lo, cb_lo, off, seed, layer, n_hi > 0, scale8,
                        scale_base, tm_lo);
    L->n_groups++;
    if (st != KVC_OK) {
        tq_layout_free(L);
        return st;
    }
    L->row_bytes = off + L->g[L->n_groups - 1].bytes;
    if (perm) { /* a permutation of 0..d-1 */
        char *seen = calloc((size_t)d, 1);
        if (!seen) return KVC_ERR_NOMEM;
        for (int i = 0; i < d; i++) {
            if (perm[i] < 0 || perm[i] >= d || seen[perm[i]]) st = KVC_ERR_INVALID;
            else seen[perm[i]] = 1;
        }
        free(seen);
        if (st != KVC_OK) tq_layout_free(L);
    }
    return st;
}

void tq_prepare_query(const tq_layout *L, const float *q, float *qr, float *w) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        const tq_group *g = &L->g[k];
        float *gq = qr + start, *gw = w + start, tmp[TQ_MAX_DIM];
        memcpy(gq, q + start, sizeof(float) * (size_t)g->m);
        tq_rotate(g, g->signs, gq, tmp);
        if (g->qjl) {
            memcpy(gw, gq, sizeof(float) * (size_t)g->m);
            tq_rotate(g, g->signs2, gw, tmp);
        }
        start += g->m;
    }
}

void tq_unrotate(const tq_layout *L, float *acc) {
    int start = 0;
    for (int k = 0; k < L->n_groups; k++) {
        float tmp[TQ_MAX_DIM];
        unrotate(&L->g[k], acc + start, tmp);
        start += L->g[k].m;
    }
}

/* ---- ABI test entry points: one group of m channels ----
 * impl picks the kernel table (kvc_kernel_table_for): KVC_ERR_UNSUPPORTED when
 * this CPU or build has no such implementation (or impl is not a kvc_impl). */

static const kvc_kernel_table *table_for(int impl) {
    const kvc_kernel_table *t;
    return kvc_kernel_table_for(impl, &t) == KVC_OK ? t : NULL;
}

long long kvc_tq_row_bytes(int m, int bits, int qjl, int scale8) {
    if (m <= 0 || m > TQ_MAX_DIM || bits < 1 || bits > TQ_MAX_BITS) return -1;
    return tq_group_bytes(m, bits, qjl, scale8);
}

static int one_group(tq_layout *L, int m, int bits, int qjl, int trellis, int scale8, int scale_base, const float *cb,
                     unsigned long long seed, int layer, int group) {
    if (qjl && m % 8) return KVC_ERR_INVALID;
    memset(L, 0, sizeof *L);
    int st = group_init(&L->g[0], m, bits, qjl, cb, 0, seed, layer, group, scale8, scale_base, trellis);
    if (st != KVC_OK) {
        tq_layout_free(L);
        return st;
    }
    L->d = m, L->n_groups = 1, L->row_bytes = L->g[0].bytes;
    return KVC_OK;
}

int kvc_tq_encode(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, int scale_mode, const float *codebook,
                  unsigned long long seed, int layer, int group, const float *x, int n, void *rows) {
    if (!x || !rows || n < 0 || (scale_mode < 0 || scale_mode > 2)) return KVC_ERR_INVALID;
    const kvc_kernel_table *t = table_for(impl);
    if (!t) return KVC_ERR_UNSUPPORTED;
    tq_layout L;
    int st = one_group(&L, m, bits, qjl, trellis, scale8, scale_base, codebook, seed, layer, group);
    if (st != KVC_OK) return st;
    float *y = malloc(sizeof(float) * 2 * (size_t)m); /* encode scratch */
    if (!y) st = KVC_ERR_NOMEM;
    for (int j = 0; st == KVC_OK && j < n; j++)
        t->tq_encode(&L, scale_mode, x + (size_t)j * m, (uint8_t *)rows + (size_t)j * L.row_bytes, y);
    free(y);
    tq_layout_free(&L);
    return st;
}

int kvc_tq_decode(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, const float *codebook,
                  unsigned long long seed, int layer, int group, const void *rows, int n, float *x) {
    if (!rows || !x || n < 0) return KVC_ERR_INVALID;
    const kvc_kernel_table *t = table_for(impl);
    if (!t) return KVC_ERR_UNSUPPORTED;
    tq_layout L;
    int st = one_group(&L, m, bits, qjl, trellis, scale8, scale_base, codebook, seed, layer, group);
    if (st != KVC_OK) return st;
    const float one = 1.0f;
    for (int j = 0; j < n; j++) {
        float *out = x + (size_t)j * m;
        memset(out, 0, sizeof(float) * (size_t)m);
        t->tq_accum(&L, &one, 1, 1, 1, 1, (const uint8_t *)rows + (size_t)j * L.row_bytes, out);
        tq_unrotate(&L, out);
    }
    tq_layout_free(&L);
    return KVC_OK;
}

int kvc_tq_score(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, const float *codebook,
                 unsigned long long seed, int layer, int group, const float *q, const void *rows, int n, float *out) {
    if (!q || !rows || !out || n < 0) return KVC_ERR_INVALID;
    const kvc_kernel_table *t = table_for(impl);
    if (!t) return KVC_ERR_UNSUPPORTED;
    tq_layout L;
    int st = one_group(&L, m, bits, qjl, trellis, scale8, scale_base, codebook, seed, layer, group);
    if (st != KVC_OK) return st;
    float *buf = malloc(sizeof(float) * 2 * (size_t)m);
    if (!buf) {
        tq_layout_free(&L);
        return KVC_ERR_NOMEM;
    }
    tq_query tq = {buf, buf + m};
    tq_prepare_query(&L, q, tq.qr, tq.w);
    t->tq_score(&L, &tq, 1, 1, n, (const uint8_t *)rows, out, n);
    free(buf);
    tq_layout_free(&L);
    return KVC_OK;
}

int kvc_tq_block_test(int impl, int d, int n_hi, int hi_bits, int lo_bits, int qjl_hi, int qjl_lo, const float *cb_hi,
                      const float *cb_lo, unsigned long long seed, int layer, int scale8, int scale_base, int trellis,
                      const float *keys, int n, const float *q, int nq, int grp, int n0, const float *p, float *scores,
                      float *acc) {
    if (!keys || !q || !p || !scores || !acc || nq <= 0 || grp <= 0 || n0 < 1 || tq_rows_read(nq, grp, n0) > n)
        return KVC_ERR_INVALID;
    const kvc_kernel_table *t = table_for(impl);
    if (!t) return KVC_ERR_UNSUPPORTED;
    tq_layout L;
    int st = tq_layout_init(&L, d, n_hi, hi_bits, lo_bits, qjl_hi, qjl_lo, cb_hi, cb_lo, NULL, seed, layer, scale8,
                            scale_base, trellis);
    if (st != KVC_OK) return st;
    uint8_t *rows = calloc((size_t)n * L.row_bytes + 8, 1); /* slack: code reads may run 2 bytes past */
    float *buf = malloc(sizeof(float) * ((size_t)2 * nq * d + 2 * (size_t)d));
    if (!rows || !buf) st = KVC_ERR_NOMEM;
    if (st == KVC_OK) {
        float *scratch = buf + (size_t)2 * nq * d; /* (2d) */
        for (int j = 0; j < n; j++) t->tq_encode(&L, 1, keys + (size_t)j * d, rows + (size_t)j * L.row_bytes, scratch);
        tq_query tq = {buf, buf + (size_t)nq * d};
        for (int r = 0; r < nq; r++)
            tq_prepare_query(&L, q + (size_t)r * d, tq.qr + (size_t)r * d, tq.w + (size_t)r * d);
        t->tq_score(&L, &tq, nq, grp, n0, rows, scores, n);
        memset(acc, 0, sizeof(float) * (size_t)nq * d);
        t->tq_accum(&L, p, n, nq, grp, n0, rows, acc);
        for (int r = 0; r < nq; r++) tq_unrotate(&L, acc + (size_t)r * d);
    }
    free(rows);
    free(buf);
    tq_layout_free(&L);
    return st;
}
