"""GGUF → Hugging Face directory (config.json, tokenizer files, safetensors).

Weights are dequantized tensor by tensor and streamed into safetensors (sharded
past ``shard_bytes``); llama's Q/K rows are put back in HF order. The default
``dtype="auto"`` (``auto_dtype``) keeps the source's precision at the smallest
size: a GGUF of F16 (or BF16, or F32) weight matrices is written in that type,
exactly; a quantized GGUF in f16, which rounds each dequantized weight by at
most 2^-11 of its value (a fraction of the quantization step the weights
already carry) and is exactly what kvconvert's default f16 conversion of the
imported model would round them to anyway. ``dtype="f32"`` stores every
dequantized value exactly.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_dir, refuse_overwrite
from ..base.errors import InputError, OutputError
from ..models.source import ROPE_FREQS, load_gguf
from ..base.progress import ProgressFn, check_cancel
from ..formats.safetensors_io import write_streaming

_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
_TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


@dataclass
class ImportResult:
    output: Path
    architecture: str
    n_tensors: int
    n_params: int
    files: list[str]
    dtype: str = "f32"  # the safetensors dtype written


def _shards(specs, dtype: str, shard_bytes: int) -> list[list]:
    shards: list[list] = [[]]
    size = 0
    for s in specs:
        n = int(np.prod(s.shape)) * _ITEMSIZE[dtype]
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += n
    return shards


F16_MAX = 65504.0


def auto_dtype(reader) -> str:
    """The safetensors dtype ``dtype="auto"`` picks for a GGUF: its matrices' float type if they all
    have one (F32, F16, BF16), else f16 (quantized weights)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    kinds = {t.tensor_type for t in reader.tensors if len(t.shape) > 1 and int(t.shape[1]) > 1}
    for qtype, name in ((Q.F32, "f32"), (Q.BF16, "bf16")):
        if kinds == {qtype}:
            return name
    return "f16"


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "auto",
                overwrite: bool = False, shard_bytes: int = 4 << 30,
                progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> ImportResult:
    """Write a Hugging Face model directory equivalent to the GGUF at ``gguf_path``; ``dtype``: f32,
    f16, bf16 or auto (the source's precision, see the module docstring)."""
    if dtype not in _ITEMSIZE and dtype != "auto":
        raise InputError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(_ITEMSIZE)})")
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, [gguf_path], what="output directory",
                     note=" (--force replaces only outputs, never inputs)" if overwrite else "")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise OutputError(f"cannot write {out_dir}: it exists and is not empty; pass --force to replace it")
    src = load_gguf(Path(gguf_path))
    if dtype == "auto":
        dtype = auto_dtype(src.weights.reader)  # type: ignore[attr-defined]
    spec_tok = src.tokenizer_spec()
    specs = [s for s in src.specs if s.hf != ROPE_FREQS]
    shards = _shards(specs, dtype, shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total = sum(int(np.prod(s.shape)) for s in specs)
    done = 0

    def stream(shard):
        nonlocal done
        for s in shard:
            check_cancel(cancel)
            x = src.weights.get(s.hf)
            if dtype == "f16" and np.abs(x).max(initial=0) > F16_MAX:
                raise InputError(f"{gguf_path}: tensor {s.hf} has values beyond f16's range; "
                                 "import with --dtype bf16 or f32")
            yield s.hf, x
            done += x.size
            if progress:
                progress(done, total, s.hf)

    from ..formats.tokenizer import write_hf

    with atomic_dir(out_dir) as tmp:
        try:
            config = src.args.to_hf_dict()
            config["torch_dtype"] = _TORCH_DTYPE[dtype]
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
            write_hf(spec_tok, tmp)
            weight_map = {}
            for name, shard in zip(names, shards):
                write_streaming(tmp / name, [(s.hf, s.shape) for s in shard], dtype, stream(shard),
                                metadata={"format": "pt", "source": "kvconvert import-gguf"})
                weight_map.update({s.hf: name for s in shard})
            if len(shards) > 1:
                index = {"metadata": {"total_size": total * _ITEMSIZE[dtype]}, "weight_map": weight_map}
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write {out_dir}: {e.strerror or e}") from None
    files = sorted(p.name for p in out_dir.iterdir())
    return ImportResult(out_dir, src.args.architecture, len(specs), total, files, dtype)
