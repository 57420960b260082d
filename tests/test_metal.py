"""The Metal kernels (native/src/metal/*.metal), verified on Linux.

Each .metal file compiles as C++17 with g++ against the shim in
native/src/metal/shim/ (address spaces, half, simdgroup reductions, barriers
over fibers); tests/metal/check.cpp runs the kernels over real grids and
compares them with their C twins — quants_ref.c, vec_ref.c, tq.c/tq_ref.c and
the CPU backend's own kv_cache.c (kv_store, kv_scores, kv_values, driven by
tests/metal/twin.c). The host's forward pass (native/src/metal/host.h) runs on a
simulated device (tests/metal/sim.cpp: the same kernels through the shim) against
the CPU backend's logits. clang (libclang) compiles the kernels a second time and
parses the Objective-C host against stand-in headers. Nothing here runs on
Apple hardware: see docs/design.md §9 for what that leaves unverified.

Tolerances (stated once, checked below):
  * bit-identical: RoPE (both pairings, permuted θ table, K mean subtracted
    first), SwiGLU and GeGLU (the twins' own exp; libm tanh on both sides
    here), the chunk dequantization of every weight type, the TurboQuant
    rotations (signs, block Walsh–Hadamard, mixing) and their inverse, the f16
    cache store, the K sinks, and attention on the CPU twin's cache bytes when a
    row has at most KVM_ATTN_THREADS keys (each key's score, each channel's V
    sum and the softmax sum then run in the twin's order).
  * RMSNorm: |got − ref| <= 1e-5 · max|ref| (tree vs sequential sum of squares).
  * matvec: |got − exact| <= 1e-6 · Σ|w·x|, exact the float64 dot of the twin's
    dequantized weights (K <= 2048: float sums of 32 products per lane, then
    K/1024 chunk sums and a 5-level tree).
  * TurboQuant store: the twin takes the norm, the comparisons with the
    centroid midpoints and the scale sums in double, Metal in float. So codes
    may differ only between adjacent centroids where y/‖y‖ lies within 1e-6 of
    their midpoint (at most 1 in 1000 codes), scales and residual norms by at
    most one fp16 step, QJL bits at most 1 in 1000; V sinks are compared on
    rows whose bytes agree (then within one fp16 step).
  * attention with more keys than threads: |got − ref| <= 1e-5 · max|ref|
    (the softmax sum in thread-partial order); the whole pipeline (the
    kernels' own store, then attention): <= 2e-3 · max|ref|.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "native" / "src"
METAL = SRC / "metal"
HARNESS = ROOT / "tests" / "metal"
TWIN_C = ["quants_ref.c", "vec_ref.c", "tq_ref.c", "tq.c", "kvc.c", "kernels.c", "cpu/kv_cache.c", "cpu/kv_recent.c",
          "cpu/kv_basis.c", "cpu/rope.c",  # kv_cache.c's K basis (a RoPE turn per block)
          "cpu/threadpool.c"]  # kv_store can split a batch over the context's pool (none here)
ATTN_THREADS = 128  # KVM_ATTN_THREADS in kvc_metal.h
CFLAGS = ["-O1", "-ffp-contract=off", f"-I{ROOT / 'native' / 'include'}", f"-I{SRC}", f"-I{SRC / 'cpu'}"]

needs_gcc = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("g++")), reason="needs gcc and g++")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def check_bin(tmp_path_factory) -> Path:
    if not (shutil.which("gcc") and shutil.which("g++")):
        pytest.skip("needs gcc and g++")
    out = tmp_path_factory.mktemp("metal")
    objs = []
    for src in TWIN_C + [str(HARNESS / "twin.c")]:
        o = out / (Path(src).stem + ".o")
        _run(["gcc", "-std=gnu11", *CFLAGS, "-c", str(SRC / src), "-o", str(o)])
        objs.append(str(o))
    exe = out / "check"
    _run(["g++", "-std=c++17", *CFLAGS, "-Wall", "-Werror", "-Wno-attributes", "-Wno-unused-function",
          f"-I{METAL / 'shim'}", f"-I{METAL}", f"-I{HARNESS}", str(HARNESS / "check.cpp"), *objs, "-lm", "-o", str(exe)])
    return exe


def run(exe: Path, case: str, **kw) -> dict[str, float]:
    r = _run([str(exe), case, *(f"{k}={v}" for k, v in kw.items())], timeout=120)
    return {k: float(v) for k, v in (line.split() for line in r.stdout.splitlines())}


@needs_gcc
def test_shared_header_matches_c_structs(tmp_path):
    exe = tmp_path / "offsets"
    _run(["gcc", "-std=gnu11", "-Wall", "-Werror", *CFLAGS, str(HARNESS / "offsets.c"), "-o", str(exe)])
    assert _run([str(exe)]).stdout.split() == [
        "q4_0", "18", "q8_0", "34", "q4_K", "144", "q6_K", "210", "tq_layout", "144", "store_args", "192",
        "attn_args", "352"]


def test_embedded_source_is_current():
    sys.path.insert(0, str(METAL))
    try:
        import embed_source
    finally:
        sys.path.remove(str(METAL))
    assert (METAL / "metal_source.inc").read_text() == embed_source.render(), \
        "run: python native/src/metal/embed_source.py"


@needs_gcc
def test_embedded_source_compiles_as_one_unit(tmp_path):
    """The string backend_metal.m hands to Metal, through the shim as one translation unit."""
    sys.path.insert(0, str(METAL))
    try:
        import embed_source
    finally:
        sys.path.remove(str(METAL))
    src = tmp_path / "all.cpp"
    src.write_text(embed_source.source())
    _run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-Wno-attributes", "-Wno-unused-function",
          f"-I{METAL / 'shim'}", str(src)])


def test_metal_sources_only_on_macos():
    from kvconvert._build_native import native_sources

    mac = native_sources("Darwin", "arm64")
    assert "native/src/metal/backend_metal.m" in mac
    assert all(str(p.relative_to(ROOT)) in mac for p in METAL.glob("*.m"))
    for system, machine in (("Linux", "x86_64"), ("Linux", "aarch64")):
        assert not any(s.startswith("native/src/metal/") for s in native_sources(system, machine))


def test_rmsnorm(check_bin):
    for n, threads in ((576, 128), (64, 32), (2048, 256)):
        m = run(check_bin, "rmsnorm", n=n, threads=threads)
        assert m["rmsnorm_maxrel"] <= 1e-5, (n, m)


@pytest.mark.parametrize("pairing", [0, 1], ids=["neox", "interleaved"])
def test_rope(check_bin, pairing):
    for kw in ({"permuted": 1, "mean": 1}, {"permuted": 0, "mean": 0, "D": 128}):
        m = run(check_bin, "rope", pairing=pairing, **kw)
        assert m["rope_bitdiff"] == 0, m


def test_activations(check_bin):
    m = run(check_bin, "act")
    assert m["swiglu_bitdiff"] == 0 and m["geglu_bitdiff"] == 0, m


@pytest.mark.parametrize("wtype,K", [("f32", 320), ("bf16", 512), ("f16", 576), ("q8_0", 1024), ("q4_0", 2048), ("q4_K", 2048), ("q6_K", 1536)])
def test_matvec(check_bin, wtype, K):
    for T, bias in ((1, 0), (11, 1)):
        m = run(check_bin, "matvec", type=wtype, K=K, M=37, T=T, bias=bias)
        assert m["dequant_bitdiff"] == 0, m
        assert m["matvec_relerr"] <= 1e-6, m
        assert m["matvec_padding_kept"] == 1, m


def test_rotations_bit_identical(check_bin):
    for D, n_hi, threads in ((96, 24, 64), (128, 0, 32), (64, 32, 128), (80, 16, 64)):
        m = run(check_bin, "rotate", D=D, n_hi=n_hi, threads=threads)
        assert m["rotate_bitdiff"] == m["rotate_jl_bitdiff"] == m["unrotate_bitdiff"] == 0, (D, n_hi, m)


STORE_CFGS = {
    "split-qjl-perm-ls": dict(D=64, n_hi=16, hi=5, lo=3, qjl_hi=1, qjl_lo=0, perm=1, mode=1, sink=2),
    "split-qjl-both-proj": dict(D=64, n_hi=16, hi=4, lo=3, qjl_hi=1, qjl_lo=1, perm=1, mode=2, sink=1),
    "one-group-norm": dict(D=128, n_hi=0, lo=4, qjl_hi=0, perm=0, mode=0, sink=0, v_lo=3),
    "odd-groups-hd96": dict(D=96, n_hi=24, hi=6, lo=2, qjl_hi=1, perm=1, mode=1, sink=3, v_n_hi=40, v_hi=5, v_lo=3),
}


@pytest.mark.parametrize("cfg", list(STORE_CFGS))
def test_tq_store(check_bin, cfg):
    m = run(check_bin, "store", T=40, n_ctx=40, Hk=2, **STORE_CFGS[cfg])
    for kv in "kv":
        codes = m[f"{kv}_codes"]
        assert codes > 0
        assert m[f"{kv}_code_diff"] <= codes / 1000, m
        assert m[f"{kv}_code_diff_not_adjacent"] == 0, m
        assert m[f"{kv}_code_diff_max_dist"] <= 1e-6, m
        assert m[f"{kv}_scale_ulp"] <= 1 and m[f"{kv}_rnorm_ulp"] <= 1, m
        assert m[f"{kv}_qjl_diff"] <= m[f"{kv}_qjl_bits"] / 1000, m
    assert m["k_sink_ulp"] == 0 and m["v_sink_ulp"] <= 1, m
    # the usual case: most rows byte-identical to the twin's
    assert m["k_rows_identical"] >= 0.9 * m["k_rows"] and m["v_rows_identical"] >= 0.9 * m["v_rows"], m


def test_f16_store(check_bin):
    m = run(check_bin, "store", k_tq=0, v_tq=0)
    assert m["k_f16_bytediff"] == 0 and m["v_f16_bytediff"] == 0, m


ATTN_CFGS = {
    "tq-k-v-sinks-centered": {},
    "window": dict(window=10),
    "f16-k-tq-v": dict(k_tq=0),
    "tq-k-f16-v-uncentered": dict(v_tq=0, center=0, vmean=0),
    "f16-both": dict(k_tq=0, v_tq=0, sink=0),
    "interleaved-hd96-gqa3": dict(D=96, n_hi=24, hi=4, lo=3, H=6, Hk=2, pairing=1, v_n_hi=32, v_hi=5, v_lo=3),
    "qjl-both-proj": dict(qjl_lo=1, mode=2, sink=1, pairs=0),
}


@pytest.mark.parametrize("cfg", list(ATTN_CFGS))
def test_attention_bit_identical(check_bin, cfg):
    m = run(check_bin, "attention", n_ctx=48, n_past=42, **ATTN_CFGS[cfg])
    assert m["attn_bitdiff"] == 0, m
    assert m["attn_pipeline_maxrel"] <= 2e-3, m


def test_attention_long_rows(check_bin):
    """More keys than threads: the softmax sum is no longer in the twin's order."""
    m = run(check_bin, "attention", n_ctx=3 * ATTN_THREADS + 20, n_past=3 * ATTN_THREADS + 16, window=200)
    assert m["attn_maxrel"] <= 1e-5, m
    assert m["attn_pipeline_maxrel"] <= 2e-3, m


def test_shim_catches_a_barrier_not_all_threads_reach(check_bin):
    r = subprocess.run([str(check_bin), "deadlock"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "barrier deadlock" in r.stderr, (r.returncode, r.stdout, r.stderr)


# ---- the host's forward pass (native/src/metal/host.h) on a simulated device ----

@pytest.fixture(scope="module")
def sim_lib(tmp_path_factory) -> Path:
    if not shutil.which("g++"):
        pytest.skip("needs g++")
    out = tmp_path_factory.mktemp("metal-sim") / "libkvm_sim.so"
    _run(["g++", "-std=c++17", *CFLAGS, "-fPIC", "-shared", "-Wall", "-Werror", "-Wno-attributes",
          "-Wno-unused-function", f"-I{METAL / 'shim'}", f"-I{METAL}", str(HARNESS / "sim.cpp"), "-o", str(out)])
    return out


SIM_CASES = {  # tiny model, context settings; the slow ones cover the other architectures
    "qwen2-f16": ("qwen2-hd64", dict(type_k="f16", type_v="f16", k_center=False)),
    "qwen3-tq-split-qjl-means-sink": ("qwen3-hd64", dict(type_k="tq:split=16,hi=6,lo=3,qjl=hi", type_v="tq3",
                                                          means=True, n_sink=1)),
    "gemma3-tq-window-geglu": ("gemma3-hd64-swa8", dict(type_k="tq4", type_v="tq4", means=True, n_sink=1)),
    "mistral-window-f16k-tqv": ("mistral-hd64-swa8", dict(type_k="f16", type_v="tq4", k_center=False, n_sink=1)),
    "llama-bias-hd128-tqk-f16v": ("llama-hd128-bias-rope3", dict(type_k="tq4", type_v="f16", means=True, n_sink=1)),
    "qwen2-bf16-hd128-tq3": ("qwen2-hd128-bf16", dict(type_k="tq3", type_v="tq3", means=True, n_sink=1)),
    "llama-tied-tq4-2sinks": ("llama-hd64-tied", dict(type_k="tq4", type_v="tq4", means=True, n_sink=2)),
}
SLOW_SIM = {"gemma3-tq-window-geglu", "mistral-window-f16k-tqv", "llama-bias-hd128-tqk-f16v",
            "qwen2-bf16-hd128-tq3", "llama-tied-tq4-2sinks"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_SIM else c for c in SIM_CASES])
def test_host_forward_matches_cpu_backend(sim_lib, tiny_ggufs, case):
    """host.h's whole forward pass — context creation, buffers, the dispatch sequence and its
    arguments — with every kernel run through the shim, against the CPU backend's logits
    (prefill with all logits, then decode). Tolerance: max |sim − cpu| <= 1e-3 · max |cpu|
    (seen: 2e-7 .. 1.1e-4; float sums in other orders, f16 caches round the same values)."""
    import json

    model, kw = SIM_CASES[case]
    r = _run([sys.executable, str(HARNESS / "sim_logits.py"), str(sim_lib), str(tiny_ggufs[model]), json.dumps(kw)],
             cwd=ROOT, timeout=600)
    assert float(r.stdout.split()[-1]) <= 1e-3, (case, r.stdout)


# ---- a second compiler front end: clang (libclang from PyPI) ----

def _clang_args(lang: str) -> list[str]:
    """System include paths for libclang: gcc's own headers and g++'s C++ library."""
    args = ["-isystem", _run(["gcc", "-print-file-name=include"]).stdout.strip()]
    if lang == "c++":
        v = subprocess.run(["g++", "-E", "-x", "c++", "-", "-v"], input="", capture_output=True, text=True).stderr
        lines = v.split("#include <...> search starts here:")[1].split("End of search list")[0].split()
        args = [a for d in lines for a in ("-isystem", d)] + args
    return args


def _clang_diagnostics(path: Path, args: list[str]) -> list[str]:
    cindex = pytest.importorskip("clang.cindex", reason="libclang (pip install libclang) not installed")
    tu = cindex.Index.create().parse(str(path), args=args)
    return [f"{d.location.file}:{d.location.line}: {d.spelling}" for d in tu.diagnostics]


@needs_gcc
def test_kernels_compile_with_clang_too():
    """Every .metal file through the shim again, with clang's C++ front end (stricter than g++ in places)."""
    args = ["-x", "c++", "-std=c++17", "-Wall", "-Wno-unused-function", "-Wno-unknown-attributes",
            f"-I{METAL / 'shim'}", f"-I{METAL}", *_clang_args("c++")]
    for f in sorted(METAL.glob("*.metal")):
        assert _clang_diagnostics(f, args) == [], f


@needs_gcc
def test_host_parses_as_objective_c():
    """backend_metal.m has never been compiled by Apple's toolchain. clang parses it here as
    Objective-C against stand-in Foundation/Metal headers (tests/metal/objc_stubs: only the
    interfaces it uses, from Apple's documentation): syntax, C types, selectors and properties
    consistent with those interfaces. Not a check of the real SDK."""
    args = ["-x", "objective-c", "-fblocks", "-std=gnu11", "-D__APPLE__=1", "-fobjc-runtime=macosx-14.0",
            f"-I{ROOT / 'native' / 'include'}", f"-I{SRC}", "-isystem", str(HARNESS / "objc_stubs"),
            *_clang_args("c"), "-Wall", "-Wno-unused-function"]
    assert _clang_diagnostics(METAL / "backend_metal.m", args) == []


# ---- on a Mac (skipped elsewhere): the real Metal compiler and device ----

on_mac = pytest.mark.skipif(platform.system() != "Darwin", reason="needs macOS with Xcode's metal compiler")


@on_mac
def test_msl_compiles_with_xcrun(tmp_path):
    if subprocess.run(["xcrun", "-sdk", "macosx", "-f", "metal"], capture_output=True).returncode:
        pytest.skip("xcrun metal not installed (Xcode, not only the command-line tools)")
    for f in sorted(METAL.glob("*.metal")):
        _run(["xcrun", "-sdk", "macosx", "metal", "-std=metal3.0", "-Werror", f"-I{METAL}", "-c", str(f),
              "-o", str(tmp_path / (f.stem + ".air"))])


@on_mac
@pytest.mark.skipif(os.environ.get("KVC_TEST_METAL_DEVICE") != "1", reason="set KVC_TEST_METAL_DEVICE=1 (scripts/metal_check.sh)")
@pytest.mark.parametrize("cache", ["f16", "tq4"])
def test_metal_backend_logits_match_cpu(tiny_ggufs, monkeypatch, cache):
    """All logits of a 16-token prefill and 4 decode steps, Metal backend vs CPU backend, on every
    tiny model. Tolerance: max |metal − cpu| <= 1e-3 · max |cpu| (float sums in other orders;
    TurboQuant codes may flip at centroid midpoints, see the store tolerance)."""
    import numpy as np

    from kvconvert.runtime.engine import Model

    for name, path in tiny_ggufs.items():
        outs = {}
        for backend in ("cpu", "metal"):
            monkeypatch.setenv("KVC_BACKEND", backend)
            ctx = Model(path).context(n_ctx=64, n_batch=16, n_threads=2, type_k=cache, type_v=cache, k_center=False)
            first = ctx.eval(list(range(3, 19)), all_logits=True)
            steps = [ctx.eval([int(np.argmax(first[-1])) + i]) for i in range(4)]
            outs[backend] = np.concatenate([first, np.stack(steps)])
        err = np.abs(outs["metal"] - outs["cpu"]).max() / np.abs(outs["cpu"]).max()
        assert err <= 1e-3, (name, cache, err)


@pytest.mark.skipif(platform.system() == "Darwin", reason="off macOS only")
def test_backend_selection_off_macos(tiny_ggufs, monkeypatch):
    """Where the build has no Metal backend: the default (auto) and cpu run on the CPU, and
    say so; KVC_BACKEND=metal or an explicit metal backend is refused in one line; a
    context's own backend setting wins over the environment."""
    from kvconvert.base.errors import InputError
    from kvconvert.runtime.engine import ContextParams, Model, NativeError

    model = Model(tiny_ggufs["qwen2-hd64"])
    for value in (None, "", "auto", "cpu"):
        if value is None:
            monkeypatch.delenv("KVC_BACKEND", raising=False)
        else:
            monkeypatch.setenv("KVC_BACKEND", value)
        ctx = model.context(n_ctx=16, n_batch=8, n_threads=1)
        ctx.eval([1, 2, 3])
        assert ctx.backend == "cpu"
    for value, words in (("metal", "macOS builds only"), ("cuda", "KVC_BACKEND=cuda")):
        monkeypatch.setenv("KVC_BACKEND", value)
        with pytest.raises(NativeError, match=words):
            model.context(n_ctx=16, n_batch=8, n_threads=1)
        for backend in ("auto", "cpu"):  # the context's own choice wins over the environment
            assert model.context(ContextParams(n_ctx=16, n_batch=8, n_threads=1, backend=backend)).backend == "cpu"
    monkeypatch.delenv("KVC_BACKEND")
    with pytest.raises(NativeError, match="backend metal: this build runs auto, cpu"):
        model.context(ContextParams(n_ctx=16, n_batch=8, n_threads=1, backend="metal"))
    with pytest.raises(InputError, match="choose one of auto, cpu, metal"):
        ContextParams(backend="gpu")
