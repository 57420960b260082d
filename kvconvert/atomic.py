"""Write files so that a failure never leaves a half-written output behind,
and never write over an input.

``refuse_overwrite(output, inputs)`` is called by each command *before any
work*: an output that is an input (same path, through ``..`` or a symlink, or a
hard link to it), lies inside an input directory, or is a directory holding an
input is refused with one line naming both paths (``OutputError``).
``atomic_path`` / ``atomic_dir`` write into a temporary file/directory next to
the output and rename it into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError

PathLike = str | os.PathLike


def _stat(path: PathLike) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _same(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _relation(out: Path, inp: Path, role: str = "the input") -> str | None:
    """How writing ``out`` would touch the existing input ``inp``, or None if it would not."""
    in_st = _stat(inp)
    if in_st is None:
        return None  # not a local path (a repo id) or missing: the loader reports it
    out_st = _stat(out)
    out_real, in_real = Path(os.path.realpath(out)), Path(os.path.realpath(inp))
    if _same(out_st, in_st) or out_real == in_real:
        if os.path.abspath(out) == os.path.abspath(inp):
            return f"it is {role} {inp}"
        if out_real == in_real:
            return f"it is {role} {inp} (the same path through a symlink or '..')"
        return f"it is the same file as {role} {inp} (a hard link)"
    if stat.S_ISDIR(in_st.st_mode):
        if any(_same(_stat(a), in_st) for a in out_real.parents):
            return f"it is inside {role} directory {inp}"
        if out_st is not None and not stat.S_ISDIR(out_st.st_mode):
            with contextlib.suppress(OSError), os.scandir(inp) as it:
                for entry in it:
                    with contextlib.suppress(OSError):
                        if _same(entry.stat(), out_st):  # follows symlinks, as a reader of the input would
                            return f"it is the same file as {entry.path} in {role} directory {inp} (a hard link)"
    if out_st is not None and stat.S_ISDIR(out_st.st_mode):
        if any(_same(_stat(a), out_st) for a in in_real.parents):
            return f"it is a directory holding {role} {inp}"
    return None


def refuse_overwrite(output: PathLike | None, inputs: Iterable[PathLike | None], *,
                     what: str = "output path", note: str = "",
                     role: str = "the input") -> None:
    """Raise OutputError if writing ``output`` could change or remove any of ``inputs``.

    Refused: the same path (also through ``..`` or symlinks), the same file (hard
    link: same st_dev/st_ino), an output inside an input directory, and an output
    directory that holds an input (replacing it would delete the input). Inputs that
    are None or do not exist locally (e.g. Hub repo ids) are skipped. Call it before
    any long work; ``what`` names the option in the message ("--save-logits path"), ``role``
    the inputs ("the demo's input")."""
    if output is None:
        return
    out = Path(output)
    for inp in inputs:
        if inp is None:
            continue
        rel = _relation(out, Path(inp), role)
        if rel is not None:
            raise OutputError(f"cannot write {out}: {rel}{note}; choose another {what}")


def check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: directory {parent} is not writable; choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing ``path`` directory is replaced only once the new one is complete.
    """
    path = Path(path)
    check_parent(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write directory {path}: a file of that name exists; choose another output path")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
