/* context.c — the context half of the C ABI: create/free a context on a backend
 * (backend.h: Metal where it runs, else the CPU; KVC_BACKEND overrides), evaluate
 * tokens, and the bookkeeping every backend shares (position, capture buffers,
 * error message). Every argument is checked here, before the backend runs, so
 * a failed call changes no context. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "util.h"

void kvc_context_free(kvc_context *c) {
    if (!c) return;
    c->backend->free(c); /* never touches c->m: the model may already be freed */
    free(c);
}

int kvc_context_create(kvc_model *m, const kvc_context_params *p, kvc_context **out, char *err, int err_len) {
    if (!out) return KVC_ERR_INVALID;
    *out = NULL;
    if (!m || !p) return kvc_fail(err, err_len, KVC_ERR_INVALID, "model and params are required");
    if (p->n_ctx <= 0 || p->n_ctx > (1 << 22) || p->n_batch <= 0 || p->n_threads <= 0 || p->n_threads > 512)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "n_ctx, n_batch or n_threads out of range");
    if (p->tq_scale_mode < 0 || p->tq_scale_mode > 2)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tq_scale_mode must be 0 (norm), 1 (ls) or 2 (proj)");
    if (p->tq_v_scale_mode < 0 || p->tq_v_scale_mode > 3)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "tq_v_scale_mode must be 0 (as K) or 1 + a scale mode");
    kvc_context *c = calloc(1, sizeof *c);
    if (!c) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    c->m = m;
    /* p->backend, else KVC_BACKEND (cpu | metal | auto), else auto: Metal when the build has
     * it, a device exists and it runs this model and these caches (its create says
     * KVC_ERR_UNSUPPORTED otherwise), else the CPU. */
    const char *be = p->backend == KVC_BACKEND_CPU     ? "cpu"
                     : p->backend == KVC_BACKEND_METAL ? "metal"
                     : p->backend == KVC_BACKEND_AUTO  ? "auto"
                     : p->backend == KVC_BACKEND_DEFAULT ? getenv("KVC_BACKEND")
                                                         : "?";
    const int want_auto = !be || !*be || strcmp(be, "auto") == 0;
    c->backend = &kvc_backend_cpu;
    if (!want_auto && strcmp(be, "cpu") != 0) {
#if defined(__APPLE__)
        if (strcmp(be, "metal") == 0) c->backend = &kvc_backend_metal;
        else
#endif
        {
            free(c);
            if (p->backend != KVC_BACKEND_DEFAULT && p->backend != KVC_BACKEND_METAL)
                return kvc_fail(err, err_len, KVC_ERR_INVALID, "backend must be KVC_BACKEND_DEFAULT, _AUTO, _CPU or _METAL");
            return kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "%s%s: this build runs auto, cpu%s",
                            p->backend == KVC_BACKEND_METAL ? "backend " : "KVC_BACKEND=", be,
#if defined(__APPLE__)
                            " or metal"
#else
                            " (metal: macOS builds only)"
#endif
            );
        }
    }
#if defined(__APPLE__)
    if (want_auto) c->backend = &kvc_backend_metal;
#endif
    c->n_ctx = p->n_ctx;
    c->n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    c->n_threads = p->n_threads;
    int st = c->backend->create(c, p, err, err_len);
    if (st == KVC_ERR_UNSUPPORTED && want_auto && c->backend != &kvc_backend_cpu) { /* auto: the CPU runs it */
        c->backend->free(c);
        c->be = NULL;
        c->backend = &kvc_backend_cpu;
        if (err && err_len > 0) err[0] = 0;
        st = c->backend->create(c, p, err, err_len);
    }
    if (st != KVC_OK) {
        kvc_context_free(c);
        return st;
    }
    *out = c;
    return KVC_OK;
}

int kvc_eval(kvc_context *c, const int *tokens, int n, float *logits, int all_logits) {
    if (!c) return KVC_ERR_INVALID;
    c->err[0] = 0;
    if (n <= 0 || !tokens) {
        snprintf(c->err, sizeof c->err, "no tokens to evaluate");
        return KVC_ERR_INVALID;
    }
    if (c->n_past + (long long)n > c->n_ctx) {
        snprintf(c->err, sizeof c->err, "%d tokens do not fit: %d of %d context positions are used", n, c->n_past,
                 c->n_ctx);
        return KVC_ERR_CONTEXT_FULL;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->n_vocab) {
            snprintf(c->err, sizeof c->err, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                     c->m->n_vocab);
            return KVC_ERR_INVALID;
        }
    return c->backend->eval(c, tokens, n, logits, all_logits);
}

/* Everything is checked before anything runs, so a failed call changes no context. */
static int multi_check(kvc_context **ctxs, int n, const int *tokens) {
    kvc_context *lead = ctxs[0];
    if (n <= 0 || n > lead->n_batch || !tokens) {
        snprintf(lead->err, sizeof lead->err,
                 "kvc_eval_multi takes 1 to n_batch (%d) contexts and their tokens, got %d%s", lead->n_batch, n,
                 tokens ? "" : " and no tokens");
        return KVC_ERR_INVALID;
    }
    for (int i = 0; i < n; i++) {
        const kvc_context *c = ctxs[i];
        if (!c) {
            snprintf(lead->err, sizeof lead->err, "context %d is NULL", i);
            return KVC_ERR_INVALID;
        }
        if (c->m != lead->m) {
            snprintf(lead->err, sizeof lead->err, "context %d belongs to another model than context 0", i);
            return KVC_ERR_INVALID;
        }
        if (c->backend != lead->backend) {
            snprintf(lead->err, sizeof lead->err, "context %d runs on another backend than context 0", i);
            return KVC_ERR_INVALID;
        }
        for (int j = 0; j < i; j++)
            if (ctxs[j] == c) {
                snprintf(lead->err, sizeof lead->err, "context %d is also context %d: one token per context", i, j);
                return KVC_ERR_INVALID;
            }
        if (tokens[i] < 0 || tokens[i] >= c->m->n_vocab) {
            snprintf(lead->err, sizeof lead->err, "token id %d at index %d is outside the vocabulary [0, %d)",
                     tokens[i], i, c->m->n_vocab);
            return KVC_ERR_INVALID;
        }
    }
    for (int i = 0; i < n; i++)
        if (ctxs[i]->n_past >= ctxs[i]->n_ctx) {
            snprintf(lead->err, sizeof lead->err, "context %d is full: %d of %d context positions are used", i,
                     ctxs[i]->n_past, ctxs[i]->n_ctx);
            return KVC_ERR_CONTEXT_FULL;
        }
    return KVC_OK;
}

int kvc_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits) {
    if (!ctxs || !ctxs[0]) return KVC_ERR_INVALID;
    kvc_context *lead = ctxs[0];
    lead->err[0] = 0;
    int st = multi_check(ctxs, n, tokens);
    if (st != KVC_OK) return st;
    return lead->backend->eval_multi(ctxs, n, tokens, logits);
}

int kvc_n_past(const kvc_context *c) { return c ? c->n_past : 0; }

int kvc_set_capture(kvc_context *c, float *q, float *k, float *v) {
    if (!c || !q != !k || !q != !v) return KVC_ERR_INVALID;
    c->cap_q = q, c->cap_k = k, c->cap_v = v;
    return KVC_OK;
}

const char *kvc_context_backend(const kvc_context *c) { return c ? c->backend->name : ""; }

int kvc_rewind_floor(const kvc_context *c) { return c ? c->backend->rewind_floor(c) : 1; }

int kvc_set_n_past(kvc_context *c, int n_past) {
    if (!c) return KVC_ERR_INVALID;
    c->err[0] = 0;
    if (n_past < 0 || n_past > c->n_past) return KVC_ERR_INVALID;
    if (n_past > 0 && n_past < c->backend->rewind_floor(c)) {
        snprintf(c->err, sizeof c->err,
                 "cannot rewind to %d tokens: this cache can go back to %d at the earliest (sliding-window layers "
                 "and the recent window keep only their last rows); evaluate from 0 again", n_past,
                 c->backend->rewind_floor(c));
        return KVC_ERR_INVALID;
    }
    c->n_past = n_past;
    return KVC_OK;
}

long long kvc_kv_bytes_per_token(const kvc_context *c) { return c ? c->backend->kv_bytes_per_token(c) : 0; }
long long kvc_kv_bytes(const kvc_context *c) { return c ? c->backend->kv_bytes(c) : 0; }

const char *kvc_context_error(const kvc_context *c) { return c ? c->err : ""; }
