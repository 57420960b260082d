"""k-quant outputs (issue 16.2): the C quantizers of Q4_K, Q5_K, Q6_K (and Q5_1, the Q5_K_M mix's
fallback type), the llama-quantize mixes of writer.k_quant_type, and the files they make.

Stated tolerances:
  * block format: gguf-py's ``gguf.quants.dequantize`` of what we write == our C dequantization,
    bit for bit; and where llama-cpp-python's libggml-base is installed, our bytes == ggml's own
    quantizer's (``ggml_quantize_chunk``, no importance matrix) on the same floats.
  * SIMD twins (the AVX2 scale search of Q4_K/Q5_K, also the AVX-512 table's): byte-identical to
    the scalar quantizer.
  * quantization error on Gaussian rows with per-row scales 0.01–1 (measured worst: Q4_K 0.076,
    Q5_K 0.039, Q6_K 0.019 relative RMSE; 0.072 / 0.037 / 0.016 max |error| / max |x|):
    relative RMSE per row <= 0.085 / 0.045 / 0.022 and max |error| <= 0.10 / 0.05 / 0.025 of the
    row's max |x|.
  * a tiny model converted with q4_k_m / q5_k_m: llama.cpp loads it, and its logits and our
    runtime's on the same file agree within 3e-2 of max |logit| (both multiply with 8-bit
    activations, in different orders), argmax agreement >= 90%.
  * slow (-m slow, ~40 s): SmolLM2-135M's q4_k_m / q5_k_m / q6_k files have every tensor's type
    and bytes of llama.cpp's llama_model_quantize on the same f16 model.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")

from kvconvert.conversion.writer import K_MIXES, plan_types  # noqa: E402
from kvconvert.models.arch.base import TensorSpec  # noqa: E402
from kvconvert.runtime._native import ffi, lib  # noqa: E402
from kvconvert.runtime.quantize import quantize  # noqa: E402

KTYPES = [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_1]
BOUNDS = {Q.Q4_K: (0.085, 0.10), Q.Q5_K: (0.045, 0.05), Q.Q6_K: (0.022, 0.025)}  # (rel. RMSE, max err / max|x|)
SCALAR = 1


def c_dequantize(t, data: np.ndarray, n: int) -> np.ndarray:
    y = np.zeros(n, np.float32)
    st = lib().kvc_dequantize_row(int(t), SCALAR, ffi().cast("void *", ffi().from_buffer(data)),
                                  ffi().cast("float *", ffi().from_buffer(y)), n)
    assert st == 0
    return y


def inputs(rng, k: int = 1024) -> list[np.ndarray]:
    """Rows with varied scales plus the edge cases of a scale search."""
    rows = [rng.standard_normal(k).astype(np.float32) * s for s in (1e-3, 0.05, 1.0, 30.0)]
    rows += [np.zeros(k, np.float32), np.full(k, 0.25, np.float32), np.full(k, -2.0, np.float32),
             np.abs(rng.standard_normal(k)).astype(np.float32), -np.abs(rng.standard_normal(k)).astype(np.float32)]
    spike = rng.standard_normal(k).astype(np.float32) * 0.01
    spike[::97] = 8.0
    sparse = np.where(rng.random(k) < 0.9, 0.0, rng.standard_normal(k)).astype(np.float32)
    return rows + [spike, sparse]


@pytest.mark.parametrize("t", KTYPES, ids=lambda t: t.name)
def test_gguf_py_dequantizes_what_we_write_bit_exact(t):
    rng = np.random.default_rng(11)
    for x in inputs(rng):
        data = quantize(x, int(t), impl=SCALAR)
        want = gguf.quants.dequantize(data, t).reshape(-1)
        got = c_dequantize(t, data, x.size)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _ggml():
    llama_cpp = pytest.importorskip("llama_cpp", reason="scripts/test.sh installs llama-cpp-python")
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.exists():
        pytest.skip("llama-cpp-python has no libggml-base.so here")
    g = ctypes.CDLL(str(path))
    g.ggml_quantize_chunk.restype = ctypes.c_size_t
    g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_void_p]
    return g


@pytest.mark.parametrize("t", KTYPES, ids=lambda t: t.name)
def test_same_bytes_as_ggml_quantizer(t):
    g = _ggml()
    rng = np.random.default_rng(12)
    rows, k = 48, 1536
    x = (rng.standard_normal((rows, k)) * rng.uniform(0.005, 0.5, (rows, 1))).astype(np.float32)
    edge = np.stack(inputs(rng, k))
    x[: len(edge)] = edge
    ours = quantize(x, int(t), impl=SCALAR)
    ref = np.zeros_like(ours)
    g.ggml_quantize_chunk(int(t), x.ctypes.data, ref.ctypes.data, 0, rows, k, None)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("t", list(BOUNDS), ids=lambda t: t.name)
def test_quantization_error_bounds(t):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((64, 1024)) * rng.uniform(0.01, 1.0, (64, 1))).astype(np.float32)
    y = gguf.quants.dequantize(quantize(x, int(t)), t)
    rel_rmse = np.sqrt(((y - x) ** 2).mean(1) / (x ** 2).mean(1))
    rel_max = np.abs(y - x).max(1) / np.abs(x).max(1)
    assert rel_rmse.max() <= BOUNDS[t][0], rel_rmse.max()
    assert rel_max.max() <= BOUNDS[t][1], rel_max.max()


SIMD = [i for i in (2, 3, 4) if lib().kvc_cpu_impls() & (1 << i)]  # AVX2, AVX512, NEON


@pytest.mark.skipif(not SIMD, reason="no SIMD impl on this CPU")
@pytest.mark.parametrize("t", KTYPES, ids=lambda t: t.name)
def test_simd_quantizer_equals_scalar_twin(t):
    rng = np.random.default_rng(15)
    k = 2048
    rows = inputs(rng, k) + [(rng.standard_normal(k) * rng.uniform(1e-4, 10)).astype(np.float32) for _ in range(64)]
    x = np.stack(rows)
    x[-1, :512] = 0.0  # zero sub-blocks inside a non-zero superblock
    x[-2, 256:300] = 1.5  # a constant stretch
    want = quantize(x, int(t), impl=SCALAR)
    for impl in SIMD:
        assert np.array_equal(quantize(x, int(t), impl=impl), want), impl


def test_threaded_quantize_equals_one_call():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    assert np.array_equal(quantize(x, int(Q.Q4_K), threads=4), quantize(x, int(Q.Q4_K), threads=1))


# ---------------- the mixes ----------------

def _specs(n_layer: int, hidden: int, ffn: int, tied: bool) -> list[TensorSpec]:
    s = [TensorSpec("model.embed_tokens.weight", "token_embd.weight", (1000, hidden))]
    for i in range(n_layer):
        for name, shape in (("attn_norm", (hidden,)), ("attn_q", (hidden, hidden)), ("attn_k", (hidden // 4, hidden)),
                            ("attn_v", (hidden // 4, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            s.append(TensorSpec(f"x.{i}.{name}", f"blk.{i}.{name}.weight", shape))
    if not tied:
        s.append(TensorSpec("lm_head.weight", "output.weight", (1000, hidden)))
    return s


def test_q4_k_m_mix_follows_llama_quantize():
    """30 layers: use_more_bits picks layers 0-2, 5, 8, ..., 26 and 27-29 (llama-quant.cpp)."""
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
    types = {s.gguf: q for s, q in plan_types(_specs(30, 1024, 2880, tied=False), "q4_k_m")}
    for i in range(30):
        assert types[f"blk.{i}.attn_v.weight"] == (Q.Q6_K if i in more else Q.Q4_K)
        # ffn_down's rows are 2880 long (% 256 != 0): Q6_K -> Q8_0, Q4_K -> Q5_0
        assert types[f"blk.{i}.ffn_down.weight"] == (Q.Q8_0 if i in more else Q.Q5_0)
        assert types[f"blk.{i}.attn_q.weight"] == Q.Q4_K
        assert types[f"blk.{i}.attn_norm.weight"] == Q.F32
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    types = {s.gguf: q for s, q in plan_types(_specs(30, 576, 1536, tied=True), "q4_k_m")}
    assert types["token_embd.weight"] == Q.Q8_0  # tied: the output's rule, 576 % 256 != 0
    assert types["blk.0.attn_v.weight"] == Q.Q8_0 and types["blk.3.attn_v.weight"] == Q.Q5_0
    assert types["blk.0.ffn_down.weight"] == Q.Q6_K and types["blk.3.ffn_down.weight"] == Q.Q4_K
    types = {s.gguf: q for s, q in plan_types(_specs(30, 576, 1536, tied=True), "q5_k_m")}
    assert types["blk.3.attn_q.weight"] == Q.Q5_1 and types["blk.3.ffn_down.weight"] == Q.Q5_K
    types = {s.gguf: q for s, q in plan_types(_specs(4, 512, 1000, tied=False), "q6_k")}
    assert types["blk.1.attn_q.weight"] == Q.Q6_K and types["blk.1.ffn_down.weight"] == Q.F16  # 1000 % 32 != 0


# ---------------- files: llama.cpp and our runtime ----------------

@pytest.fixture(scope="module")
def kq_model(tmp_path_factory) -> Path:
    """A tiny Llama whose rows are multiples of 256 (k-quants) except ffn_down's 384 (fallbacks)."""
    from tests.tiny import TinySpec, make_tiny_model

    root = tmp_path_factory.mktemp("kq")
    return make_tiny_model(root / "llama", TinySpec(arch="llama", head_dim=64, n_heads=4, n_kv_heads=2, n_layers=8,
                                                     intermediate=512, vocab=384, seed=21))


TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10]


@pytest.mark.parametrize("weights", ["q4_k_m", "q5_k_m"])
def test_tiny_k_quant_file_runs_in_llama_cpp_and_runtime(kq_model, tmp_path, weights):
    from kvconvert import convert
    from kvconvert.runtime.engine import Model
    from tests import oracle_llama_cpp as oracle

    out = tmp_path / f"{weights}.gguf"
    res = convert(kq_model, out, weights=weights)
    mix_type = Q.Q4_K if weights == "q4_k_m" else Q.Q5_K
    assert res.types.get(mix_type.name) and res.types.get("Q6_K"), res.types
    r = gguf.GGUFReader(out)
    assert int(r.fields["general.file_type"].contents()) == int(gguf.LlamaFileType[f"MOSTLY_{weights.upper()}"])
    want = oracle.logits(oracle.load(out, n_ctx=64), TOKENS)
    got = Model(out).context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 3e-2, err
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_convert_help_lists_the_mixes():
    import argparse

    from kvconvert.commands.convert import configure

    p = argparse.ArgumentParser()
    configure(p)
    help_text = p.format_help()
    for weights in K_MIXES:
        assert weights in help_text


@pytest.fixture(scope="module")
def smollm2_f16(tmp_path_factory) -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct: the f16 Hugging Face import of the fixture and its f16 GGUF."""
    from kvconvert import convert
    from kvconvert.conversion.import_gguf import import_gguf
    from kvconvert.testdata import fixtures

    root = tmp_path_factory.mktemp("kq-smollm2")
    hf, f16 = root / "hf", root / "f16.gguf"
    import_gguf(fixtures.smollm2_gguf(), hf, dtype="f16")
    convert(hf, f16, weights="f16")
    return hf, f16


@pytest.mark.slow
@pytest.mark.parametrize("weights", K_MIXES)
def test_smollm2_tensors_equal_llama_quantize(smollm2_f16, tmp_path_factory, weights):
    """The real model: our mix of the f16 import has every tensor's type and bytes of llama.cpp's own
    llama_model_quantize on the f16 GGUF of the same directory."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="scripts/test.sh installs llama-cpp-python")

    from kvconvert import convert
    from tests import oracle_llama_cpp as oracle

    hf, f16 = smollm2_f16
    ours, theirs = tmp_path_factory.mktemp("ours") / "m.gguf", tmp_path_factory.mktemp("theirs") / "m.gguf"
    convert(hf, ours, weights=weights)
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = int(gguf.LlamaFileType[f"MOSTLY_{weights.upper()}"])
    with oracle.quiet():
        assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs).encode(), ctypes.byref(p)) == 0
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    for t in gguf.GGUFReader(theirs).tensors:
        assert mine[t.name].tensor_type == t.tensor_type, t.name
        assert np.array_equal(np.asarray(mine[t.name].data).view(np.uint8), np.asarray(t.data).view(np.uint8)), t.name
