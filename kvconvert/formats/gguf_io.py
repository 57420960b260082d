"""Reading GGUF files safely and fast: open, read metadata values, dequantize tensors.

``open_gguf`` parses the GGUF container (versions 2 and 3, little-endian)
itself rather than through ``gguf.GGUFReader``, which builds numpy objects for
every element of every metadata array (12 s for a 150k-token vocabulary). It
returns a ``GGUFFile`` with the part of GGUFReader's API kvconvert uses:

* ``fields``: key -> ``GGUFField`` whose ``types`` and ``contents()`` equal
  gguf-py's, including its pseudo-fields ``GGUF.version``,
  ``GGUF.tensor_count`` and ``GGUF.kv_count``. Opening only measures arrays;
  the first ``contents()`` call decodes them (and caches the result).
* ``tensors``: ``GGUFTensor`` tuples like gguf-py's ``ReaderTensor``, whose
  ``data`` is a view of ``reader.data``, a read-only ``np.memmap`` of the file.

Every structural problem (truncation, counts or lengths the file cannot hold,
unknown types, tensor data that is unaligned, overlapping or past the end)
becomes one ``InputError`` naming the file. Counts are checked against the
bytes left before anything is looped over or allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np

from ..base.errors import InputError
from ..base.validate import regular_file

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS; llama.cpp refuses tensors with more

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALARS: dict[VT, tuple[struct.Struct, np.dtype]] = {
    vt: (struct.Struct("<" + fmt), np.dtype(dt))
    for vt, fmt, dt in [
        (VT.UINT8, "B", "<u1"), (VT.INT8, "b", "<i1"), (VT.UINT16, "H", "<u2"), (VT.INT16, "h", "<i2"),
        (VT.UINT32, "I", "<u4"), (VT.INT32, "i", "<i4"), (VT.FLOAT32, "f", "<f4"), (VT.UINT64, "Q", "<u8"),
        (VT.INT64, "q", "<i8"), (VT.FLOAT64, "d", "<f8"), (VT.BOOL, "?", "?"),
    ]
}
# Fewest bytes one value of each type takes: bounds a claimed count by the bytes left.
_MIN_SIZE: dict[VT, int] = {vt: s.size for vt, (s, _) in _SCALARS.items()} | {VT.STRING: 8, VT.ARRAY: 12}
_MIN_KV = 8 + 4 + 1       # empty key, type, one-byte value
_MIN_TENSOR = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset

# Tensor types gguf-py exposes as typed arrays; all others are uint8 rows of blocks.
_TYPED: dict[QT, np.dtype] = {
    QT.F32: np.dtype(np.float32), QT.F16: np.dtype(np.float16), QT.F64: np.dtype(np.float64),
    QT.I8: np.dtype(np.int8), QT.I16: np.dtype(np.int16), QT.I32: np.dtype(np.int32), QT.I64: np.dtype(np.int64),
}

_UNSET: Any = object()


class _Corrupt(Exception):
    """A structural problem in the file; ``open_gguf`` turns it into one InputError line."""


class GGUFField:
    """One metadata entry, with ``types`` and ``contents()`` as gguf-py's ``ReaderField``.

    gguf-py's quirks are kept: an empty array's ``types`` is ``[ARRAY]`` (no
    sub-type), and nested arrays are flattened, their ``types`` following the
    first element at each level.
    """

    __slots__ = ("name", "offset", "types", "_load", "_value")

    def __init__(self, name: str, offset: int, types: list[VT], load: Callable[[], Any]):
        self.name, self.offset, self.types = name, offset, types
        self._load, self._value = load, _UNSET

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        """The value as plain Python; for arrays, ``index_or_slice`` picks from the flat list.

        Raises UnicodeDecodeError for a string that is not UTF-8, as gguf-py does.
        """
        if self._value is _UNSET:
            self._value = self._load()
        if self.types[0] == VT.ARRAY:
            return self._value[index_or_slice]  # a slice copies, so callers cannot alter the cache
        return self._value

    def __repr__(self) -> str:
        return f"GGUFField({self.name!r}, types={[t.name for t in self.types]})"


class GGUFTensor(NamedTuple):
    """One tensor, as gguf-py's ``ReaderTensor`` (without its ``field``)."""

    name: str
    tensor_type: QT
    shape: np.ndarray  # uint64, ggml order (ne0 first)
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute file offset
    data: np.ndarray  # view of the file: typed for F32/F16/F64/I*, else uint8 (rows..., bytes per row)


class GGUFFile:
    """An open GGUF file: ``fields``, ``tensors``, ``alignment``, ``data_offset`` and ``data``."""

    def __init__(self, path: Path, data: np.memmap, fields: dict[str, GGUFField], tensors: list[GGUFTensor],
                 alignment: int, data_offset: int):
        self.path, self.data, self.fields, self.tensors = path, data, fields, tensors
        self.alignment, self.data_offset = alignment, data_offset

    def get_field(self, key: str) -> GGUFField | None:
        return self.fields.get(key)

    def get_tensor(self, idx: int) -> GGUFTensor:
        return self.tensors[idx]


# --------------------------------------------------------------------------- low-level reads

def _u32(buf: memoryview, off: int, what: str) -> int:
    if off + 4 > len(buf):
        raise _Corrupt(f"{what} is cut off at byte {len(buf)}")
    return _U32.unpack_from(buf, off)[0]


def _u64(buf: memoryview, off: int, what: str) -> int:
    if off + 8 > len(buf):
        raise _Corrupt(f"{what} is cut off at byte {len(buf)}")
    return _U64.unpack_from(buf, off)[0]


def _vtype(buf: memoryview, off: int, what: str) -> VT:
    raw = _u32(buf, off, what)
    try:
        return VT(raw)
    except ValueError:
        raise _Corrupt(f"{what} has unknown value type {raw}") from None


def _check_count(buf: memoryview, off: int, n: int, unit: int, what: str) -> None:
    if n * unit > len(buf) - off:
        raise _Corrupt(f"{what} claims {n} items, more than the {max(len(buf) - off, 0)} bytes left can hold")


def _text(buf: memoryview, off: int, what: str) -> tuple[str, int]:
    """A length-prefixed UTF-8 string at ``off`` and the offset after it."""
    n = _u64(buf, off, what)
    start = off + 8
    if n > len(buf) - start:
        raise _Corrupt(f"{what} (a string of {n} bytes) runs past the end of the file")
    try:
        return str(buf[start:start + n], "utf-8"), start + n
    except UnicodeDecodeError:
        raise _Corrupt(f"{what} is not valid UTF-8") from None


def _walk(buf: memoryview, off: int, vt: VT, n: int, what: str,
          runs: list[tuple[VT, int, int]] | None = None) -> int:
    """Check that ``n`` values of type ``vt`` at ``off`` lie in the file; return the offset after them.

    With ``runs``, also append ``(type, start, count)`` per run of leaf values,
    nested arrays flattened; a string is a run of ``count`` bytes.
    """
    size = len(buf)
    _check_count(buf, off, n, _MIN_SIZE.get(vt, 1), what)
    if vt in _SCALARS:
        if runs is not None and n:
            runs.append((vt, off, n))
        return off + n * _SCALARS[vt][1].itemsize
    if vt == VT.STRING:
        unpack = _U64.unpack_from
        try:
            if runs is None:  # the hot path: measure a 150k-token vocabulary at open time
                for _ in range(n):
                    off += 8 + unpack(buf, off)[0]
            else:
                for _ in range(n):
                    k = unpack(buf, off)[0]
                    runs.append((VT.STRING, off + 8, k))
                    off += 8 + k
        except (struct.error, OverflowError):  # a length ran past the end; the next read fell off
            off = size + 1
        if off > size:
            raise _Corrupt(f"{what}: a string runs past the end of the file")
        return off
    if vt == VT.ARRAY:
        for _ in range(n):
            sub = _vtype(buf, off, what)
            off = _walk(buf, off + 12, sub, _u64(buf, off + 4, what), what, runs)
        return off
    raise _Corrupt(f"{what} has unhandled value type {vt.name}")


def _array_types(buf: memoryview, off: int) -> list[VT]:
    """gguf-py's ``types`` for the (already checked) array whose header is at ``off``."""
    sub, n = VT(_U32.unpack_from(buf, off)[0]), _U64.unpack_from(buf, off + 4)[0]
    if n == 0:
        return [VT.ARRAY]
    return [VT.ARRAY] + (_array_types(buf, off + 12) if sub == VT.ARRAY else [sub])


def _decode_strings(buf: memoryview, off: int, n: int, end: int) -> list[str]:
    """The ``n`` (already checked) strings from ``off`` to ``end``."""
    unpack, out = _U64.unpack_from, []
    append = out.append
    raw = bytes(buf[off:end])  # slicing bytes is faster than slicing the memmap
    off = 0
    for _ in range(n):
        k = unpack(raw, off)[0]
        off += 8
        append(raw[off:off + k].decode())
        off += k
    return out


def _load_array(buf: memoryview, off: int, end: int, types: list[VT]) -> list[Any]:
    """The flat list gguf-py's ``contents()`` gives for the array from ``off`` (its header) to ``end``."""
    sub, n = VT(_U32.unpack_from(buf, off)[0]), _U64.unpack_from(buf, off + 4)[0]
    off += 12
    if sub == VT.STRING:
        return _decode_strings(buf, off, n, end)
    if sub in _SCALARS:
        return np.frombuffer(buf, _SCALARS[sub][1], n, off).tolist()
    runs: list[tuple[VT, int, int]] = []
    _walk(buf, off, sub, n, "array", runs)
    # gguf-py decodes every leaf as text if the first leaf is a string, else as numbers (strings as bytes).
    as_text, out = types[-1] == VT.STRING, []
    for vt, start, k in runs:
        if vt == VT.STRING and as_text:
            out.append(str(buf[start:start + k], "utf-8"))
        elif vt == VT.STRING:
            out += buf[start:start + k].tolist()
        elif as_text:
            size = _SCALARS[vt][1].itemsize
            out += [str(buf[a:a + size], "utf-8") for a in range(start, start + k * size, size)]
        else:
            out += np.frombuffer(buf, _SCALARS[vt][1], k, start).tolist()
    return out


# --------------------------------------------------------------------------- sections

def _field(buf: memoryview, kv_off: int, off: int, key: str) -> tuple[GGUFField, int]:
    """The entry at ``kv_off`` whose value's type tag is at ``off``, and the offset after it."""
    what = f"metadata {key!r}"
    vt = _vtype(buf, off, what)
    start = off + 4
    if vt in _SCALARS:
        st = _SCALARS[vt][0]
        if start + st.size > len(buf):
            raise _Corrupt(f"{what} is cut off at byte {len(buf)}")
        value = st.unpack_from(buf, start)[0]
        return GGUFField(key, kv_off, [vt], lambda: value), start + st.size
    if vt == VT.STRING:
        end = _walk(buf, start, VT.STRING, 1, what)
        return GGUFField(key, kv_off, [vt], lambda: str(buf[start + 8:end], "utf-8")), end
    if vt == VT.ARRAY:
        end = _walk(buf, start, VT.ARRAY, 1, what)
        types = _array_types(buf, start)
        return GGUFField(key, kv_off, types, lambda: _load_array(buf, start, end, types)), end
    raise _Corrupt(f"{what} has unhandled value type {vt.name}")


def _constant(name: str, offset: int, value: int, vt: VT) -> GGUFField:
    return GGUFField(name, offset, [vt], lambda: value)


def _parse(path: Path, data: np.memmap) -> GGUFFile:
    buf = memoryview(data)
    version = _u32(buf, 4, "version")
    if version not in SUPPORTED_VERSIONS:
        if version and not version & 0xFFFF:
            raise InputError(f"{path}: big-endian GGUF files are not supported")
        raise InputError(f"{path}: unsupported GGUF version {version} (kvconvert reads versions 2 and 3)")
    n_tensors, n_kv = _u64(buf, 8, "tensor count"), _u64(buf, 16, "metadata count")
    off = 24
    _check_count(buf, off, n_kv, _MIN_KV, "the metadata count")
    _check_count(buf, off, n_tensors, _MIN_TENSOR, "the tensor count")
    fields = {"GGUF.version": _constant("GGUF.version", 4, version, VT.UINT32),
              "GGUF.tensor_count": _constant("GGUF.tensor_count", 8, n_tensors, VT.UINT64),
              "GGUF.kv_count": _constant("GGUF.kv_count", 16, n_kv, VT.UINT64)}
    for i in range(n_kv):
        key, end = _text(buf, off, f"metadata key #{i}")
        if key in fields:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        fields[key], off = _field(buf, off, end, key)
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    if (f := fields.get("general.alignment")) is not None:
        if f.types != [VT.UINT32]:
            raise _Corrupt("general.alignment is not a uint32")
        alignment = f.contents()
        if alignment == 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment {alignment} is not a power of two")

    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        name, off = _text(buf, off, f"tensor #{i} name")
        n_dims = _u32(buf, off, f"tensor {name}")
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
        if off + 4 + 8 * n_dims + 12 > len(buf):
            raise _Corrupt(f"tensor {name} is cut off at byte {len(buf)}")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
        off += 4 + 8 * n_dims
        raw_type, rel = _U32.unpack_from(buf, off)[0], _U64.unpack_from(buf, off + 4)[0]
        off += 12
        infos.append((name, dims, raw_type, rel))
    data_offset = -(-off // alignment) * alignment

    tensors: list[GGUFTensor] = []
    for name, dims, raw_type, rel in infos:
        tensors.append(_tensor(data, data_offset, alignment, name, dims, raw_type, rel))
    if len({t.name for t in tensors}) != len(tensors):
        raise _Corrupt("two tensors have the same name")
    spans = sorted((t.data_offset, t.data_offset + t.n_bytes, t.name) for t in tensors)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise _Corrupt(f"the data of tensors {a} and {b} overlap")
    return GGUFFile(path, data, fields, tensors, alignment, data_offset)


def _tensor(data: np.memmap, data_offset: int, alignment: int, name: str, dims: tuple[int, ...],
            raw_type: int, rel: int) -> GGUFTensor:
    try:
        qtype = QT(raw_type)
    except ValueError:
        raise _Corrupt(f"tensor {name} has unknown type {raw_type}") from None
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = tuple(reversed(dims))
    dtype = _TYPED.get(qtype)
    if dtype is None:
        if not dims or dims[0] % block:
            raise _Corrupt(f"tensor {name}: row size {dims[0] if dims else 0} is not a multiple "
                           f"of the {qtype.name} block size {block}")
        dtype, shape = np.dtype(np.uint8), (*shape[:-1], dims[0] // block * type_size)
    n_elements = math.prod(dims)
    n_bytes = n_elements * type_size // block
    if rel % alignment:
        raise _Corrupt(f"tensor {name} data offset {rel} is not a multiple of the alignment {alignment}")
    start = data_offset + rel
    if start + n_bytes > len(data):
        raise _Corrupt(f"tensor {name} extends past the end of the file")
    array = data[start:start + n_bytes].view(dtype).reshape(shape)
    return GGUFTensor(name, qtype, np.array(dims, dtype=np.uint64), n_elements, n_bytes, start, array)


# --------------------------------------------------------------------------- public API

def open_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file; any problem with it is one ``InputError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    regular_file(path, "GGUF file")  # a FIFO or device would block or never end
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise InputError(f"{path}: not a GGUF file (bad magic {magic!r})")
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return _parse(path, data)
    except _Corrupt as e:
        raise InputError(f"{path}: corrupt or truncated GGUF ({e}); re-download or re-convert it") from None
    except RecursionError:
        raise InputError(f"{path}: corrupt GGUF (metadata arrays nested too deeply)") from None
    except (struct.error, ValueError, OverflowError, IndexError) as e:  # a safety net: the checks should come first
        raise InputError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from None


def field_value(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """A metadata value as a plain Python value (str, int, float, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except UnicodeDecodeError:
        raise InputError(f"{reader.path}: metadata {key} is not valid UTF-8; the file is corrupt") from None


def tensor_map(reader: GGUFFile) -> dict[str, GGUFTensor]:
    return {t.name: t for t in reader.tensors}


def dequantize(t: GGUFTensor) -> np.ndarray:
    """A GGUF tensor as float32 in numpy (row-major, last axis = ne0) order."""
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    qtype = QT(t.tensor_type)
    if qtype == QT.F32:
        out = np.asarray(t.data, dtype=np.float32)
    elif qtype == QT.F16:
        out = np.asarray(t.data).view(np.float16).astype(np.float32)
    else:
        try:
            out = gguf.quants.dequantize(t.data, qtype)
        except NotImplementedError:
            raise InputError(f"tensor {t.name}: weight type {qtype.name} cannot be dequantized") from None
    return out.reshape(shape)
