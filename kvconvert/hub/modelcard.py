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
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from ..base.errors import InputError
from ..base.paths import public_name
from ..formats.gguf_io import field_value
from ..formats.gguf_keys import Keys
from ..kvcache.kvmeta import DEFAULT_SINK, CacheMeta
from ..models.arch import cache_rows
from ..models.hub_files import REPO_ID
from ..models.source import ModelSource, load_gguf
from ..conversion.profile import Profile
from ..kvcache.kvmeta import exact_bits
from ..kvcache.types import STANDARD_BITS, TQ

TAGS = ("gguf", "llama-cpp", "kv-cache-quantization", "kvconvert")  # llama-cpp, gguf: as gguf-my-repo tags
_HF_URL = re.compile(r"^https://huggingface\.co/([A-Za-z0-9][\w.\-]*/[\w.\-]+?)/?$")
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
    plain: bool = False  # no KV-cache metadata: a plain conversion, the runtime uses f16 caches
    kept: bool = False  # kvconvert.weights == "keep": the source GGUF's tensors byte for byte
    n_sink: int = 0  # leading positions TurboQuant caches keep in f16
    n_recent: int = 0  # recent exact window of TurboQuant caches (its ring of f16 rows)
    base_repo: str | None = None  # from general.base_model.0.repo_url / general.source.repo_url, if a Hub repo
    # positions each layer's cache holds at each context of the memory table (models.arch.cache_rows:
    # sliding-window layers only their window); missing: every layer holds the whole context
    cache_rows: dict = field(default_factory=dict, compare=False)

    def kv_bytes_per_token(self, n_ctx: int | None = None) -> float:
        """KV-cache bytes per token of context with this file's default caches (all layers); with
        n_ctx, the f16 rows of TurboQuant caches (sinks, recent window) spread over that context too."""
        sink = 0.0
        if n_ctx:
            sink = sum(self.exact_bits(n_ctx) for side in (self.k, self.v) if side.type == TQ)
        return self.n_head_kv * self.head_dim * (sum(k + v for k, v in zip(self.k.bits, self.v.bits)) +
                                                 sink * self.n_layer) / 8

    def exact_bits(self, n_ctx: int) -> float:
        """Bits per value of one TurboQuant cache's f16 rows at n_ctx tokens."""
        return exact_bits(self.n_sink, self.n_recent, n_ctx)

    def f16_bytes_per_token(self) -> float:
        return self.n_layer * self.n_head_kv * self.head_dim * 2 * 2

    def kv_bytes(self, n_ctx: int) -> tuple[float, float]:
        """(this file's caches, f16 caches) in bytes at a context of n_ctx tokens, with the positions
        each layer really holds and the f16 rows of TurboQuant caches (sinks, recent window)."""
        rows = self.cache_rows.get(n_ctx) or (n_ctx,) * self.n_layer
        sink = sum(self.exact_bits(n_ctx) for side in (self.k, self.v) if side.type == TQ)
        per_row = self.n_head_kv * self.head_dim / 8
        here = sum(r * per_row * (k + v + sink) for r, k, v in zip(rows, self.k.bits, self.v.bits))
        return here, sum(rows) * per_row * 32


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
    base_repo = None
    for key in (gguf.Keys.General.BASE_MODEL_REPO_URL.format(id=0), gguf.Keys.General.SOURCE_REPO_URL):
        url = get(key)
        m = _HF_URL.match(str(url)) if isinstance(url, str) else None
        if m and base_repo is None:
            base_repo = m.group(1)
    n_sink = meta.n_sink if meta is not None and meta.n_sink is not None else DEFAULT_SINK
    return CardInfo(
        file_name=path.name, file_bytes=path.stat().st_size, name=str(get("general.name", path.stem)),
        arch=src.arch.name, n_layer=a.num_hidden_layers, n_head=a.num_attention_heads,
        n_head_kv=a.num_key_value_heads, head_dim=a.head_dim, context_length=a.max_position_embeddings,
        weights=weights.removeprefix("ALL_"), layout=str(get(Keys.KVConvert.LAYOUT, "portable")),
        source=public_name(str(get(Keys.KVConvert.SOURCE, ""))), license=get("general.license"),
        kvconvert_version=str(get(Keys.KVConvert.VERSION, "?")), k=side("k"), v=side("v"),
        k_centered=meta is not None and meta.k_mean is not None,
        k_permuted=meta is not None and meta.k_perm is not None, plain=meta is None,
        kept=get(Keys.KVConvert.WEIGHTS) == "keep", n_sink=n_sink if meta is not None else 0,
        n_recent=(meta.n_recent or 0) if meta is not None else 0, base_repo=base_repo,
        cache_rows={n: tuple(cache_rows(a, n)) for n in CONTEXTS})


def base_model(info: CardInfo, profile: Profile | None = None, given: str | None = None) -> str | None:
    """The Hub repo this file derives from: ``given`` (push --base-model), else the GGUF's
    kvconvert.source if it is a repo id (a conversion from a repo id or the Hub cache), else its
    general.base_model.0.repo_url / general.source.repo_url, else the profile's provenance model if
    that is a repo id, else None (the card then omits it)."""
    if given:
        if not REPO_ID.match(given):
            raise InputError(f"--base-model {given!r} is not a Hub repo id (OWNER/NAME)")
        return given
    candidates = [info.source, info.base_repo or ""] + ([str(profile.provenance.get("model", ""))] if profile else [])
    for c in candidates:
        if REPO_ID.match(c) and not c.endswith((".gguf", ".json")) and not Path(c).exists():
            return c
    return None


def _window(info: CardInfo) -> str:
    """The recent window's part of the bits sentence (the window keeps the last N positions exactly)."""
    return f" and the f16 rows of the last {info.n_recent} positions (kept exactly)" if info.n_recent else ""


def card_bits(info: CardInfo, profile: Profile | None) -> tuple[float, float, str]:
    """K and V bits per value as the card states them, and at which context: the profile's
    (Profile.budget_bits, f16 rows over the search's budget context — what the TUI's Profile and
    Convert steps show), else the file's configs with the f16 rows spread over 32k tokens (as
    `kvconvert info` and `convert`'s summary, which say so)."""
    if profile is not None and profile.k_configs() is not None and profile.measured.get("bpv_n_ctx"):
        kb, vb = profile.budget_bits()
        return kb, vb, f"at a {profile.measured['bpv_n_ctx']}-token context"
    per_side = [s.mean_bits + (info.exact_bits(32768) if s.type == TQ else 0) for s in (info.k, info.v)]
    return per_side[0], per_side[1], "at a 32k context"


def model_card(info: CardInfo, repo_id: str, profile: Profile | None = None,
               profile_file: str | None = None, base: str | None = None, evals: list[dict] | tuple = ()) -> str:
    """The README.md for ``repo_id`` holding ``info.file_name`` (and ``profile_file``, the
    profile JSON uploaded next to it, if any). ``base``: the base model repo if the user named it
    (else base_model() finds it); ``evals``: eval reports (`kvconvert eval --save-report`, the TUI's
    Evaluate step) of this file. Pure: same inputs, same text."""
    from huggingface_hub import ModelCardData

    base = base_model(info, profile, base)
    tags = [t for t in TAGS if not (t == "llama-cpp" and info.layout == "folded")]
    data = ModelCardData(base_model=base, license=info.license or None, library_name="gguf", tags=tags)
    if base:
        data.base_model_relation = "quantized"  # written only next to base_model (the Hub's rule)
    intro = (f"A GGUF of [{base}](https://huggingface.co/{base})" if base else f"A GGUF of {info.name}")
    head = [f"---\n{data.to_yaml()}\n---\n", f"# {repo_id.split('/')[-1]}\n"]
    if info.plain:
        head.append(f"{intro}, converted by kvconvert {info.kvconvert_version} without a KV-cache profile: "
                    f"{info.weights} weights and no `kvconvert.*` cache description, so every runtime "
                    "(kvconvert's and llama.cpp's) uses its ordinary f16 KV cache. Nothing here is compressed.\n")
        return "\n".join(p for p in head + [_evals(evals), _usage(info, repo_id), _files(info, profile_file)] if p)
    kb, vb, where = card_bits(info, profile)
    weights = ("the original file's, byte for byte" if info.kept else info.weights)
    head.append(f"{intro} with a compressed KV cache, written by kvconvert {info.kvconvert_version}. "
                f"Weights: {weights}; KV cache: K {kb:.2f} and V {vb:.2f} bits per value on average "
                f"{where}, group scales and f16 sink positions{_window(info)} counted (f16 = 16).\n")
    parts = head + [_patched(info, profile), _quality(profile), _evals(evals), _memory(info), _usage(info, repo_id),
                    _files(info, profile_file)]
    return "\n".join(p for p in parts if p)


def _patched(info: CardInfo, profile: Profile | None) -> str:
    if info.layout == "folded":
        how = (f"Layout **folded**: calibrated K/V transforms (smoothing, a channel permutation with its RoPE "
               f"frequency table, K/V centering, a V rotation) are folded into the attention weights, and the "
               f"architecture is renamed `{info.arch}` so that only kvconvert's runtime runs it: llama.cpp "
               "refuses the file (unknown architecture).")
    elif info.kept:
        how = ("Layout **portable**, weights kept: every tensor is the source GGUF's, byte for byte, so llama.cpp "
               "computes exactly what it computed on the original; the KV-cache description, K→Q smoothing "
               "included, lives in `kvconvert.*` metadata keys, which llama.cpp ignores and kvconvert's runtime "
               "applies.")
    else:
        how = ("Layout **portable**: the model's weights (with exact K→Q smoothing folded into W_q/W_k) in "
               "llama.cpp's tensor layout, so llama.cpp runs it; the KV-cache description lives in `kvconvert.*` "
               "metadata keys, which llama.cpp ignores.")
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
    lines.append(f"\nMean of the per-layer configs: K {info.k.mean_bits:.2f}, V {info.v.mean_bits:.2f} bits per value "
                 "(`tq` configs count their group scales and QJL residual bits)" +
                 (f"; TurboQuant caches also keep the first {info.n_sink} position{'s' if info.n_sink != 1 else ''} "
                  "in f16 (16 bits per value for those positions)." if info.n_sink else "."))
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
        kb, vb = (format(x, ".2f") for x in profile.budget_bits())  # as card_bits, the TUI and `convert` say
        lines.append(f"| this file | {kb} | {vb} | {num('ppl', '.3f')} "
                     f"| {num('kld', '.4f')} | {num('top1', '.3f')} |")
    setup = []
    if m.get("text"):
        setup.append(f"text: {m['text']}")
    if m.get("ctx") or m.get("n_ctx"):
        setup.append(f"context {m.get('ctx') or m.get('n_ctx')} tokens")
    if m.get("chunks"):
        setup.append(f"{m['chunks']} chunks")
    note = "\nKLD and top-1 agreement compare next-token distributions with the same runtime using an f16 cache"
    note += f" ({', '.join(setup)})." if setup else "."
    return "\n".join(lines) + "\n" + note + "\n"


def _evals(evals) -> str:
    """The user's own measurements of this file (eval reports), one row each, as measured."""
    if not evals:
        return ""
    lines = ["## Evaluations\n", "Run by the uploader with `kvconvert eval --save-report` or kvconvert's TUI on "
             "this file:\n", "| text | context | chunks | K cache | V cache | PPL | KLD vs f16 | top-1 vs f16 |",
             "|---|---|---|---|---|---|---|---|"]

    def num(r: dict, key: str, fmt: str) -> str:
        v = r.get(key)
        return format(float(v), fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"

    for r in evals:
        ppl = num(r, "ppl", ".3f") + (f" ± {num(r, 'ppl_err', '.3f')}" if "ppl_err" in r else "")
        lines.append(f"| {r.get('text', '?')} | {r.get('n_ctx', '?')} | {r.get('n_chunks', '?')} | "
                     f"{r.get('type_k', '?')} | {r.get('type_v', '?')} | {ppl} | {num(r, 'kld', '.4f')} | "
                     f"{num(r, 'top1', '.3f')} |")
    return "\n".join(lines) + "\n"


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _memory(info: CardInfo) -> str:
    per_tok, f16 = info.kv_bytes_per_token(), info.f16_bytes_per_token()
    lines = ["## KV-cache memory\n",
             f"{info.n_layer} layers × {info.n_head_kv} KV heads × head dim {info.head_dim}: "
             f"{per_tok:,.0f} bytes per token of context ({f16:,.0f} with an f16 cache), plus the f16 sink "
             "positions (counted below)"
             + ("; sliding-window layers hold only their window (counted below)" if any(
                 r < n for n, rows in info.cache_rows.items() for r in rows) else "") + ".\n",
             "| context | this file | f16 cache | saved |", "|---|---|---|---|"]
    for n in CONTEXTS:
        mark = " *" if n > info.context_length else ""
        here, f16_n = info.kv_bytes(n)
        lines.append(f"| {n // 1024}k{mark} | {_size(here)} | {_size(f16_n)} | {1 - here / f16_n:.0%} |")
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
        lines.append("This file uses the **folded** layout: it needs kvconvert's runtime. llama.cpp refuses to load "
                     f"it (architecture `{info.arch}`).")
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
