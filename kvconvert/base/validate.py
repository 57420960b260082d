"""One validation layer for values read from files (GGUF metadata, config.json,
profiles, policies, calibration files).

Every helper takes the file (``where``: a path or a short description), the
key and the value, and returns the value as a plain Python type or raises
``InputError`` with one line: ``FILE: KEY PROBLEM``. Upper bounds are far above
any model kvconvert runs, and low enough that nothing sized by a checked
integer can exhaust memory.
"""

from __future__ import annotations

import math
import os
import stat
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_HEAD_DIM = 1024
MAX_HIDDEN = 1 << 17
MAX_FFN = 1 << 20
MAX_VOCAB = 4_000_000
MAX_CTX = 1 << 24  # context lengths / positions
MAX_U32 = (1 << 32) - 1
MAX_U64 = (1 << 64) - 1


def _fail(where: Any, key: str, problem: str) -> InputError:
    return InputError(f"{where}: {key} {problem}" if where is not None else f"{key} {problem}")


def int_in(where: Any, key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _fail(where, key, f"must be an integer, got {_show(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise _fail(where, key, f"{value} outside {rng}")
    return value


def finite_float(where: Any, key: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False) -> float:
    """A finite real number (ints allowed, bools not) in [lo, hi] (or (lo, hi] with lo_open)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise _fail(where, key, f"must be a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(where, key, f"is {value}, not a finite number")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise _fail(where, key, f"is {value:g}, must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and value > hi:
        raise _fail(where, key, f"is {value:g}, must be <= {hi:g}")
    return value


def boolean(where: Any, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, key, f"must be true or false, got {_show(value)}")
    return value


def utf8_str(where: Any, key: str, value: Any, max_len: int | None = None) -> str:
    """A string; bytes are accepted if they are UTF-8."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(where, key, "is not valid UTF-8") from None
    if not isinstance(value, str):
        raise _fail(where, key, f"must be a string, got {_show(value)}")
    if max_len is not None and len(value) > max_len:
        raise _fail(where, key, f"is {len(value)} characters long (at most {max_len})")
    return value


def one_of(where: Any, key: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(where, key, f"is {_show(value)}, expected one of {', '.join(map(repr, choices))}")
    return value


def int_list(where: Any, key: str, value: Any, lo: int | None = None, hi: int | None = None, *,
             length: int | None = None, nonempty: bool = False) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, key, f"must be a list of integers, got {_show(value)}")
    if length is not None and len(value) != length:
        raise _fail(where, key, f"has {len(value)} entries, expected {length}")
    if nonempty and not value:
        raise _fail(where, key, "must not be empty")
    return [int_in(where, f"{key}[{i}]", v, lo, hi) for i, v in enumerate(value)]


def float_list(where: Any, key: str, value: Any, *, length: int | None = None) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, key, f"must be a list of numbers, got {_show(value)}")
    if length is not None and len(value) != length:
        raise _fail(where, key, f"has {len(value)} entries, expected {length}")
    return [finite_float(where, f"{key}[{i}]", v) for i, v in enumerate(value)]


def finite_array(where: Any, key: str, arr: Any, shape: tuple[int, ...] | None = None):
    """A numeric numpy array of the given shape with only finite values."""
    import numpy as np

    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise _fail(where, key, f"must be a numeric array, got {_show(arr)}")
    if shape is not None and arr.shape != tuple(shape):
        raise _fail(where, key, f"has shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise _fail(where, key, "holds NaN or infinite values")
    return arr


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (after symlinks); a FIFO, socket or device is refused at
    once rather than opened (opening a FIFO for reading blocks until a writer comes)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: cannot read: is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise InputError(f"{path}: is {kind}, expected a regular {what}")
    return path


def calibration_meta(path: Path, meta: dict) -> None:
    """Types and ranges of a calibration (calibrate.Calibration) file's metadata (before any array is read)."""
    for k in ("model", "fingerprint", "arch", "text_source", "text_sha256"):
        utf8_str(path, k, meta.get(k))
    one_of(path, "rope_pairing", meta.get("rope_pairing"), ("neox", "interleaved"))
    int_in(path, "n_layer", meta.get("n_layer"), 1, MAX_LAYERS)
    int_in(path, "n_head", meta.get("n_head"), 1, MAX_HEADS)
    int_in(path, "n_head_kv", meta.get("n_head_kv"), 1, MAX_HEADS)
    d = int_in(path, "head_dim", meta.get("head_dim"), 2, MAX_HEAD_DIM)
    if d % 2:
        raise InputError(f"{path}: head_dim {d} is odd")
    if meta["n_head"] % meta["n_head_kv"]:
        raise InputError(f"{path}: n_head {meta['n_head']} is not a multiple of n_head_kv {meta['n_head_kv']}")
    finite_float(path, "rope_theta", meta.get("rope_theta"), 1.0, 1e12, lo_open=True)
    int_in(path, "n_ctx", meta.get("n_ctx"), 16, MAX_CTX)
    int_in(path, "n_tokens", meta.get("n_tokens"), 1, 1 << 40)


def calibration_arrays(path: Path, cal) -> None:
    """Shapes (against the metadata and each other), dtypes and finiteness of the arrays."""
    import numpy as np

    L, H, Hk, d = cal.n_layer, cal.n_head, cal.n_head_kv, cal.head_dim
    for k in ("k_sum", "k_sq", "q_sq", "v_sum", "v_sq"):
        finite_array(path, k, getattr(cal, k), (L, Hk, d))
    for k in ("k_sq", "q_sq", "v_sq"):
        if (getattr(cal, k) < 0).any():
            raise InputError(f"{path}: {k} holds negative second moments")
    win_q = finite_array(path, "win_q", cal.win_q)
    if win_q.ndim != 5 or win_q.shape[0] < 1 or win_q.shape[2] < 1 or win_q.shape[1:2] + win_q.shape[3:] != (L, H, d):
        raise InputError(f"{path}: win_q has shape {win_q.shape}, expected (windows, {L}, tokens, {H}, {d})")
    W, T = win_q.shape[0], win_q.shape[2]
    for k in ("win_k", "win_v"):
        finite_array(path, k, getattr(cal, k), (W, L, T, Hk, d))
    freqs = finite_array(path, "rope_freqs", cal.rope_freqs, (d // 2,))
    if (freqs <= 0).any():
        raise InputError(f"{path}: rope_freqs must be positive")
    hold = cal.holdout
    if not isinstance(hold, np.ndarray) or hold.dtype.kind not in "iu" or hold.ndim != 2 or \
            (hold.shape[0] > 0 and not 1 <= hold.shape[1] <= cal.n_ctx):
        raise InputError(f"{path}: holdout has shape {getattr(hold, 'shape', None)} "
                         f"(dtype {getattr(hold, 'dtype', None)}), expected integer token chunks (n, {cal.n_ctx})")
    if hold.size and (hold.min() < 0 or hold.max() >= MAX_VOCAB):
        raise InputError(f"{path}: holdout holds token ids outside 0..{MAX_VOCAB - 1}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
