// check.cpp — runs kvconvert's Metal kernels on Linux (the .metal files compiled
// as C++17 against native/src/metal/shim/) over real grids and compares them
// with their C twins: quants_ref.c, vec_ref.c, tq.c / tq_ref.c and the CPU
// backend's kv_cache.c (through twin.c). Prints `key value` lines; the
// assertions and tolerances are in tests/test_metal.py.
//
//   check CASE [key=value ...]     CASE: rmsnorm rope act matvec rotate store attention deadlock
//
// Built by tests/test_metal.py: g++ -std=c++17 -ffp-contract=off with the C
// twins compiled by gcc, as the extension compiles them (-ffp-contract=off).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "model.h"
#include "quants.h"
#include "tq.h"
// cpu/rope.c (linked in; backend_cpu.h is not C++-clean): the CPU's RoPE rotation, the twin of kvm_rope
void rope_apply(const kvc_model *m, const int *src, int T, int n_heads, float *x, const float *cs);
#include "vec.h"
}
#include "twin.h"

// the kernels, as C++ (each includes <metal_stdlib>: the shim)
#include "attention.metal"
#include "elementwise.metal"
#include "matvec.metal"
#include "tq_store.metal"

#include "tq_tables.h"

using kvm_shim::run_grid;
using kvm_shim::thread_pos;

static std::map<std::string, std::string> opt;
static int I(const char *k, int def) { return opt.count(k) ? atoi(opt[k].c_str()) : def; }
static std::mt19937 rng;

static std::vector<float> randn(size_t n, float sd = 1.0f) {
    std::normal_distribution<float> N(0.0f, sd);
    std::vector<float> v(n);
    for (auto &x : v) x = N(rng);
    return v;
}

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void out(const char *k, double v) { printf("%s %.9g\n", k, v); }

// max |a - b| / max |b|, and how many differ in any bit
static void compare(const char *name, const float *got, const float *ref, size_t n) {
    double md = 0, mr = 0;
    long diff = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)got[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
        diff += bits_of(got[i]) != bits_of(ref[i]);
    }
    std::string s(name);
    out((s + "_n").c_str(), (double)n);
    out((s + "_maxrel").c_str(), mr > 0 ? md / mr : md);
    out((s + "_bitdiff").c_str(), (double)diff);
}

// ascending codebook for groups of m channels, b bits: a spread like the Lloyd–Max ones
static std::vector<float> codebook(int m, int b) {
    const int nc = 1 << b;
    std::vector<float> cb(nc);
    for (int k = 0; k < nc; k++) {
        const double t = (2.0 * k + 1 - nc) / nc; // (-1, 1)
        cb[k] = (float)(2.6 * t * (0.6 + 0.4 * fabs(t)) / sqrt((double)m));
    }
    return cb;
}

// ---- rmsnorm: rows of n, tree reduction vs the sequential fmaf twin ----
static int case_rmsnorm() {
    const int n = I("n", 576), rows = I("rows", 7), nt = I("threads", 128);
    auto x = randn((size_t)n * rows, 3.0f), w = randn(n);
    std::vector<float> got(x.size()), ref(x.size()), red(64);
    kvm_norm_args a = {n, rows, 1e-5f, 0};
    run_grid({(uint)rows, 1, 1}, {(uint)nt, 1, 1}, [&](const thread_pos &p) {
        kvm_rms_norm(a, x.data(), w.data(), got.data(), red.data(), p.tgpig, p.tiitg, p.ntg, p.tiisg, p.sgitg);
    });
    for (int r = 0; r < rows; r++) kvc_vec_ops_ref.rms_norm(n, &x[(size_t)r * n], w.data(), 1e-5f, &ref[(size_t)r * n]);
    compare("rmsnorm", got.data(), ref.data(), got.size());
    return 0;
}

static int case_rope() {
    const int D = I("D", 64), T = I("T", 5), H = I("heads", 3), pairing = I("pairing", 0), P = D / 2;
    const int has_mean = I("mean", 1), pos0 = I("pos0", 17);
    auto x = randn((size_t)T * H * D), mean = randn((size_t)H * D, 0.5f);
    std::vector<int> src(P);
    for (int j = 0; j < P; j++) src[j] = j;
    if (I("permuted", 1)) std::shuffle(src.begin(), src.end(), rng);
    std::vector<float> freqs(P), cs((size_t)T * P * 2);
    for (int j = 0; j < P; j++) freqs[j] = (float)pow(10000.0, -2.0 * j / D);
    for (int t = 0; t < T; t++) // rope.c's rope_table: angles in double
        for (int j = 0; j < P; j++) {
            double ang = (double)(pos0 + t) * (double)freqs[j];
            cs[((size_t)t * P + j) * 2] = (float)cos(ang);
            cs[((size_t)t * P + j) * 2 + 1] = (float)sin(ang);
        }
    std::vector<float> ref = x, got = x;
    if (has_mean) // kv_center: k -= mu, then RoPE
        for (int t = 0; t < T; t++)
            for (int i = 0; i < H * D; i++) ref[(size_t)t * H * D + i] -= mean[i];
    kvc_model m;
    memset(&m, 0, sizeof m);
    m.head_dim = D, m.rope_pairing = pairing ? KVC_ROPE_INTERLEAVED : KVC_ROPE_NEOX;
    rope_apply(&m, src.data(), T, H, ref.data(), cs.data());
    kvm_rope_args a = {D, H, T, pairing, has_mean, {0, 0, 0}};
    const int n = T * H * P, tg = 64;
    run_grid({(uint)((n + tg - 1) / tg), 1, 1}, {(uint)tg, 1, 1}, [&](const thread_pos &p) {
        kvm_rope(a, got.data(), cs.data(), src.data(), mean.data(), p.tgpig.x * p.ntg + p.tiitg);
    });
    compare("rope", got.data(), ref.data(), got.size());
    return 0;
}

// ---- activations: SwiGLU (the twins' exp) and GeGLU (libm tanh both sides here) ----
static int case_act() {
    const int n = I("n", 3000);
    auto g = randn(n, 4.0f), u = randn(n);
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -87.5f;
    std::vector<float> got(n), ref(n);
    kvm_elem_args a = {n, 0.0f, {0, 0}};
    const uint ntg = (uint)((n + 63) / 64);
    run_grid({ntg, 1, 1}, {64, 1, 1}, [&](const thread_pos &p) {
        kvm_swiglu(a, g.data(), u.data(), got.data(), p.tgpig.x * p.ntg + p.tiitg);
    });
    kvc_vec_ops_ref.silu_mul(n, g.data(), u.data(), ref.data());
    compare("swiglu", got.data(), ref.data(), n);
    run_grid({ntg, 1, 1}, {64, 1, 1}, [&](const thread_pos &p) {
        kvm_geglu(a, g.data(), u.data(), got.data(), p.tgpig.x * p.ntg + p.tiitg);
    });
    kvc_gelu_mul_ref(n, g.data(), u.data(), ref.data());
    compare("geglu", got.data(), ref.data(), n);
    return 0;
}

// ---- matvec: chunk dequantization bit-exact, products vs a float64 dot ----
struct wtype {
    const char *name;
    int id, block, bytes;
    kvc_dequantize_fn deq;
};
static const wtype WT[] = {
    {"f32", KVM_TYPE_F32, 1, 4, kvc_dequantize_row_f32_ref},
    {"f16", KVM_TYPE_F16, 1, 2, kvc_dequantize_row_f16_ref},
    {"bf16", KVM_TYPE_BF16, 1, 2, kvc_dequantize_row_bf16_ref},
    {"q8_0", KVM_TYPE_Q8_0, 32, 34, kvc_dequantize_row_q8_0_ref},
    {"q4_0", KVM_TYPE_Q4_0, 32, 18, kvc_dequantize_row_q4_0_ref},
    {"q4_K", KVM_TYPE_Q4_K, 256, 144, kvc_dequantize_row_q4_K_ref},
    {"q6_K", KVM_TYPE_Q6_K, 256, 210, kvc_dequantize_row_q6_K_ref},
};

static int case_matvec() {
    const std::string tn = opt.count("type") ? opt["type"] : "q4_0";
    const wtype *wt = nullptr;
    for (const auto &w : WT)
        if (tn == w.name) wt = &w;
    if (!wt) return fprintf(stderr, "unknown type %s\n", tn.c_str()), 2;
    const int K = I("K", 1024), M = I("M", 37), T = I("T", 11), has_bias = I("bias", 1);
    const size_t rb = (size_t)K / wt->block * wt->bytes;
    std::vector<uint8_t> w(rb * M + 8);
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto &b : w) b = (uint8_t)byte(rng);
    std::normal_distribution<float> N(0.0f, 1.0f);
    auto half_at = [&](size_t off, float v) {
        kvc_half h = kvc_fp32_to_fp16(v);
        memcpy(&w[off], &h, 2);
    };
    for (int r = 0; r < M; r++) // finite scales (random bytes could be inf/NaN halves)
        for (int blk = 0; blk < K / wt->block; blk++) {
            const size_t o = r * rb + (size_t)blk * wt->bytes;
            if (wt->id == KVM_TYPE_F32) {
                const float f = N(rng);
                memcpy(&w[o], &f, 4);
            } else if (wt->id == KVM_TYPE_BF16) {
                const uint16_t b = kvc_fp32_to_bf16(N(rng));
                memcpy(&w[o], &b, 2);
            } else if (wt->id == KVM_TYPE_F16) half_at(o, N(rng));
            else if (wt->id == KVM_TYPE_Q8_0 || wt->id == KVM_TYPE_Q4_0) half_at(o, 0.01f * N(rng));
            else if (wt->id == KVM_TYPE_Q4_K) half_at(o, 0.001f * N(rng)), half_at(o + 2, 0.001f * N(rng));
            else half_at(o + offsetof(block_q6_K, d), 0.001f * N(rng));
        }
    // chunks: the kernel's dequantization against the twin's, every chunk of every row
    long chunk_diff = 0;
    std::vector<float> deq((size_t)K);
    for (int r = 0; r < M; r++) {
        wt->deq(&w[r * rb], deq.data(), K);
        for (int c = 0; c < K / 32; c++) {
            float wc[32];
            kvm_chunk(wt->id, &w[r * rb], c, wc);
            for (int l = 0; l < 32; l++) chunk_diff += bits_of(wc[l]) != bits_of(deq[32 * c + l]);
        }
    }
    out("dequant_bitdiff", (double)chunk_diff);
    auto x = randn((size_t)K * T), bias = randn(M);
    const int ldy = M + 3;
    std::vector<float> y((size_t)ldy * T, -7.0f);
    kvm_matvec_args a = {K, M, T, (int)rb, K, ldy, has_bias, 0};
    run_grid({(uint)((M + KVM_MATVEC_SG - 1) / KVM_MATVEC_SG), (uint)((T + KVM_MATVEC_TOKENS - 1) / KVM_MATVEC_TOKENS), 1},
             {32 * KVM_MATVEC_SG, 1, 1}, [&](const thread_pos &p) {
                 kvm_matvec(wt->id, a, w.data(), x.data(), bias.data(), y.data(), p.tgpig, p.tiisg, p.sgitg);
             });
    double worst = 0; // |got - exact| / sum |w x|, exact in float64 of the twin's weights
    long untouched = 0;
    for (int r = 0; r < M; r++) {
        wt->deq(&w[r * rb], deq.data(), K);
        for (int t = 0; t < T; t++) {
            double ex = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                ex += (double)deq[k] * x[(size_t)t * K + k];
                mag += fabs((double)deq[k] * x[(size_t)t * K + k]);
            }
            if (has_bias) ex += bias[r];
            worst = fmax(worst, fabs(y[(size_t)t * ldy + r] - ex) / (mag + 1e-30));
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = M; r < ldy; r++) untouched += y[(size_t)t * ldy + r] == -7.0f;
    out("matvec_relerr", worst);
    out("matvec_padding_kept", (double)untouched == (double)T * (ldy - M));
    return 0;
}

// ---- a TurboQuant layout for the kernels ----
struct layout_data {
    tq_layout L{};
    kvm_tq_layout kl{};
    std::vector<float> ft;
    std::vector<int32_t> it;
    std::vector<float> cb_hi, cb_lo;
    std::vector<int> perm;
};

static int make_layout(layout_data &ld, int D, int n_hi, int hi, int lo, int qjl_hi, int qjl_lo, bool perm,
                       uint64_t seed, int layer) {
    ld.cb_hi = codebook(n_hi ? n_hi : 1, hi);
    ld.cb_lo = codebook(D - n_hi, lo);
    if (perm) {
        ld.perm.resize(D);
        for (int i = 0; i < D; i++) ld.perm[i] = i;
        std::shuffle(ld.perm.begin(), ld.perm.end(), rng);
    }
    int st = tq_layout_init(&ld.L, D, n_hi, hi, lo, qjl_hi, qjl_lo, n_hi ? ld.cb_hi.data() : nullptr, ld.cb_lo.data(),
                            perm ? ld.perm.data() : nullptr, seed, layer, 0, 0, 0); /* Metal: fp16 scales, Lloyd-Max codes */
    if (st) return st;
    int nf, ni;
    kvm_tq_table_sizes(&ld.L, &nf, &ni);
    ld.ft.resize(nf + 1), ld.it.resize(ni + 1);
    return kvm_tq_tables(&ld.L, &ld.kl, ld.ft.data(), ld.it.data());
}

// kernel wrappers for the rotations (a test-only kernel: the same helpers the store and attention use)
static void rotate_kernel(constant kvm_tq_layout &L, device const float *ft, device const int *it, device float *v,
                          int dir, threadgroup float *sm, uint3 tgpig, uint tid, uint nt) {
    device float *x = v + (ulong)tgpig.x * L.d;
    for (int i = (int)tid; i < L.d; i += (int)nt) sm[i] = x[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (dir == 0) kvm_rotate_tg(sm, sm + L.d, L, ft, it, 0, false, tid, nt);
    else if (dir == 1) kvm_rotate_tg(sm, sm + L.d, L, ft, it, 1, false, tid, nt);
    else kvm_unrotate_tg(sm, sm + L.d, L, ft, it, tid, nt);
    for (int i = (int)tid; i < L.d; i += (int)nt) x[i] = sm[i];
}

static int case_rotate() {
    const int D = I("D", 96), n_hi = I("n_hi", 24), n = I("n", 9), nt = I("threads", 64);
    layout_data ld;
    if (make_layout(ld, D, n_hi, 4, 3, 0, 0, false, 1234, 3)) return fprintf(stderr, "layout\n"), 2;
    auto x = randn((size_t)n * D);
    for (int dir = 0; dir < 3; dir++) {
        std::vector<float> got = x, ref = x, sm(2 * D), tmp(D);
        run_grid({(uint)n, 1, 1}, {(uint)nt, 1, 1}, [&](const thread_pos &p) {
            rotate_kernel(ld.kl, ld.ft.data(), ld.it.data(), got.data(), dir, sm.data(), p.tgpig, p.tiitg, p.ntg);
        });
        for (int r = 0; r < n; r++) {
            float *v = &ref[(size_t)r * D];
            if (dir == 2) {
                tq_unrotate(&ld.L, v);
                continue;
            }
            for (int k = 0, s = 0; k < ld.L.n_groups; s += ld.L.g[k].m, k++)
                tq_rotate(&ld.L.g[k], dir ? ld.L.g[k].signs2 : ld.L.g[k].signs, v + s, tmp.data());
        }
        compare(dir == 0 ? "rotate" : dir == 1 ? "rotate_jl" : "unrotate", got.data(), ref.data(), got.size());
    }
    tq_layout_free(&ld.L);
    return 0;
}

// ---- store and attention: one layer through the CPU backend's own cache code ----
struct setup {
    twin_cfg cfg{};
    layout_data lk, lv;
    std::vector<float> k_mean, v_mean, freqs;
    std::vector<int> src;
    twin *tw = nullptr;
};

static int make_setup(setup &s) {
    twin_cfg &c = s.cfg;
    c.D = I("D", 64), c.H = I("H", 4), c.Hk = I("Hk", 2), c.n_ctx = I("n_ctx", 48), c.pairing = I("pairing", 0);
    c.k_tq = I("k_tq", 1), c.v_tq = I("v_tq", 1);
    c.n_hi_k = I("n_hi", 16), c.hi_bits_k = I("hi", 5), c.lo_bits_k = I("lo", 3);
    c.qjl_hi = I("qjl_hi", 1), c.qjl_lo = I("qjl_lo", 0);
    c.n_hi_v = I("v_n_hi", 0), c.hi_bits_v = I("v_hi", 4), c.lo_bits_v = I("v_lo", 4);
    c.seed = 0x5eed, c.scale_mode = I("mode", 1), c.n_sink = I("sink", 2);
    c.k_center = I("center", 1), c.k_center_pairs = I("pairs", 5), c.window = I("window", 0);
    c.scale = 1.0f / sqrtf((float)c.D);
    const int D = c.D, P = D / 2;
    if (c.k_tq) {
        if (make_layout(s.lk, D, c.n_hi_k, c.hi_bits_k, c.lo_bits_k, c.qjl_hi, c.qjl_lo, I("perm", 1), c.seed, 0))
            return 2;
        c.cbk_hi = s.lk.cb_hi.data(), c.cbk_lo = s.lk.cb_lo.data(), c.perm = s.lk.perm.empty() ? nullptr : s.lk.perm.data();
    }
    if (c.v_tq) {
        s.lv.cb_hi = codebook(c.n_hi_v ? c.n_hi_v : 1, c.hi_bits_v), s.lv.cb_lo = codebook(D - c.n_hi_v, c.lo_bits_v);
        c.cbv_hi = s.lv.cb_hi.data(), c.cbv_lo = s.lv.cb_lo.data();
    }
    s.k_mean = randn((size_t)c.Hk * D, 0.7f), s.v_mean = randn((size_t)c.Hk * D, 0.3f);
    c.k_mean = c.k_center ? s.k_mean.data() : nullptr;
    c.v_mean = I("vmean", 1) ? s.v_mean.data() : nullptr;
    s.freqs.resize(P), s.src.resize(P);
    for (int j = 0; j < P; j++) s.freqs[j] = (float)pow(10000.0, -2.0 * j / D), s.src[j] = j;
    std::shuffle(s.src.begin(), s.src.end(), rng);
    c.rope_src = s.src.data(), c.rope_freqs = s.freqs.data();
    int st = twin_create(&c, &s.tw);
    if (st) return fprintf(stderr, "twin_create: %d\n", st), 2;
    if (c.k_tq) { // the twin's layout (its own copy of the codebooks' midpoints etc.) into kernel tables
        tq_layout_free(&s.lk.L);
        int nf, ni;
        kvm_tq_table_sizes(twin_layout(s.tw, 0), &nf, &ni);
        s.lk.ft.assign(nf + 1, 0), s.lk.it.assign(ni + 1, 0);
        kvm_tq_tables(twin_layout(s.tw, 0), &s.lk.kl, s.lk.ft.data(), s.lk.it.data());
    }
    if (c.v_tq) {
        int nf, ni;
        kvm_tq_table_sizes(twin_layout(s.tw, 1), &nf, &ni);
        s.lv.ft.assign(nf + 1, 0), s.lv.it.assign(ni + 1, 0);
        kvm_tq_tables(twin_layout(s.tw, 1), &s.lv.kl, s.lv.ft.data(), s.lv.it.data());
    }
    return 0;
}

struct gpu_cache {
    std::vector<uint8_t> k, v;
    std::vector<uint16_t> ks, vs;
};

static void gpu_store(setup &s, gpu_cache &g, std::vector<float> &K, std::vector<float> &V, int T, int pos0) {
    const twin_cfg &c = s.cfg;
    const int D = c.D;
    for (int kind = 0; kind < 2; kind++) {
        const bool tq = kind ? c.v_tq : c.k_tq;
        std::vector<uint8_t> &rows = kind ? g.v : g.k;
        std::vector<uint16_t> &sink = kind ? g.vs : g.ks;
        const layout_data &ld = kind ? s.lv : s.lk;
        kvm_tq_store_args a{};
        a.D = D, a.n_kv_head = c.Hk, a.T = T, a.pos0 = pos0, a.n_ctx = c.n_ctx, a.scale_mode = c.scale_mode;
        a.kind = kind, a.has_mean = kind && c.v_mean, a.n_sink = tq ? c.n_sink : 0;
        if (tq) a.L = ld.kl;
        const size_t rb = tq ? (size_t)ld.kl.row_bytes : 2 * (size_t)D;
        rows.assign((size_t)c.Hk * c.n_ctx * rb + 8, 0);
        sink.assign((size_t)c.Hk * (c.n_sink + 1) * D, 0);
        float *x = kind ? V.data() : K.data();
        if (tq) {
            std::vector<float> sf(6 * D + 8);
            std::vector<uint> su(D);
            run_grid({(uint)T, (uint)c.Hk, 1}, {KVM_STORE_THREADS, 1, 1}, [&](const thread_pos &p) {
                kvm_tq_store(a, x, s.v_mean.data(), ld.ft.data(), ld.it.data(), rows.data(), (half *)sink.data(),
                             sf.data(), su.data(), p.tgpig, p.tiitg, p.ntg);
            });
        } else {
            const int n = T * c.Hk * D;
            run_grid({(uint)((n + 63) / 64), 1, 1}, {64, 1, 1}, [&](const thread_pos &p) {
                kvm_f16_store(a, x, s.v_mean.data(), (half *)rows.data(), p.tgpig.x * p.ntg + p.tiitg);
            });
        }
    }
}

static int case_store() {
    setup s;
    if (make_setup(s)) return 2;
    const twin_cfg &c = s.cfg;
    const int D = c.D, T = I("T", c.n_ctx);
    auto K = randn((size_t)T * c.Hk * D), V = randn((size_t)T * c.Hk * D);
    for (size_t i = 0; i < K.size(); i += 7) K[i] *= 6.0f; // outlier channels
    gpu_cache g;
    gpu_store(s, g, K, V, T, 0);
    twin_store(s.tw, K.data(), V.data(), T, 0);
    for (int kind = 0; kind < 2; kind++) {
        const char *nm = kind ? "v" : "k";
        char key[64];
        const bool tq = kind ? c.v_tq : c.k_tq;
        const uint8_t *ref = twin_rows(s.tw, kind);
        const std::vector<uint8_t> &got = kind ? g.v : g.k;
        const size_t rb = twin_row_bytes(s.tw, kind);
        if (!tq) {
            long diff = 0;
            for (size_t i = 0; i < (size_t)c.Hk * T * rb; i++) diff += got[i] != ref[i]; // rows h * n_ctx + pos
            snprintf(key, sizeof key, "%s_f16_bytediff", nm), out(key, (double)diff);
            continue;
        }
        const tq_layout *L = twin_layout(s.tw, kind);
        long codes = 0, code_diff = 0, far = 0, qjl_bits = 0, qjl_diff = 0, rows = 0, rows_identical = 0;
        int scale_ulp = 0, rnorm_ulp = 0;
        double max_dist = 0;
        std::vector<float> y(D), tmp(D), xin(D);
        for (int h = 0; h < c.Hk; h++)
            for (int pos = 0; pos < T; pos++) {
                const uint8_t *rr = ref + ((size_t)h * c.n_ctx + pos) * rb, *gr = got.data() + ((size_t)h * c.n_ctx + pos) * rb;
                rows++;
                rows_identical += memcmp(rr, gr, rb) == 0;
                // the twin's rotated input, for the distance of a differing code's u to its midpoint
                const float *src = (kind ? V.data() : K.data()) + ((size_t)pos * c.Hk + h) * D;
                for (int i = 0; i < D; i++) xin[i] = kind && c.v_mean ? src[i] - s.v_mean[h * D + i] : src[i];
                for (int i = 0; i < D; i++) y[i] = L->perm ? xin[L->perm[i]] : xin[i];
                for (int k = 0, st = 0; k < L->n_groups; st += L->g[k].m, k++) {
                    const tq_group *gp = &L->g[k];
                    tq_rotate(gp, gp->signs, &y[st], tmp.data());
                    double n2 = 0;
                    for (int i = 0; i < gp->m; i++) n2 += (double)y[st + i] * y[st + i];
                    const double norm = sqrt(n2);
                    int su = abs((int)kvc_ld_half(rr + gp->off) - (int)kvc_ld_half(gr + gp->off));
                    scale_ulp = su > scale_ulp ? su : scale_ulp;
                    for (int i = 0; i < gp->m; i++) {
                        const unsigned a = tq_get_code(rr + gp->codes_off, i, gp->bits);
                        const unsigned b = tq_get_code(gr + gp->codes_off, i, gp->bits);
                        codes++;
                        if (a == b) continue;
                        code_diff++;
                        const double u = norm > 0 ? y[st + i] / norm : 0.0;
                        const double dist = fabs(u - gp->bounds[a < b ? a : b]);
                        max_dist = fmax(max_dist, dist);
                        far += (a > b ? a - b : b - a) != 1;
                    }
                    if (gp->qjl) {
                        int ru = abs((int)kvc_ld_half(rr + gp->off + 2) - (int)kvc_ld_half(gr + gp->off + 2));
                        rnorm_ulp = ru > rnorm_ulp ? ru : rnorm_ulp;
                        for (int i = 0; i < gp->m; i++) {
                            qjl_bits++;
                            qjl_diff += ((rr[gp->qjl_off + i / 8] ^ gr[gp->qjl_off + i / 8]) >> (i % 8)) & 1;
                        }
                    }
                }
            }
        snprintf(key, sizeof key, "%s_rows", nm), out(key, (double)rows);
        snprintf(key, sizeof key, "%s_rows_identical", nm), out(key, (double)rows_identical);
        snprintf(key, sizeof key, "%s_codes", nm), out(key, (double)codes);
        snprintf(key, sizeof key, "%s_code_diff", nm), out(key, (double)code_diff);
        snprintf(key, sizeof key, "%s_code_diff_not_adjacent", nm), out(key, (double)far);
        snprintf(key, sizeof key, "%s_code_diff_max_dist", nm), out(key, max_dist);
        snprintf(key, sizeof key, "%s_scale_ulp", nm), out(key, scale_ulp);
        snprintf(key, sizeof key, "%s_qjl_bits", nm), out(key, (double)qjl_bits);
        snprintf(key, sizeof key, "%s_qjl_diff", nm), out(key, (double)qjl_diff);
        snprintf(key, sizeof key, "%s_rnorm_ulp", nm), out(key, rnorm_ulp);
        const uint16_t *rs = twin_sink(s.tw, kind);
        const int ns = c.n_sink < T ? c.n_sink : T;
        int sink_ulp = 0;
        for (int h = 0; rs && h < c.Hk; h++)
            for (int pos = 0; pos < ns; pos++) {
                // a V sink is value − decoded row: compared where the rows agree (a scale one
                // fp16 step apart moves the decoded row, and the difference may cancel)
                if (kind && memcmp(ref + ((size_t)h * c.n_ctx + pos) * rb, got.data() + ((size_t)h * c.n_ctx + pos) * rb, rb))
                    continue;
                for (int i = 0; i < D; i++) {
                    const size_t o = ((size_t)h * c.n_sink + pos) * D + i;
                    float a = kvc_fp16_to_fp32(rs[o]), b = kvc_fp16_to_fp32((kind ? g.vs : g.ks)[o]);
                    // in fp16 steps of the larger magnitude
                    const float step = fmaxf(fabsf(a), fabsf(b)) * (1.0f / 1024) + 6e-8f;
                    int d = (int)ceilf(fabsf(a - b) / step);
                    sink_ulp = d > sink_ulp ? d : sink_ulp;
                }
            }
        snprintf(key, sizeof key, "%s_sink_ulp", nm), out(key, sink_ulp);
    }
    twin_free(s.tw);
    return 0;
}

static void gpu_attend(setup &s, const gpu_cache &g, const std::vector<float> &Q, int T, int n_past,
                       std::vector<float> &o) {
    const twin_cfg &c = s.cfg;
    const int D = c.D, P = D / 2;
    kvm_attn_args a{};
    a.D = D, a.n_head = c.H, a.n_kv_head = c.Hk, a.T = T, a.n_ctx = c.n_ctx, a.n_past = n_past, a.window = c.window;
    a.q_stride = c.H * D, a.scale = c.scale, a.k_tq = c.k_tq, a.v_tq = c.v_tq, a.n_sink = c.n_sink;
    a.k_center = c.k_center, a.pairing = c.pairing, a.has_v_mean = c.v_mean != nullptr;
    if (c.k_tq) a.LK = s.lk.kl;
    if (c.v_tq) a.LV = s.lv.kl;
    int nk = 0, nv = 0;
    for (int k = 0; c.k_tq && k < a.LK.n_groups; k++) nk += 1 << a.LK.g[k].bits;
    for (int k = 0; c.v_tq && k < a.LV.n_groups; k++) nv += 1 << a.LV.g[k].bits;
    std::vector<float> sm(6 * D + nk + nv + KVM_ATTN_THREADS + 4), scores((size_t)T * c.H * c.n_ctx);
    std::vector<float> zero(D * (size_t)c.Hk * 2 + 8, 0.0f);
    std::vector<int> zpairs((size_t)c.Hk * P, -1);
    const float *km = c.k_center ? twin_k_mean(s.tw) : zero.data();
    const int *kp = c.k_center ? twin_k_pairs(s.tw) : zpairs.data();
    const float *ra = c.k_center ? twin_rope_all(s.tw) : zero.data();
    o.assign((size_t)T * c.H * D, 0.0f);
    run_grid({(uint)T, (uint)c.H, 1}, {KVM_ATTN_THREADS, 1, 1}, [&](const thread_pos &p) {
        kvm_attention(a, Q.data(), g.k.data(), g.v.data(), s.lk.ft.data(), s.lk.it.data(), s.lv.ft.data(),
                      s.lv.it.data(), (const half *)g.ks.data(), (const half *)g.vs.data(), km, kp, s.src.data(), ra,
                      s.v_mean.data(), scores.data(), o.data(), sm.data(), p.tgpig, p.tiitg, p.ntg);
    });
}

static int case_attention() {
    setup s;
    if (make_setup(s)) return 2;
    const twin_cfg &c = s.cfg;
    const int D = c.D, n_past = I("n_past", c.n_ctx - 6), T = c.n_ctx - n_past, N = c.n_ctx;
    auto K = randn((size_t)N * c.Hk * D), V = randn((size_t)N * c.Hk * D), Q = randn((size_t)T * c.H * D, 2.0f);
    for (size_t i = 0; i < (size_t)c.Hk * D; i++) K[i] *= 5.0f; // a sink-like first key
    // the whole pipeline on the "GPU" (its own store) ...
    gpu_cache g;
    gpu_store(s, g, K, V, N, 0);
    std::vector<float> got_pipe, got, ref((size_t)T * c.H * D);
    gpu_attend(s, g, Q, T, n_past, got_pipe);
    // ... and attention alone on the twin's cache bytes
    twin_store(s.tw, K.data(), V.data(), N, 0);
    gpu_cache tc;
    const size_t krb = twin_row_bytes(s.tw, 0), vrb = twin_row_bytes(s.tw, 1);
    tc.k.assign(twin_rows(s.tw, 0), twin_rows(s.tw, 0) + (size_t)c.Hk * N * krb + 8);
    tc.v.assign(twin_rows(s.tw, 1), twin_rows(s.tw, 1) + (size_t)c.Hk * N * vrb + 8);
    const size_t ns = (size_t)c.Hk * c.n_sink * D;
    tc.ks.assign(ns + 1, 0), tc.vs.assign(ns + 1, 0);
    if (twin_sink(s.tw, 0)) memcpy(tc.ks.data(), twin_sink(s.tw, 0), ns * 2);
    if (twin_sink(s.tw, 1)) memcpy(tc.vs.data(), twin_sink(s.tw, 1), ns * 2);
    gpu_attend(s, tc, Q, T, n_past, got);
    twin_attend(s.tw, Q.data(), T, n_past, ref.data());
    compare("attn", got.data(), ref.data(), got.size());
    compare("attn_pipeline", got_pipe.data(), ref.data(), got.size());
    twin_free(s.tw);
    return 0;
}

// ---- the shim itself: a barrier some threads never reach must abort, not hang or pass ----
static void early_return_kernel(device float *x, threadgroup float *sm, uint tid) {
    if (tid == 3) return; // undefined on a GPU: thread 3 skips the barrier
    sm[tid] = x[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    x[tid] = sm[(tid + 1) % 8];
}

static int case_deadlock() {
    std::vector<float> x(8, 1.0f), sm(8);
    run_grid({1, 1, 1}, {8, 1, 1}, [&](const thread_pos &p) { early_return_kernel(x.data(), sm.data(), p.tiitg); });
    out("deadlock_not_detected", 1);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return fprintf(stderr, "usage: check CASE [key=value ...]\n"), 2;
    for (int i = 2; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (eq) opt[std::string(argv[i], eq - argv[i])] = eq + 1;
    }
    rng.seed((unsigned)I("seed", 1));
    const std::string c = argv[1];
    if (c == "rmsnorm") return case_rmsnorm();
    if (c == "rope") return case_rope();
    if (c == "act") return case_act();
    if (c == "matvec") return case_matvec();
    if (c == "rotate") return case_rotate();
    if (c == "store") return case_store();
    if (c == "attention") return case_attention();
    if (c == "deadlock") return case_deadlock();
    return fprintf(stderr, "unknown case %s\n", c.c_str()), 2;
}
