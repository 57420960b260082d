/* model.c — model validation and creation from a kvc_model_desc: every size
 * coming from the caller is checked here, so the backends can trust their
 * inputs. Contexts: context.c; the forward pass: a backend's (cpu/forward.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"

static const char *tname(const kvc_tensor *t) { return t->name ? t->name : "(unnamed tensor)"; }

/* Check a matrix (ne0, ne1) and make a view of it. */
static int matrix(const kvc_tensor *t, long long ne0, long long ne1, tview *out, char *err, int err_len) {
    if (!t->data) return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s is missing", tname(t));
    if (t->ne[0] != ne0 || t->ne[1] != ne1)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s has shape (%lld, %lld), expected (%lld, %lld)",
                    tname(t), t->ne[0], t->ne[1], ne0, ne1);
    size_t rb = kvc_row_bytes(t->type, ne0);
    int bs, ts, vdt;
    if (!rb || kvc_type_info(t->type, &bs, &ts, &vdt) != KVC_OK)
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "tensor %s: type %d with row length %lld is not supported",
                    tname(t), t->type, ne0);
    if (t->nbytes < 0 || (unsigned long long)t->nbytes < rb * (unsigned long long)ne1)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s: %lld bytes given, %llu needed (file truncated?)",
                    tname(t), t->nbytes, (unsigned long long)(rb * (size_t)ne1));
    *out = (tview){t->type, ne0, ne1, rb, t->data, vdt};
    return KVC_OK;
}

/* Check a vector of n elements and copy it to float (NULL + OK if absent and optional). */
static int vector(const kvc_tensor *t, long long n, int optional, float **out, char *err, int err_len) {
    *out = NULL;
    if (!t->data) {
        if (optional) return KVC_OK;
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s is missing", tname(t));
    }
    if (t->ne[0] != n || t->ne[1] != 1)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s has shape (%lld, %lld), expected (%lld)",
                    tname(t), t->ne[0], t->ne[1], n);
    size_t rb = kvc_row_bytes(t->type, n);
    if (!rb) return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "tensor %s: type %d not supported", tname(t), t->type);
    if (t->nbytes < 0 || (unsigned long long)t->nbytes < rb)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tensor %s: too few bytes (file truncated?)", tname(t));
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    if (kvc_dequantize_row(t->type, KVC_IMPL_AUTO, t->data, v, n) != KVC_OK) {
        free(v);
        return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "tensor %s: cannot read type %d", tname(t), t->type);
    }
    *out = v;
    return KVC_OK;
}

void kvc_model_free(kvc_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int i = 0; i < m->n_layer; i++) {
            layer_w *l = &m->layers[i];
            free(l->attn_norm);
            free(l->ffn_norm);
            free(l->bq);
            free(l->bk);
            free(l->bv);
            free(l->bo);
            free(l->q_norm);
            free(l->k_norm);
            free(l->q_scale);
            free(l->k_scale);
            free(l->attn_post_norm);
            free(l->ffn_post_norm);
        }
    }
    free(m->layers);
    free(m->rope_freqs);
    free(m->rope_src);
    free(m->output_norm);
    free(m);
}

#define TRY(expr)                          \
    do {                                   \
        int st_ = (expr);                  \
        if (st_ != KVC_OK) {               \
            kvc_model_free(m);             \
            return st_;                    \
        }                                  \
    } while (0)

int kvc_model_create(const kvc_model_desc *d, kvc_model **out, char *err, int err_len) {
    if (!out) return KVC_ERR_INVALID;
    *out = NULL;
    if (!d) return kvc_fail(err, err_len, KVC_ERR_INVALID, "no model description");
    const long long lim = 1LL << 24; /* generous upper bound on any dimension */
    if (d->n_vocab <= 0 || d->n_embd <= 0 || d->n_layer <= 0 || d->n_head <= 0 || d->n_head_kv <= 0 ||
        d->head_dim <= 0 || d->n_ff <= 0 || d->n_vocab > lim || d->n_embd > lim || d->n_layer > 4096 ||
        d->n_head > 4096 || d->n_ff > lim || d->head_dim > 1024)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "model dimensions out of range");
    if (d->head_dim % 2 || d->n_head % d->n_head_kv)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "head_dim must be even and n_head a multiple of n_head_kv");
    if (d->rope_pairing != KVC_ROPE_NEOX && d->rope_pairing != KVC_ROPE_INTERLEAVED)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "unknown RoPE pairing %d", d->rope_pairing);
    if (!d->rope_freqs || !d->layers) return kvc_fail(err, err_len, KVC_ERR_INVALID, "rope_freqs and layers are required");
    if (!(d->rms_eps > 0.0f && d->rms_eps < 1.0f)) return kvc_fail(err, err_len, KVC_ERR_INVALID, "rms_eps out of range");

    kvc_model *m = calloc(1, sizeof *m);
    if (!m) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    m->n_vocab = d->n_vocab, m->n_embd = d->n_embd, m->n_layer = d->n_layer, m->n_head = d->n_head;
    m->n_head_kv = d->n_head_kv, m->head_dim = d->head_dim, m->n_ff = d->n_ff, m->rms_eps = d->rms_eps;
    m->rope_pairing = d->rope_pairing;
    if (d->activation != KVC_ACT_SILU && d->activation != KVC_ACT_GELU_TANH)
        TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "unknown activation %d", d->activation));
    m->activation = d->activation;
    m->embd_scale = d->embd_scale != 0.0f ? d->embd_scale : 1.0f;
    m->attn_scale = d->attn_scale != 0.0f ? d->attn_scale : 1.0f / sqrtf((float)d->head_dim);
    if (!(m->embd_scale > 0.0f && m->embd_scale < 1e6f) || !(m->attn_scale > 0.0f && m->attn_scale < 1e6f))
        TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "embd_scale or attn_scale out of range"));
    const long long E = d->n_embd, F = d->n_ff, V = d->n_vocab;
    const long long QD = (long long)d->n_head * d->head_dim, KD = (long long)d->n_head_kv * d->head_dim;

    const int P = d->head_dim / 2;
    m->rope_freqs = malloc(sizeof(float) * (size_t)P * KVC_MAX_ROPE_SETS);
    m->rope_src = malloc(sizeof(int) * (size_t)d->n_layer * P);
    m->layers = calloc((size_t)d->n_layer, sizeof(layer_w));
    if (!m->rope_freqs || !m->rope_src || !m->layers) TRY(kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory"));
    memcpy(m->rope_freqs, d->rope_freqs, sizeof(float) * (size_t)P);
    m->n_rope = 1;
    for (int l = 0; l < d->n_layer; l++) { /* distinct per-layer tables, the model's first */
        const float *f = d->layers[l].rope_freqs ? d->layers[l].rope_freqs : d->rope_freqs;
        int set = 0;
        while (set < m->n_rope && memcmp(m->rope_freqs + (size_t)set * P, f, sizeof(float) * (size_t)P)) set++;
        if (set == m->n_rope) {
            if (set == KVC_MAX_ROPE_SETS)
                TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "more than %d distinct RoPE tables", KVC_MAX_ROPE_SETS));
            memcpy(m->rope_freqs + (size_t)set * P, f, sizeof(float) * (size_t)P);
            m->n_rope++;
        }
        m->layers[l].rope_set = set;
        if (d->layers[l].window < 0)
            TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: negative sliding window", l));
        m->layers[l].window = d->layers[l].window;
    }
    for (int l = 0; l < d->n_layer; l++) {
        int *src = m->rope_src + (size_t)l * P;
        unsigned char seen[512] = {0};
        for (int j = 0; j < P; j++) {
            src[j] = d->rope_pair_src ? d->rope_pair_src[(size_t)l * P + j] : j;
            if (src[j] < 0 || src[j] >= P || seen[src[j]]++)
                TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "rope_pair_src of layer %d is not a permutation of %d pairs", l, P));
        }
    }

    TRY(matrix(&d->tok_embd, E, V, &m->tok_embd, err, err_len));
    TRY(vector(&d->output_norm, E, 0, &m->output_norm, err, err_len));
    if (d->output.data)
        TRY(matrix(&d->output, E, V, &m->output, err, err_len));
    else
        m->output = m->tok_embd;
    for (int i = 0; i < d->n_layer; i++) {
        const kvc_layer_desc *ld = &d->layers[i];
        layer_w *l = &m->layers[i];
        TRY(vector(&ld->attn_norm, E, 0, &l->attn_norm, err, err_len));
        TRY(vector(&ld->ffn_norm, E, 0, &l->ffn_norm, err, err_len));
        TRY(matrix(&ld->wq, E, QD, &l->wq, err, err_len));
        TRY(matrix(&ld->wk, E, KD, &l->wk, err, err_len));
        TRY(matrix(&ld->wv, E, KD, &l->wv, err, err_len));
        TRY(matrix(&ld->wo, QD, E, &l->wo, err, err_len));
        TRY(vector(&ld->bq, QD, 1, &l->bq, err, err_len));
        TRY(vector(&ld->bk, KD, 1, &l->bk, err, err_len));
        TRY(vector(&ld->bv, KD, 1, &l->bv, err, err_len));
        TRY(vector(&ld->bo, E, 1, &l->bo, err, err_len));
        TRY(vector(&ld->q_norm, d->head_dim, 1, &l->q_norm, err, err_len));
        TRY(vector(&ld->k_norm, d->head_dim, 1, &l->k_norm, err, err_len));
        if (!l->q_norm != !l->k_norm)
            TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: q_norm and k_norm come together", i));
        TRY(vector(&ld->q_scale, QD, 1, &l->q_scale, err, err_len));
        TRY(vector(&ld->k_scale, KD, 1, &l->k_scale, err, err_len));
        if (!l->q_scale != !l->k_scale)
            TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: q_scale and k_scale come together", i));
        TRY(vector(&ld->attn_post_norm, E, 1, &l->attn_post_norm, err, err_len));
        TRY(vector(&ld->ffn_post_norm, E, 1, &l->ffn_post_norm, err, err_len));
        if (!l->attn_post_norm != !l->ffn_post_norm)
            TRY(kvc_fail(err, err_len, KVC_ERR_INVALID, "layer %d: attn_post_norm and ffn_post_norm come together", i));
        TRY(matrix(&ld->w_gate, E, F, &l->gate, err, err_len));
        TRY(matrix(&ld->w_up, E, F, &l->up, err, err_len));
        TRY(matrix(&ld->w_down, F, E, &l->down, err, err_len));
    }
    *out = m;
    return KVC_OK;
}
#undef TRY
