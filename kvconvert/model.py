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
from .arch.base import Architecture, TensorSpec
from .config import ModelArgs
from .errors import InputError
from .gguf_io import dequantize, field_value, open_gguf, tensor_map
from .rope import llama3_factors, llama3_from_factors
from .safetensors_io import SafetensorsIndex

ROPE_FREQS = "rope_freqs"  # synthetic name of llama3 RoPE factors (no HF tensor)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


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
                return arch.to_gguf_order(spec, w) if spec is not None else w

        return FileOrder(), arch.gguf_rope_pairing

    def tokenizer_spec(self):
        from . import tokenizer

        if self.format == "gguf":
            return tokenizer.spec_from_gguf(self.weights.reader)  # type: ignore[attr-defined]
        return tokenizer.spec_from_hf(self.path)


def tensor_specs(arch: Architecture, args: ModelArgs) -> list[TensorSpec]:
    specs = arch.tensors(args)
    if args.rope_scaling is not None and args.rope_scaling.rope_type == "llama3":
        from .arch.base import T
        from .gguf_keys import gguf_tensor

        specs.insert(0, TensorSpec(ROPE_FREQS, gguf_tensor(T.ROPE_FREQS), (args.head_dim // 2,)))
    return specs


class HFWeights:
    """Weights of a Hugging Face safetensors checkpoint."""

    def __init__(self, model_dir: Path, args: ModelArgs, specs: list[TensorSpec]):
        self.index = SafetensorsIndex.from_dir(model_dir)
        self.args = args
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
    if _REPO_ID.match(s) and not s.endswith(".gguf"):
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

        # Cached first (a HF checkpoint, or a GGUF repo fetched by `kvconvert pull`), without the network.
        try:
            return Path(snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "*.gguf", "*.txt", "*.model"],
                                          local_files_only=True))
        except IncompleteSnapshotError as e:  # a GGUF repo of which only some GGUFs were pulled is usable
            snap = Path(e.snapshot_path or "")
            if e.snapshot_path and not (snap / "config.json").exists() and len(list(snap.glob("*.gguf"))) == 1:
                return snap
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            pass
        if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
            raise InputError(f"{s}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it first (`kvconvert pull`) or unset HF_HUB_OFFLINE")
        from .hub import download_for_resolve

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


def load_gguf(path: Path) -> ModelSource:
    path = Path(path)
    reader = open_gguf(path)
    name = field_value(reader, "general.architecture", "")
    arch = archs.from_gguf(name, str(path))
    tensors = tensor_map(reader)
    tokens = field_value(reader, "tokenizer.ggml.tokens", [])
    try:
        args = arch.args_from_gguf(lambda k, d: field_value(reader, k, d), len(tokens),
                                   tied="output.weight" not in tensors,
                                   has_qkv_bias="blk.0.attn_q.bias" in tensors)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except TypeError:
        raise InputError(f"{path}: missing {name} hyperparameters in the metadata") from None
    if "rope_freqs.weight" in tensors:
        factors = dequantize(tensors["rope_freqs.weight"]).reshape(-1)
        if factors.size != args.head_dim // 2:
            raise InputError(f"{path}: rope_freqs has {factors.size} entries, expected {args.head_dim // 2}")
        scaling = llama3_from_factors(args, factors)
        if scaling is None:
            raise InputError(f"{path}: rope_freqs does not follow Llama 3.1 RoPE scaling; this model is not supported")
        args = _replace(args, rope_scaling=scaling)
    specs = tensor_specs(arch, args)
    return ModelSource(path, "gguf", args, arch, GGUFWeights(path, reader, arch, specs), specs)


def _replace(args: ModelArgs, **kw) -> ModelArgs:
    import dataclasses

    return dataclasses.replace(args, **kw)
