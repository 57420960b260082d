"""Write files so that a failure never leaves a half-written output behind,
and never write over an input.

Every writer in kvconvert goes through this module:

- ``refuse_overwrite(output, inputs)`` is called by each command *before any
  work*: an output that is an input (same path, through ``..`` or a symlink, or
  a hard link to it), lies inside an input directory, or is a directory holding
  an input is refused with one line naming both paths (``OutputError``); so is
  an output that exists as a device, FIFO or socket (a rename would replace
  /dev/null itself).
- ``atomic_path`` / ``atomic_dir`` write into a temporary file/directory next to
  the output and rename it into place only when complete. The temporary names
  are ``.NAME.PID.XXXXXXXX.part`` (PID: the writing process), so they are
  hidden, and a later run can tell whose they are: when a write of NAME starts,
  leftovers of NAME whose process no longer exists (a ``kill -9``, a power cut)
  are removed first. Leftovers of a live process (a concurrent run) are kept.
  ``kill -9`` during ``atomic_dir``'s swap of an existing directory can leave the
  previous version at ``.NAME.PID.old`` with no NAME: the next write of NAME puts
  it back before anything else. (A dead writer's PID reused by an unrelated live
  process keeps its leftover until that process ends: the check errs on the side
  of keeping files.)
- Outputs get the permissions the user's umask gives an ordinary new file or
  directory (0644/0755 under umask 022), not mkstemp's private 0600/0700.

SIGINT and SIGTERM are turned into exceptions by the CLI, so the ``except``
paths here remove the temporary file before the process exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------- inputs vs outputs

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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_special(path: PathLike) -> None:
    """Refuse an output that exists as something other than a regular file or a directory
    (/dev/null, a FIFO, a socket): an atomic write would replace the device node itself."""
    st = _stat(path)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise OutputError(f"cannot write {path}: it is {_kind(st.st_mode)}, and kvconvert writes a new file and "
                          "renames it into place; give a regular file path")


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
    check_special(out)
    for inp in inputs:
        if inp is None:
            continue
        rel = _relation(out, Path(inp), role)
        if rel is not None:
            raise OutputError(f"cannot write {out}: {rel}{note}; choose another {what}")


# --------------------------------------------------------------------------------------------- umask

def _umask() -> int:
    """The process umask, without changing it where /proc tells it (os.umask is set-and-return,
    which would briefly change it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------- leftovers

_RAND = r"[a-z0-9_]+"  # tempfile's random part


def _leftover_re(name: str) -> re.Pattern:
    # .NAME.PID.RAND.part, possibly nested (a temporary output written through atomic_path
    # again: ..NAME.PID.RAND.part.PID.RAND.part), and .NAME.PID.old from atomic_dir's swap
    return re.compile(rf"^\.+{re.escape(name)}((?:\.\d+\.{_RAND}\.part)+|\.\d+\.old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clean_stale(path: PathLike) -> list[Path]:
    """Remove temporary leftovers of ``path`` from writers that no longer run; returns what was
    removed. A previous version left at ``.NAME.PID.old`` with no NAME is renamed back to NAME."""
    path = Path(path)
    pat = _leftover_re(path.name)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    removed: list[Path] = []
    for entry in sorted(entries, key=lambda e: e.name.endswith(".old")):  # .part first, then .old
        m = pat.match(entry.name)
        if not m or any(_alive(int(pid)) for pid in re.findall(rf"\.(\d+)\.(?:{_RAND}\.part|old)", m.group(1))):
            continue
        p = Path(entry.path)
        if m.group(1).endswith(".old") and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # if it cannot be put back, it is kept, never removed
                os.replace(p, path)  # the swap was cut between its two renames: restore the previous version
            continue
        _remove(p)
        removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------- writers

def check_parent(path: Path) -> None:
    check_special(path)
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: directory {parent} is not writable; choose another output path")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


# Write failures of the disk rather than of the program: one line naming the output, not a traceback.
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for the file system",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EIO: "an I/O error"}


def _write_error(path: Path, e: OSError) -> BaseException:
    """An OutputError for a disk-level failure while writing ``path``; other OSErrors unchanged."""
    if isinstance(e, OutputError) or e.errno not in _DISK_ERRORS:
        return e
    return OutputError(f"cannot write {path}: {_DISK_ERRORS[e.errno]} ({e.strerror}); nothing was written — "
                       "free some space or choose another output path")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception (also KeyboardInterrupt, and SIGTERM through the CLI) the temporary
    file is removed and ``path`` is untouched. Stale leftovers of earlier runs of the same
    output are removed first (see the module docstring). The file gets the umask's mode."""
    path = Path(path)
    check_parent(path)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".part", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _write_error(path, e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing ``path`` directory is replaced only once the new one is complete: it is
    renamed to ``.NAME.PID.old``, the new one renamed into place, then the old one removed.
    The directory gets the umask's mode; stale leftovers are handled as in atomic_path."""
    path = Path(path)
    check_parent(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write directory {path}: a file of that name exists; choose another output path")
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".part", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
