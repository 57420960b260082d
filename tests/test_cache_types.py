"""The cache-type registry (kvconvert/kvcache/types.py) against the places that define the same
facts independently: the C runtime's ids and cache sizes, llama.cpp's GGML type ids."""

from __future__ import annotations

import pytest

from kvconvert.base.errors import InputError
from kvconvert.kvcache.types import AUTO, STANDARD, TQ, CacheSpec, is_tq, standard_bits


def test_native_ids_are_kvc_h():
    from kvconvert.runtime._native import lib

    kvc = lib()
    for t in STANDARD.values():
        assert getattr(kvc, f"KVC_TYPE_{t.name.upper()}") == t.native_id, t.name
    assert kvc.KVC_CACHE_TQ == CacheSpec("tq4").native_id


def test_ggml_ids_are_llama_cpps():
    llama_cpp = pytest.importorskip("llama_cpp")
    for t in STANDARD.values():
        assert getattr(llama_cpp, f"GGML_TYPE_{t.name.upper()}") == t.ggml_type, t.name


def test_bits_are_what_the_runtime_stores(tiny_ggufs):
    """kv_bytes_per_token of a context with type T on both sides = 2 · layers · kv heads · head_dim · bits/8."""
    from kvconvert.runtime.engine import ContextParams, Model

    m = Model(next(iter(tiny_ggufs.values())))
    a = m.args
    values = 2 * a.num_hidden_layers * a.num_key_value_heads * a.head_dim
    for t in STANDARD.values():
        ctx = m.context(ContextParams(n_ctx=64, type_k=t.name, type_v=t.name))
        assert ctx.kv_bytes_per_token * 8 == pytest.approx(values * t.bits), t.name


@pytest.mark.parametrize("text,kind", [("auto", AUTO), ("f16", "standard"), ("q8_0", "standard"), ("tq4", TQ),
                                       ("tq", TQ), ("tq:split=16,hi=6,lo=4", TQ), (" q4_0 ", "standard")])
def test_spec_parses_once(text, kind):
    s = CacheSpec(text)
    assert s.kind == kind and s == text.strip() and isinstance(s, str)
    assert CacheSpec(s) is s  # parsing a spec again is free
    assert (s.type is not None) == (kind == "standard")


@pytest.mark.parametrize("text", ["q5_0", "f8", "tqx", "tq:lo=99", "tq:oops=1", ""])
def test_bad_specs_are_one_line(text):
    with pytest.raises(InputError) as e:
        CacheSpec(text)
    assert "\n" not in str(e.value)


def test_helpers():
    assert is_tq("tq3") and is_tq(TQ) and not is_tq("q4_0")
    assert standard_bits("q8_0") == 8.5
    with pytest.raises(InputError):
        standard_bits("tq4")


def test_context_params_hold_specs():
    from kvconvert.runtime.engine import ContextParams

    p = ContextParams(type_k="q8_0", type_v="tq4")
    assert p.type_k.kind == "standard" and p.type_v.kind == TQ and p.type_k == "q8_0"
    with pytest.raises(InputError):
        ContextParams(type_k="q9_9")
