"""The Textual TUI (kvconvert.tui), driven by Pilot on a tiny model through the
real library: the whole flow to a GGUF that loads with the chosen configs,
cancelling a calibration, errors shown in the app; and an SVG snapshot of
every screen (pytest-textual-snapshot, terminal SNAP_SIZE, paths relative to
a working directory that holds the model, caches inside it)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar

from kvconvert.conversion.calibrate import calibrate
from kvconvert.conversion.writer import convert
from kvconvert.runtime.evaluate import EvalResult
from kvconvert.hub.modelcard import read_card_info
from kvconvert.runtime.engine import Model
from kvconvert.conversion.search import search
from kvconvert.tui.app import KVConvertApp
from kvconvert.tui.state import Session, load_recent, recent_path
from tests.tiny import CORPUS

SIZE = (120, 40)  # Pilot tests
SNAP_SIZE = (110, 36)
TINY = "qwen2-hd64"  # conftest TINY_SPECS entry: 2 layers, head_dim 64, 2 KV heads
TEXT = "\n".join(CORPUS * 24)  # the tiny tokenizer's own training text, repeated
SECRET = "hf_tui_test_SECRET_token"


def _workdir(root: Path, tiny_dir: Path) -> Path:
    """root/tiny (a copy of the model), root/text.txt; the caches live in root/cache."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "tiny").exists():
        shutil.copytree(tiny_dir, root / "tiny")
    (root / "text.txt").write_text(TEXT)
    return root


def _environ(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.chdir(root)
    mp.setenv("KVCONVERT_CACHE", str(root / "cache"))
    mp.setenv("HF_HUB_CACHE", str(root / "hub"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("HF_TOKEN", raising=False)
    mp.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_models) -> Path:
    root = _workdir(tmp_path / "work", tiny_models[TINY])
    _environ(monkeypatch, root)
    return root


def pilot_test(fn):
    """Run an async test (Pilot needs a running event loop) without an async pytest plugin."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        asyncio.run(fn(*args, **kwargs))
    return run


async def settle(pilot) -> None:
    """Wait until every worker (library call) has finished and its results are shown."""
    app = pilot.app
    for _ in range(1000):
        await pilot.pause()
        busy = any(not w.is_finished for w in app.workers) or \
            any(s.job_running() for s in app.step_screens)
        if not busy:
            return
        await app.workers.wait_for_complete()
    raise AssertionError("workers did not finish")


def message(app) -> str:
    return str(app.screen.query_one("#message").render())


async def click(pilot, selector: str) -> None:
    """Click a button as a user would: a Button ignores clicks during its 0.2 s press effect."""
    button = pilot.app.screen.query_one(selector)
    while button.has_class("-active"):
        await pilot.pause(0.05)
    await pilot.click(selector)


async def load(pilot, model: str) -> None:
    pilot.app.screen.query_one("#model-input", Input).value = model
    await click(pilot, "#load")
    await settle(pilot)


# ---- the flow ---------------------------------------------------------------------

@pilot_test
async def test_whole_flow_writes_gguf_with_chosen_configs(workdir):
    app = KVConvertApp()
    async with app.run_test(size=SIZE) as pilot:
        await load(pilot, "tiny")
        assert app.session.source is not None, message(app)
        assert load_recent() == [str((workdir / "tiny").resolve())]

        await pilot.press("ctrl+n")
        assert app.current_mode == "calibrate"
        await pilot.click("#text-file-choice")
        app.screen.query_one("#text-file", Input).value = "text.txt"
        app.screen.query_one("#tokens", Input).value = "256"
        app.screen.query_one("#n-ctx", Input).value = "64"
        await click(pilot, "#start")
        await settle(pilot)
        cal = app.session.calibration
        assert cal is not None and cal.n_tokens >= 256, message(app)
        assert cal.path.exists() and cal.text_source == "user text"

        await pilot.press("ctrl+n")
        assert app.screen.query_one("#layers", DataTable).row_count == cal.n_layer

        await pilot.press("ctrl+n")  # the profile step searches on arrival (balanced, with the PPL/KLD check)
        await settle(pilot)
        first = app.session.search
        assert first is not None, message(app)
        assert first.profile.measured.get("kld") is not None
        app.screen.query_one("#k-budget", Input).value = "3.5"
        app.screen.query_one("#check").value = False
        await click(pilot, "#search")
        await settle(pilot)
        prof = app.session.profile
        assert prof is not first.profile and prof.bits()[0] <= 3.5 + 1e-9, message(app)

        await pilot.press("ctrl+n")
        out = app.screen.query_one("#output", Input).value
        assert out == f"{prof.name}.f16.gguf"
        await click(pilot, "#convert")
        await settle(pilot)
        assert app.session.converted is not None, message(app)
        await pilot.click("#layout-folded")
        app.screen.query_one("#output", Input).value = "folded.gguf"
        await click(pilot, "#convert")
        await settle(pilot)
        assert app.session.converted.output.name == "folded.gguf", message(app)

    for name, layout in ((out, "portable"), ("folded.gguf", "folded")):
        assert read_card_info(workdir / name).layout == layout
        meta = Model(workdir / name).cache_meta
        assert [c.spec() for c in meta.k_configs] == prof.k_layers
        if prof.v_type == "tq":
            assert [c.spec() for c in meta.v_configs] == prof.v_layers
    assert not list(workdir.rglob("*.part"))  # no temporary file of an atomic write left over


@pilot_test
async def test_cancel_calibration_writes_nothing(workdir):
    app = KVConvertApp()
    async with app.run_test(size=SIZE) as pilot:
        await load(pilot, "tiny")
        await pilot.press("ctrl+n")
        app.screen.query_one("#tokens", Input).value = "1000000"  # data-free: generation is the long part
        await click(pilot, "#start")
        bar = app.screen.query_one(ProgressBar)
        for _ in range(2000):
            await pilot.pause(0.01)
            if bar.progress > 0:
                break
        assert bar.progress > 0, message(app)
        await pilot.press("escape")
        await settle(pilot)
        assert "Cancelled" in message(app)
        assert app.session.calibration is None
        assert app.screen.query_one(".job-what").render().plain == "cancelled"
    assert not list((workdir / "cache").rglob("*.calib.npz"))
    assert not list((workdir / "cache").rglob("gen-*.json"))
    assert not list(workdir.rglob("*.part"))


@pilot_test
async def test_bad_model_path_shows_error_and_app_lives(workdir, monkeypatch):
    app = KVConvertApp()
    async with app.run_test(size=SIZE) as pilot:
        await load(pilot, "/nonexistent/[b]model")  # brackets are shown, never taken as markup
        assert "/nonexistent/[b]model: no such file or directory" in message(app)
        assert app.session.source is None

        def boom(model):
            raise RuntimeError("kaboom\n  File 'x.py', line 1")

        with monkeypatch.context() as mp:
            mp.setattr("kvconvert.tui.model_screen.load_model", boom)
            await load(pilot, "tiny")
        text = message(app)
        assert "RuntimeError: kaboom" in text and "File" not in text and "\n" not in text.strip()
        await load(pilot, "tiny")
        assert app.session.source is not None and "Loaded" in message(app)
    assert recent_path().exists()


@pilot_test
async def test_start_model_navigation_and_help(workdir):
    """`kvconvert tui MODEL` loads MODEL on start; steps move by keys and by clicking the step bar."""
    from kvconvert.commands import tui as command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    app = KVConvertApp(parser.parse_args(["tiny"]).model)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.session.model == "tiny" and app.session.source is not None, message(app)
        await pilot.press("ctrl+n", "ctrl+n")
        assert app.current_mode == "layers"
        assert "No calibration yet" in str(app.screen.query_one("#layer-detail").render())
        await pilot.press("ctrl+b")
        assert app.current_mode == "calibrate"
        bar = str(app.screen.query_one("#steps").render())
        await pilot.click("#steps", offset=(bar.index("Share") + 2, 0))  # +1 for the bar's padding
        assert app.current_mode == "share"
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        assert app.current_mode == "share" and type(app.screen).__name__ == "ShareScreen"


@pilot_test
async def test_evaluate_and_share(snapenv, built, monkeypatch):
    pushed = {}

    def fake_push(gguf_path, repo_id, *, private=False, profile=None, token=None, progress=None, **kw):
        pushed.update(gguf=Path(gguf_path), repo=repo_id, private=private, profile=profile, token=token)
        progress(1, 1, "committed")
        return f"https://huggingface.co/{repo_id}/commit/0123abc"

    monkeypatch.setattr("kvconvert.hub.transfer.push", fake_push)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    app = KVConvertApp(session=built(), start="evaluate")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.screen.query_one("#eval-file", Input).value = "text.txt"
        app.screen.query_one("#chunks", Input).value = "2"
        app.screen.query_one("#eval-ctx", Input).value = "64"
        await click(pilot, "#evaluate")
        await settle(pilot)
        evals = app.session.evals
        assert list(evals) == ["f16", "q8_0", "profile"], message(app)
        assert evals["f16"].kld is None and evals["profile"].kld is not None
        assert evals["profile"].type_k == "tq"
        assert app.screen.query_one("#evals", DataTable).row_count == 3
        out = app.session.converted.output
        reports = sorted(out.parent.glob(f"{out.stem}.eval-*.json"))  # for push's model card
        assert [p.name.removeprefix(out.stem) for p in reports] == [".eval-f16.json", ".eval-profile.json",
                                                                     ".eval-q8_0.json"]

        await pilot.press("ctrl+n")
        try:
            assert "## Evaluations" in app.screen.card_text and "| text.txt | 64 | 2 |" in app.screen.card_text
        finally:
            for p in reports:  # the other tests (and snapshots) share this GGUF
                p.unlink()
        assert "environment" in str(app.screen.query_one("#token-status").render())
        app.screen.query_one("#repo-id", Input).value = "someone/tiny-kv"
        await pilot.click("#private")
        await click(pilot, "#upload")
        await settle(pilot)
        assert "someone/tiny-kv/commit/0123abc" in str(app.screen.query_one("#share-info").render()), message(app)
        assert SECRET not in app.export_screenshot()
    assert pushed == dict(gguf=app.session.converted.output, repo="someone/tiny-kv", private=True,
                          profile=app.session.profile, token=SECRET)


@pilot_test
async def test_chat_with_converted_file(snapenv, built, monkeypatch):
    """Share → Chat: an answer streamed into the transcript is what kvconvert.serving.chat answers for the
    same conversation and sampling (greedy) on the file's own caches; Esc stops an answer; Reset clears.
    The tiny GGUF has no chat template: kvconvert.serving.chat's ChatML fallback applies to both sides."""
    from kvconvert.serving.chat import ChatSession
    from kvconvert.runtime.engine import ContextParams
    from kvconvert.tui import chat_screen

    session = built()
    app = KVConvertApp(session=session, start="share")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await click(pilot, "#chat")
        assert type(app.screen).__name__ == "ChatScreen"
        screen = app.screen
        screen.query_one("#temp", Input).value = "0"
        await pilot.click("#prompt")
        await pilot.press(*"hello there")
        await pilot.press("enter")
        await settle(pilot)
        assert not screen.query_one("#message").has_class("-error"), message(app)
        answer = screen.streamed
        transcript = str(screen.query_one("#transcript").render())
        assert "You: hello there" in transcript
        assert answer.strip() and f"Assistant: {chat_screen.printable(answer).strip()}" in transcript
        assert screen.query_one("#prompt", Input).value == ""
        assert screen.chat.ctx.params.type_k == "tq"  # "auto" resolved to the file's own compressed caches

        expected = ChatSession(Model(session.converted.output), ContextParams(n_ctx=chat_screen.N_CTX),
                               chat_screen.sampler_params(0.0))
        assert answer == expected.ask("hello there", chat_screen.MAX_TOKENS)
        assert screen.chat.messages == expected.messages

        # a second turn continues the conversation kept in the cache
        screen.query_one("#prompt", Input).value = "and then?"
        await click(pilot, "#send")
        await settle(pilot)
        assert screen.streamed == expected.ask("and then?", chat_screen.MAX_TOKENS), message(app)
        assert screen.chat.messages == expected.messages

        # Esc stops a running answer at its next piece; what came so far stays in the conversation.
        # The tiny model answers in a blink: the answer is held after its first piece until Esc has
        # been pressed (whatever the machine's load), then goes on and must stop at the next piece.
        send = ChatSession.send
        gate = threading.Event()

        def held_send(self, text, max_tokens=512):
            for i, piece in enumerate(send(self, text, max_tokens)):
                yield piece
                if i == 0:
                    gate.wait(30)

        monkeypatch.setattr(ChatSession, "send", held_send)
        screen.query_one("#prompt", Input).value = "once more"
        await pilot.press("enter")
        for _ in range(2000):
            await pilot.pause(0.005)
            if screen.streamed:
                break
        assert screen.job_running()
        await pilot.press("escape")
        gate.set()
        await settle(pilot)
        assert type(app.screen).__name__ == "ChatScreen"  # Esc stopped the answer, did not leave
        assert "Answer stopped" in message(app)
        monkeypatch.setattr(ChatSession, "send", send)
        full = expected.ask("once more", chat_screen.MAX_TOKENS)
        last = screen.chat.messages[-1]
        assert len(screen.chat.messages) == 6 and last["role"] == "assistant", message(app)
        assert last["content"] == screen.streamed and full.startswith(screen.streamed)
        assert 0 < len(screen.streamed) < len(full)

        await click(pilot, "#reset")
        assert screen.chat.messages == []
        assert "hello there" not in str(screen.query_one("#transcript").render())
        assert "reset" in message(app)

        await pilot.press("escape")  # no answer running: back to the Share step
        assert type(app.screen).__name__ == "ShareScreen"
        await pilot.press("ctrl+t")  # the conversation (and the loaded model) outlive the visit
        assert app.screen.chat is screen.chat


@pilot_test
async def test_chat_errors_are_one_line(snapenv, built, monkeypatch):
    from kvconvert.tui import chat_screen

    app = KVConvertApp(session=built(), start="share")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+t")
        screen = app.screen
        monkeypatch.setattr(chat_screen, "N_CTX", 8)  # the first message already overflows
        screen.query_one("#prompt", Input).value = "a message far too long for eight tokens of context"
        await click(pilot, "#send")
        await settle(pilot)
        text = message(app)
        assert "does not fit the context of 8 tokens" in text and "\n" not in text.strip()
        assert screen.query_one("#message").has_class("-error")
        assert screen.chat.messages == []  # the user turn that did not fit is dropped
        assert "far too long" not in str(screen.query_one("#transcript").render())
        assert screen.query_one("#prompt", Input).value.startswith("a message far")  # given back to edit
        screen.query_one("#temp", Input).value = "hot"
        await click(pilot, "#send")
        assert "temperature must be" in message(app)

    app = KVConvertApp(session=built(converted=False), start="share")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+t")
        assert type(app.screen).__name__ == "ShareScreen" and "convert a model first" in message(app)


# ---- snapshots --------------------------------------------------------------------

@pytest.fixture(scope="module")
def snapdir(tiny_models, tmp_path_factory) -> Path:
    """One working directory for the module's snapshots (model, text, caches, outputs)."""
    return _workdir(tmp_path_factory.mktemp("tui") / "work", tiny_models[TINY])


@pytest.fixture
def snapenv(snapdir, monkeypatch) -> Path:
    """The snapshot directory as working directory, no recent models, one model in the Hub cache."""
    _environ(monkeypatch, snapdir)
    recent_path().unlink(missing_ok=True)
    rev = "0" * 40  # laid out as huggingface_hub does: snapshots/REV/FILE, refs/main = REV
    repo = snapdir / "hub" / "models--tiny-org--tiny-qwen"
    (repo / "snapshots" / rev).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / rev / "config.json").write_text("{}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snapdir


@pytest.fixture(scope="module")
def built(snapdir):
    """Session(...) factory with results made once by the library itself: a
    calibration on text.txt, a balanced search (no end-to-end check, so no
    timing-dependent numbers) and the converted GGUF."""
    from kvconvert.models.source import load_model

    with pytest.MonkeyPatch.context() as mp:
        _environ(mp, snapdir)
        src = load_model("tiny")
        cal = calibrate(src, text=TEXT, tokens=256, n_ctx=64)
        found = search(cal, policy="balanced", check=False)
        conv = convert(src, Path("tiny-balanced.f16.gguf").resolve(), weights="f16", profile=found.profile)

    def make(calibration=True, searched=True, converted=True, evals=False) -> Session:
        s = Session(model="tiny", source=src)
        s.calibration = cal if calibration else None
        s.search = found if searched else None
        s.converted = conv if converted else None
        if evals:  # fixed numbers: the snapshot tests the table, not the runtime's last digits
            s.evals = {row: EvalResult(str(conv.output), "text.txt", "", 64, 2, 120, tk, tv, ppl, 1.5, kld, kld_err,
                                       top1, nbytes)
                       for row, tk, tv, ppl, kld, kld_err, top1, nbytes in (
                           ("f16", "f16", "f16", 371.25, None, None, None, 1024),
                           ("q8_0", "q8_0", "q8_0", 371.5, 0.0012, 0.0002, 0.992, 544),
                           ("profile", "tq", "tq", 373.0, 0.0105, 0.001, 0.958, 280))}
        return s

    return make


def snap(snap_compare, app: KVConvertApp, *keys: str, before=None) -> bool:
    """Compare the app's screen after ``before(pilot)`` and ``keys``, with text cursors
    made steady (a blinking cursor would be caught on or off at random)."""
    async def run_before(pilot):
        await pilot.pause()
        for screen in pilot.app.screen_stack:
            for field in screen.query(Input):
                field.cursor_blink = False
        if before is not None:
            await before(pilot)
        await pilot.press(*keys)

    return snap_compare(app, terminal_size=SNAP_SIZE, run_before=run_before)


def test_snapshot_model(snapenv, snap_compare):
    assert snap(snap_compare, KVConvertApp(), before=lambda pilot: load(pilot, "tiny"))


def test_snapshot_bad_model(snapenv, snap_compare):
    assert snap(snap_compare, KVConvertApp(), before=lambda pilot: load(pilot, "/nonexistent/model"))


def test_snapshot_help(snapenv, snap_compare):
    assert snap(snap_compare, KVConvertApp(), "f1")


def test_snapshot_calibrate(snapenv, built, snap_compare):
    assert snap(snap_compare, KVConvertApp(session=built(searched=False, converted=False), start="calibrate"))


def test_snapshot_layers(snapenv, built, snap_compare):
    assert snap(snap_compare, KVConvertApp(session=built(), start="layers"), "down")


def test_snapshot_profile(snapenv, built, snap_compare):
    assert snap(snap_compare, KVConvertApp(session=built(), start="profile"), "s", "s", "s")  # sort by K bpv


def test_snapshot_convert(snapenv, built, snap_compare):
    assert snap(snap_compare, KVConvertApp(session=built(), start="convert"))


def test_snapshot_evaluate(snapenv, built, snap_compare):
    assert snap(snap_compare, KVConvertApp(session=built(evals=True), start="evaluate"))


def test_snapshot_share(snapenv, built, snap_compare, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)

    async def repo(pilot):
        pilot.app.screen.query_one("#repo-id", Input).value = "someone/tiny-kv"
        await pilot.pause()

    assert snap(snap_compare, KVConvertApp(session=built(), start="share"), before=repo)


def test_snapshot_chat(snapenv, built, snap_compare):
    async def typed(pilot):
        await pilot.press("ctrl+t")
        await pilot.pause()
        screen = pilot.app.screen
        for field in screen.query(Input):
            field.cursor_blink = False
        screen.query_one("#system", Input).value = "You answer briefly."
        screen.query_one("#prompt", Input).value = "What is a KV cache?"
        await pilot.pause()

    assert snap(snap_compare, KVConvertApp(session=built(), start="share"), before=typed)


@pilot_test
async def test_profile_step_with_defaults_checks_on_held_out_tokens(workdir):
    """The default path: data-free calibration and the Profile step's automatic search with its
    PPL/KLD check ticked (it once failed: generated sequences of unequal lengths left no held-out text)."""
    app = KVConvertApp()
    async with app.run_test(size=SIZE) as pilot:
        await load(pilot, "tiny")
        await pilot.press("ctrl+n")
        await click(pilot, "#start")  # every calibration setting at its default: the model's own text
        await settle(pilot)
        cal = app.session.calibration
        assert cal is not None, message(app)
        assert cal.text_source.startswith("generated") and len(cal.holdout) == 2
        await pilot.press("ctrl+n", "ctrl+n")
        assert app.screen.query_one("#check").value  # "measure PPL/KLD" is on by default
        await settle(pilot)
        found = app.session.search
        assert found is not None, message(app)
        m = found.profile.measured
        assert m["text"] == "calibration held-out chunks" and m["chunks"] == 2 and m["kld"] >= 0
        assert not app.screen.query_one("#message").has_class("-error"), message(app)


@pilot_test
async def test_layers_detail_names_the_k_basis(snapenv, built):
    """A layer whose K is coded in a calibrated basis says so in the layers screen's detail line;
    a layer on its plain channels (an identity basis) does not."""
    from kvconvert.kvcache import kbasis

    s = built()
    prof = s.search.profile
    m = prof.model
    basis = kbasis.identity(m.n_layer, m.n_head_kv, m.head_dim)
    basis[1] *= 2.0  # layer 1 only
    kept, prof.transforms.k_basis = prof.transforms.k_basis, basis
    try:
        app = KVConvertApp(session=s, start="layers")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            detail = []
            for layer in (0, 1):
                app.screen.show_layer(layer)
                detail.append(str(app.screen.query_one("#layer-detail").render()))
    finally:
        prof.transforms.k_basis = kept
    assert "calibrated basis" not in detail[0] and "calibrated basis" in detail[1], detail
