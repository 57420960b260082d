"""Issue 16, deliverable 5: what `push` uploads says the right things — base_model from the real
source, the model named after its repo, no local path anywhere, plain and folded files carded as
what they are, the card's bits as the TUI shows them, the user's eval reports on the card. All
through prepare_push (what push would upload), no network."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml

from kvconvert import convert
from kvconvert.base.errors import InputError
from kvconvert.cli import main
from kvconvert.formats.gguf_io import field_value, open_gguf
from kvconvert.formats.gguf_keys import Keys
from kvconvert.formats.gguf_patch import pack_entries, write_patched
from kvconvert.hub.transfer import prepare_push
from kvconvert.models.source import load_model
from tests.test_calibrate_search import random_profile


def uploads(gguf_path, **kw) -> dict[str, bytes]:
    _, files = prepare_push(gguf_path, "alice/shared", **kw)
    return {f.path_in_repo: (f.source.read_bytes() if isinstance(f.source, Path) else f.source) for f in files}


def front(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))


def kv_strings(path) -> str:
    r = open_gguf(path)
    return "\n".join(str(f.contents()) for k, f in r.fields.items()
                     if k.startswith(("kvconvert.", "general.")) and f.types[0].name in ("STRING", "ARRAY"))


def private_bits(tmp_path) -> list[str]:
    return [str(tmp_path), str(Path.home()), "/tmp/", "/root", "/home/"]


@pytest.fixture
def hf_snapshot(tiny_models, tmp_path):
    """The tiny qwen2 model as a snapshot in a huggingface_hub cache: models--tiny-org--tiny-qwen/snapshots/HASH."""
    snap = tmp_path / "hf-cache" / "models--tiny-org--tiny-qwen" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_models["qwen2-hd64"], snap)
    return snap


def test_repo_snapshot_names_the_model_and_base_model_without_paths(hf_snapshot, tmp_path):
    src = load_model(hf_snapshot)
    prof = random_profile(src, np.random.default_rng(1), k_type="tq", v_type="tq")
    prof.k_layers = prof.v_layers = ["tq4"] * src.args.num_hidden_layers
    prof.provenance = {"model": str(hf_snapshot), "calibration": str(tmp_path / "cache" / "x.calib.npz"),
                       "text": str(tmp_path / "my-notes.txt"), "text_sha256": "ab" * 32}
    prof.measured = {"k_bpv": 4.28, "v_bpv": 4.28, "bpv_n_ctx": 512}
    prof_file = prof.save(tmp_path / "p.profile.json")
    out = convert(hf_snapshot, tmp_path / "out.gguf", weights="f16", profile=prof).output
    r = open_gguf(out)
    assert field_value(r, "general.name") == "tiny-qwen"  # not the snapshot hash
    assert field_value(r, Keys.KVConvert.SOURCE) == "tiny-org/tiny-qwen"
    assert field_value(r, "general.base_model.0.repo_url") == "https://huggingface.co/tiny-org/tiny-qwen"
    up = uploads(out, profile=prof_file)
    card = up["README.md"].decode()
    meta = front(card)
    assert meta["base_model"] == "tiny-org/tiny-qwen" and meta["base_model_relation"] == "quantized"
    assert {"gguf", "llama-cpp"} <= set(meta["tags"])
    shared = json.loads(up["out.profile.json"])["provenance"]
    assert shared == {"model": "tiny-org/tiny-qwen", "calibration": "x.calib.npz", "text": "my-notes.txt",
                      "text_sha256": "ab" * 32}
    embedded = json.loads(field_value(r, Keys.KVConvert.PROFILE))["provenance"]
    assert embedded["model"] == "tiny-org/tiny-qwen" and embedded["calibration"] == "x.calib.npz"
    for blob in (card, up["out.profile.json"].decode(), kv_strings(out)):
        for bit in private_bits(tmp_path):
            assert bit not in blob, (bit, blob[:300])
    assert "0123456789abcdef" not in card


def test_kept_gguf_base_model_from_its_own_keys_or_given(tiny_models, tmp_path):
    src = load_model(tiny_models["llama-hd64-tied"])
    gg = convert(src, tmp_path / "community.gguf", weights="q8_0").output  # a local dir: no repo known
    assert field_value(open_gguf(gg), "general.base_model.count") is None
    # give the "community" file the keys llama.cpp's converter writes for a base model
    w = gguf.GGUFWriter(None, "llama")
    w.add_uint32("general.base_model.count", 1)
    w.add_string("general.base_model.0.repo_url", "https://huggingface.co/Org/Base-1B")
    entries, n = pack_entries(w, lambda k: k.startswith("general.base_model"))
    community = tmp_path / "Base-1B-Q8_0.gguf"
    with open(community, "wb") as fh:
        write_patched(open_gguf(gg), fh, lambda k: k.startswith("kvconvert."), entries, n)
    prof = random_profile(load_model(community), np.random.default_rng(2))
    out = convert(community, tmp_path / "patched.gguf", profile=prof).output
    card = uploads(out)["README.md"].decode()
    assert front(card)["base_model"] == "Org/Base-1B"
    assert "the original file's, byte for byte" in card and "weights kept" in card
    assert field_value(open_gguf(out), Keys.KVConvert.SOURCE) == "Base-1B-Q8_0"  # its name, not its path
    assert front(uploads(out, base_model="Other/Model")["README.md"].decode())["base_model"] == "Other/Model"
    with pytest.raises(InputError, match="not a Hub repo id"):
        uploads(out, base_model="/home/me/model")
    plain_src = convert(src, tmp_path / "nobase.gguf", weights="q8_0").output
    kept = convert(plain_src, tmp_path / "nobase-kv.gguf", profile=prof).output
    meta = front(uploads(kept)["README.md"].decode())
    assert "base_model" not in meta and "base_model_relation" not in meta  # nothing known: nothing claimed


def test_plain_and_folded_cards_tell_the_truth(tiny_models, tmp_path):
    src = load_model(tiny_models["qwen2-hd64"])
    plain = convert(src, tmp_path / "plain.gguf", weights="f16").output
    card = uploads(plain)["README.md"].decode()
    assert "without a KV-cache profile" in card and "Nothing here is compressed" in card
    assert "compressed KV cache" not in card and "saved" not in card and "0%" not in card
    prof = random_profile(src, np.random.default_rng(3), k_type="tq", v_type="tq")
    prof.k_layers = prof.v_layers = ["tq4"] * src.args.num_hidden_layers
    folded = convert(src, tmp_path / "folded.gguf", weights="f16", profile=prof, layout="folded").output
    card = uploads(folded)["README.md"].decode()
    assert "llama.cpp refuses" in card and "loads it" not in card and "llama-cli" not in card
    assert "llama-cpp" not in front(card)["tags"]


def test_card_bits_are_the_tuis(tiny_models, tmp_path):
    """The card states the profile's bits as the TUI's Profile step and `convert`'s summary do
    (Profile.budget_bits: sinks over the calibration context), not the configs' bare mean."""
    src = load_model(tiny_models["qwen2-hd64"])
    L = src.args.num_hidden_layers
    prof = random_profile(src, np.random.default_rng(4), k_type="tq", v_type="tq")
    prof.k_layers, prof.v_layers = ["tq:split=16,hi=6,lo=4"] * L, ["tq4"] * L
    prof.sink_tokens = 1
    kb, vb = prof.bits(512)
    prof.measured = {"k_bpv": round(kb, 4), "v_bpv": round(vb, 4), "bpv_n_ctx": 512, "ppl": 10.0, "ppl_f16": 9.9,
                     "kld": 0.01, "top1": 0.95, "text": "held-out", "n_ctx": 512, "chunks": 2}
    out = convert(src, tmp_path / "o.gguf", profile=prof, weights="f16").output
    card = uploads(out)["README.md"].decode()
    tui_k, tui_v = prof.budget_bits()  # tui/profile_screen.py show_choice
    bare = np.mean([c.bits_per_value() for c in prof.k_configs()])
    assert f"{tui_k:.2f}" != f"{bare:.2f}"  # the test can tell the two apart
    assert f"K {tui_k:.2f} and V {tui_v:.2f} bits per value on average at a 512-token context" in card
    assert f"| this file | {tui_k:.2f} | {tui_v:.2f} | 10.000 | 0.0100 | 0.950 |" in card


def test_eval_reports_reach_the_card(tiny_models, tmp_path, capsys):
    src = load_model(tiny_models["qwen2-hd64"])
    prof = random_profile(src, np.random.default_rng(5), k_type="tq", v_type="tq")
    prof.k_layers = prof.v_layers = ["tq4"] * src.args.num_hidden_layers
    out = convert(src, tmp_path / "m.gguf", profile=prof, weights="f16").output
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession " * 40)
    rep = tmp_path / "m.eval.json"
    assert main(["eval", str(out), "--text", str(text), "--ctx", "64", "--chunks", "2", "--save-report",
                 str(rep), "-t", "1"]) == 0
    r = json.loads(rep.read_text())
    assert r["file"] == "m.gguf" and r["file_bytes"] == out.stat().st_size and r["text"] == "t.txt"
    assert str(tmp_path) not in rep.read_text()
    card = uploads(out)["README.md"].decode()  # found beside the GGUF
    assert "## Evaluations" in card and f"| t.txt | 64 | 2 | {r['type_k']} | {r['type_v']} | {r['ppl']:.3f}" in card
    other = convert(src, tmp_path / "other.gguf", weights="f16").output
    with pytest.raises(InputError, match="not an eval report of other.gguf"):
        uploads(other, evals=[rep])
    assert "Evaluations" not in uploads(other)["README.md"].decode()  # m.eval.json is not other.gguf's
    # a report left from an earlier file of the same name is not put on the new one's card
    convert(src, tmp_path / "m.gguf.new", weights="f32")
    os.replace(tmp_path / "m.gguf.new", out)
    assert "Evaluations" not in uploads(out)["README.md"].decode()
    capsys.readouterr()


def test_push_refuses_a_file_that_holds_a_local_path(tiny_models, tmp_path):
    src = load_model(tiny_models["qwen2-hd64"])
    gg = convert(src, tmp_path / "m.gguf", weights="f16").output
    w = gguf.GGUFWriter(None, "qwen2")
    w.add_string(Keys.KVConvert.SOURCE, "/home/me/models/secret-project")
    entries, n = pack_entries(w, lambda k: k == Keys.KVConvert.SOURCE)
    old = tmp_path / "old.gguf"
    with open(old, "wb") as fh:
        write_patched(open_gguf(gg), fh, lambda k: k == Keys.KVConvert.SOURCE, entries, n)
    with pytest.raises(InputError, match="local path; re-patch"):
        uploads(old)
