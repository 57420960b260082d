/* kernels.c — the kernel half of the C ABI: type sizes (kvc_type_info) and the
 * kernels run one call at a time for tests and benchmarks (kvc_quantize_row,
 * kvc_dequantize_row, kvc_vec_dot, kvc_gemm, kvc_op_*), each through the kernel
 * table of the impl asked for (kvc_kernel_table_for, cpu/dispatch.c). Every
 * argument is validated here: KVC_ERR_INVALID / KVC_ERR_UNSUPPORTED, never an
 * abort or a print. The TurboQuant entry points (kvc_tq_*) are in tq.c. */
#include <assert.h>
#include <stddef.h>

#include "kernels.h"
#include "kvc.h"

static_assert(KVC_N_TYPES == KVC_TYPE_BF16 + 1, "kvc_type ids index the kernel table");
static_assert(KVC_N_IMPL == KVC_IMPL_NEON + 1, "kvc_impl values index the dispatch tables");

static const kvc_type_traits g_traits[KVC_N_TYPES] = {
    [KVC_TYPE_F32] = {"f32", 1, 4, KVC_TYPE_F32},
    [KVC_TYPE_F16] = {"f16", 1, 2, KVC_TYPE_F32},
    [KVC_TYPE_BF16] = {"bf16", 1, 2, KVC_TYPE_F32},
    [KVC_TYPE_Q8_0] = {"q8_0", QK8_0, sizeof(block_q8_0), KVC_TYPE_Q8_0},
    [KVC_TYPE_Q8_1] = {"q8_1", QK8_1, sizeof(block_q8_1), -1},
    [KVC_TYPE_Q8_K] = {"q8_K", QK_K, sizeof(block_q8_K), -1},
    [KVC_TYPE_Q4_0] = {"q4_0", QK4_0, sizeof(block_q4_0), KVC_TYPE_Q8_0},
    [KVC_TYPE_Q4_1] = {"q4_1", QK4_1, sizeof(block_q4_1), KVC_TYPE_Q8_1},
    [KVC_TYPE_Q5_0] = {"q5_0", QK5_0, sizeof(block_q5_0), KVC_TYPE_Q8_0},
    [KVC_TYPE_Q5_1] = {"q5_1", QK5_1, sizeof(block_q5_1), KVC_TYPE_Q8_1},
    [KVC_TYPE_Q4_K] = {"q4_K", QK_K, sizeof(block_q4_K), KVC_TYPE_Q8_K},
    [KVC_TYPE_Q5_K] = {"q5_K", QK_K, sizeof(block_q5_K), KVC_TYPE_Q8_K},
    [KVC_TYPE_Q6_K] = {"q6_K", QK_K, sizeof(block_q6_K), KVC_TYPE_Q8_K},
};

const kvc_type_traits *kvc_traits(int type) {
    if (type < 0 || type >= KVC_N_TYPES || g_traits[type].name == NULL) return NULL;
    return &g_traits[type];
}

int kvc_type_info(int type, int *block_size, int *type_size, int *vec_dot_type) {
    const kvc_type_traits *t = kvc_traits(type);
    if (!t) return KVC_ERR_INVALID;
    if (block_size) *block_size = t->block_size;
    if (type_size) *type_size = t->type_size;
    if (vec_dot_type) *vec_dot_type = t->vec_dot_type;
    return KVC_OK;
}

/* The kernels of `type` in the table of impl into *k, or a kvc status. */
static int kernels_of(int type, int impl, kvc_kernels *k) {
    const kvc_kernel_table *t;
    int st = kvc_kernel_table_for(impl, &t);
    if (st == KVC_OK) *k = t->type[type];
    return st;
}

int kvc_quantize_row(int type, int impl, const float *x, void *y, long long n) {
    const kvc_type_traits *t = kvc_traits(type);
    kvc_kernels k;
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    int st = kernels_of(type, impl, &k);
    if (st) return st;
    if (!k.quantize) return KVC_ERR_UNSUPPORTED;
    if (n == 0) return KVC_OK;
    if (!x || !y) return KVC_ERR_INVALID;
    k.quantize(x, y, n);
    return KVC_OK;
}

int kvc_dequantize_row(int type, int impl, const void *x, float *y, long long n) {
    const kvc_type_traits *t = kvc_traits(type);
    kvc_kernels k;
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    int st = kernels_of(type, impl, &k);
    if (st) return st;
    if (!k.dequantize) return KVC_ERR_UNSUPPORTED;
    if (n == 0) return KVC_OK;
    if (!x || !y) return KVC_ERR_INVALID;
    k.dequantize(x, y, n);
    return KVC_OK;
}

/* n must be a multiple of both the weight's and the activation's block size. */
static int check_dot_type(const kvc_type_traits *t, long long n) {
    if (!t || n < 0 || n % t->block_size) return KVC_ERR_INVALID;
    if (t->vec_dot_type < 0) return KVC_ERR_UNSUPPORTED;
    if (n % kvc_traits(t->vec_dot_type)->block_size) return KVC_ERR_INVALID;
    return KVC_OK;
}

int kvc_vec_dot(int type, int impl, long long n, const void *w, const void *a, float *out) {
    kvc_kernels k;
    int st = check_dot_type(kvc_traits(type), n);
    if (st || (st = kernels_of(type, impl, &k))) return st;
    if (!out) return KVC_ERR_INVALID;
    if (n == 0) {
        *out = 0.0f;
        return KVC_OK;
    }
    if (!w || !a) return KVC_ERR_INVALID;
    *out = k.vec_dot(n, w, a);
    return KVC_OK;
}

int kvc_gemm(int type, int impl, long long m, long long n_tok, long long k, const void *w, const void *a,
             float *out, long long ldo) {
    kvc_kernels kk;
    int st = check_dot_type(kvc_traits(type), k);
    if (st) return st;
    if (m < 0 || n_tok < 0 || (n_tok > 1 && ldo < m)) return KVC_ERR_INVALID;
    if ((st = kernels_of(type, impl, &kk))) return st;
    if (m == 0 || n_tok == 0) return KVC_OK;
    if (!out) return KVC_ERR_INVALID;
    if (k == 0) {
        for (long long i = 0; i < n_tok; i++)
            for (long long r = 0; r < m; r++) out[i * ldo + r] = 0.0f;
        return KVC_OK;
    }
    if (!w || !a) return KVC_ERR_INVALID;
    kk.gemm(m, n_tok, k, w, a, out, ldo);
    return KVC_OK;
}

/* ---- vector ops: any impl this CPU cannot run (or no kvc_impl) is KVC_ERR_UNSUPPORTED ---- */

const kvc_vec_ops *kvc_vec_ops_for(int impl) {
    const kvc_kernel_table *t;
    return kvc_kernel_table_for(impl, &t) == KVC_OK ? t->vec : NULL;
}

int kvc_op_softmax(int impl, int n, float *x) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x) return KVC_ERR_INVALID;
    o->softmax(n, x);
    return KVC_OK;
}

int kvc_op_rms_norm(int impl, int n, const float *x, const float *w, float eps, float *out) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x || !w || !out) return KVC_ERR_INVALID;
    o->rms_norm(n, x, w, eps, out);
    return KVC_OK;
}

int kvc_op_silu_mul(int impl, int n, const float *g, const float *u, float *out) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !g || !u || !out) return KVC_ERR_INVALID;
    o->silu_mul(n, g, u, out);
    return KVC_OK;
}

int kvc_op_gelu_mul(int impl, int n, const float *g, const float *u, float *out) {
    if (impl != KVC_IMPL_AUTO && impl != KVC_IMPL_SCALAR) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !g || !u || !out) return KVC_ERR_INVALID;
    kvc_gelu_mul_ref(n, g, u, out);
    return KVC_OK;
}

int kvc_op_axpy(int impl, int n, float a, const float *x, float *y) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || !x || !y) return KVC_ERR_INVALID;
    o->axpy(n, a, x, y);
    return KVC_OK;
}

int kvc_op_axpy_rows(int impl, int n, int r, const float *a, const float *x, float *y) {
    const kvc_vec_ops *o = kvc_vec_ops_for(impl);
    if (!o) return KVC_ERR_UNSUPPORTED;
    if (n <= 0 || r <= 0 || r > 1024 || !a || !x || !y) return KVC_ERR_INVALID;
    const float *rows[1024];
    for (int k = 0; k < r; k++) rows[k] = x + (size_t)k * n;
    o->axpy_rows(n, r, a, rows, y);
    return KVC_OK;
}

int kvc_op_attn_tile(int impl, int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                     const int *hi, float *m, float *l, float *o, float *st) {
    const kvc_kernel_table *t;
    int st_ = kvc_kernel_table_for(impl, &t);
    if (st_ != KVC_OK) return st_;
    if (nq < 1 || nq > KVC_ATTN_ROWS || kc < 1 || kc > KVC_ATTN_KEYS || D < 1 || !qt || !k || !v || !m || !l || !o ||
        !st || !lo != !hi)
        return KVC_ERR_INVALID;
    t->attn_tile(nq, D, kc, scale, qt, k, v, lo, hi, m, l, o, st);
    return KVC_OK;
}
