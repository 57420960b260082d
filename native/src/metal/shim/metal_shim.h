/* metal_shim.h — just enough of the Metal Shading Language for kvconvert's
 * .metal files to compile as C++17 with g++ on Linux and run over a real grid
 * (tests/metal/check.cpp, tests/test_metal.py). Not a Metal implementation:
 * the subset those files use, with the semantics they rely on.
 *
 *   address spaces   device, constant, threadgroup, thread → nothing; `kernel` → nothing
 *   attributes       [[buffer(n)]] etc. are ignored (compile with -Wno-attributes);
 *                    [[threadgroup(n)]] is written KVM_TG(n) in the kernels
 *   half             _Float16 (IEEE binary16; conversions round to nearest even)
 *   scalars          uint, ushort, uchar; uint3 (x, y, z)
 *   math             fma, sqrt, rint, tanh, exp, fabs, abs, min, max, as_type
 *   barriers         threadgroup_barrier(mem_flags): every thread of the
 *                    threadgroup must arrive (a thread that returned early never does); the shim aborts on a deadlock (a
 *                    barrier some threads can never reach — undefined on a GPU)
 *   simdgroups       simd_sum, simd_max over the 32 lanes of a simdgroup: every
 *                    lane must call (the kernels keep these calls uniform);
 *                    summed as a butterfly (xor 16, 8, 4, 2, 1)
 *
 * A threadgroup's threads run as cooperative fibers (ucontext) on one OS thread:
 * a thread runs until it reaches a barrier or a simdgroup reduction, then the
 * next one runs; threadgroups run one after another. Threadgroup memory must be
 * a kernel parameter ([[threadgroup(n)]]): the runner passes one buffer per
 * threadgroup (a threadgroup-scope local array would be per fiber here). */
#ifndef KVC_METAL_SHIM_H
#define KVC_METAL_SHIM_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#define KVM_SHIM 1
#define kernel
#define device
#define constant
#define threadgroup
#define thread
#define KVM_TG(n) /* [[threadgroup(n)]] (kvm_common.h) */

typedef _Float16 half;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;

struct uint3 {
    uint x, y, z;
};

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };

/* the standard library's float overloads (the same functions whichever way they are found) */
using std::abs;
using std::exp;
using std::fabs;
using std::fma;
using std::max;
using std::min;
using std::rint; /* round to nearest even in the default rounding mode, as MSL's rint */
using std::sqrt;
using std::tanh;
template <class To, class From> inline To as_type(From f) {
    static_assert(sizeof(To) == sizeof(From), "as_type sizes");
    To t;
    memcpy(&t, &f, sizeof t);
    return t;
}

} // namespace metal

/* ---- the grid runner ---- */
namespace kvm_shim {

enum { SIMD_WIDTH = 32, STACK_BYTES = 256 << 10 };

struct thread_pos {
    uint3 tgpig;   /* threadgroup_position_in_grid */
    uint3 tpitg;   /* thread_position_in_threadgroup */
    uint tiitg;    /* thread_index_in_threadgroup */
    uint ntg;      /* threads_per_threadgroup (linear) */
    ushort tiisg;  /* thread_index_in_simdgroup */
    ushort sgitg;  /* simdgroup_index_in_threadgroup */
};

struct fiber {
    ucontext_t ctx;
    char *stack;
    int done;
    thread_pos pos;
};

struct group_state {
    std::vector<fiber> f;
    ucontext_t sched;
    int cur;
    int n_live;
    int nt;             /* threads per threadgroup: a barrier opens when all nt arrive */
    int arrived;        /* threadgroup barrier */
    unsigned gen;
    int sg_arrived[64]; /* simdgroup rendezvous */
    unsigned sg_gen[64];
    int sg_size[64];
    double sg_val[64][SIMD_WIDTH];
    const std::function<void(const thread_pos &)> *body;
    long progress; /* arrivals, openings and finished threads: a round without any is a deadlock */
};

inline group_state *&current() {
    static group_state *g = nullptr;
    return g;
}

inline void yield() {
    group_state *g = current();
    fiber &me = g->f[g->cur];
    swapcontext(&me.ctx, &g->sched);
}

inline void entry(unsigned lo, unsigned hi) {
    (void)lo, (void)hi;
    group_state *g = current();
    fiber &me = g->f[g->cur];
    (*g->body)(me.pos);
    me.done = 1;
    g->n_live--;
    g->progress++;
    swapcontext(&me.ctx, &g->sched);
}

inline void barrier() {
    group_state *g = current();
    unsigned gen = g->gen;
    g->progress++;
    if (++g->arrived == g->nt) {
        g->arrived = 0;
        g->gen++;
        return;
    }
    while (g->gen == gen) yield();
}

/* all lanes of the caller's simdgroup deposit v; returns the lanes' values in lane order */
inline void simd_exchange(double v, double *all) {
    group_state *g = current();
    const thread_pos &p = g->f[g->cur].pos;
    const int sg = p.sgitg;
    g->sg_val[sg][p.tiisg] = v;
    g->progress++;
    unsigned gen = g->sg_gen[sg];
    if (++g->sg_arrived[sg] == g->sg_size[sg]) {
        g->sg_arrived[sg] = 0;
        g->sg_gen[sg]++;
    } else {
        while (g->sg_gen[sg] == gen) yield();
    }
    memcpy(all, g->sg_val[sg], sizeof(double) * SIMD_WIDTH);
    /* second rendezvous: no lane may overwrite the slots before every lane has read them */
    gen = g->sg_gen[sg];
    g->progress++;
    if (++g->sg_arrived[sg] == g->sg_size[sg]) {
        g->sg_arrived[sg] = 0;
        g->sg_gen[sg]++;
    } else {
        while (g->sg_gen[sg] == gen) yield();
    }
}

/* Run body for every thread of grid n_tg × tg_size (threadgroups in x-fastest order). */
inline void run_grid(uint3 n_tg, uint3 tg_size, const std::function<void(const thread_pos &)> &body) {
    const uint nt = tg_size.x * tg_size.y * tg_size.z;
    if (nt == 0 || nt > 1024) {
        fprintf(stderr, "shim: threadgroup of %u threads\n", nt);
        abort();
    }
    group_state g{};
    g.f.resize(nt);
    for (auto &f : g.f) f.stack = (char *)malloc(STACK_BYTES);
    g.body = &body;
    current() = &g;
    for (uint gz = 0; gz < n_tg.z; gz++)
        for (uint gy = 0; gy < n_tg.y; gy++)
            for (uint gx = 0; gx < n_tg.x; gx++) {
                g.n_live = g.nt = (int)nt, g.arrived = 0, g.gen = 0;
                memset(g.sg_arrived, 0, sizeof g.sg_arrived);
                memset(g.sg_gen, 0, sizeof g.sg_gen);
                for (uint s = 0; s < (nt + SIMD_WIDTH - 1) / SIMD_WIDTH; s++)
                    g.sg_size[s] = (int)(nt - s * SIMD_WIDTH < SIMD_WIDTH ? nt - s * SIMD_WIDTH : SIMD_WIDTH);
                for (uint i = 0; i < nt; i++) {
                    fiber &f = g.f[i];
                    f.done = 0;
                    f.pos.tgpig = {gx, gy, gz};
                    f.pos.tpitg = {i % tg_size.x, (i / tg_size.x) % tg_size.y, i / (tg_size.x * tg_size.y)};
                    f.pos.tiitg = i, f.pos.ntg = nt;
                    f.pos.tiisg = (ushort)(i % SIMD_WIDTH), f.pos.sgitg = (ushort)(i / SIMD_WIDTH);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK_BYTES;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, (void (*)())entry, 2, 0u, 0u);
                }
                while (g.n_live > 0) {
                    const long before = g.progress;
                    for (uint i = 0; i < nt; i++) {
                        if (g.f[i].done) continue;
                        g.cur = (int)i;
                        swapcontext(&g.sched, &g.f[i].ctx);
                    }
                    if (g.n_live > 0 && g.progress == before) { /* every live thread waits, none can go on */
                        fprintf(stderr, "shim: barrier deadlock in threadgroup (%u, %u, %u): %d of %u threads "
                                "finished\n", gx, gy, gz, (int)nt - g.n_live, nt);
                        abort();
                    }
                }
            }
    for (auto &f : g.f) free(f.stack);
    current() = nullptr;
}

} // namespace kvm_shim

namespace metal {

inline void threadgroup_barrier(mem_flags) { kvm_shim::barrier(); }

inline float simd_sum(float v) {
    double all[kvm_shim::SIMD_WIDTH];
    kvm_shim::simd_exchange(v, all);
    float x[kvm_shim::SIMD_WIDTH];
    const int n = kvm_shim::current()->sg_size[kvm_shim::current()->f[kvm_shim::current()->cur].pos.sgitg];
    for (int i = 0; i < kvm_shim::SIMD_WIDTH; i++) x[i] = i < n ? (float)all[i] : 0.0f;
    for (int h = kvm_shim::SIMD_WIDTH / 2; h >= 1; h >>= 1) /* butterfly: lane i += lane i ^ h */
        for (int i = 0; i < h; i++) x[i] = x[i] + x[i + h];
    return x[0];
}

inline float simd_max(float v) {
    double all[kvm_shim::SIMD_WIDTH];
    kvm_shim::simd_exchange(v, all);
    const int n = kvm_shim::current()->sg_size[kvm_shim::current()->f[kvm_shim::current()->cur].pos.sgitg];
    float m = (float)all[0];
    for (int i = 1; i < n; i++) m = (float)all[i] > m ? (float)all[i] : m;
    return m;
}

} // namespace metal

#endif /* KVC_METAL_SHIM_H */
