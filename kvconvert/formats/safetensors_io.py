"""Lazy, mmap-backed safetensors reading and streaming safetensors writing.

Reading never copies a whole checkpoint: each tensor is a view into a memory
map, widened to float32 only when asked for (BF16 is read as raw uint16 and
shifted into float32, since numpy has no bfloat16). Writing streams tensors
one at a time after a header computed from shapes alone, so a 7B import never
holds two copies of its weights.

File format (safetensors): u64 little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..base.errors import InputError
from ..base.validate import regular_file

_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32 exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits (uint16), round-to-nearest-even; NaN kept NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in file
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    regular_file(path, "safetensors file")  # a FIFO would block
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: truncated safetensors file (no header); re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise InputError(f"{path}: corrupt safetensors header (length {n}); re-download it")
            header = json.loads(f.read(n))
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: corrupt safetensors header (not JSON); re-download it") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header; re-download it")
    return header, 8 + n


class SafetensorsIndex:
    """All tensors of one or more safetensors files, by name, read lazily."""

    def __init__(self, files: Iterable[Path]):
        self.entries: dict[str, TensorEntry] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        for path in files:
            self._index_file(Path(path))

    @classmethod
    def from_dir(cls, model_dir: Path) -> "SafetensorsIndex":
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({model_dir / f for f in weight_map.values()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise InputError(f"{index}: not a valid safetensors index (needs a weight_map)") from None
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise InputError(f"{index}: lists shard {missing[0]} which is missing from {model_dir}")
        else:
            files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise InputError(f"{model_dir}: no *.safetensors weights found (PyTorch .bin checkpoints are not supported)")
        return cls(files)

    def _index_file(self, path: Path) -> None:
        header, data_start = _read_header(path)
        size = path.stat().st_size
        spans: list[tuple[int, int, str]] = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}: corrupt entry for tensor {name!r}; re-download it") from None
            if not isinstance(dtype, str) or dtype not in _DTYPES:
                raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
            if len(shape) > 8 or any(not 0 <= s <= 1 << 40 for s in shape):
                raise InputError(f"{path}: tensor {name!r} has an invalid shape {shape}; re-download it")
            nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
            if end - begin != nbytes or begin < 0 or data_start + end > size:
                raise InputError(
                    f"{path}: tensor {name!r} data is out of bounds or of the wrong size "
                    "(file truncated or corrupt); re-download it"
                )
            if name in self.entries:
                raise InputError(f"{path}: tensor {name!r} appears in two shards")
            self.entries[name] = TensorEntry(path, dtype, shape, data_start + begin, data_start + end)
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise InputError(f"{path}: the data of tensors {a!r} and {b!r} overlap (corrupt file); re-download it")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (BF16 as uint16), a read-only view into the file."""
        e = self.entries[name]
        m = self._maps.get(e.file)
        if m is None:
            with open(e.file, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if e.file.stat().st_size else b""
            self._maps[e.file] = m
        dt = _DTYPES[e.dtype]
        return np.frombuffer(m, dtype=dt, count=(e.end - e.begin) // dt.itemsize, offset=e.begin).reshape(e.shape)

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a new array unless stored as F32)."""
        e = self.entries[name]
        if e.dtype not in _FLOAT_DTYPES:
            raise InputError(f"{e.file}: tensor {name!r} is {e.dtype}, expected a float type")
        raw = self.raw(name)
        if e.dtype == "BF16":
            return bf16_to_f32(raw)
        return raw.astype(np.float32, copy=False)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> str:
        return self.entries[name].dtype

    def close(self) -> None:
        for m in self._maps.values():
            if isinstance(m, mmap.mmap):
                m.close()
        self._maps.clear()


_OUT_DTYPES = {"f32": ("F32", np.dtype("<f4")), "f16": ("F16", np.dtype("<f2")), "bf16": ("BF16", np.dtype("<u2"))}


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float array -> the bytes-ready array of a safetensors dtype ("f32", "f16" or "bf16")."""
    if dtype == "bf16":
        return f32_to_bf16(x)
    return np.ascontiguousarray(x, dtype=_OUT_DTYPES[dtype][1])


def write_streaming(path: Path, specs: list[tuple[str, tuple[int, ...]]], dtype: str,
                    tensors: Iterator[tuple[str, np.ndarray]],
                    metadata: dict[str, str] | None = None,
                    on_tensor: Callable[[str], None] | None = None) -> None:
    """Write a safetensors file whose header is known up front from ``specs``.

    ``tensors`` yields (name, float array) in the order of ``specs``; each is
    converted to ``dtype`` and written immediately.
    """
    st_name, np_dtype = _OUT_DTYPES[dtype]
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape in specs:
        n = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
        header[name] = {"dtype": st_name, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (want, shape), (name, x) in zip(specs, tensors, strict=True):
            if name != want or tuple(x.shape) != tuple(shape):
                raise ValueError(f"tensor stream out of order: got {name} {x.shape}, expected {want} {shape}")
            encode(x, dtype).tofile(f)
            if on_tensor:
                on_tensor(name)
        f.flush()
        os.fsync(f.fileno())
