"""Reading GGUF files safely: open, read metadata values, dequantize tensors.

Wraps ``gguf.GGUFReader`` so that a truncated or corrupt file becomes one
``InputError`` line naming the file, never a traceback from deep in numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import InputError

GGUF_MAGIC = b"GGUF"


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if magic != GGUF_MAGIC:
        raise InputError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, IndexError, struct/numpy errors on bad files
        raise InputError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {e}); re-download or re-convert it") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise InputError(f"{path}: tensor {t.name} extends past the end of the file (truncated); re-download it")
    return reader


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a plain Python value (str, int, float, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def tensor_map(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def dequantize(t: gguf.ReaderTensor) -> np.ndarray:
    """A GGUF tensor as float32 in numpy (row-major, last axis = ne0) order."""
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    qtype = gguf.GGMLQuantizationType(t.tensor_type)
    if qtype == gguf.GGMLQuantizationType.F32:
        out = np.asarray(t.data, dtype=np.float32)
    elif qtype == gguf.GGMLQuantizationType.F16:
        out = np.asarray(t.data).view(np.float16).astype(np.float32)
    else:
        try:
            out = gguf.quants.dequantize(t.data, qtype)
        except NotImplementedError:
            raise InputError(f"tensor {t.name}: weight type {qtype.name} cannot be dequantized") from None
    return out.reshape(shape)
