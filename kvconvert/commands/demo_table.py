"""The demo's side-by-side comparison of KV-cache configurations: one row per
cache (bits per value, bytes per token, memory at a long context, PPL, KLD,
top-1, decode speed), the plain-conversion check, and a short summary.

Kept apart from the command so the numbers (``CacheRow``) and their rendering
(rich tables, plain text) can be tested and reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from rich.table import Table

from ..kvcache.types import STANDARD_BITS, is_tq
from ..runtime.engine import ContextParams, Model, tq_configs

LONG_CTX = 32768  # the context the "KV MiB" column is computed for
MIB = 1 << 20


@dataclass(frozen=True)
class CacheLayout:
    """What a cache config costs: mean bits per value over layers (every overhead of
    the cache rows counted) and the fixed bytes of its f16 attention-sink rows."""

    type_k: str
    type_v: str
    k_bits: float
    v_bits: float
    sink_tokens: int
    sink_bytes: int
    k_layers: tuple[str, ...] = ()  # per-layer TurboQuant specs, when K is TurboQuant
    v_layers: tuple[str, ...] = ()


def cache_layout(model: Model, type_k: str = "auto", type_v: str = "auto") -> CacheLayout:
    """The layout ``model`` runs with for these cache types ("auto": the file's metadata)."""
    p = model.resolve(ContextParams(type_k=type_k, type_v=type_v))
    a = model.args
    L, Hk, d = a.num_hidden_layers, a.num_key_value_heads, a.head_dim

    def side(name: str, layers) -> tuple[float, tuple[str, ...]]:
        if is_tq(name):
            cfgs = tq_configs(name, layers, L, d)
            return float(np.mean([c.bits_per_value() for c in cfgs])), tuple(c.spec() for c in cfgs)
        return STANDARD_BITS[name], ()

    (kb, kl), (vb, vl) = side(p.type_k, p.tq_k_layers), side(p.type_v, p.tq_v_layers)
    n_tq = int(is_tq(p.type_k)) + int(is_tq(p.type_v))
    sink = (p.n_sink or 0) if n_tq else 0
    return CacheLayout(p.type_k, p.type_v, kb, vb, sink, sink * L * Hk * d * 2 * n_tq, kl, vl)


def describe_layers(specs: tuple[str, ...], bits: float) -> str:
    """'TurboQuant per layer, mean 4.50 bits/value (12× tq:split=16,hi=6,lo=4, 8× tq4, ...)'"""
    if not specs:
        return ""
    from collections import Counter

    counts = Counter(specs).most_common()
    listing = ", ".join(f"{n}× {s}" for s, n in counts[:2]) + (", ..." if len(counts) > 2 else "")
    return f"TurboQuant per layer, mean {bits:.2f} bits/value ({listing})"


@dataclass
class CacheRow:
    """One cache configuration measured on the written file."""

    label: str
    type_k: str
    type_v: str
    k_bits: float
    v_bits: float
    kv_bytes_per_token: int
    sink_bytes: int
    ppl: float
    ppl_err: float
    kld: float | None
    kld_err: float | None
    top1: float | None
    decode_tok_s: float

    def kv_mib(self, n_ctx: int = LONG_CTX) -> float:
        """KV-cache memory at a context of n_ctx tokens (the sink rows included)."""
        return (self.kv_bytes_per_token * n_ctx + self.sink_bytes) / MIB

    def to_dict(self) -> dict:
        return asdict(self) | {"kv_mib_32k": self.kv_mib()}


@dataclass
class PlainCheck:
    """The written file against the file it came from, both with an f16 cache."""

    original: str  # e.g. "Q4_1 GGUF"
    written: str  # e.g. "f16 GGUF"
    ppl_original: float
    ppl_written: float
    kld: float | None  # original vs written (activation rounding of Q4_1 x Q8_1 dots included)
    top1: float | None

    @property
    def rel_diff(self) -> float:
        return self.ppl_written / self.ppl_original - 1

    def to_dict(self) -> dict:
        return asdict(self) | {"rel_diff": self.rel_diff}


def _bits(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.2f}"


def cache_table(rows: list[CacheRow], title: str, caption: str) -> Table:
    t = Table(title=title, caption=caption)
    t.add_column("KV cache (K / V)")
    t.add_column("K / V bits\nper value", justify="right")
    t.add_column("KV bytes\nper token", justify="right")
    t.add_column(f"KV MiB\n@ {LONG_CTX // 1024}k ctx", justify="right")
    t.add_column("PPL", justify="right")
    t.add_column("KLD", justify="right")
    t.add_column("top-1", justify="right")
    t.add_column("decode\ntok/s", justify="right")
    for r in rows:
        t.add_row(r.label, f"{_bits(r.k_bits)} / {_bits(r.v_bits)}", f"{r.kv_bytes_per_token:,}", f"{r.kv_mib():.1f}",
                  f"{r.ppl:.3f} ± {r.ppl_err:.3f}", "-" if r.kld is None else f"{r.kld:.5f}",
                  "-" if r.top1 is None else f"{r.top1:.2%}", f"{r.decode_tok_s:.1f}")
    return t


def plain_check_line(c: PlainCheck) -> str:
    extra = "" if c.kld is None else f"; KLD {c.kld:.5f}, top-1 {c.top1:.2%}"
    return (f"Plain-conversion check, f16 cache: original {c.original} PPL {c.ppl_original:.3f}, "
            f"written {c.written} PPL {c.ppl_written:.3f} ({c.rel_diff:+.2%}{extra})")


def summary_lines(output: str, weights: str, profile_name: str, rows: dict[str, CacheRow]) -> list[str]:
    """2–3 sentences: the file written, its KV saving over f16, its quality against q8_0."""
    f16, q8, prof = rows["f16"], rows["q8_0"], rows["profile"]
    ratio = f16.kv_bytes_per_token / prof.kv_bytes_per_token
    q8_ratio = q8.kv_bytes_per_token / prof.kv_bytes_per_token
    lines = [f"Wrote {output} ({weights} weights) with the calibrated profile {profile_name} as its default KV cache.",
             f"Its KV cache takes {prof.kv_bytes_per_token:,} bytes/token, {ratio:.1f}× less than f16 "
             f"({prof.kv_mib():.0f} vs {f16.kv_mib():.0f} MiB at a {LONG_CTX // 1024}k context) "
             f"and {q8_ratio:.1f}× less than q8_0."]
    if prof.kld is not None and q8.kld is not None:
        cmp = "lower than" if prof.kld < q8.kld else "higher than"
        lines.append(f"Quality on held-out text: KLD vs f16 {prof.kld:.4f}, {cmp} q8_0's {q8.kld:.4f}; "
                     f"PPL {prof.ppl:.2f} (q8_0 {q8.ppl:.2f}, f16 {f16.ppl:.2f}).")
    return lines
