"""kvconvert.formats.gguf_io: the own GGUF parser against gguf-py's GGUFReader, and bad files.

Equivalence: every field's ``types``/``contents()`` and every tensor's
name/type/shape/sizes/offset/data equal gguf-py's, on the real SmolLM2 (and,
marked slow, Qwen2.5-Coder) GGUF and on files written here covering every
value type, odd arrays and several tensor types. Bad files: each becomes one
``InputError`` line naming the file, quickly.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from kvconvert.testdata import fixtures
from kvconvert.base.errors import InputError
from kvconvert.formats.gguf_io import dequantize, field_value, open_gguf, tensor_map

VT = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType


def assert_same_as_gguf_py(path: Path) -> None:
    want, got = gguf.GGUFReader(path), open_gguf(path)
    assert list(got.fields) == list(want.fields)
    for key, w in want.fields.items():
        g = got.fields[key]
        assert g.types == w.types, key
        assert g.offset == w.offset, key
        wc, gc = w.contents(), g.contents()
        assert gc == wc and type(gc) is type(wc), key
        if isinstance(wc, list):
            assert [type(x) for x in gc] == [type(x) for x in wc], key
            if wc:
                assert g.contents(0) == w.contents(0) and g.contents(slice(1, 3)) == w.contents(slice(1, 3)), key
    assert got.alignment == want.alignment and got.data_offset == want.data_offset
    assert len(got.tensors) == len(want.tensors)
    for g, w in zip(got.tensors, want.tensors):
        assert (g.name, g.tensor_type, g.n_elements, g.n_bytes, g.data_offset) == \
            (w.name, w.tensor_type, w.n_elements, w.n_bytes, w.data_offset), w.name
        assert type(g.tensor_type) is Q and type(g.name) is str
        assert g.shape.dtype == np.uint64 and g.shape.tolist() == w.shape.tolist(), w.name
        assert g.data.dtype == w.data.dtype and g.data.shape == w.data.shape, w.name
        assert g.data.tobytes() == w.data.tobytes(), w.name
        assert not g.data.flags.writeable
    assert got.data.filename == want.data.filename and isinstance(got.data, np.memmap)


# --------------------------------------------------------------------------- files written here

SCALARS = [  # (value type, writer method, value)
    (VT.UINT8, "add_uint8", 200), (VT.INT8, "add_int8", -100), (VT.UINT16, "add_uint16", 60000),
    (VT.INT16, "add_int16", -30000), (VT.UINT32, "add_uint32", 4_000_000_000),
    (VT.INT32, "add_int32", -2_000_000_000), (VT.FLOAT32, "add_float32", 0.1),
    (VT.UINT64, "add_uint64", 2**63 + 5), (VT.INT64, "add_int64", -(2**62)), (VT.FLOAT64, "add_float64", 0.1),
    (VT.BOOL, "add_bool", True), (VT.STRING, "add_string", "héllo ✓"),
]
ARRAYS = {
    VT.UINT8: [0, 1, 255], VT.INT8: [-128, 0, 127], VT.UINT16: [0, 65535], VT.INT16: [-32768, 5],
    VT.UINT32: [1, 2, 2**32 - 1], VT.INT32: [-(2**31), 7, 8], VT.FLOAT32: [0.1, -2.5, 1e30],
    VT.UINT64: [2**64 - 1, 0], VT.INT64: [-(2**63), 3], VT.FLOAT64: [0.1, 1e300], VT.BOOL: [True, False, True],
    VT.STRING: ["a", "", "Ġthe", "日本", "\x00x"],
}


def write_all_types(path: Path, alignment: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for vt, method, value in SCALARS:
        getattr(w, method)(f"scalar.{vt.name.lower()}", value)
    w.add_bool("scalar.false", False)
    w.add_key_value("scalar.empty", "", VT.STRING)  # add_string drops empty strings
    for vt, values in ARRAYS.items():
        w.add_key_value(f"array.{vt.name.lower()}", values, VT.ARRAY, sub_type=vt)
    w.add_key_value("nested.ints", [[1, 2], [3], [4, 5, 6]], VT.ARRAY)
    w.add_key_value("nested.strings", [["a", "bc"], ["d"]], VT.ARRAY)
    w.add_key_value("nested.deep", [[[1.5], [2.5, 3.5]], [[4.5]]], VT.ARRAY)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("f32_1d", x[0])
    w.add_tensor("f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(x, Q.BF16), raw_dtype=Q.BF16)
    w.add_tensor("q8_0", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("q4_0", gguf.quants.quantize(x, Q.Q4_0), raw_dtype=Q.Q4_0)
    w.add_tensor("q4_k", rng.integers(0, 256, (2, 144), dtype=np.uint8), raw_dtype=Q.Q4_K)
    for dt in (np.float64, np.int8, np.int16, np.int32, np.int64):
        w.add_tensor(f"typed_{np.dtype(dt).name}", (x[:2] * 50).astype(dt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_value_and_tensor_type_matches_gguf_py(tmp_path):
    path = write_all_types(tmp_path / "all.gguf")
    assert_same_as_gguf_py(path)
    r = open_gguf(path)
    # The fixture really covers what it claims (guards against a writer silently dropping things).
    assert {f.types[0] for f in r.fields.values()} >= set(VT) and len(r.fields) == 3 + 1 + 14 + 12 + 3
    assert {f.types[-1] for k, f in r.fields.items() if k.startswith("array.")} == set(ARRAYS)
    assert {t.tensor_type for t in r.tensors} >= {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.F64, Q.I8, Q.I32}
    assert field_value(r, "nested.ints") == [1, 2, 3, 4, 5, 6]  # gguf-py flattens nested arrays
    assert field_value(r, "array.string") == ARRAYS[VT.STRING]
    assert field_value(r, "scalar.float32") == float(np.float32(0.1))
    assert tensor_map(r)["bf16"].data.shape == (3, 128)  # BF16 is bytes per row, as in gguf-py


def test_custom_alignment_and_version_2_match_gguf_py(tmp_path):
    path = write_all_types(tmp_path / "a64.gguf", alignment=64)
    assert_same_as_gguf_py(path)
    r = open_gguf(path)
    assert r.alignment == 64 and r.data_offset % 64 == 0 and all(t.data_offset % 64 == 0 for t in r.tensors)
    v2 = tmp_path / "v2.gguf"
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2.write_bytes(bytes(data))
    assert_same_as_gguf_py(v2)
    assert field_value(open_gguf(v2), "GGUF.version") == 2


def test_contents_are_copies_and_lazy_decoding_errors_match_gguf_py(tmp_path):
    path = tmp_path / "bad_utf8.gguf"
    path.write_bytes(raw_gguf([kv("tokens", VT.ARRAY, arr(VT.STRING, [s(b"ok"), s(b"\xff\xfe")])),
                               kv("list", VT.ARRAY, arr(VT.UINT32, [u32(1), u32(2)]))]))
    r = open_gguf(path)  # values are decoded on use, as in gguf-py
    with pytest.raises(UnicodeDecodeError):
        gguf.GGUFReader(path).fields["tokens"].contents()
    with pytest.raises(UnicodeDecodeError):
        r.fields["tokens"].contents()
    got = r.fields["list"].contents()
    got.append(99)
    assert r.fields["list"].contents() == [1, 2]


# --------------------------------------------------------------------------- raw bytes

def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def s(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + u32(vtype) + payload


def arr(sub: int, items: list[bytes], count: int | None = None) -> bytes:
    return u32(sub) + u64(len(items) if count is None else count) + b"".join(items)


def tinfo(name: str, dims: list[int], qtype: int, offset: int) -> bytes:
    return s(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(qtype) + u64(offset)


def raw_gguf(kvs: list[bytes], tensors: list[bytes] = (), data: bytes = b"", *, version: bytes = u32(3),
             n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    head = b"GGUF" + version + u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + b"\x00" * (-len(head) % 32) + data


def test_odd_arrays_match_gguf_py(tmp_path):
    """Empty arrays (gguf-py gives them no sub-type) and nested arrays whose leaves differ in type."""
    path = tmp_path / "odd.gguf"
    path.write_bytes(raw_gguf([
        kv("empty.u32", VT.ARRAY, arr(VT.UINT32, [])),
        kv("empty.str", VT.ARRAY, arr(VT.STRING, [])),
        kv("nested.empty_first", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT32, []), arr(VT.UINT32, [u32(7), u32(8)])])),
        kv("nested.str_then_u32", VT.ARRAY, arr(VT.ARRAY, [arr(VT.STRING, [s("xy")]),
                                                           arr(VT.UINT32, [u32(0x41424344)])])),
        kv("nested.u8_then_str", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [b"\x05"]), arr(VT.STRING, [s("AB")])])),
        kv("bool.two", VT.BOOL, b"\x02"),
        kv("bools", VT.ARRAY, arr(VT.BOOL, [b"\x00", b"\x02"])),
    ], [tinfo("scalar", [], Q.F32, 0)], struct.pack("<f", 1.5)))
    assert_same_as_gguf_py(path)
    r = open_gguf(path)
    assert r.fields["empty.u32"].types == [VT.ARRAY] and r.fields["empty.u32"].contents() == []
    assert r.fields["nested.str_then_u32"].contents() == ["xy", "DCBA"]
    assert r.fields["nested.u8_then_str"].contents() == [5, 65, 66]
    assert r.tensors[0].data.shape == () and float(r.tensors[0].data) == 1.5


# --------------------------------------------------------------------------- real files

def test_smollm2_matches_gguf_py():
    assert_same_as_gguf_py(fixtures.smollm2_gguf())


@pytest.mark.slow
def test_qwen25_coder_matches_gguf_py():
    assert_same_as_gguf_py(fixtures.qwen25_coder_gguf())


def test_dequantize_matches_gguf_py(tmp_path):
    r = open_gguf(write_all_types(tmp_path / "all.gguf"))
    for t in r.tensors:
        if t.tensor_type in (Q.Q4_K, Q.I8, Q.I16, Q.I32, Q.I64, Q.F64):
            continue
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        got = dequantize(t)
        assert got.dtype == np.float32 and got.shape == tuple(reversed(t.shape.tolist()))
        assert np.array_equal(got, want.reshape(got.shape)), t.name


# --------------------------------------------------------------------------- bad files

def assert_refused(path: Path, *needles: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        open_gguf(path)
    assert time.perf_counter() - t0 < 2.0, f"{path.name} took too long"
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def small_valid_gguf(path: Path) -> bytes:
    """A GGUF whose last tensor ends exactly at the end of the file, so every shorter prefix is bad."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_token_list(["<s>", "a", "bc", "déf"])
    w.add_key_value("nested", [[1, 2], [3]], VT.ARRAY)
    w.add_tensor("q8", gguf.quants.quantize(np.ones((2, 32), np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("last", np.arange(8, dtype=np.float32))  # 32 bytes: no padding after it
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    r = open_gguf(path)
    assert r.tensors[-1].data_offset + r.tensors[-1].n_bytes == len(data)
    return data


def test_every_truncation_is_refused(tmp_path):
    data = small_valid_gguf(tmp_path / "good.gguf")
    trunc = tmp_path / "trunc.gguf"
    for cut in range(len(data)):
        trunc.write_bytes(data[:cut])
        assert_refused(trunc)


BAD: dict[str, tuple[bytes, str]] = {
    "magic": (b"GGML" + u32(3) + u64(0) + u64(0), "not a GGUF"),
    "empty": (b"", "not a GGUF"),
    "version1": (raw_gguf([], version=u32(1)), "version 1"),
    "big_endian": (raw_gguf([], version=struct.pack(">I", 3)), "big-endian"),
    "n_tensors": (raw_gguf([], n_tensors=2**40), "tensor count"),
    "n_kv": (raw_gguf([], n_kv=2**40), "metadata count"),
    "n_kv_max": (raw_gguf([], n_kv=2**64 - 1), "metadata count"),
    "key_len": (raw_gguf([u64(2**63) + b"k"]), "runs past"),
    "string_len": (raw_gguf([s("k") + u32(VT.STRING) + u64(2**64 - 1) + b"x"]), "runs past"),
    "array_count": (raw_gguf([kv("k", VT.ARRAY, arr(VT.UINT32, [u32(1)], count=2**62))]), "claims"),
    "string_array_count": (raw_gguf([kv("k", VT.ARRAY, arr(VT.STRING, [s("a")], count=2**40))]), "claims"),
    "string_in_array": (raw_gguf([kv("k", VT.ARRAY, arr(VT.STRING, [s("a"), u64(2**62) + b"b", s("c")]))]),
                        "runs past"),
    "nested_count": (raw_gguf([kv("k", VT.ARRAY, arr(VT.ARRAY, [arr(VT.UINT8, [b"\x01"], count=2**50)]))]),
                     "claims"),
    "deep_nesting": (raw_gguf([kv("k", VT.ARRAY, arr(VT.ARRAY, [], count=1) * 100_000)]), "nested"),
    "value_type": (raw_gguf([kv("k", 99, b"\x00" * 8)]), "unknown value type 99"),
    "array_type": (raw_gguf([kv("k", VT.ARRAY, arr(99, [b"\x00"]))]), "unknown value type 99"),
    "duplicate_key": (raw_gguf([kv("k", VT.UINT8, b"\x01"), kv("k", VT.UINT8, b"\x02")]), "twice"),
    "key_utf8": (raw_gguf([kv(b"\xff", VT.UINT8, b"\x01")]), "UTF-8"),
    "alignment": (raw_gguf([kv("general.alignment", VT.UINT32, u32(48))]), "power of two"),
    "alignment_type": (raw_gguf([kv("general.alignment", VT.UINT64, u64(32))]), "uint32"),
    "dims": (raw_gguf([], [tinfo("t", [1] * 5, Q.F32, 0)], b"\x00" * 32), "dimensions"),
    "n_dims_huge": (raw_gguf([], [s("t") + u32(2**32 - 1) + u64(4) + u32(Q.F32) + u64(0)]), "dimensions"),
    "tensor_type": (raw_gguf([], [tinfo("t", [4], 99, 0)], b"\x00" * 32), "unknown type 99"),
    "block_size": (raw_gguf([], [tinfo("t", [33], Q.Q4_0, 0)], b"\x00" * 64), "block size"),
    "offset_eof": (raw_gguf([], [tinfo("t", [4], Q.F32, 64)], b"\x00" * 32), "past the end"),
    "offset_huge": (raw_gguf([], [tinfo("t", [4], Q.F32, 2**64 - 32)], b"\x00" * 32), "past the end"),
    "elements_huge": (raw_gguf([], [tinfo("t", [2**32, 2**32], Q.F32, 0)], b"\x00" * 32), "past the end"),
    "unaligned": (raw_gguf([], [tinfo("t", [4], Q.F32, 4)], b"\x00" * 64), "alignment"),
    "overlap": (raw_gguf([], [tinfo("a", [8], Q.F32, 0), tinfo("b", [8], Q.F32, 0)], b"\x00" * 64), "overlap"),
    "same_name": (raw_gguf([], [tinfo("a", [8], Q.F32, 0), tinfo("a", [8], Q.F32, 32)], b"\x00" * 64),
                  "same name"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_crafted_bad_file_is_refused(tmp_path, case):
    data, needle = BAD[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    assert_refused(path, needle)


def test_missing_and_unreadable(tmp_path):
    assert_refused(tmp_path / "missing.gguf", "not found")
    (tmp_path / "dir.gguf").mkdir()
    assert_refused(tmp_path / "dir.gguf", "cannot read")
