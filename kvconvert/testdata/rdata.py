"""Read R data without R: the XDR serialization format and lazy-load databases.

R writes objects with ``serialize()`` (format versions 2 and 3). An ``.rds``
file is one such stream, usually gzip-compressed. A *lazy-load database* (what
an installed package keeps in ``data/Rdata.rdb`` and ``R/<pkg>.rdb``) is a pair
of files:

* ``<name>.rdb``: consecutive records, each ``[4-byte big-endian uncompressed
  length][compressed serialization]`` (zlib when the index says
  ``compressed = TRUE``; with ``compressed = 2`` or ``3`` a fifth byte names
  the method: ``'0'`` none, ``'1'`` zlib, ``'2'`` bzip2, ``'Z'`` xz);
* ``<name>.rdx``: an RDS stream (gzip in practice) holding
  ``list(variables = list(name = c(offset, length), ...), references = ...,
  compressed = ...)``.

This module decodes the XDR ("X\\n") form of the stream, which is what R always
writes for these files. Supported object types: NULL, symbols, pairlists and
calls (with tags and attributes), character vectors (UTF-8 / Latin-1 / bytes /
ASCII / native strings, NA_character_), logical, integer, double, complex, raw
and list vectors with attributes (so factors and data frames come out as lists
with ``class`` / ``names`` / ``row.names`` attributes), references to earlier
symbols, namespace/package markers, the special environments and the common
ALTREP classes (compact sequences, wrappers, deferred strings). Anything else
(closures, environments, byte code, external pointers, S4 objects) raises
``RDataError`` naming the type, rather than being decoded wrongly.

R's NA values map to ``None`` in character, logical, integer and double
vectors (a NaN that is not R's NA stays ``float('nan')``).
"""

from __future__ import annotations

import array
import bz2
import codecs
import gzip
import lzma
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..base.errors import InputError

__all__ = [
    "RDataError", "RSymbol", "RVector", "RPairList", "RSpecial",
    "unserialize", "read_rds", "decompress_record", "LazyLoadDB",
    "character", "data_frame_columns",
]


class RDataError(InputError):
    """An R data stream that is malformed or uses a feature this reader lacks."""


# SEXP type codes (Rinternals.h) and serialization pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP = 7, 8, 9, 10
INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 13, 14, 15, 16, 17
VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = 19, 20, 21, 22, 23, 24, 25
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP = 238, 239, 240
BASEENV_SXP, EMPTYENV_SXP, BCREPREF, BCREPDEF = 241, 242, 243, 244
GENERICREFSXP, CLASSREFSXP, PERSISTSXP, PACKAGESXP, NAMESPACESXP = 245, 246, 247, 248, 249
BASENAMESPACE_SXP, MISSINGARG_SXP, UNBOUNDVALUE_SXP = 250, 251, 252
GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 253, 254, 255

_TYPE_NAMES = {code: name for name, code in list(globals().items())
               if name.endswith("SXP") and isinstance(code, int)}

# Bits of the per-item flags word.
_IS_OBJECT = 1 << 8
_HAS_ATTR = 1 << 9
_HAS_TAG = 1 << 10
# Bits of the "levels" field (flags >> 12) of a CHARSXP: its encoding.
_BYTES_MASK, _LATIN1_MASK, _UTF8_MASK, _ASCII_MASK = 1 << 1, 1 << 2, 1 << 3, 1 << 6

_NA_INT = -(2**31)
_NA_REAL_LOW_WORD = 1954  # R's NA_real_ is a NaN whose low 32 bits are 1954

_VECTOR_KINDS = {
    LGLSXP: "logical", INTSXP: "integer", REALSXP: "double", CPLXSXP: "complex",
    STRSXP: "character", VECSXP: "list", EXPRSXP: "expression", RAWSXP: "raw",
}


@dataclass(frozen=True)
class RSymbol:
    """An R symbol (a name such as ``names`` or ``class``)."""

    name: str


@dataclass(frozen=True)
class RSpecial:
    """A singleton R value without data: ``R_GlobalEnv``, ``R_MissingArg``, a namespace, ..."""

    name: str
    spec: tuple[str, ...] = ()


@dataclass(eq=False)
class RVector:
    """An R atomic vector or list.

    ``kind`` is R's ``typeof()`` ("character", "integer", "double", "logical",
    "complex", "raw", "list", "expression"); ``values`` is a list (``bytes``
    for raw vectors); NA is ``None``.
    """

    kind: str
    values: list[Any] | bytes
    attributes: dict[str, Any] = field(default_factory=dict)
    is_object: bool = False

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)

    def __getitem__(self, index: int) -> Any:
        return self.values[index]

    @property
    def names(self) -> list[str | None] | None:
        """The ``names`` attribute as a Python list, if present."""
        names = self.attributes.get("names")
        return list(names.values) if isinstance(names, RVector) else None

    @property
    def r_class(self) -> list[str]:
        """The ``class`` attribute (empty if the vector has none)."""
        cls = self.attributes.get("class")
        return [c for c in cls.values if c is not None] if isinstance(cls, RVector) else []


@dataclass(eq=False)
class RPairList:
    """A pairlist (``kind="pairlist"``) or a call (``kind="language"``).

    ``items`` holds ``(tag, value)`` per cell; ``tail`` is a non-NULL final CDR
    of a dotted pair (rare).
    """

    kind: str
    items: list[tuple[str | None, Any]]
    attributes: dict[str, Any] = field(default_factory=dict)
    tail: Any = None

    def as_dict(self) -> dict[str, Any]:
        """Tagged items as a dict (a pairlist used as a named list)."""
        out: dict[str, Any] = {}
        for tag, value in self.items:
            if tag is None:
                raise RDataError("pairlist has an untagged item; cannot use it as a named list")
            out[tag] = value
        return out


_SPECIALS = {
    GLOBALENV_SXP: RSpecial("R_GlobalEnv"),
    EMPTYENV_SXP: RSpecial("R_EmptyEnv"),
    BASEENV_SXP: RSpecial("R_BaseEnv"),
    BASENAMESPACE_SXP: RSpecial("R_BaseNamespace"),
    UNBOUNDVALUE_SXP: RSpecial("R_UnboundValue"),
    MISSINGARG_SXP: RSpecial("R_MissingArg"),
}


def _type_name(code: int) -> str:
    return f"{_TYPE_NAMES.get(code, 'unknown type')} ({code})"


class _Reader:
    """Decodes one XDR serialization stream."""

    def __init__(self, data: bytes | memoryview, source: str) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.source = source
        self.refs: list[Any] = []
        self.native_encoding = "utf-8"
        self.depth = 0

    # -- primitives ------------------------------------------------------
    def fail(self, what: str) -> RDataError:
        return RDataError(f"cannot read R data {self.source}: {what} (at byte {self.pos})")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"stream ends early (wanted {n} more bytes)")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int32()
        if n == -1:  # long vector: upper and lower 32 bits follow
            upper, lower = struct.unpack(">II", self.take(8))
            return (upper << 32) + lower
        if n < 0:
            raise self.fail(f"negative vector length {n}")
        return n

    # -- header ------------------------------------------------------------
    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            names = {b"A\n": "ASCII", b"B\n": "native binary"}
            if fmt in names:
                raise self.fail(f"{names[fmt]} serialization is not supported (only XDR); re-save with saveRDS()")
            raise self.fail(f"not an R serialization stream (starts with {fmt!r})")
        version = self.int32()
        self.int32()  # version of R that wrote it
        self.int32()  # minimal R version to read it
        if version == 3:
            nelen = self.int32()
            name = bytes(self.take(nelen)).decode("ascii", "replace")
            self.native_encoding = _python_codec(name)
        elif version != 2:
            raise self.fail(f"serialization format version {version} is not supported (only 2 and 3)")

    # -- items -------------------------------------------------------------
    def item(self) -> Any:
        return self.item_with_flags(self.int32())

    def item_with_flags(self, flags: int) -> Any:
        sxp = flags & 0xFF
        has_attr = bool(flags & _HAS_ATTR)
        if sxp == NILVALUE_SXP:
            return None
        if sxp in _SPECIALS:
            return _SPECIALS[sxp]
        if sxp == REFSXP:
            index = flags >> 8 or self.int32()
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"reference #{index} to an object not yet read ({len(self.refs)} known)")
            return self.refs[index - 1]
        if sxp == SYMSXP:
            name = self.item()
            if not isinstance(name, str):
                raise self.fail("symbol without a printable name")
            symbol = RSymbol(name)
            self.refs.append(symbol)
            return symbol
        if sxp in (NAMESPACESXP, PACKAGESXP):
            special = RSpecial("namespace" if sxp == NAMESPACESXP else "package", tuple(self.string_vec()))
            self.refs.append(special)
            return special
        if sxp in (LISTSXP, LANGSXP):
            return self.pairlist(flags)
        if sxp == CHARSXP:
            value = self.charsxp(flags)
            if has_attr:  # old R versions could attach (ignored) attributes to strings
                self.nested()
            return value
        if sxp == ALTREP_SXP:
            return self.altrep(flags)
        if sxp in _VECTOR_KINDS:
            vector = RVector(_VECTOR_KINDS[sxp], self.vector_values(sxp), is_object=bool(flags & _IS_OBJECT))
            if has_attr:
                vector.attributes = self.attributes()
            return vector
        raise self.fail(f"R object type {_type_name(sxp)} is not supported by this reader")

    def nested(self) -> Any:
        self.depth += 1
        if self.depth > 10_000:
            raise self.fail("objects nested too deeply")
        try:
            return self.item()
        finally:
            self.depth -= 1

    def string_vec(self) -> list[str | None]:
        """The string vector of a namespace/package/persistent reference."""
        if self.int32() != 0:
            raise self.fail("named persistent string vectors are not supported")
        return [self.charsxp(self.int32(), expect=True) for _ in range(self.int32())]

    def charsxp(self, flags: int, expect: bool = False) -> str | bytes | None:
        if expect and flags & 0xFF != CHARSXP:
            raise self.fail(f"expected a string (CHARSXP), found {_type_name(flags & 0xFF)}")
        n = self.int32()
        if n == -1:
            return None  # NA_character_
        raw = bytes(self.take(n))
        levels = flags >> 12
        if levels & _BYTES_MASK:
            return raw
        if levels & _UTF8_MASK:
            codec = "utf-8"
        elif levels & _LATIN1_MASK:
            codec = "latin-1"
        elif levels & _ASCII_MASK:
            codec = "ascii"
        else:
            codec = self.native_encoding
        try:
            return raw.decode(codec)
        except UnicodeDecodeError as err:
            raise self.fail(f"string is not valid {codec}: {err.reason}") from None

    def vector_values(self, sxp: int) -> list[Any] | bytes:
        n = self.length()
        if sxp == STRSXP:
            out: list[Any] = []
            for _ in range(n):
                flags = self.int32()
                if flags & 0xFF == CHARSXP:
                    out.append(self.item_with_flags(flags))
                else:  # R writes CHARSXPs here; anything else is a corrupt stream
                    raise self.fail(f"character vector element is {_type_name(flags & 0xFF)}, not a string")
            return out
        if sxp in (VECSXP, EXPRSXP):
            return [self.nested() for _ in range(n)]
        if sxp == RAWSXP:
            return bytes(self.take(n))
        if sxp in (INTSXP, LGLSXP):
            ints = _be_array("i", self.take(4 * n))
            if sxp == INTSXP:
                return [None if v == _NA_INT else v for v in ints]
            return [None if v == _NA_INT else bool(v) for v in ints]
        if sxp == REALSXP:
            return _doubles(self.take(8 * n))
        if sxp == CPLXSXP:
            parts = _doubles(self.take(16 * n))
            return [None if re is None or im is None else complex(re, im)
                    for re, im in zip(parts[0::2], parts[1::2])]
        raise self.fail(f"R object type {_type_name(sxp)} is not a vector")  # pragma: no cover

    def attributes(self) -> dict[str, Any]:
        attrs = self.nested()
        if not isinstance(attrs, RPairList) or attrs.kind != "pairlist":
            raise self.fail("attributes are not a pairlist")
        try:
            return attrs.as_dict()
        except RDataError:
            raise self.fail("an attribute has no name") from None

    def pairlist(self, flags: int) -> RPairList:
        """Read a chain of cons cells iteratively (long pairlists would overflow recursion)."""
        result = RPairList("language" if flags & 0xFF == LANGSXP else "pairlist", [])
        first = True
        while True:
            if flags & _HAS_ATTR:
                attrs = self.attributes()
                if first:
                    result.attributes = attrs
                elif attrs:
                    raise self.fail("attributes on an inner pairlist cell are not supported")
            tag: str | None = None
            if flags & _HAS_TAG:
                tag_obj = self.nested()
                if isinstance(tag_obj, RSymbol):
                    tag = tag_obj.name
                elif tag_obj is not None:
                    raise self.fail("pairlist tag is not a symbol")
            result.items.append((tag, self.nested()))
            first = False
            flags = self.int32()
            sxp = flags & 0xFF
            if sxp == NILVALUE_SXP:
                return result
            if sxp != LISTSXP:
                result.tail = self.item_with_flags(flags)
                return result

    def altrep(self, flags: int) -> Any:
        info = self.nested()
        state = self.nested()
        attrs = self.nested()
        if not isinstance(info, RPairList) or not info.items or not isinstance(info.items[0][1], RSymbol):
            raise self.fail("ALTREP object without a class description")
        cls = info.items[0][1].name
        value = _expand_altrep(cls, state)
        if value is None:
            raise self.fail(f"ALTREP class '{cls}' is not supported")
        if attrs is not None:
            if not isinstance(attrs, RPairList):
                raise self.fail("ALTREP attributes are not a pairlist")
            value.attributes = attrs.as_dict()
        value.is_object = bool(flags & _IS_OBJECT)
        return value


def _be_array(code: str, data: memoryview) -> array.array:
    values = array.array(code)
    values.frombytes(data)
    if sys.byteorder == "little":
        values.byteswap()
    return values


def _doubles(data: memoryview) -> list[float | None]:
    values = _be_array("d", data).tolist()
    for i, v in enumerate(values):
        if math.isnan(v):
            low_word = struct.unpack_from(">I", data, 8 * i + 4)[0]
            if low_word == _NA_REAL_LOW_WORD:
                values[i] = None
    return values


def _python_codec(r_name: str) -> str:
    """Map R's name of a native encoding to a Python codec (UTF-8 if unknown)."""
    name = r_name.strip().lower()
    if name in ("", "c", "posix", "ansi_x3.4-1968", "us-ascii"):
        return "utf-8"  # ASCII is a subset; R flags pure-ASCII strings anyway
    if name == "latin1":
        return "latin-1"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _format_r_number(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        if math.isnan(value):
            return "NaN"
        return f"{value:.15g}"
    return str(value)


def _expand_altrep(cls: str, state: Any) -> RVector | None:
    """Materialise the ALTREP classes R itself writes; None if unknown."""
    if cls in ("compact_intseq", "compact_realseq"):
        if not isinstance(state, RVector) or len(state) != 3:
            return None
        n, start, step = state.values
        if cls == "compact_intseq":
            n, start, step = int(n), int(start), int(step)
            return RVector("integer", [start + i * step for i in range(n)])
        return RVector("double", [float(start) + i * float(step) for i in range(int(n))])
    if cls.startswith("wrap_"):
        # state is list(wrapped vector, metadata)
        if isinstance(state, RVector) and state.kind == "list" and state.values:
            inner = state.values[0]
            if isinstance(inner, RVector):
                return RVector(inner.kind, inner.values, dict(inner.attributes))
        return None
    if cls == "deferred_string":
        # state is a pairlist cell: (original numeric vector . scalar info)
        if isinstance(state, RPairList) and state.items and isinstance(state.items[0][1], RVector):
            source = state.items[0][1]
            return RVector("character", [_format_r_number(v) for v in source.values])
        return None
    return None


def unserialize(data: bytes | memoryview, source: str = "<bytes>") -> Any:
    """Decode one uncompressed R serialization stream (what ``serialize()`` writes)."""
    reader = _Reader(data, source)
    reader.header()
    value = reader.item()
    if reader.pos != len(reader.buf):
        raise reader.fail(f"{len(reader.buf) - reader.pos} unexpected bytes after the object")
    return value


def _decompress_whole(data: bytes, source: str) -> bytes:
    """Undo the compression of a whole .rds-style file, recognised by its magic."""
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:3] == b"BZh":
            return bz2.decompress(data)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
        raise RDataError(f"cannot read R data {source}: corrupt compressed file ({err}); fetch it again") from None
    if data[:2] in (b"X\n", b"A\n", b"B\n"):
        return data
    # Some writers store a single lazy-load style record (length prefix + zlib).
    return decompress_record(data, 1, source)


def read_rds(path: str | Path) -> Any:
    """Read an ``.rds`` file (gzip, bzip2, xz or uncompressed) or a single-record index."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RDataError(f"cannot read R data file {path}: {err.strerror}") from None
    return unserialize(_decompress_whole(data, str(path)), str(path))


def decompress_record(record: bytes | memoryview, compressed: int, source: str = "<record>") -> bytes:
    """Decompress one lazy-load database record given the index's ``compressed`` code."""
    record = bytes(record)
    if len(record) < 4:
        raise RDataError(f"cannot read R data {source}: record of {len(record)} bytes is too short")
    expected = struct.unpack(">I", record[:4])[0]
    body = record[4:]
    method = "1"
    if compressed in (2, 3):
        if not body:
            raise RDataError(f"cannot read R data {source}: record has no compression type byte")
        method, body = chr(body[0]), body[1:]
    elif compressed == 0:
        method = "0"
    elif compressed != 1:
        raise RDataError(f"cannot read R data {source}: unknown compression code {compressed} in the index")
    try:
        if method == "0":
            out = body
        elif method == "1":
            out = zlib.decompress(body)
        elif method == "2":
            out = bz2.decompress(body)
        elif method == "Z":
            out = lzma.decompress(body)
        else:
            raise RDataError(f"cannot read R data {source}: unknown record compression type {method!r}")
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
        raise RDataError(f"cannot read R data {source}: corrupt compressed record ({err})") from None
    if len(out) != expected:
        raise RDataError(
            f"cannot read R data {source}: record decompressed to {len(out)} bytes, header says {expected}")
    return out


class LazyLoadDB:
    """An R lazy-load database (``.rdb`` + ``.rdx``), read without R.

    ``db.names()`` lists the variables in index order; ``db[name]`` decodes one.
    """

    def __init__(self, rdb: str | Path, rdx: str | Path | None = None) -> None:
        self.rdb = Path(rdb)
        self.rdx = Path(rdx) if rdx is not None else self.rdb.with_suffix(".rdx")
        index = read_rds(self.rdx)
        if not isinstance(index, RVector) or index.kind != "list" or index.names is None:
            raise RDataError(f"cannot read lazy-load index {self.rdx}: not a named list; is it an .rdx file?")
        fields = dict(zip(index.names, index.values))
        variables = fields.get("variables")
        if not isinstance(variables, RVector) or variables.kind != "list":
            raise RDataError(f"cannot read lazy-load index {self.rdx}: no 'variables' list")
        self.compressed = _index_compression(fields.get("compressed"), self.rdx)
        self._entries: dict[str, tuple[int, int]] = {}
        for name, entry in zip(variables.names or [], variables.values):
            if name is None or not isinstance(entry, RVector) or len(entry) != 2 or None in entry.values:
                raise RDataError(f"cannot read lazy-load index {self.rdx}: bad entry for variable {name!r}")
            self._entries[name] = (int(entry[0]), int(entry[1]))

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def record(self, name: str) -> bytes:
        """The decompressed serialization stream of variable ``name``."""
        if name not in self._entries:
            raise RDataError(f"variable {name!r} is not in lazy-load database {self.rdb}; "
                             f"it has: {', '.join(self._entries)}")
        offset, length = self._entries[name]
        try:
            with open(self.rdb, "rb") as f:
                f.seek(offset)
                raw = f.read(length)
        except OSError as err:
            raise RDataError(f"cannot read lazy-load database {self.rdb}: {err.strerror}") from None
        if len(raw) != length:
            raise RDataError(f"lazy-load database {self.rdb} is truncated (variable {name!r}); fetch it again")
        return decompress_record(raw, self.compressed, f"{self.rdb}[{name}]")

    def __getitem__(self, name: str) -> Any:
        return unserialize(self.record(name), f"{self.rdb}[{name}]")


def _index_compression(value: Any, source: Path) -> int:
    if value is None:
        return 1  # very old indexes lack the field; R then assumes zlib
    if isinstance(value, RVector) and len(value) == 1 and value[0] is not None:
        return int(value[0])
    raise RDataError(f"cannot read lazy-load index {source}: bad 'compressed' field")


def character(value: Any, what: str = "value") -> list[str | None]:
    """The strings of an R character vector; RDataError if ``value`` is not one."""
    if not isinstance(value, RVector) or value.kind != "character":
        kind = value.kind if isinstance(value, RVector) else type(value).__name__
        raise RDataError(f"R {what} is a {kind}, not a character vector")
    return list(value.values)


def data_frame_columns(value: Any) -> dict[str, list[Any]]:
    """Columns of an R data frame as ``{name: values}`` (factors decoded to their labels)."""
    if not isinstance(value, RVector) or value.kind != "list" or "data.frame" not in value.r_class:
        raise RDataError("R value is not a data frame")
    names = value.names or []
    if len(names) != len(value) or None in names:
        raise RDataError("R data frame has missing column names")
    columns: dict[str, list[Any]] = {}
    for name, column in zip(names, value.values):
        if not isinstance(column, RVector):
            raise RDataError(f"R data frame column {name!r} is not a vector")
        if "factor" in column.r_class:
            labels = character(column.attributes.get("levels"), f"levels of factor {name!r}")
            columns[name] = [None if code is None else labels[code - 1] for code in column.values]
        else:
            columns[name] = list(column.values)
    return columns
