"""The Hugging Face model card (README.md) of a kvconvert GGUF, built from the file's metadata.

``read_card_info(path)`` reads what a card needs from a kvconvert GGUF (model
shape, layout, per-layer K/V cache configs) into a ``CardInfo``;
``model_card(info, repo_id, profile)`` renders the card as a string: YAML front
matter following the Hub's conventions (``base_model``,
``base_model_relation: quantized``, ``license``, ``tags``, ``library_name``)
and a body saying what was patched, the measured quality (from the profile),
the KV-cache memory at several context lengths and how to run the file.
Nothing here touches the network or writes a file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..base.errors import InputError
from ..formats.gguf_io import field_value
from ..formats.gguf_keys import Keys
from ..kvcache.kvmeta import CacheMeta
from ..models.hub_files import REPO_ID
from ..models.source import ModelSource, load_gguf
from ..conversion.profile import Profile
from ..kvcache.types import STANDARD_BITS, TQ

TAGS = ("gguf", "kv-cache-quantization", "kvconvert")
CONTEXTS = (4096, 32768, 131072)  # context lengths of the memory table


class NotKVConvertGGUF(InputError):
    """A GGUF without kvconvert's metadata (no kvconvert.schema_version)."""


@dataclass(frozen=True)
class CacheSide:
    """One of the two caches (K or V): its type and one config spec and bits/value per layer."""

    type: str  # TQ or a standard type name
    specs: tuple[str, ...]  # per layer: a TurboQuant spec ("tq4", "tq:split=16,...") or the type name
    bits: tuple[float, ...]  # per layer: bits per value, every overhead counted

    @property
    def mean_bits(self) -> float:
        return sum(self.bits) / len(self.bits)

    def groups(self) -> list[tuple[str, int, float]]:
        """(spec, number of layers, bits/value) per distinct config, most frequent first."""
        bits = dict(zip(self.specs, self.bits))
        return [(spec, n, bits[spec]) for spec, n in Counter(self.specs).most_common()]


@dataclass(frozen=True)
class CardInfo:
    """What a model card says about one kvconvert GGUF, all read from its metadata."""

    file_name: str
    file_bytes: int
    name: str  # general.name
    arch: str  # GGUF architecture ("llama", "qwen2")
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    context_length: int
    weights: str  # weight type from general.file_type, e.g. "F16", "Q8_0"
    layout: str  # kvconvert.layout: "portable" (llama.cpp loads it) or "folded" (needs kvconvert)
    source: str  # kvconvert.source: what the file was converted from
    license: str | None  # general.license
    kvconvert_version: str
    k: CacheSide
    v: CacheSide
    k_centered: bool  # calibrated pre-RoPE K means stored
    k_permuted: bool  # post-RoPE channel permutation stored

    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token of context with this file's default caches (all layers)."""
        return self.n_head_kv * self.head_dim * sum(k + v for k, v in zip(self.k.bits, self.v.bits)) / 8

    def f16_bytes_per_token(self) -> float:
        return self.n_layer * self.n_head_kv * self.head_dim * 2 * 2


def read_card_info(path: str | os.PathLike, src: ModelSource | None = None) -> CardInfo:
    """Read a kvconvert GGUF's metadata; NotKVConvertGGUF if it is another tool's GGUF.
    ``src``: the file already opened with ``kvconvert.models.source.load_gguf`` (else it is opened here)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file; give the path of a GGUF written by `kvconvert convert`")
    src = src or load_gguf(path)  # validates the container, architecture and tensor shapes
    reader = src.weights.reader  # type: ignore[attr-defined]

    def get(key: str, default=None):
        return field_value(reader, key, default)

    if get(Keys.KVConvert.SCHEMA_VERSION) is None:
        raise NotKVConvertGGUF(f"{path}: not a kvconvert GGUF (no {Keys.KVConvert.SCHEMA_VERSION} key); "
                               "convert the model with `kvconvert convert` first")
    a = src.args
    meta = CacheMeta.from_gguf(reader, a, str(path))

    def side(kind: str) -> CacheSide:
        typ = getattr(meta, f"{kind}_type") if meta else "f16"
        cfgs = getattr(meta, f"{kind}_configs") if meta else None
        if typ == TQ and cfgs:
            return CacheSide(typ, tuple(c.spec() for c in cfgs), tuple(c.bits_per_value() for c in cfgs))
        if typ == TQ:
            raise InputError(f"{path}: TurboQuant {kind.upper()} cache without per-layer configs in the metadata; "
                             "re-convert the model")
        if typ not in STANDARD_BITS:
            raise InputError(f"{path}: unknown {kind.upper()} cache type {typ!r} in the metadata; re-convert the model")
        return CacheSide(typ, (typ,) * a.num_hidden_layers, (STANDARD_BITS[typ],) * a.num_hidden_layers)

    try:
        weights = gguf.LlamaFileType(int(get("general.file_type", -1))).name.removeprefix("MOSTLY_")
    except ValueError:
        weights = "unknown"
    return CardInfo(
        file_name=path.name, file_bytes=path.stat().st_size, name=str(get("general.name", path.stem)),
        arch=src.arch.name, n_layer=a.num_hidden_layers, n_head=a.num_attention_heads,
        n_head_kv=a.num_key_value_heads, head_dim=a.head_dim, context_length=a.max_position_embeddings,
        weights=weights.removeprefix("ALL_"), layout=str(get(Keys.KVConvert.LAYOUT, "portable")),
        source=str(get(Keys.KVConvert.SOURCE, "")), license=get("general.license"),
        kvconvert_version=str(get(Keys.KVConvert.VERSION, "?")), k=side("k"), v=side("v"),
        k_centered=meta is not None and meta.k_mean is not None,
        k_permuted=meta is not None and meta.k_perm is not None)


def base_model(info: CardInfo, profile: Profile | None = None) -> str | None:
    """The Hub repo this file derives from: the GGUF's kvconvert.source if it is a repo id,
    else the profile's provenance model if that is one, else None (the card then omits it)."""
    candidates = [info.source] + ([str(profile.provenance.get("model", ""))] if profile else [])
    for c in candidates:
        if REPO_ID.match(c) and not c.endswith((".gguf", ".json")):
            return c
    return None


def model_card(info: CardInfo, repo_id: str, profile: Profile | None = None,
               profile_file: str | None = None) -> str:
    """The README.md for ``repo_id`` holding ``info.file_name`` (and ``profile_file``, the
    profile JSON uploaded next to it, if any). Pure: same inputs, same text."""
    from huggingface_hub import ModelCardData

    base = base_model(info, profile)
    data = ModelCardData(base_model=base, license=info.license or None, library_name="gguf", tags=list(TAGS))
    if base:
        data.base_model_relation = "quantized"  # written only next to base_model (the Hub's rule)
    intro = (f"A GGUF of [{base}](https://huggingface.co/{base})" if base else f"A GGUF of {info.name}")
    parts = [
        f"---\n{data.to_yaml()}\n---\n",
        f"# {repo_id.split('/')[-1]}\n",
        f"{intro} with a compressed KV cache, written by kvconvert {info.kvconvert_version}. "
        f"Weights: {info.weights}; KV cache: K {info.k.mean_bits:.2f} and V {info.v.mean_bits:.2f} "
        f"bits per value on average (f16 = 16).\n",
        _patched(info, profile),
        _quality(profile),
        _memory(info),
        _usage(info, repo_id),
        _files(info, profile_file),
    ]
    return "\n".join(p for p in parts if p)


def _patched(info: CardInfo, profile: Profile | None) -> str:
    if info.layout == "folded":
        how = ("Layout **folded**: calibrated K/V transforms are folded into the attention weights, so the "
               "file only gives correct results in kvconvert's runtime, which undoes them in the cache.")
    else:
        how = ("Layout **portable**: the weights are the original model's, in llama.cpp's tensor layout; the KV-cache "
               "description lives in `kvconvert.*` metadata keys, which llama.cpp ignores.")
    extras = []
    if info.k_centered:
        extras.append("calibrated per-layer K means (K is mean-centered with an exact positional correction)")
    if info.k_permuted:
        extras.append("a per-layer channel permutation putting the highest-energy K channels in the high-bit group")
    lines = ["## What was patched\n", how + "\n"]
    if extras:
        lines.append("The metadata also stores " + " and ".join(extras) + ".\n")
    lines += ["| cache | config | layers | bits/value |", "|---|---|---|---|"]
    for name, side in (("K", info.k), ("V", info.v)):
        for spec, n, bits in side.groups():
            lines.append(f"| {name} | `{spec}` | {n} of {info.n_layer} | {bits:.2f} |")
    lines.append(f"\nMean bits per value: K {info.k.mean_bits:.2f}, V {info.v.mean_bits:.2f}. "
                 "TurboQuant (`tq`) configs count their fp16 scales and QJL residual bits.")
    if profile is not None:
        prov = profile.provenance
        what = f"Configs chosen by `kvconvert search` (profile `{profile.name}`"
        what += f", policy `{profile.policy}`)" if profile.policy else ")"
        if prov.get("text") or prov.get("tokens"):
            what += f", calibrated on {prov.get('tokens', '?')} tokens of {prov.get('text', 'text')}"
        lines.append(f"\n{what}.")
    return "\n".join(lines) + "\n"


def _quality(profile: Profile | None) -> str:
    """The measured-quality table: one row per cache that has a number (the f16 baseline, this file)."""
    m = profile.measured if profile is not None else {}
    if not m or not any(k in m for k in ("ppl", "ppl_f16", "kld", "top1")):
        return ""

    def num(key: str, fmt: str) -> str:
        v = m.get(key)
        return format(float(v), fmt) if isinstance(v, (int, float)) else "—"

    lines = ["## Measured quality\n", "| KV cache | K bits | V bits | PPL | KLD vs f16 | top-1 vs f16 |",
             "|---|---|---|---|---|---|"]
    if "ppl_f16" in m:
        lines.append(f"| f16 | 16 | 16 | {num('ppl_f16', '.3f')} | 0 | 1 |")
    if any(k in m for k in ("ppl", "kld", "top1")):
        lines.append(f"| this file | {num('k_bpv', '.2f')} | {num('v_bpv', '.2f')} | {num('ppl', '.3f')} "
                     f"| {num('kld', '.4f')} | {num('top1', '.3f')} |")
    setup = []
    if m.get("text"):
        setup.append(f"text: {m['text']}")
    if m.get("ctx"):
        setup.append(f"context {m['ctx']} tokens")
    if m.get("chunks"):
        setup.append(f"{m['chunks']} chunks")
    note = "\nKLD and top-1 agreement compare next-token distributions with the same runtime using an f16 cache"
    note += f" ({', '.join(setup)})." if setup else "."
    return "\n".join(lines) + "\n" + note + "\n"


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _memory(info: CardInfo) -> str:
    per_tok, f16 = info.kv_bytes_per_token(), info.f16_bytes_per_token()
    lines = ["## KV-cache memory\n",
             f"{info.n_layer} layers × {info.n_head_kv} KV heads × head dim {info.head_dim}: "
             f"{per_tok:,.0f} bytes per token of context ({f16:,.0f} with an f16 cache).\n",
             "| context | this file | f16 cache | saved |", "|---|---|---|---|"]
    for n in CONTEXTS:
        mark = " *" if n > info.context_length else ""
        lines.append(f"| {n // 1024}k{mark} | {_size(per_tok * n)} | {_size(f16 * n)} | {1 - per_tok / f16:.0%} |")
    if any(n > info.context_length for n in CONTEXTS):
        lines.append(f"\n\\* beyond the model's trained context ({info.context_length} tokens).")
    return "\n".join(lines) + "\n"


def _usage(info: CardInfo, repo_id: str) -> str:
    lines = ["## Usage\n", "With kvconvert, whose runtime uses the caches described above by default "
             "(`pull` caches the file; the repo id then works offline too):\n", "```bash",
             f"kvconvert pull {repo_id}",
             f'kvconvert run {repo_id} -p "Once upon a time" -n 64',
             f"kvconvert eval {repo_id} --austen eval", "```\n"]
    if info.layout == "folded":
        lines.append("This file uses the **folded** layout: it needs kvconvert's runtime. Stock llama.cpp loads it "
                     "but its outputs would be wrong.")
    else:
        lines += ["With stock llama.cpp (it ignores the `kvconvert.*` keys and runs with its own cache types, "
                  "e.g. `-ctk q8_0 -ctv q8_0`):\n", "```bash",
                  f'llama-cli -m {info.file_name} -p "Once upon a time" -n 64', "```"]
    return "\n".join(lines) + "\n"


def _files(info: CardInfo, profile_file: str | None) -> str:
    lines = ["## Files\n", f"- `{info.file_name}`: {info.arch}, {info.weights} weights, {_size(info.file_bytes)}"]
    if profile_file:
        lines.append(f"- `{profile_file}`: the kvconvert profile (per-layer configs, calibrated transforms, "
                     "provenance and measurements) this file was converted with")
    if info.source:
        lines.append(f"\nConverted from `{info.source}`.")
    return "\n".join(lines) + "\n"
