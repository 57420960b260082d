"""Loading a model from a Hugging Face directory, a GGUF file or a Hub repo id.

``load_model`` returns a ``ModelSource``: the typed config, the architecture,
and lazy access to every weight by Hugging Face name in Hugging Face row order,
whatever the input format. Nothing is read until a tensor is asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from . import arch as archs
from ..base import validate as V
from .arch.base import Architecture, TensorSpec
from .config import ModelArgs
from ..base.errors import InputError
from ..formats.gguf_io import dequantize, field_value, open_gguf, tensor_map
from .rope import llama3_factors, llama3_from_factors
from ..formats.safetensors_io import SafetensorsIndex
from .hub_files import REPO_ID, cached_snapshot, download_for_resolve, is_offline

ROPE_FREQS = "rope_freqs"  # synthetic name of llama3 RoPE factors (no HF tensor)
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class WeightSource(Protocol):
    def get(self, name: str) -> np.ndarray: ...
    def has(self, name: str) -> bool: ...


@dataclass
class ModelSource:
    path: Path
    format: str  # "hf" or "gguf"
    args: ModelArgs
    arch: Architecture
    weights: WeightSource
    specs: list[TensorSpec] = field(default_factory=list)

    def file_order(self) -> tuple["WeightSource", str]:
        """Weights with Q/K rows in this model's GGUF order, and the RoPE pairing that order
        needs: what the native runtime computes with (llama: interleaved pairs)."""
        by_hf = {s.hf: s for s in self.specs}
        arch, weights = self.arch, self.weights

        class FileOrder:
            def has(self, name: str) -> bool:
                return weights.has(name)

            def get(self, name: str) -> np.ndarray:
                spec = by_hf.get(name)
                w = weights.get(name)
                return arch.to_gguf_rows(spec, w) if spec is not None else w

        return FileOrder(), arch.gguf_rope_pairing

    def tokenizer_spec(self):
        from ..formats import tokenizer

        if self.format == "gguf":
            return tokenizer.spec_from_gguf(self.weights.reader)  # type: ignore[attr-defined]
        return tokenizer.spec_from_hf(self.path)


def tensor_specs(arch: Architecture, args: ModelArgs) -> list[TensorSpec]:
    specs = arch.tensors(args)
    if args.rope_scaling is not None and args.rope_scaling.rope_type == "llama3":
        from .arch.base import T
        from ..formats.gguf_keys import gguf_tensor

        specs.insert(0, TensorSpec(ROPE_FREQS, gguf_tensor(T.ROPE_FREQS), (args.head_dim // 2,)))
    return specs


class HFWeights:
    """Weights of a Hugging Face safetensors checkpoint."""

    def __init__(self, model_dir: Path, args: ModelArgs, specs: list[TensorSpec]):
        self.index = SafetensorsIndex.from_dir(model_dir)
        self.args = args
        layers = {int(m.group(1)) for n in self.index.names() if (m := _HF_LAYER.match(n))}
        if layers and max(layers) + 1 != args.num_hidden_layers:
            raise InputError(f"{model_dir / 'config.json'}: num_hidden_layers is {args.num_hidden_layers} but the "
                             f"safetensors weights have {max(layers) + 1} layers")
        for s in specs:
            if s.hf == ROPE_FREQS:
                continue
            if s.hf not in self.index:
                raise InputError(f"{model_dir}: tensor {s.hf} is missing from the safetensors weights")
            if self.index.shape(s.hf) != s.shape:
                raise InputError(
                    f"{model_dir}: tensor {s.hf} has shape {self.index.shape(s.hf)}, "
                    f"config.json implies {s.shape}"
                )

    def has(self, name: str) -> bool:
        return name == ROPE_FREQS or name in self.index

    def get(self, name: str) -> np.ndarray:
        if name == ROPE_FREQS:
            return llama3_factors(self.args).astype(np.float32)
        return self.index.get(name)


class GGUFWeights:
    """Weights of a GGUF file, dequantized to float32 and put back in HF row order."""

    def __init__(self, path: Path, reader, arch: Architecture, specs: list[TensorSpec]):
        self.path, self.reader, self.arch = path, reader, arch
        self.tensors = tensor_map(reader)
        self.by_hf = {s.hf: s for s in specs}
        for s in specs:
            t = self.tensors.get(s.gguf)
            if t is None:
                raise InputError(f"{path}: tensor {s.gguf} is missing")
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            if shape != s.shape:
                raise InputError(f"{path}: tensor {s.gguf} has shape {shape}, the metadata implies {s.shape}")

    def has(self, name: str) -> bool:
        return name in self.by_hf

    def get(self, name: str) -> np.ndarray:
        spec = self.by_hf[name]
        return self.arch.from_gguf_order(spec, dequantize(self.tensors[spec.gguf]))


def resolve(model: str | os.PathLike) -> Path:
    """A local path, or a Hub repo id resolved through the local huggingface_hub cache."""
    p = Path(model).expanduser()
    if p.exists():
        return p
    s = str(model)
    if REPO_ID.match(s) and not s.endswith(".gguf"):
        # Cached first (a HF checkpoint, or a GGUF repo fetched by `kvconvert pull`), without the network;
        # a GGUF repo of which only one GGUF was pulled is usable.
        one_gguf = lambda snap: not (snap / "config.json").exists() and len(list(snap.glob("*.gguf"))) == 1  # noqa: E731
        snap = cached_snapshot(s, ["*.json", "*.safetensors", "*.gguf", "*.txt", "*.model"], partial_ok=one_gguf)
        if snap is not None:
            return snap
        if is_offline():
            raise InputError(f"{s}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it first (`kvconvert pull`) or unset HF_HUB_OFFLINE")
        return download_for_resolve(s)  # a checkpoint's files, or a GGUF repo's one GGUF (*.gguf included)
    raise InputError(f"{s}: no such file or directory")


def load_model(model: str | os.PathLike) -> ModelSource:
    path = resolve(model)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return load_gguf(ggufs[0])
        return load_hf(path)
    return load_gguf(path)


def load_hf(model_dir: Path) -> ModelSource:
    model_dir = Path(model_dir)
    args = ModelArgs.from_file(model_dir / "config.json")
    arch = archs.from_hf(args.architecture, str(model_dir / "config.json"))
    if args.extra.get("use_sliding_window"):
        raise InputError(f"{model_dir / 'config.json'}: sliding-window attention is not supported")
    if args.extra.get("mlp_bias"):
        raise InputError(f"{model_dir / 'config.json'}: MLP biases (mlp_bias) are not supported")
    if args.model_type != arch.model_type:
        args = _replace(args, model_type=arch.model_type)
    specs = tensor_specs(arch, args)
    return ModelSource(model_dir, "hf", args, arch, HFWeights(model_dir, args, specs), specs)


# GGUF hyperparameter keys (after "<arch>.") and their checks: (kind, lo, hi); "i" integer, "f" finite float,
# lo exclusive for floats. Checked before anything is sized by them.
_GGUF_HPARAMS: dict[str, tuple[str, float, float]] = {
    "block_count": ("i", 1, V.MAX_LAYERS),
    "embedding_length": ("i", 1, V.MAX_HIDDEN),
    "feed_forward_length": ("i", 1, V.MAX_FFN),
    "attention.head_count": ("i", 1, V.MAX_HEADS),
    "attention.head_count_kv": ("i", 1, V.MAX_HEADS),
    "attention.key_length": ("i", 0, V.MAX_HEAD_DIM),
    "attention.value_length": ("i", 0, V.MAX_HEAD_DIM),
    "rope.dimension_count": ("i", 0, V.MAX_HEAD_DIM),
    "vocab_size": ("i", 1, V.MAX_VOCAB),
    "context_length": ("i", 1, V.MAX_CTX),
    "attention.layer_norm_rms_epsilon": ("f", 0.0, 0.5),
    "rope.freq_base": ("f", 1.0, 1e12),
    "attention.sliding_window": ("i", 0, V.MAX_CTX),
}
_GGUF_TOKEN_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _gguf_get(reader, path: Path, arch_name: str):
    """``get(key, default)`` over the metadata that checks the hyperparameters' types and ranges."""
    prefix = f"{arch_name}."

    def get(key: str, default=None):
        value = field_value(reader, key, None)
        if value is None:
            return default
        rule = _GGUF_HPARAMS.get(key[len(prefix):]) if key.startswith(prefix) else None
        if rule is not None:
            kind, lo, hi = rule
            if kind == "i":
                return V.int_in(path, key, value, lo, hi)
            return V.finite_float(path, key, value, lo, hi, lo_open=True)
        if key in _GGUF_TOKEN_IDS:
            return V.int_in(path, key, value, 0, V.MAX_VOCAB)
        return value

    return get


def load_gguf(path: Path) -> ModelSource:
    path = Path(path)
    reader = open_gguf(path)
    name = V.utf8_str(path, "general.architecture", field_value(reader, "general.architecture", ""), 256)
    arch = archs.from_gguf(name, str(path))
    if (general_name := field_value(reader, "general.name")) is not None:
        V.utf8_str(path, "general.name", general_name)
    tensors = tensor_map(reader)
    tokens = field_value(reader, "tokenizer.ggml.tokens", [])
    if not isinstance(tokens, list) or len(tokens) > V.MAX_VOCAB:
        raise InputError(f"{path}: tokenizer.ggml.tokens must be a list of at most {V.MAX_VOCAB} strings")
    get = _gguf_get(reader, path, arch.name)
    try:
        args = arch.args_from_gguf(get, len(tokens), tied="output.weight" not in tensors,
                                   has_qkv_bias="blk.0.attn_q.bias" in tensors)
    except InputError as e:
        raise InputError(e if str(e).startswith(f"{path}: ") else f"{path}: {e}") from None
    except (TypeError, ValueError):
        raise InputError(f"{path}: missing {name} hyperparameters in the metadata") from None
    blocks = {int(m.group(1)) for t in tensors if (m := _BLOCK.match(t))}
    n_blocks = max(blocks) + 1 if blocks else 0
    if n_blocks != args.num_hidden_layers:
        raise InputError(f"{path}: {arch.name}.block_count is {args.num_hidden_layers} but the file has tensors "
                         f"for {n_blocks} layers")
    if "rope_freqs.weight" in tensors:
        factors = dequantize(tensors["rope_freqs.weight"]).reshape(-1)
        if factors.size != args.head_dim // 2:
            raise InputError(f"{path}: rope_freqs has {factors.size} entries, expected {args.head_dim // 2}")
        scaling = llama3_from_factors(args, factors)
        if scaling is None:
            raise InputError(f"{path}: rope_freqs does not follow Llama 3.1 RoPE scaling; this model is not supported")
        args = _replace(args, rope_scaling=scaling)
    specs = tensor_specs(arch, args)
    source = ModelSource(path, "gguf", args, arch, GGUFWeights(path, reader, arch, specs), specs)
    check_kvconvert_metadata(reader, args, path)
    return source


def check_kvconvert_metadata(reader, args: ModelArgs, path: Path) -> None:
    """A file with kvconvert.* metadata must carry a known schema version and a valid cache description."""
    from ..formats.gguf_keys import SCHEMA_VERSION, Keys
    from ..kvcache.kvmeta import CacheMeta

    if not any(k.startswith("kvconvert.") for k in reader.fields):
        return
    key = Keys.KVConvert.SCHEMA_VERSION
    version = field_value(reader, key)
    if version is None:
        raise InputError(f"{path}: has kvconvert.* metadata but no {key}; re-convert the model")
    V.int_in(path, key, version, 0, V.MAX_U32)
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: {key} is {version}; this kvconvert reads schema {SCHEMA_VERSION} "
                         "(upgrade kvconvert or re-convert the model)")
    for k in (Keys.KVConvert.VERSION, Keys.KVConvert.SOURCE, Keys.KVConvert.SOURCE_FORMAT):
        if (v := field_value(reader, k)) is not None:
            V.utf8_str(path, k, v)
    CacheMeta.from_gguf(reader, args, str(path))


def _replace(args: ModelArgs, **kw) -> ModelArgs:
    import dataclasses

    return dataclasses.replace(args, **kw)
