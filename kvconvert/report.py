"""Human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from .convert import ConvertResult
from .model import ModelSource


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def print_convert_result(r: ConvertResult, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"wrote {r.output}", show_header=False)
    t.add_row("source", r.source)
    t.add_row("weights", r.weights)
    t.add_row("tensors", f"{r.n_tensors} (" + ", ".join(f"{k} {v}" for k, v in sorted(r.types.items())) + ")")
    t.add_row("parameters", f"{r.n_params / 1e6:.1f}M")
    t.add_row("file size", _size(r.file_bytes))
    console.print(t)


def print_model_info(m: ModelSource, console: Console | None = None) -> None:
    console = console or Console()
    a = m.args
    t = Table(title=str(m.path), show_header=False)
    t.add_row("format", m.format)
    t.add_row("architecture", f"{a.architecture} (GGUF arch {m.arch.name})")
    t.add_row("layers", str(a.num_hidden_layers))
    t.add_row("hidden / FFN", f"{a.hidden_size} / {a.intermediate_size}")
    t.add_row("heads / KV heads / head dim", f"{a.num_attention_heads} / {a.num_key_value_heads} / {a.head_dim}")
    t.add_row("vocab", str(a.vocab_size))
    t.add_row("RoPE θ", f"{a.rope_theta:g}" + (f" ({a.rope_scaling.rope_type})" if a.rope_scaling else ""))
    t.add_row("tied embeddings", str(a.tie_word_embeddings))
    t.add_row("parameters", f"{sum(_numel(s.shape) for s in m.specs) / 1e6:.1f}M")
    if m.format == "gguf":
        types = Counter(tt.tensor_type.name for tt in m.weights.reader.tensors)  # type: ignore[attr-defined]
        t.add_row("tensor types", ", ".join(f"{k} {v}" for k, v in sorted(types.items())))
    console.print(t)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
