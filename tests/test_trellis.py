"""Bitshift-trellis codes (kvcache/trellis.py): the Viterbi search against exhaustive search,
the ring decoded from the stored symbols alone, and the shipped tables against Lloyd–Max."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from kvconvert.kvcache import trellis
from kvconvert.kvcache import turboquant as tq


def ring_states(stream: np.ndarray, bits: int, L: int) -> np.ndarray:
    """States of a cyclic bit stream given as n symbols: the L bits up to each symbol."""
    n = stream.size
    return np.array([sum(int(stream[(i - j) % n]) << (bits * j) for j in range(-(-L // bits))) & ((1 << L) - 1)
                     for i in range(n)])


def test_free_viterbi_is_the_exhaustive_optimum():
    """Free ends (the rolled first pass): the least-squares path over every start state and
    symbol sequence, found by enumeration (1 bit, 2 memory bits, 6 coordinates: 256 paths)."""
    rng = np.random.default_rng(1)
    bits, M, n = 1, 2, 6
    L = bits + M
    tbl = rng.standard_normal(1 << L)
    u = rng.standard_normal((40, n))
    got = trellis._viterbi(u, tbl, bits)
    for row, path in zip(u, got):
        assert all((path[i] >> bits) == (path[i - 1] & ((1 << M) - 1)) for i in range(1, n))  # a trellis path
        paths = [_walk(s0, syms, bits, L) for s0 in range(1 << L)
                 for syms in itertools.product(range(1 << bits), repeat=n - 1)]
        best = min(sum((row[i] - tbl[s]) ** 2 for i, s in enumerate(p)) for p in paths)
        assert sum((row[i] - tbl[s]) ** 2 for i, s in enumerate(path)) == pytest.approx(best, rel=1e-12)


def _walk(s0: int, syms: tuple[int, ...], bits: int, L: int) -> list[int]:
    path = [s0]
    for x in syms:
        path.append(((path[-1] << bits) | x) & ((1 << L) - 1))
    return path


@pytest.mark.parametrize("bits", (2, 4, 6))
def test_float32_search_finds_the_float64_paths(bits):
    """encode_states searches in float32 (as the C kernels, for twice the states per vector): on
    unit-variance groups of 64 it finds the paths of the same search in float64 (measured: all of
    them, 1200 groups at 2/4/6 bits); a tie broken differently may only swap paths of equal error."""
    u = np.random.default_rng(bits).standard_normal((200, 64)).astype(np.float32)
    tbl = trellis.table(bits)
    got = trellis.encode_states(u, bits)
    u64, t64, h = u.astype(np.float64), tbl.astype(np.float64), 32
    wrap = trellis._viterbi(np.roll(u64, -h, axis=1), t64, bits)[:, 63 - h] & ((1 << trellis.MEMORY) - 1)
    want = trellis._viterbi(u64, t64, bits, wrap)
    err = lambda p: ((u64 - t64[p]) ** 2).sum(1)
    assert (got == want).all(1).mean() >= 0.99
    np.testing.assert_allclose(err(got), err(want), rtol=1e-6)


def test_tail_biting_paths_are_rings_and_near_the_ring_optimum():
    """The two-pass encoder returns a closed ring (its states are exactly what the decoder reads
    from the symbols) whose error is within 2% of the best ring found by enumeration (measured:
    0.5% above on these 200 groups of 12 coordinates, 1 bit, 2 memory bits: 4096 rings; shorter
    rings lose more to the two-pass search: 3% at 5 coordinates × 2 bits)."""
    rng = np.random.default_rng(2)
    bits, M, n = 1, 2, 12
    L = bits + M
    tbl = rng.standard_normal(1 << L)
    u = rng.standard_normal((200, n))
    path = trellis.encode_states(u, bits, tbl)
    rings = np.array([ring_states(np.array(s), bits, L) for s in itertools.product(range(1 << bits), repeat=n)])
    err_best = ((u[:, None, :] - tbl[rings][None]) ** 2).sum(-1).min(1)
    err = ((u - tbl[path]) ** 2).sum(-1)
    for row in path:
        np.testing.assert_array_equal(ring_states(row & ((1 << bits) - 1), bits, L), row)
    assert np.all(err >= err_best - 1e-12)
    assert err.sum() <= 1.02 * err_best.sum(), err.sum() / err_best.sum()


@pytest.mark.parametrize("bits", trellis.BITS)
@pytest.mark.parametrize("m", [8, 16, 48, 64])
def test_symbols_decode_to_the_encoded_values(bits, m):
    """What a cache stores (one symbol per coordinate) decodes to the encoder's values, for the
    group sizes of splits and whole heads."""
    if m * bits < bits + trellis.MEMORY:
        pytest.skip("group shorter than a state")
    u = np.random.default_rng(bits * 100 + m).standard_normal((64, m))
    path = trellis.encode_states(u, bits)
    sym = trellis.symbols(path, bits)
    assert sym.dtype == np.uint8 and sym.max() < (1 << bits)
    np.testing.assert_array_equal(trellis.states(sym, bits), path)
    np.testing.assert_array_equal(trellis.decode(sym, bits), trellis.table(bits)[path])


def _sphere(n_vec: int, m: int, seed: int) -> np.ndarray:
    """Coordinates of random unit vectors × √m: what a rotated, normalized group holds."""
    x = np.random.default_rng(seed).standard_normal((n_vec, m))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(m)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_shipped_tables_beat_lloyd_max(bits):
    """Same bits per coordinate, unit vectors of a 64-wide group (fresh data, not the training
    set): the trellis codes' MSE is ≥ 25% below the shipped Lloyd–Max codebook's (measured
    28% at 2 bits, 34% at 3, 37–38% at 4–6; 17% at 1 bit, not tested), with the least-squares
    scale both use."""
    u = _sphere(512, 64, 7 + bits)
    c = tq.codebook(64, bits).astype(np.float64) * 8.0
    scalar = c[np.searchsorted((c[:-1] + c[1:]) / 2, u)]
    tc = trellis.table(bits).astype(np.float64)[trellis.encode_states(u, bits)]

    def err(v):  # after the least-squares scale, as the cache stores it
        s = (u * v).sum(1, keepdims=True) / (v * v).sum(1, keepdims=True)
        return float(((u - s * v) ** 2).mean())
    assert err(tc) <= 0.75 * err(scalar), (err(tc), err(scalar))


def test_tables_regenerate_from_their_recipe():
    """The shipped 1- and 2-bit tables are what train_table makes (the bigger ones take minutes:
    same code, same seeds)."""
    for b in (1, 2):
        np.testing.assert_allclose(trellis.train_table(b).astype(np.float32), trellis.table(b), rtol=0, atol=1e-6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="no trellis table"):
        trellis.table(7)
    with pytest.raises(ValueError, match="shorter than a state"):
        trellis.encode_states(np.zeros((1, 2)), 2)


# --- the C runtime's trellis codes (tq_ref.c) against this numpy reference ---------------------

native = pytest.importorskip("kvconvert.runtime.engine")


@pytest.mark.parametrize("spec,d", [("tq3:code=trellis", 64), ("tq1:code=trellis", 16), ("tq6:code=trellis", 256),
                                    ("tq:split=16,hi=5,lo=2,scale=proj,code=trellis", 64),
                                    ("tq:split=8,hi=6,lo=4,scale=norm,code=trellis", 40),
                                    ("tq4:s8=-40,code=trellis", 64), ("tq2:scale=proj,s8=-40,code=trellis", 48),
                                    # a 7- or 8-bit hi group keeps Lloyd–Max codes, its lo group takes trellis codes
                                    ("tq:split=8,hi=7,lo=5,code=trellis", 64),
                                    ("tq:split=16,hi=8,lo=6,s8=-40,code=trellis", 64)])
def test_c_encoder_is_bit_identical_to_numpy(spec, d):
    """Encode + decode by the C kernels (tq_roundtrip) gives the numpy twin's reconstruction bit
    for bit — the same Viterbi paths, ties and scales — over splits, odd group sizes (40 = 32 + 8
    Hadamard blocks), every scale rule and 8-bit scales; and they are trellis codes: squared error
    ≥ 25% below the same bits' Lloyd–Max codes (measured 32–38% at 2–6 bits) — except 1 bit in 16
    channels, where the short ring makes them 4% worse (not a gain: the search should not pick it)."""
    from dataclasses import replace

    cfg = tq.KConfig.parse(spec, d)
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((200, d)) * rng.uniform(0.1, 3, (200, 1))).astype(np.float32)
    want = tq.decode(tq.encode(x, cfg, 11, 2), cfg, 11, 2)
    got = native.tq_roundtrip(x, cfg, 11, 2)
    np.testing.assert_array_equal(got, want)
    lloyd = replace(cfg, trellis=0)
    ratio = float(np.sum((got - x) ** 2) / np.sum((native.tq_roundtrip(x, lloyd, 11, 2) - x) ** 2))
    assert ratio <= (1.1 if cfg.lo_bits == 1 else 0.75), ratio


def test_a_layer_takes_trellis_codes_on_the_groups_that_hold_them():
    """code=trellis puts trellis codes on every group of 1..6 bits (with room for a state); a 7- or
    8-bit group of the same layer keeps Lloyd–Max codes, and its codebook is the centroids; a layer
    where no group can hold them, or with QJL, is refused."""
    mixed = tq.KConfig.parse("tq:split=8,hi=7,lo=5,code=trellis", 64)
    assert [(g.bits, g.trellis) for g in mixed.groups()] == [(7, 0), (5, trellis.MEMORY)]
    assert len(tq.group_codebook(mixed.groups()[0])) == 1 << 7
    assert len(tq.group_codebook(mixed.groups()[1])) == 1 << (5 + trellis.MEMORY)
    assert tq.KConfig.parse("tq:split=8,hi=7,lo=5", 64).with_codes("trellis") == mixed
    assert tq.KConfig.parse("tq:split=8,hi=8,lo=7", 64).with_codes("trellis").trellis == 0
    with pytest.raises(ValueError, match="8 × 8 and 56 × 7"):
        tq.KConfig.parse("tq:split=8,hi=8,lo=7,code=trellis", 64)
    with pytest.raises(ValueError, match="QJL"):
        tq.KConfig.parse("tq:split=8,hi=7,lo=5,qjl=hi,code=trellis", 64)
    # the C library's layer refuses the same: tests/test_tq_native.py


def test_c_library_refuses_bad_trellis_groups():
    """kvc_tq_encode refuses (KVC_ERR_INVALID) what KConfig refuses: QJL with trellis codes, more
    than 12 state bits, groups over 256 channels or shorter than a state; nothing is written."""
    f, lib = native.ffi(), native.lib()
    cb = np.zeros(1 << 12, np.float32)
    x = np.ones(512, np.float32)
    rows = np.full(4096, 0xAB, np.uint8)
    call = lambda m, bits, qjl, mem: lib.kvc_tq_encode(  # noqa: E731
        1, m, bits, qjl, mem, 0, 0, 1, f.cast("float *", f.from_buffer(cb)), 0, 0, 0,
        f.cast("float *", f.from_buffer(x)), 1, f.from_buffer(rows))
    assert call(64, 3, 0, 6) == 0
    rows[:] = 0xAB
    for args in [(64, 3, 1, 6), (64, 7, 0, 6), (64, 3, 0, 7), (512, 3, 0, 6), (2, 2, 0, 6)]:
        assert call(*args) == 1, args
        assert (rows == 0xAB).all(), args
    for bad in ["tq3:code=trellis,qjl=both", "tq7:code=trellis", "tq2:code=lattice"]:
        with pytest.raises(ValueError):
            tq.KConfig.parse(bad, 64)
    with pytest.raises(ValueError, match="channels"):
        tq.KConfig(d=2, lo_bits=2, trellis=trellis.MEMORY)


def test_metal_refuses_trellis_codes():
    """host.h's create refuses trellis layers with KVC_ERR_UNSUPPORTED (its kernels decode Lloyd–Max
    codes), so auto runs such files on the CPU (checked in the source: no Metal device here), and
    the Metal tables are built without trellis codes."""
    from pathlib import Path

    src = (Path(__file__).resolve().parent.parent / "native" / "src" / "metal" / "host.h").read_text()
    i = src.index("TurboQuant trellis codes run on the CPU backend only")
    assert "(c->k_tq && p->tq_k[l].trellis) || (c->v_tq && p->tq_v[l].trellis)" in src[i - 300:i]
    assert "KVC_ERR_UNSUPPORTED" in src[i - 100:i]
    assert "t->codebook_lo, t->perm, seed, layer, 0, 0, 0);" in src


@pytest.mark.parametrize("bits", trellis.BITS)
def test_every_kernel_table_encodes_the_same_rows(bits):
    """The scalar trellis search (tq_viterbi_ref) and the SIMD ones of the x86 tables (float32
    costs: tq_viterbi_avx2 8 and tq_viterbi_avx512 16 states per vector, strict-less blends, no
    FMA) write the same bytes as each other and as the numpy twin, at every code width (below 3 / 4
    bits a vector spans several predecessor contexts: the permuted loads instead of a broadcast)."""
    f, lib = native.ffi(), native.lib()
    impls = [i for i in (1, 2, 3) if lib.kvc_cpu_impls() & (1 << i)]
    m = 64
    gc = tq.GroupConfig(m, bits, trellis=trellis.MEMORY)
    cb = np.ascontiguousarray(tq.group_codebook(gc))
    x = np.random.default_rng(bits).standard_normal((300, m)).astype(np.float32)
    x[7] = 0  # a zero vector: every state ties
    out = {}
    for impl in impls:
        rows = np.zeros((300, lib.kvc_tq_row_bytes(m, bits, 0, 0)), np.uint8)
        assert lib.kvc_tq_encode(impl, m, bits, 0, trellis.MEMORY, 0, 0, 1, f.cast("float *", f.from_buffer(cb)),
                                 3, 1, 0, f.cast("float *", f.from_buffer(x)), 300, f.from_buffer(rows)) == 0
        out[impl] = rows
    for impl in impls[1:]:
        np.testing.assert_array_equal(out[impl], out[impls[0]], err_msg=f"impl {impl}")
    want = tq.encode_group(x, gc, 3, 1, 0)
    got = out[impls[0]]
    np.testing.assert_array_equal(got[:, :2].copy().view(np.float16)[:, 0], want.scale)  # fp16 scale first
