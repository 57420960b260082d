"""Rewrite a GGUF with chosen weight types per tensor, for runtime tests.

gguf-py quantizes F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0 but not the K-quants; for
Q4_K/Q6_K we write random but valid blocks (small fp16 scales), which replace
the tensor's values. Every consumer reads the weights back from the file, so
the reference and the runtime see the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from kvconvert.formats.gguf_io import dequantize, open_gguf

Q = gguf.GGMLQuantizationType
# fp16 super-block scale d (and dmin) byte ranges per block, and d's magnitude: Q6_K's
# int8 sub-scales are ~4x Q4_K's 6-bit ones, so its d is smaller for similar weights.
_K_SCALE_OFFSETS = {Q.Q4_K: [(0, 2), (2, 4)], Q.Q6_K: [(208, 210)]}
_K_D = {Q.Q4_K: 2e-3, Q.Q6_K: 5e-4}


def random_kquant(shape: tuple[int, ...], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for lo, hi in _K_SCALE_OFFSETS[qtype]:
        d = (rng.uniform(0.5, 1.5, n_blocks) * _K_D[qtype]).astype(np.float16)
        raw[:, lo:hi] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(shape[0], -1)


DROP = object()  # returned by a metadata edit: leave the key out


def rewrite(src: Path, dst: Path, types: dict[str, Q] | None = None, seed: int = 0,
            metadata: Callable[[str, Any], Any] | None = None) -> None:
    """Copy src to dst with tensor types changed (types maps a name substring to a type) and
    metadata values edited (metadata(key, value) → the new value, or DROP)."""
    rng = np.random.default_rng(seed)
    types = types or {}
    reader = open_gguf(src)
    w = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        val = field.contents() if metadata is None else metadata(key, field.contents())
        if val is DROP:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, val, gguf.GGUFValueType.ARRAY, sub_type=field.types[-1])
        else:
            w.add_key_value(key, val, field.types[0])
    for t in reader.tensors:
        qtype = next((q for pat, q in types.items() if pat in t.name), None)
        x = dequantize(t)
        if qtype is None or x.ndim == 1 or x.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        elif qtype in _K_SCALE_OFFSETS:
            w.add_tensor(t.name, random_kquant(x.shape, qtype, rng), raw_dtype=qtype)
        elif qtype in (Q.F32, Q.F16):
            w.add_tensor(t.name, x.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            w.add_tensor(t.name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
