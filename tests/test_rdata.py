"""Unit tests of the R deserializer on XDR streams built by hand (offline, fast)."""

from __future__ import annotations

import gzip
import lzma
import math
import struct
import zlib
from pathlib import Path

import pytest

from kvconvert.testdata.rdata import (
    LazyLoadDB,
    RDataError,
    RPairList,
    RSpecial,
    RSymbol,
    RVector,
    character,
    data_frame_columns,
    decompress_record,
    read_rds,
    unserialize,
)

# Type codes and flag bits, written out here independently of the module.
NIL, SYM, LIST, CLO, CHAR, LGL, INT, REAL, STR, VEC, ALTREP, GLOBALENV, NILVALUE, REF = (
    0, 1, 2, 3, 9, 10, 13, 14, 16, 19, 238, 253, 254, 255)
OBJ, ATTR, TAG = 1 << 8, 1 << 9, 1 << 10
BYTES_ENC, LATIN1_ENC, UTF8_ENC, ASCII_ENC = 2, 4, 8, 64


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def flags(sxp: int, levels: int = 0, extra: int = 0) -> bytes:
    return i32(sxp | extra | (levels << 12))


def header(version: int = 3) -> bytes:
    out = b"X\n" + i32(version, 0x040201, 0x030500 if version == 3 else 0x020300)
    return out + (i32(5) + b"UTF-8" if version == 3 else b"")


def chars(value: str | bytes | None, enc: int = ASCII_ENC, codec: str = "ascii") -> bytes:
    if value is None:
        return flags(CHAR) + i32(-1)
    raw = value if isinstance(value, bytes) else value.encode(codec)
    return flags(CHAR, enc) + i32(len(raw)) + raw


def strsxp(*items: bytes, extra: int = 0) -> bytes:
    return flags(STR, extra=extra) + i32(len(items)) + b"".join(items)


def intsxp(*values: int, extra: int = 0) -> bytes:
    return flags(INT, extra=extra) + i32(len(values)) + i32(*values)


def symbol(name: str) -> bytes:
    return flags(SYM) + chars(name)


def ref(index: int) -> bytes:
    return i32((index << 8) | REF)


def cell(tag: bytes | None, value: bytes, sxp: int = LIST) -> bytes:
    """One cons cell (tag + CAR); the caller appends the CDR."""
    return flags(sxp, extra=TAG if tag is not None else 0) + (tag or b"") + value


NILV = i32(NILVALUE)
NA_INT = -(2**31)


def test_character_vector_with_na_and_encodings() -> None:
    stream = header() + strsxp(
        chars("plain"),
        chars("£ café ☃", UTF8_ENC, "utf-8"),
        chars(None),
        chars("façade", LATIN1_ENC, "latin-1"),
        chars(b"\xff\x00raw", BYTES_ENC),
        chars("", ASCII_ENC),
    )
    value = unserialize(stream)
    assert isinstance(value, RVector) and value.kind == "character"
    assert value.values == ["plain", "£ café ☃", None, "façade", b"\xff\x00raw", ""]
    assert value.attributes == {} and character(value)[2] is None


def test_native_encoding_from_version3_header_and_version2() -> None:
    latin1_header = b"X\n" + i32(3, 0x040201, 0x030500) + i32(6) + b"latin1"
    native = flags(CHAR) + i32(2) + "é!".encode("latin-1")  # no encoding bits: native
    assert unserialize(latin1_header + flags(STR) + i32(1) + native).values == ["é!"]
    assert unserialize(header(2) + strsxp(chars("v2"))).values == ["v2"]


def test_pairlist_with_tags_and_symbol_references() -> None:
    # pairlist(alpha = 1L, beta = "x", NULL, alpha = "again") - the 2nd `alpha` is REFSXP #1.
    stream = header() + (
        cell(symbol("alpha"), intsxp(1))
        + cell(symbol("beta"), strsxp(chars("x")))
        + cell(None, NILV)
        + cell(ref(1), strsxp(chars("again")))
        + NILV
    )
    value = unserialize(stream)
    assert isinstance(value, RPairList) and value.kind == "pairlist"
    tags = [tag for tag, _ in value.items]
    assert tags == ["alpha", "beta", None, "alpha"]
    assert value.items[0][1].values == [1]
    assert value.items[1][1].values == ["x"]
    assert value.items[2][1] is None
    assert value.items[3][1].values == ["again"]
    assert value.tail is None


def test_symbol_values_and_references_resolve_to_equal_symbols() -> None:
    stream = header() + flags(VEC) + i32(3) + symbol("foo") + symbol("bar") + ref(2)
    value = unserialize(stream)
    assert value.values == [RSymbol("foo"), RSymbol("bar"), RSymbol("bar")]


def test_bad_reference_index_is_an_error() -> None:
    stream = header() + flags(VEC) + i32(2) + symbol("foo") + ref(2)
    with pytest.raises(RDataError, match="reference #2"):
        unserialize(stream)


def test_vector_attributes_names_and_class() -> None:
    # c(a = 1L, b = NA) with class "myclass"; the attribute list uses tags.
    attrs = (cell(symbol("names"), strsxp(chars("a"), chars("b")))
             + cell(symbol("class"), strsxp(chars("myclass"))) + NILV)
    stream = header() + intsxp(1, NA_INT, extra=ATTR | OBJ) + attrs
    value = unserialize(stream)
    assert value.kind == "integer"
    assert value.values == [1, None]
    assert value.names == ["a", "b"]
    assert value.r_class == ["myclass"]
    assert value.is_object


def test_doubles_logicals_na_nan_inf() -> None:
    na_real = struct.pack(">II", 0x7FF00000, 1954)
    nan = struct.pack(">d", float("nan"))
    reals = flags(REAL) + i32(4) + struct.pack(">d", 1.5) + na_real + nan + struct.pack(">d", -math.inf)
    value = unserialize(header() + reals)
    assert value.kind == "double"
    assert value.values[0] == 1.5 and value.values[1] is None
    assert math.isnan(value.values[2]) and value.values[3] == -math.inf
    logicals = unserialize(header() + flags(LGL) + i32(3) + i32(1, 0, NA_INT))
    assert logicals.kind == "logical" and logicals.values == [True, False, None]


def test_long_vector_length_encoding_and_namespace_reference() -> None:
    # Length -1 means "64-bit length follows as (upper, lower)"; R uses it for long vectors.
    long_form = flags(INT) + i32(-1, 0, 3) + i32(5, 6, 7)
    # A namespace marker is a string vector (with a leading 0) and becomes reference #1.
    namespace = i32(249) + i32(0, 2) + chars("stats") + chars("4.2.1")
    stream = header() + flags(VEC) + i32(3) + long_form + namespace + ref(1)
    value = unserialize(stream)
    assert value.values[0].values == [5, 6, 7]
    assert value.values[1] == RSpecial("namespace", ("stats", "4.2.1"))
    assert value.values[2] is value.values[1]


def test_data_frame_with_factor_and_compact_row_names() -> None:
    # data.frame(n = c(3L, 4L), f = factor(c("lo", "hi")), row.names = c(NA, -2L))
    factor_attrs = (cell(symbol("levels"), strsxp(chars("hi"), chars("lo")))
                    + cell(symbol("class"), strsxp(chars("factor"))) + NILV)
    factor = intsxp(2, 1, extra=ATTR | OBJ) + factor_attrs
    frame_attrs = (cell(symbol("names"), strsxp(chars("n"), chars("f")))
                   + cell(ref(2), strsxp(chars("data.frame")))  # `class` symbol read in the factor
                   + cell(symbol("row.names"), intsxp(NA_INT, -2)) + NILV)
    stream = header() + flags(VEC, extra=ATTR | OBJ) + i32(2) + intsxp(3, 4) + factor + frame_attrs
    value = unserialize(stream)
    assert value.r_class == ["data.frame"]
    assert value.attributes["row.names"].values == [None, -2]
    assert data_frame_columns(value) == {"n": [3, 4], "f": ["lo", "hi"]}
    with pytest.raises(RDataError, match="not a data frame"):
        data_frame_columns(value.values[0])


def test_altrep_compact_intseq_and_special_values() -> None:
    info = cell(None, symbol("compact_intseq")) + cell(None, symbol("base")) + cell(None, intsxp(13)) + NILV
    state = flags(REAL) + i32(3) + struct.pack(">3d", 4, 10, 1)
    stream = header() + flags(VEC) + i32(2) + flags(ALTREP) + info + state + NILV + i32(GLOBALENV)
    value = unserialize(stream)
    assert value.values[0].kind == "integer"
    assert value.values[0].values == [10, 11, 12, 13]
    assert value.values[1] == RSpecial("R_GlobalEnv")


def test_unsupported_type_truncation_trailing_bytes_and_format() -> None:
    with pytest.raises(RDataError, match="CLOSXP"):
        unserialize(header() + flags(CLO))
    with pytest.raises(RDataError, match="ends early"):
        unserialize(header() + strsxp(chars("abc"))[:-1])
    with pytest.raises(RDataError, match="unexpected bytes"):
        unserialize(header() + NILV + b"\0")
    with pytest.raises(RDataError, match="ASCII"):
        unserialize(b"A\n2\n")
    with pytest.raises(RDataError, match="version 4"):
        unserialize(b"X\n" + i32(4, 0, 0) + NILV)
    with pytest.raises(RDataError, match="not a character vector"):
        character(unserialize(header() + intsxp(1)))


def record(payload: bytes, compressed: int = 1) -> bytes:
    """A lazy-load record: 4-byte big-endian uncompressed length + compressed data."""
    length = struct.pack(">I", len(payload))
    if compressed == 1:
        return length + zlib.compress(payload)
    return length + b"Z" + lzma.compress(payload)  # compressed=3 with the xz type byte


def named_list(entries: dict[str, bytes]) -> bytes:
    names = strsxp(*(chars(name) for name in entries))
    return (flags(VEC, extra=ATTR) + i32(len(entries)) + b"".join(entries.values())
            + cell(symbol("names"), names) + NILV)


def write_db(tmp_path: Path, objects: dict[str, bytes], compressed: int, index_format: str) -> Path:
    rdb = tmp_path / "Rdata.rdb"
    offsets: dict[str, bytes] = {}
    blob = b""
    for name, payload in objects.items():
        rec = record(header() + payload, compressed)
        offsets[name] = intsxp(len(blob), len(rec))
        blob += rec
    rdb.write_bytes(blob)
    flag = flags(LGL) + i32(1, 1) if compressed == 1 else intsxp(compressed)
    index = header() + named_list({"variables": named_list(offsets), "references": named_list({}), "compressed": flag})
    rdx = tmp_path / "Rdata.rdx"
    rdx.write_bytes(gzip.compress(index) if index_format == "gzip" else record(index))
    return rdb


@pytest.mark.parametrize("compressed, index_format", [(1, "gzip"), (1, "record"), (3, "gzip")])
def test_lazy_load_db_round_trip(tmp_path: Path, compressed: int, index_format: str) -> None:
    lines = [chars(f"line {i} – ünïcode", UTF8_ENC, "utf-8") for i in range(2000)]
    objects = {"novel": strsxp(*lines), "numbers": intsxp(7, 8, 9)}
    rdb = write_db(tmp_path, objects, compressed, index_format)
    db = LazyLoadDB(rdb)
    assert db.names() == ["novel", "numbers"]
    assert db.compressed == compressed
    assert "novel" in db and "other" not in db
    novel = character(db["novel"])
    assert len(novel) == 2000 and novel[1999] == "line 1999 – ünïcode"
    assert db["numbers"].values == [7, 8, 9]
    with pytest.raises(RDataError, match="not in lazy-load database"):
        db["other"]


def test_read_rds_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.rds"
    path.write_bytes(gzip.compress(header() + strsxp(chars("a"), chars(None))))
    assert read_rds(path).values == ["a", None]


def test_decompress_record_checks_length_and_corruption() -> None:
    good = record(b"hello world")
    assert decompress_record(good, 1) == b"hello world"
    bad_length = struct.pack(">I", 3) + good[4:]
    with pytest.raises(RDataError, match="header says 3"):
        decompress_record(bad_length, 1)
    with pytest.raises(RDataError, match="corrupt"):
        decompress_record(good[:4] + b"not zlib", 1)
    with pytest.raises(RDataError, match="compression code 7"):
        decompress_record(good, 7)


def test_truncated_database_is_reported(tmp_path: Path) -> None:
    rdb = write_db(tmp_path, {"x": intsxp(1)}, 1, "gzip")
    rdb.write_bytes(rdb.read_bytes()[:-3])
    with pytest.raises(RDataError, match="truncated"):
        LazyLoadDB(rdb)["x"]
