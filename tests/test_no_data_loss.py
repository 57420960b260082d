"""Issue 14: nothing a user types or downloads can destroy their files, hang the
tool or end in a traceback.

Every case runs the CLI in-process (``kvconvert.cli.main``) on copies of the
tiny models and asserts: exit code 2, exactly one stderr line starting
``kvconvert: error:`` that names the file(s), no traceback, no temporary
``*.part`` file left (hidden or not), and every input byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvconvert.cli import main

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering "
        "a neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 6


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (and of the roots themselves when files)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".old")) or ".part." in p.name]


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    lines = [x for x in err.strip().splitlines() if not x.startswith("[")]  # "[eval] 50% ...": progress
    assert len(lines) == 1 and lines[0].startswith("kvconvert: error: "), err
    assert err.strip().splitlines()[-1] == lines[0]
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture
def work(tiny_models, tiny_ggufs, tmp_path, monkeypatch):
    """tmp/hf (a tiny HF model), tmp/D/m.gguf (a tiny GGUF), tmp/t.txt (text); a private cache."""
    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_path / "cache"))
    hf = tmp_path / "hf"
    shutil.copytree(tiny_models["qwen2-hd64"], hf)
    d = tmp_path / "D"
    d.mkdir()
    shutil.copy(tiny_ggufs["qwen2-hd64"], d / "m.gguf")
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def calib_file(tiny_models, tmp_path_factory) -> Path:
    """A real calibration of the tiny Qwen2 model (a few hundred tokens)."""
    from kvconvert.conversion.calibrate import calibrate

    root = tmp_path_factory.mktemp("cal")
    old = os.environ.get("KVCONVERT_CACHE")
    os.environ["KVCONVERT_CACHE"] = str(root / "cache")
    try:
        calibrate(tiny_models["qwen2-hd64"], text=TEXT * 2, tokens=128, n_ctx=32, n_windows=1, holdout=1,
                  out=root / "C.npz")
    finally:
        if old is None:
            del os.environ["KVCONVERT_CACHE"]
        else:
            os.environ["KVCONVERT_CACHE"] = old
    return root / "C.npz"


def refused(capsys, work: Path, argv: list, inputs: list[Path], *needles) -> str:
    before = tree_hashes(*inputs)
    err = cli_error(capsys, argv, *needles)
    assert tree_hashes(*inputs) == before
    assert not leftovers(work), leftovers(work)
    return err


# -- no command writes over an input -------------------------------------------------

def test_eval_save_logits_over_model(capsys, work):
    m = work / "D" / "m.gguf"
    err = refused(capsys, work, ["eval", m, "--text", work / "t.txt", "--ctx", 64, "--save-logits", m], [m],
                  "--save-logits", m)
    assert err.count(str(m)) == 2  # names the output and the input


def test_eval_save_logits_over_text_and_base(capsys, work):
    m, t = work / "D" / "m.gguf", work / "t.txt"
    refused(capsys, work, ["eval", m, "--text", t, "--ctx", 64, "--save-logits", t], [m, t], t, "input")
    base = work / "base.logp"
    assert main(["eval", str(m), "--text", str(t), "--ctx", "64", "--save-logits", str(base)]) == 0
    capsys.readouterr()
    refused(capsys, work, ["eval", m, "--text", t, "--ctx", 64, "--kld-base", base, "--save-logits", base],
            [m, t, base], base)


def test_eval_save_logits_through_symlink_dotdot_and_hard_link(capsys, work):
    m, t = work / "D" / "m.gguf", work / "t.txt"
    link = work / "link.gguf"
    link.symlink_to(m)
    hard = work / "hard.gguf"
    os.link(m, hard)
    dotdot = work / "D" / ".." / "D" / "m.gguf"
    for out, why in ((link, "symlink"), (dotdot, "it is the input"), (hard, "hard link")):
        err = refused(capsys, work, ["eval", m, "--text", t, "--ctx", 64, "--save-logits", out], [m, t], out, m)
        assert why in err
    assert link.is_symlink() and os.path.samefile(hard, m)


def test_eval_save_logits_next_to_model_is_allowed(capsys, work):
    m, t = work / "D" / "m.gguf", work / "t.txt"
    before = tree_hashes(m, t)
    assert main(["eval", str(m), "--text", str(t), "--ctx", "64", "--save-logits", str(work / "D" / "b.logp")]) == 0
    assert (work / "D" / "b.logp").stat().st_size > 0 and tree_hashes(m, t) == before
    assert not leftovers(work)


@pytest.mark.parametrize("force", [True, False])
def test_import_gguf_into_the_directory_holding_it(capsys, work, force):
    d = work / "D"
    argv = ["import-gguf", d / "m.gguf", "-o", d] + (["--force"] if force else [])
    err = refused(capsys, work, argv, [d], d / "m.gguf", "holding the input")
    assert ("never inputs" in err) == force
    assert sorted(p.name for p in d.iterdir()) == ["m.gguf"]


def test_import_gguf_force_still_replaces_outputs(capsys, work):
    d, out = work / "D", work / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old output")
    assert main(["import-gguf", str(d / "m.gguf"), "-o", str(out), "--force"]) == 0
    assert (out / "config.json").exists() and not (out / "stale.txt").exists()
    assert not leftovers(work)


def test_search_output_over_calibration(capsys, work, calib_file):
    c = work / "C.npz"
    shutil.copy(calib_file, c)
    refused(capsys, work, ["search", c, "-o", c, "--no-check"], [c], c, "it is the input")
    t = work / "t.txt"
    refused(capsys, work, ["search", c, "-o", t, "--text", t], [c, t], t)


def test_calibrate_output_over_model(capsys, work):
    hf, m = work / "hf", work / "D" / "m.gguf"
    refused(capsys, work, ["calibrate", hf, "--text", work / "t.txt", "-o", hf / "c.npz"], [hf],
            hf / "c.npz", "inside the input directory")
    refused(capsys, work, ["calibrate", m, "--tokens", 64, "--ctx", 32, "-o", m], [m], m)
    assert not (hf / "c.npz").exists()


def test_convert_into_the_input_directory(capsys, work):
    hf = work / "hf"
    # the default --profile is a policy: the pipeline's check comes before calibration
    refused(capsys, work, ["convert", hf, "-o", hf / "model.safetensors"], [hf], hf / "model.safetensors",
            "input directory")
    refused(capsys, work, ["convert", hf, "-o", hf / "new.gguf", "--profile", "none"], [hf], "new.gguf")
    refused(capsys, work, ["convert", hf, "-o", hf, "--profile", "none"], [hf], "it is the input")
    assert not (hf / "new.gguf").exists()


def test_convert_over_the_input_gguf_and_its_links(capsys, work):
    m = work / "D" / "m.gguf"
    hard = work / "hard.safetensors"
    os.link(work / "hf" / "model.safetensors", hard)
    refused(capsys, work, ["convert", m, "-o", m, "--profile", "none"], [m], m)
    refused(capsys, work, ["convert", work / "hf", "-o", hard, "--profile", "none"], [work / "hf"],
            hard, "model.safetensors", "hard link")


def test_pipeline_profile_json_over_input(capsys, work):
    """The pipeline's OUT.profile.json goes through the same check as OUT.gguf."""
    model_dir = work / "x.profile.json"
    shutil.copytree(work / "hf", model_dir)
    refused(capsys, work, ["convert", model_dir, "-o", work / "x.gguf"], [model_dir], model_dir)
    assert not (work / "x.gguf").exists()


# -- signals and leftovers -----------------------------------------------------------

SLOW_CONVERT = """
import importlib, sys, time
c = importlib.import_module("kvconvert.conversion.writer")  # the GGUF writer
encode = c._encode
def slow(x, q):
    time.sleep(0.2)
    return encode(x, q)
c._encode = slow
from kvconvert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_slow_convert(hf: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """A `kvconvert convert` that takes ~0.2 s per tensor; returns once its temporary file exists."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, "convert", str(hf), "-o", str(out),
                             "--profile", "none", "--weights", "f32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(out.parent.glob(f".{out.name}.*.part"))
        if parts:
            return proc, parts[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the conversion never started writing")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_stops_with_one_line_and_no_leftovers(work, sig, code, word):
    hf, out = work / "hf", work / "o.gguf"
    before = tree_hashes(hf)
    proc, part = start_slow_convert(hf, out)
    assert f".{proc.pid}." in part.name  # the temporary name says whose it is
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()  # progress lines ("[write] started"), then one line from kvconvert
    assert lines[-1].startswith(f"kvconvert: {word}") and sum(x.startswith("kvconvert") for x in lines) == 1, err
    assert "Traceback" not in err and "done" not in err and "[write] stopped after" in err
    assert not out.exists() and not leftovers(work)
    assert tree_hashes(hf) == before


def test_kill9_leftover_is_removed_by_the_next_run(capsys, work):
    hf, out = work / "hf", work / "o.gguf"
    proc, part = start_slow_convert(hf, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert part.exists() and leftovers(work) == [part]  # SIGKILL cannot be handled: the temporary file stays ...
    assert main(["convert", str(hf), "-o", str(out), "--profile", "none"]) == 0
    assert out.exists() and not leftovers(work)  # ... until the next write of the same output


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_live_writers_and_other_outputs_are_kept(tmp_path):
    from kvconvert.base.atomic import atomic_path

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = dead_pid()
        live = tmp_path / f".o.gguf.{sleeper.pid}.abcd1234.part"
        stale = tmp_path / f".o.gguf.{dead}.abcd1234.part"
        nested = tmp_path / f"..o.gguf.{dead}.abcd1234.part.{dead}.x_y_z.part"
        other = tmp_path / f".o.gguf.x.{dead}.abcd1234.part"  # a leftover of o.gguf.x, another output
        for p in (live, stale, nested, other):
            p.write_bytes(b"partial")
        with atomic_path(tmp_path / "o.gguf") as tmp:
            tmp.write_bytes(b"new")
        assert (tmp_path / "o.gguf").read_bytes() == b"new"
        assert live.exists() and other.exists() and not stale.exists() and not nested.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_dir_swap_cut_by_kill9_is_restored(tmp_path):
    """kill -9 between atomic_dir's two renames leaves the previous version at .NAME.PID.old
    and the new one at .NAME.PID.*.part: the next write puts the previous one back first."""
    from kvconvert.base.atomic import atomic_dir, clean_stale

    dead = dead_pid()
    old = tmp_path / f".hf.{dead}.old"
    old.mkdir()
    (old / "config.json").write_text("previous")
    new = tmp_path / f".hf.{dead}.abcd1234.part"
    new.mkdir()
    (new / "config.json").write_text("unfinished")
    clean_stale(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    with atomic_dir(tmp_path / "hf") as tmp:
        (tmp / "config.json").write_text("next")
    assert (tmp_path / "hf" / "config.json").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# -- permissions -------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_umask_mode(capsys, work, mask):
    old = os.umask(mask)
    try:
        out, hf_out = work / "o.gguf", work / "imported"
        assert main(["convert", str(work / "hf"), "-o", str(out), "--profile", "none"]) == 0
        assert main(["import-gguf", str(work / "D" / "m.gguf"), "-o", str(hf_out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(hf_out.stat().st_mode) == 0o777 & ~mask
    files = list(hf_out.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in files}
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~mask}
    assert not leftovers(work)


# -- arguments are validated up front -------------------------------------------------

BAD_ARGS = [
    ("run", ["-p", "hi", "--ctx", "8"], "--ctx"),
    ("run", ["-p", "hi", "--ctx", str((1 << 20) + 1)], "--ctx"),
    ("run", ["-p", "hi", "--ctx", "many"], "--ctx"),
    ("run", ["-p", ""], "-p/--prompt"),
    ("run", ["-p", "hi", "-n", "-1"], "-n/--max-tokens"),
    ("run", ["-p", "hi", "--temp", "nan"], "--temp"),
    ("run", ["-p", "hi", "--temp", "-0.5"], "--temp"),
    ("run", ["-p", "hi", "--temp", "inf"], "--temp"),
    ("run", ["-p", "hi", "--top-p", "0"], "--top-p"),
    ("run", ["-p", "hi", "--top-p", "1.5"], "--top-p"),
    ("run", ["-p", "hi", "--top-k", "-3"], "--top-k"),
    ("run", ["-p", "hi", "--repeat-penalty", "0"], "--repeat-penalty"),
    ("run", ["-p", "hi", "--seed", "-1"], "--seed"),
    ("run", ["-p", "hi", "--threads", "-2"], "-t/--threads"),
    ("run", ["-p", "hi", "--sink", "-1"], "--sink"),
    ("eval", ["--text", "t.txt", "--chunks", "0"], "--chunks"),
    ("eval", ["--text", "t.txt", "--ctx", "0"], "--ctx"),
    ("bench", ["--depths", "0,-512"], "--depths"),
    ("bench", ["--depths", "0,,512"], "--depths"),
    ("bench", ["--depths", "a,b"], "--depths"),
    ("bench", ["--prefill", "0"], "--prefill"),
    ("bench", ["--decode", "0"], "--decode"),
    ("calibrate", ["--tokens", "0"], "--tokens"),
    ("calibrate", ["--ctx", "15"], "--ctx"),
    ("convert", ["-o", "x.gguf", "--tokens", "0"], "--tokens"),
    ("search", ["-o", "p.json", "--budget", "1"], "--budget"),
    ("search", ["-o", "p.json", "--budget", "17"], "--budget"),
    ("search", ["-o", "p.json", "--budget", "nan"], "--budget"),
    ("search", ["-o", "p.json", "--v-budget", "inf"], "--v-budget"),
    ("search", ["-o", "p.json", "--chunks", "0"], "--chunks"),
    ("demo", ["--ctx", "4"], "--ctx"),
]


@pytest.mark.parametrize("cmd, extra, option", BAD_ARGS, ids=[f"{c}{' '.join(e)}" for c, e, _ in BAD_ARGS])
def test_bad_argument_is_refused_by_argparse(capsys, work, monkeypatch, cmd, extra, option):
    monkeypatch.chdir(work)
    model = [] if cmd == "demo" else ["C.npz" if cmd == "search" else str(work / "D" / "m.gguf")]
    before = tree_hashes(work / "D")
    with pytest.raises(SystemExit) as exc:
        main([cmd, *model, *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and f"argument {option}" in errors[0] and "Traceback" not in err, err
    assert err.startswith("usage: kvconvert ")
    assert tree_hashes(work / "D") == before and not leftovers(work)


def test_good_arguments_still_parse(capsys, work):
    m = str(work / "D" / "m.gguf")
    assert main(["run", m, "-p", "hi", "-n", "0", "--temp", "0", "--top-p", "1", "--seed", "0", "--ctx", "16"]) == 0
    assert main(["bench", m, "--depths", "0, 16", "--prefill", "8", "--decode", "1", "--json"]) == 0
    assert '"depth": 16' in capsys.readouterr().out


# -- non-finite logits -------------------------------------------------------------

def poisoned_gguf(src: Path, dst: Path, value: float) -> Path:
    """A copy of an f32 GGUF whose output norm weights are all ``value`` (NaN, or huge enough to overflow)."""
    import gguf
    import numpy as np

    shutil.copy(src, dst)
    t = next(t for t in gguf.GGUFReader(dst).tensors if t.name == "output_norm.weight")
    with open(dst, "r+b") as f:
        f.seek(t.data_offset)
        f.write(np.full(t.n_elements, value, dtype=np.float32).tobytes())
    return dst


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (3e38, "logits")])  # inf weights: inf-inf = NaN
def test_non_finite_logits_stop_eval_and_run(capsys, work, value, word):
    bad = poisoned_gguf(work / "D" / "m.gguf", work / "bad.gguf", value)
    t = work / "t.txt"
    base = work / "base.logp"
    before = tree_hashes(bad, t)
    err = cli_error(capsys, ["eval", bad, "--text", t, "--ctx", 64, "--save-logits", base], bad, word, "logits")
    assert "nan" not in err.replace("NaN", "")
    assert not base.exists()
    cli_error(capsys, ["eval", bad, "--text", t, "--ctx", 64, "--json"], bad, word)
    cli_error(capsys, ["run", bad, "-p", "It is a truth", "-n", 4, "--temp", "0.8"], bad, word, "logits")
    cli_error(capsys, ["run", bad, "-p", "It is a truth", "-n", 4, "--temp", "0"], bad, word)
    assert tree_hashes(bad, t) == before and not leftovers(work)


def test_damaged_kld_base_is_refused(capsys, work):
    import numpy as np

    m, t, base = work / "D" / "m.gguf", work / "t.txt", work / "base.logp"
    assert main(["eval", str(m), "--text", str(t), "--ctx", "64", "--save-logits", str(base)]) == 0
    data = bytearray(base.read_bytes())
    data[-2:] = np.array([np.nan], dtype=np.float16).tobytes()  # the last log-prob
    base.write_bytes(bytes(data))
    capsys.readouterr()
    cli_error(capsys, ["eval", m, "--text", t, "--ctx", 64, "--kld-base", base], base, "NaN")


def test_check_logits_names_the_file_and_the_cache():
    from types import SimpleNamespace

    import numpy as np

    from kvconvert.base.errors import InputError
    from kvconvert.runtime.engine import check_logits

    ctx = SimpleNamespace(model=SimpleNamespace(path=Path("m.gguf")), params=SimpleNamespace(type_k="f16", type_v="f16"))
    ok = np.ones((2, 8), np.float32) * 3e38  # finite, and its float32 sum would overflow: still accepted
    assert check_logits(ok, ctx, "here") is ok
    with pytest.raises(InputError, match=r"^m\.gguf: the model computed infinite logits here;") as e:
        check_logits(np.array([1.0, np.inf], np.float32), ctx, "here")
    assert "--ctk" not in str(e.value)
    ctx.params.type_k = "tq3"
    with pytest.raises(InputError, match=r"NaN logits at position 5; .*tq3/f16 cache"):
        check_logits(np.array([np.nan, 1.0], np.float32), ctx, "at position 5")


# -- outputs that are not regular files --------------------------------------------

def special_nodes(root: Path) -> list[Path]:
    """A FIFO, and a character device node (a private copy of /dev/null's) where mknod is allowed.
    Never /dev/null itself: a regression here would replace the system's device node."""
    fifo = root / "fifo"
    os.mkfifo(fifo)
    nodes = [fifo]
    dev = root / "null-node"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes.append(dev)
    except (PermissionError, OSError):
        pass
    return nodes


def test_device_and_fifo_outputs_are_refused(capsys, work, calib_file):
    m, hf, t = work / "D" / "m.gguf", work / "hf", work / "t.txt"
    c = work / "C.npz"
    shutil.copy(calib_file, c)
    for node in special_nodes(work):
        kind = stat.S_IFMT(node.stat().st_mode)
        for argv in (["convert", hf, "-o", node, "--profile", "none"],
                     ["convert", hf, "-o", node],
                     ["eval", m, "--text", t, "--ctx", 64, "--save-logits", node],
                     ["calibrate", m, "--text", t, "--tokens", 64, "--ctx", 32, "-o", node],
                     ["search", c, "-o", node, "--no-check"],
                     ["import-gguf", m, "-o", node]):
            refused(capsys, work, argv, [m, hf, t, c], node)
            assert stat.S_IFMT(os.lstat(node).st_mode) == kind  # still the FIFO / device node


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_disk_errors_become_one_line_and_leave_nothing(tmp_path, code):
    """A full disk (or quota, or read-only file system) while writing: an OutputError naming the
    output, no temporary file left; other OSErrors are not disguised."""
    from kvconvert.base.atomic import atomic_path
    from kvconvert.base.errors import OutputError

    out = tmp_path / "o.bin"
    with pytest.raises(OutputError, match=f"cannot write {out}: .*nothing was written"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as info:
        with atomic_path(out):
            raise OSError(errno.EBADF, "bad file descriptor")
    assert not isinstance(info.value, OutputError) and list(tmp_path.iterdir()) == []
