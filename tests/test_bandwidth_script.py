"""bench/bandwidth.py's arithmetic (no timing): bytes a decoded token reads from the
weights (the embedding as one row unless tied to the output) and from the KV cache, and
the table it builds from bench/peer.py's JSON."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kvconvert.formats.gguf_io import open_gguf

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_bandwidth", ROOT / "bench" / "bandwidth.py")
bandwidth = sys.modules["bench_bandwidth"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bandwidth)


@pytest.mark.parametrize("name, tied", [("qwen2-hd64", False), ("gemma3-hd64-swa8", True)])
def test_weight_bytes_per_token(tiny_ggufs, name, tied):
    path = str(tiny_ggufs[name])
    tensors = {t.name: t for t in open_gguf(path).tensors}
    assert ("output.weight" not in tensors) == tied
    total = sum(t.n_bytes for t in tensors.values())
    emb = tensors["token_embd.weight"]
    want = total if tied else total - emb.n_bytes + emb.n_bytes // int(emb.shape[1])
    assert bandwidth.weight_bytes_per_token(path) == want


def test_kv_bytes_and_table(tiny_ggufs):
    path = str(tiny_ggufs["qwen2-hd64"])
    from kvconvert.runtime.engine import Model

    a = Model(path).args
    values = a.num_hidden_layers * a.num_key_value_heads * a.head_dim
    assert bandwidth.kv_bytes_per_token(path, "llama.cpp", "f16", "f16") == values * 4
    assert bandwidth.kv_bytes_per_token(path, "llama.cpp", "q8_0", "q8_0") == values * 2 * 34 / 32
    assert bandwidth.kv_bytes_per_token(path, "kvconvert", "f16", "f16") == values * 4
    peer = {"model": path, "threads": 2, "runs": [
        {"engine": "kvconvert", "cache": {"k": "f16", "v": "f16", "fa": False},
         "decode": {"0": {"mean": 100.0, "sd": 0}, "1000": {"mean": 50.0, "sd": 0}}}]}
    rows = bandwidth.table(peer, bandwidth.Bandwidth(read=10.0, copy=20.0), 2).splitlines()
    w = bandwidth.weight_bytes_per_token(path)
    at_depth = [r for r in rows if r.startswith("| kvconvert | f16/f16 | 1000 |")]
    assert len(at_depth) == 1
    gbs = (w + values * 4 * 1000) * 50.0 / 1e9
    assert f"| {gbs:.1f} | {gbs / 10.0:.0%} | {gbs / 20.0:.0%} |" in at_depth[0]


def test_table_times_each_runs_own_file(monkeypatch):
    """peer.py's auto@PATH runs time another GGUF (its "model"), with that file's own caches (recorded
    resolved, e.g. tq/tq): KV and weight bytes come from that file, asked for as peer.py asked."""
    kv_calls = []

    def kv(path, engine, k, v):
        kv_calls.append((path, engine, k, v))
        return 1000.0

    monkeypatch.setattr(bandwidth, "kv_bytes_per_token", kv)
    monkeypatch.setattr(bandwidth, "weight_bytes_per_token", lambda path: {"base.gguf": 4e6, "/p/prof.gguf": 2e6}[path])
    speed = {"1000": {"mean": 10.0, "sd": 0}}
    peer = {"model": "base.gguf", "runs": [
        {"engine": "kvconvert", "cache": {"k": "f16", "v": "f16", "fa": False}, "decode": speed},  # older saves
        {"engine": "kvconvert", "cache": {"k": "tq", "v": "tq", "fa": False, "own": True, "path": "/p/prof.gguf"},
         "spec": "auto@/p/prof.gguf", "model": "/p/prof.gguf", "decode": speed},
        {"engine": "kvconvert", "cache": {"k": "tq", "v": "f16", "fa": False, "own": True},
         "spec": "auto/f16", "model": "base.gguf", "decode": speed}]}
    rows = bandwidth.table(peer, bandwidth.Bandwidth(read=10.0, copy=20.0), 2).splitlines()
    assert kv_calls == [("base.gguf", "kvconvert", "f16", "f16"), ("/p/prof.gguf", "kvconvert", "auto", "auto"),
                        ("base.gguf", "kvconvert", "auto", "f16")]
    prof = [r for r in rows if r.startswith("| kvconvert | tq/tq (prof) | 1000 |")]
    assert len(prof) == 1 and "| 3 (2 + 1) |" in prof[0]  # the profile file's 2 MB of weights, not base's 4
    assert any(r.startswith("| kvconvert | f16/f16 | 1000 | 10.0 | 5 (4 + 1) |") for r in rows)
