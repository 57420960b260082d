"""Profiles: the per-layer K/V cache configs and calibrated transforms that
`search` produces and `convert` applies (docs/design.md §5), as versioned JSON.

Conventions (so a profile means the same for a HF directory and a GGUF of the
same model): per-channel arrays are in Hugging Face row order (NeoX pairing,
pair j = channels j and j + P, P = head_dim / 2); per-pair arrays are indexed
by the pair j, whose RoPE frequency is θ_j = base^(−2j/d) in both orders.

A profile is either *calibrated* (configs + transforms for one model, from
`search`) or a *policy* (a bits budget and search options, no model data; see
profiles/*.json). ``load_profile`` returns whichever the file holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..base import validate as V
from ..base.atomic import atomic_path
from ..models.config import ModelArgs
from ..base.errors import InputError
from ..kvcache import kbasis
from ..kvcache.kvmeta import DEFAULT_SINK, MAX_RECENT, MAX_SINK, exact_bits
from ..kvcache.turboquant import CODES, MAX_LO_BITS, SCALES, KConfig
from ..kvcache.types import STANDARD, TQ, standard_bits

PROFILE_SCHEMA = 1
POLICY_SCHEMA = 1


def _compact_json(obj, depth: int = 0) -> str:
    """JSON with objects indented one space per level, arrays of numbers on one line (an array of
    such arrays: a row per line) and longer arrays of strings (per-layer specs) one item per line.
    json.loads reads it back unchanged."""
    pad, inner = " " * depth, " " * (depth + 1)
    scalar = lambda x: not isinstance(x, (dict, list))  # noqa: E731
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {_compact_json(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        numbers = all(isinstance(x, (int, float)) for x in obj)
        if numbers or (all(scalar(x) for x in obj) and len(json.dumps(obj)) < 100):
            return json.dumps(obj)  # numbers (a table row), or a short list
        return "[\n" + ",\n".join(inner + _compact_json(x, depth + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj)


@dataclass(frozen=True)
class ModelShape:
    """What a profile must match in the model it is applied to."""

    name: str
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int

    @classmethod
    def of(cls, name: str, arch: str, args: ModelArgs) -> "ModelShape":
        return cls(name, arch, args.num_hidden_layers, args.num_attention_heads, args.num_key_value_heads,
                   args.head_dim)

    @classmethod
    def from_json(cls, obj, source: str) -> "ModelShape":
        if not isinstance(obj, dict):
            raise InputError(f"{source}: model must be an object, got {V._show(obj)}")
        shape = cls(name=V.utf8_str(source, "model.name", obj.get("name"), 1000),
                    arch=V.utf8_str(source, "model.arch", obj.get("arch"), 1000),
                    n_layer=V.int_in(source, "model.n_layer", obj.get("n_layer"), 1, V.MAX_LAYERS),
                    n_head=V.int_in(source, "model.n_head", obj.get("n_head"), 1, V.MAX_HEADS),
                    n_head_kv=V.int_in(source, "model.n_head_kv", obj.get("n_head_kv"), 1, V.MAX_HEADS),
                    head_dim=V.int_in(source, "model.head_dim", obj.get("head_dim"), 2, V.MAX_HEAD_DIM))
        if shape.head_dim % 2:
            raise InputError(f"{source}: model.head_dim {shape.head_dim} is odd")
        return shape

    def check(self, args: ModelArgs, what: str) -> None:
        """Raise InputError naming every dimension that differs from the model's."""
        have = ModelShape.of(self.name, self.arch, args)
        diffs = [f"{k} {getattr(self, k)} vs {getattr(have, k)}"
                 for k in ("n_layer", "n_head", "n_head_kv", "head_dim") if getattr(self, k) != getattr(have, k)]
        if diffs:
            raise InputError(f"{what} was made for {self.name} and does not match this model "
                             f"({'; '.join(diffs)} — profile vs model); calibrate this model instead")


@dataclass
class Transforms:
    """Calibrated transforms (shapes: L layers, Hk KV heads, d head dim, P = d/2)."""

    k_mean: np.ndarray | None = None  # (L, Hk, d) pre-RoPE K mean, HF order, after smoothing
    k_scale: np.ndarray | None = None  # (L, Hk, P) K pair j is divided by s, Q pairs multiplied
    pair_order: np.ndarray | None = None  # (L, P) pairs by decreasing K energy (the hi group first)
    v_mean: np.ndarray | None = None  # (L, Hk, d) V mean (applied by the runtime or folded)
    # (L, Hk, d, d) the basis TurboQuant K is coded in, in the cache's channel order (after the pair
    # permutation; kvcache/kbasis.py); float16 values, stored as base64 (kbasis.to_text)
    k_basis: np.ndarray | None = None
    k_basis_block: int = 0  # > 0: k_basis follows RoPE in blocks of this many positions (kbasis.py)

    def to_json(self) -> dict:
        # float arrays are float32 (from_json reads them so): each value is written as the shortest
        # decimal that reads back to the same float32 (numpy's str of a float32), not float64's 17 digits
        def plain(v):
            a = np.asarray(v)
            return a.tolist() if a.dtype.kind in "iu" else a.astype(np.float32).astype(str).astype(np.float64).tolist()

        out = {k: None if v is None else plain(v) for k, v in asdict(self).items() if k != "k_basis"}
        if self.k_basis is not None:
            out["k_basis"] = {"dtype": "float16", "base64": kbasis.to_text(self.k_basis)}
        return out

    @classmethod
    def from_json(cls, obj: dict, shape: ModelShape) -> "Transforms":
        L, Hk, d = shape.n_layer, shape.n_head_kv, shape.head_dim
        want = {"k_mean": (L, Hk, d), "k_scale": (L, Hk, d // 2), "pair_order": (L, d // 2), "v_mean": (L, Hk, d)}
        out = {}
        for key, shp in want.items():
            val = obj.get(key)
            if val is None:
                out[key] = None
                continue
            arr = np.asarray(val, dtype=np.int32 if key == "pair_order" else np.float32)
            if arr.shape != shp:
                raise ValueError(f"transforms.{key} has shape {arr.shape}, expected {shp}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"transforms.{key} holds non-finite values")
            out[key] = arr
        if out["k_scale"] is not None and np.any(out["k_scale"] <= 0):
            raise ValueError("transforms.k_scale must be positive")
        if out["pair_order"] is not None and any(sorted(r) != list(range(d // 2)) for r in out["pair_order"].tolist()):
            raise ValueError("transforms.pair_order is not a permutation of each layer's pairs")
        basis = obj.get("k_basis")
        if basis is not None:
            if not (isinstance(basis, dict) and basis.get("dtype") == "float16" and isinstance(basis.get("base64"), str)):
                raise ValueError('transforms.k_basis must be {"dtype": "float16", "base64": "..."}')
            try:
                out["k_basis"] = kbasis.from_text(basis["base64"], (L, Hk, d, d))
            except (ValueError, TypeError) as e:
                raise ValueError(f"transforms.k_basis: {e}") from None
            why = kbasis.problem(out["k_basis"])
            if why:
                raise ValueError(f"transforms.k_basis {why}")
        block = obj.get("k_basis_block", 0)
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= kbasis.MAX_BASIS_BLOCK:
            raise ValueError(f"transforms.k_basis_block must be an integer in 0..{kbasis.MAX_BASIS_BLOCK}")
        if block and out.get("k_basis") is None:
            raise ValueError("transforms.k_basis_block needs transforms.k_basis")
        out["k_basis_block"] = block
        return cls(**out)


@dataclass
class Profile:
    """A calibrated profile for one model."""

    name: str
    model: ModelShape
    k_type: str  # TQ or a standard type (kvcache.types)
    v_type: str
    k_layers: list[str] = field(default_factory=list)  # TurboQuant spec per layer when k_type == TQ
    v_layers: list[str] = field(default_factory=list)
    transforms: Transforms = field(default_factory=Transforms)
    policy: str = ""
    provenance: dict = field(default_factory=dict)  # model, text, text_sha256, tokens, calibration
    measured: dict = field(default_factory=dict)  # k_bpv, v_bpv, kld, ppl, ppl_f16, top1, text, ctx, chunks
    sink_tokens: int = 0  # leading positions TurboQuant caches also keep in f16 (attention sinks)
    recent: int = 0  # recent exact window of the TurboQuant caches (kvconvert.recent_window; 0: none)
    schema: int = PROFILE_SCHEMA
    source: str = field(default="", compare=False, repr=False)  # the file it was read from, for messages

    def describe(self) -> str:
        """How messages name this profile: its file and name."""
        return f"{self.source}: profile {self.name!r}" if self.source else f"profile {self.name!r}"

    def k_configs(self) -> list[KConfig] | None:
        return [KConfig.parse(s, self.model.head_dim) for s in self.k_layers] if self.k_type == TQ else None

    def v_configs(self) -> list[KConfig] | None:
        return [KConfig.parse(s, self.model.head_dim) for s in self.v_layers] if self.v_type == TQ else None

    def bits(self, n_ctx: int | None = None) -> tuple[float, float]:
        """Mean K and V bits per value over layers (all overheads counted); with n_ctx,
        the f16 sink positions and the recent window's rows are spread over a context of n_ctx
        tokens too."""
        def mean(kind: str, cfgs) -> float:
            if cfgs is not None:
                extra = exact_bits(self.sink_tokens, self.recent, n_ctx) if n_ctx else 0.0
                return float(np.mean([c.bits_per_value() for c in cfgs]) + extra)
            return standard_bits(kind)
        return mean(self.k_type, self.k_configs()), mean(self.v_type, self.v_configs())

    def budget_bits(self) -> tuple[float, float]:
        """bits() as the search's budget counts them: sinks and the recent window spread over the
        policy's budget context (the calibration context unless the policy names one)."""
        return self.bits(self.measured.get("bpv_n_ctx"))

    def to_json(self) -> dict:
        return {"schema": self.schema, "kind": "profile", "name": self.name, "policy": self.policy,
                "model": asdict(self.model), "k": {"type": self.k_type, "layers": self.k_layers},
                "v": {"type": self.v_type, "layers": self.v_layers}, "transforms": self.transforms.to_json(),
                "sink_tokens": self.sink_tokens, **({"recent": self.recent} if self.recent else {}),
                "provenance": self.provenance, "measured": self.measured}

    def dumps(self) -> str:
        """The profile as the file holds it: JSON, objects indented, each array of numbers on one
        line (a per-layer table is a row per layer), so a profile reads and diffs as a table."""
        return _compact_json(self.to_json()) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.dumps())
        return path

    @classmethod
    def from_json(cls, obj: dict, source: str = "profile") -> "Profile":
        try:
            if obj.get("schema") != PROFILE_SCHEMA:
                raise ValueError(f"schema {obj.get('schema')!r}, this kvconvert reads schema {PROFILE_SCHEMA}")
            shape = ModelShape.from_json(obj.get("model"), source)
            kv = {}
            for kind in ("k", "v"):
                part = obj.get(kind)
                if not isinstance(part, dict):
                    raise InputError(f"{source}: {kind} must be an object with type and layers")
                layers = part.get("layers") or []
                if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
                    raise InputError(f"{source}: {kind}.layers must be a list of cache type strings")
                kv[kind] = (V.utf8_str(source, f"{kind}.type", part.get("type"), 100), layers)
            for key in ("provenance", "measured", "transforms"):
                if obj.get(key) is not None and not isinstance(obj[key], dict):
                    raise InputError(f"{source}: {key} must be an object")
            measured = dict(obj.get("measured") or {})
            for key, val in measured.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    V.finite_float(source, f"measured.{key}", val)
            if measured.get("bpv_n_ctx") is not None:
                V.int_in(source, "measured.bpv_n_ctx", measured["bpv_n_ctx"], 1, V.MAX_CTX)
            prof = cls(name=V.utf8_str(source, "name", obj.get("name"), 1000), model=shape,
                       k_type=kv["k"][0], v_type=kv["v"][0], k_layers=kv["k"][1], v_layers=kv["v"][1],
                       transforms=Transforms.from_json(obj.get("transforms") or {}, shape),
                       policy=V.utf8_str(source, "policy", obj.get("policy", "") or "", 1000),
                       provenance=dict(obj.get("provenance") or {}), measured=measured,
                       sink_tokens=V.int_in(source, "sink_tokens", obj.get("sink_tokens", 0), 0, MAX_SINK),
                       recent=V.int_in(source, "recent", obj.get("recent", 0), 0, MAX_RECENT), source=source)
            for kind, layers in (("k", prof.k_layers), ("v", prof.v_layers)):
                t = getattr(prof, f"{kind}_type")
                if t != TQ and t not in STANDARD:
                    raise ValueError(f"{kind}.type {t!r} is not {TQ} or one of {', '.join(STANDARD)}")
                if t == TQ and len(layers) != shape.n_layer:
                    raise ValueError(f"{kind}.layers has {len(layers)} entries for {shape.n_layer} layers")
            prof.k_configs(), prof.v_configs()  # every spec parses
        except (InputError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise InputError(f"{source}: not a valid kvconvert profile ({_detail(e, source)}); "
                             "re-run `kvconvert search`") from None
        return prof


@dataclass(frozen=True)
class Policy:
    """How `search` chooses a profile: bits budgets and the candidate set."""

    name: str
    description: str
    k_budget: float  # mean K bits per value, every overhead counted
    v_budget: float | None  # None: V stays f16
    k_bits: tuple[int, ...] = (3, 4, 5, 6)
    v_bits: tuple[int, ...] = (3, 4, 5, 6)
    splits: bool = True  # also try outlier-pair splits (hi group = the d/8, d/4 or d/2 highest-energy channels)
    qjl: bool = False  # also try QJL on the lo group
    smoothing: bool = True
    sink_tokens: int = DEFAULT_SINK  # leading positions kept in f16; counted in the budgets at budget_ctx
    # recent exact window (positions) of the searched profile's TurboQuant caches: the proxy scores
    # each query with its last `recent` keys and values exact (as the runtime does), and the window's
    # f16 rows are counted in the budgets at budget_ctx
    recent: int = 0
    # the context length the budgets are stated at (sinks and window spread over it);
    # None: the calibration's context
    budget_ctx: int | None = None
    # the end-to-end check's acceptance threshold: KLD vs the f16 cache on held-out text (None: report only);
    # a convert whose check is above it searches again with more bits
    max_kld: float | None = None
    # weight each layer's proxy error by its measured end-to-end sensitivity (sensitivity.py: 2·L + 3 extra
    # forward passes over one chunk), and with joint, spend one budget on K and V together: the mean of
    # K and V bits per value ≤ the mean of k_budget and v_budget (joint needs sensitivity and a V budget)
    sensitivity: bool = False
    joint: bool = False
    # 8-bit group scales (one byte on a log grid per group instead of an fp16: 0.125 bits per value less
    # per group at head dim 64, spent on codes by the search); the grid comes from the calibration
    scale8: bool = True
    # each side's encode scale (turboquant.SCALES): "ls" minimises each vector's error but shrinks its
    # inner products by (1 − D_b); "proj" keeps them unshrunk. The per-layer proxies cannot see the
    # difference (a bias that adds up over layers and long contexts), so the search allocates bits with
    # "ls" proxies and writes the chosen configs with these scales; measured end to end (README)
    k_scale_mode: str = "ls"
    v_scale_mode: str = "ls"
    # "trellis": the chosen configs are written with bitshift-trellis codes (kvcache/trellis.py) of the same
    # bits on every group that admits them (no QJL, groups of 1..6 bits; a 7–8-bit outlier group keeps
    # Lloyd–Max codes beside them): 28–38% less squared error per vector
    # at 2–6 bits, an encode-time Viterbi search and a gather per value to decode. Allocated, like the
    # scale modes, with Lloyd–Max proxies (the gain is nearly uniform across bit widths); CPU only
    codes: str = "lloyd"
    # K options coded in a calibrated basis too (kvcache/kbasis.py: the eigenbasis of the keys weighted by
    # the queries); the search picks, per layer, whichever of the two spaces has the smaller proxy error.
    # d² multiply-adds per key written and query scored; CPU only
    k_basis: bool = False
    # > 0: the basis follows RoPE in blocks of this many positions (kvcache/kbasis.py), fitted on the
    # calibration's positions within a block; 0: one basis fitted over kbasis.FIT_CTX positions
    k_basis_block: int = 0
    schema: int = POLICY_SCHEMA

    def __post_init__(self) -> None:
        for side in ("k_scale_mode", "v_scale_mode"):
            if getattr(self, side) not in SCALES:
                raise InputError(f"policy {self.name!r}: {side} {getattr(self, side)!r} is not one of "
                                 f"{', '.join(SCALES)}")
        if self.codes not in CODES:
            raise InputError(f"policy {self.name!r}: codes {self.codes!r} is not one of {', '.join(CODES)}")
        if self.k_basis_block and not self.k_basis:
            raise InputError(f"policy {self.name!r}: k_basis_block needs \"k_basis\": true")
        if self.joint and not (self.sensitivity and self.v_budget is not None):
            raise InputError(f"policy {self.name!r}: joint K/V allocation needs sensitivity weights "
                             "(\"sensitivity\": true) and a V budget")

    @classmethod
    def from_json(cls, obj: dict, source: str = "policy") -> "Policy":
        try:
            if obj.get("schema") != POLICY_SCHEMA or obj.get("kind") != "policy":
                raise ValueError("not a schema-1 policy")
            kw = {"name": V.utf8_str(source, "name", obj.get("name"), 1000),
                  "description": V.utf8_str(source, "description", obj.get("description"), 10000),
                  "k_budget": V.finite_float(source, "k_budget", obj.get("k_budget"), 1.0, 16.0, lo_open=True)}
            if obj.get("v_budget") is not None:
                kw["v_budget"] = V.finite_float(source, "v_budget", obj["v_budget"], 1.0, 16.0, lo_open=True)
            else:
                kw["v_budget"] = None
            for k in ("k_bits", "v_bits"):
                if k in obj:
                    bits = V.int_list(source, k, obj[k], 1, MAX_LO_BITS, nonempty=True)
                    if len(bits) > 16:
                        raise InputError(f"{source}: {k} has {len(bits)} entries (at most 16)")
                    kw[k] = tuple(bits)
            for k in ("splits", "qjl", "smoothing", "sensitivity", "joint", "scale8", "k_basis"):
                if k in obj:
                    kw[k] = V.boolean(source, k, obj[k])
            if obj.get("max_kld") is not None:
                kw["max_kld"] = V.finite_float(source, "max_kld", obj["max_kld"], 0.0, 10.0, lo_open=True)
                if kw["max_kld"] >= 10:
                    raise ValueError(f"max_kld {kw['max_kld']} outside (0, 10)")
            for k in ("k_scale_mode", "v_scale_mode"):
                if k in obj:
                    kw[k] = V.one_of(source, k, obj[k], SCALES)
            if "codes" in obj:
                kw["codes"] = V.one_of(source, "codes", obj["codes"], CODES)
            if "k_basis_block" in obj:
                kw["k_basis_block"] = V.int_in(source, "k_basis_block", obj["k_basis_block"], 0, kbasis.MAX_BASIS_BLOCK)
            if "sink_tokens" in obj:
                kw["sink_tokens"] = V.int_in(source, "sink_tokens", obj["sink_tokens"], 0, MAX_SINK)
            if "recent" in obj:
                kw["recent"] = V.int_in(source, "recent", obj["recent"], 0, MAX_RECENT)
            if obj.get("budget_ctx") is not None:
                kw["budget_ctx"] = V.int_in(source, "budget_ctx", obj["budget_ctx"], 1, V.MAX_CTX)
            pol = cls(**kw)
        except (InputError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{source}: not a valid kvconvert policy ({_detail(e, source)})") from None
        return pol

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(kind="policy", k_bits=list(self.k_bits), v_bits=list(self.v_bits))
        return d


def _detail(e: Exception, source: str) -> str:
    """An error's message without the file name the caller's message already starts with."""
    text = str(e)
    if isinstance(e, KeyError):
        return f"missing key {text}"
    return text.removeprefix(f"{source}: ")


def shipped_dir() -> Path:
    """The profiles/ directory installed as kvconvert.profiles."""
    from .. import profiles

    return Path(profiles.__file__).parent if getattr(profiles, "__file__", None) else Path(list(profiles.__path__)[0])


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.json"))


def load_profile(name_or_path: str | os.PathLike) -> Profile | Policy:
    """A shipped policy/profile by name, or a JSON file."""
    p = Path(name_or_path)
    if not p.exists():
        cand = shipped_dir() / f"{p.name}.json"
        if cand.exists() and p.name == str(name_or_path):
            p = cand
        elif p.suffix.lower() != ".json":
            raise InputError(f"unknown profile or policy {str(name_or_path)!r}; shipped ones: "
                             f"{', '.join(shipped_names())} (or give a profile JSON file)")
    if p.exists():
        V.regular_file(p, "profile file")
    try:
        obj = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such profile file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{p}: cannot read the profile ({e}); pass a JSON file written by `kvconvert search`") from None
    if not isinstance(obj, dict):
        raise InputError(f"{p}: not a kvconvert profile (expected a JSON object)")
    if obj.get("kind") == "policy":
        return Policy.from_json(obj, str(p))
    return Profile.from_json(obj, str(p))


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
