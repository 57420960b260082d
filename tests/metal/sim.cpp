// sim.cpp — the Metal backend's host logic (native/src/metal/host.h) on a
// simulated device: host.h's kvm_device over malloc'd buffers, each dispatch
// run at once through the Linux shim (every .metal kernel compiled as C++).
// Built by tests/test_metal.py as a shared library that is loaded next to
// kvconvert's own extension (whose symbols it uses) and exports
// kvm_sim_context_create, kvc_context_create with contexts on this backend; the test routes the
// Python engine's context creation through it and compares the logits with
// the CPU backend's on the tiny models. The host's Metal calls
// (backend_metal.m) are what this leaves out.
#define KVM_SHIM 1
typedef _Float16 half;

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "metal/host.h"
}

#include "attention.metal"
#include "elementwise.metal"
#include "matvec.metal"
#include "tq_store.metal"

using kvm_shim::run_grid;
using kvm_shim::thread_pos;

namespace {

kvm_buf sim_alloc(size_t n, const void *init) {
    uint8_t *p = (uint8_t *)calloc(n + 16, 1);
    if (p && init) memcpy(p, init, n);
    return p;
}
void *sim_contents(kvm_buf b) { return b; }
void sim_release(kvm_buf b) { free(b); }

struct sim_enc {
    int pipe;
    uint8_t args[512];
    uint8_t *buf[20];
    size_t tg[2];
};

void *sim_begin(char *, int) { return calloc(1, sizeof(sim_enc)); }
void sim_pipe(void *e, int p) { ((sim_enc *)e)->pipe = p; }
void sim_bytes(void *e, int i, const void *p, size_t n) {
    if (i == 0 && n <= sizeof ((sim_enc *)e)->args) memcpy(((sim_enc *)e)->args, p, n);
}
void sim_buffer(void *e, int i, kvm_buf b, size_t off) { ((sim_enc *)e)->buf[i] = (uint8_t *)b + off; }
void sim_tg_mem(void *e, int i, size_t n) { ((sim_enc *)e)->tg[i] = n; }

template <class T> T &A(sim_enc *e) { return *(T *)e->args; }
template <class T> T *B(sim_enc *e, int i) { return (T *)e->buf[i]; }

void sim_dispatch(void *ev, int gx, int gy, int gz, int threads) {
    sim_enc *e = (sim_enc *)ev;
    std::vector<float> tg0((e->tg[0] + 3) / 4 + 1);
    std::vector<uint> tg1((e->tg[1] + 3) / 4 + 1);
    const uint3 grid = {(uint)gx, (uint)gy, (uint)gz}, tg = {(uint)threads, 1, 1};
    auto gid = [](const thread_pos &p) { return p.tgpig.x * p.ntg + p.tiitg; };
    switch (e->pipe) {
    case KVM_P_RMS_NORM:
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_rms_norm(A<kvm_norm_args>(e), B<float>(e, 1), B<float>(e, 2), B<float>(e, 3), tg0.data(), p.tgpig,
                         p.tiitg, p.ntg, p.tiisg, p.sgitg);
        });
        break;
    case KVM_P_ROPE:
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_rope(A<kvm_rope_args>(e), B<float>(e, 1), B<float>(e, 2), B<int>(e, 3), B<float>(e, 4), gid(p));
        });
        break;
    case KVM_P_SWIGLU:
    case KVM_P_GEGLU:
    case KVM_P_ADD: {
        auto f = e->pipe == KVM_P_SWIGLU ? kvm_swiglu : e->pipe == KVM_P_GEGLU ? kvm_geglu : kvm_add;
        run_grid(grid, tg, [&](const thread_pos &p) {
            f(A<kvm_elem_args>(e), B<float>(e, 1), B<float>(e, 2), B<float>(e, 3), gid(p));
        });
        break;
    }
    case KVM_P_SCALE:
        run_grid(grid, tg, [&](const thread_pos &p) { kvm_scale(A<kvm_elem_args>(e), B<float>(e, 1), gid(p)); });
        break;
    case KVM_P_MV_F32: case KVM_P_MV_F16: case KVM_P_MV_BF16: case KVM_P_MV_Q8_0: case KVM_P_MV_Q4_0:
    case KVM_P_MV_Q4_K: case KVM_P_MV_Q6_K: {
        static const int types[] = {KVM_TYPE_F32, KVM_TYPE_F16, KVM_TYPE_BF16, KVM_TYPE_Q8_0, KVM_TYPE_Q4_0,
                                    KVM_TYPE_Q4_K, KVM_TYPE_Q6_K};
        const int type = types[e->pipe - KVM_P_MV_F32];
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_matvec(type, A<kvm_matvec_args>(e), B<uchar>(e, 1), B<float>(e, 2), B<float>(e, 3), B<float>(e, 4),
                       p.tgpig, p.tiisg, p.sgitg);
        });
        break;
    }
    case KVM_P_TQ_STORE:
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_tq_store(A<kvm_tq_store_args>(e), B<float>(e, 1), B<float>(e, 2), B<float>(e, 3), B<int>(e, 4),
                         B<uchar>(e, 5), B<half>(e, 6), tg0.data(), tg1.data(), p.tgpig, p.tiitg, p.ntg);
        });
        break;
    case KVM_P_F16_STORE:
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_f16_store(A<kvm_tq_store_args>(e), B<float>(e, 1), B<float>(e, 2), B<half>(e, 3), gid(p));
        });
        break;
    case KVM_P_ATTENTION:
        run_grid(grid, tg, [&](const thread_pos &p) {
            kvm_attention(A<kvm_attn_args>(e), B<float>(e, 1), B<uchar>(e, 2), B<uchar>(e, 3), B<float>(e, 4),
                          B<int>(e, 5), B<float>(e, 6), B<int>(e, 7), B<half>(e, 8), B<half>(e, 9), B<float>(e, 10),
                          B<int>(e, 11), B<int>(e, 12), B<float>(e, 13), B<float>(e, 14), B<float>(e, 15),
                          B<float>(e, 16), tg0.data(), p.tgpig, p.tiitg, p.ntg);
        });
        break;
    default:
        abort();
    }
}

int sim_end(void *e, char *, int) {
    free(e);
    return KVC_OK;
}

kvm_device SIM = {sim_alloc, sim_contents, sim_release, 32768, sim_begin, sim_pipe, sim_bytes,
                  sim_buffer, sim_tg_mem, sim_dispatch, sim_end};

int sim_create(kvc_context *ctx, const kvc_context_params *p, char *err, int err_len) {
    return kvm_create(&SIM, ctx, p, err, err_len);
}

kvc_backend_ops sim_ops() {
    kvc_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "metal-sim";
    o.create = sim_create;
    o.eval = kvm_eval;
    o.eval_multi = kvm_eval_multi;
    o.kv_bytes_per_token = kvm_kv_bytes_per_token;
    o.kv_bytes = kvm_kv_bytes;
    o.rewind_floor = kvm_rewind_floor;
    o.free = kvm_free;
    return o;
}
const kvc_backend_ops SIM_OPS = sim_ops();

} // namespace

// context.c's kvc_context_create with this backend (kvc_context_free, kvc_eval etc. are the
// extension's own: they call through c->backend)
extern "C" int kvm_sim_context_create(kvc_model *m, const kvc_context_params *p, kvc_context **out, char *err,
                                  int err_len) {
    if (!out) return KVC_ERR_INVALID;
    *out = NULL;
    if (!m || !p || p->n_ctx <= 0 || p->n_batch <= 0 || p->n_threads <= 0)
        return kvc_fail(err, err_len, KVC_ERR_INVALID, "bad arguments");
    kvc_context *c = (kvc_context *)calloc(1, sizeof *c);
    if (!c) return kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
    c->m = m;
    c->backend = &SIM_OPS;
    c->n_ctx = p->n_ctx;
    c->n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    c->n_threads = p->n_threads;
    const int st = SIM_OPS.create(c, p, err, err_len);
    if (st != KVC_OK) {
        SIM_OPS.free(c);
        free(c);
        return st;
    }
    *out = c;
    return KVC_OK;
}
