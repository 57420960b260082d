"""Hub sharing: `push` uploads a kvconvert GGUF, its profile and a generated model card in one
commit; `pull` downloads it into the huggingface_hub cache, where the repo id then resolves
offline. Everything runs against tests/fakehub.py (a local HTTP server), never the real Hub,
with the huggingface_hub cache, token file and endpoint in tmp dirs."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml

from kvconvert import convert
from kvconvert.cli import main
from kvconvert.base.errors import InputError, KVConvertError
from kvconvert.hub.transfer import (
    HubAuthError,
    HubNetworkError,
    HubOfflineError,
    HubPermissionError,
    RepoNotFound,
    RepoTypeError,
    prepare_push,
    pull,
    push,
    repo_id_of,
)
from kvconvert.kvcache.kvmeta import CacheMeta
from kvconvert.models.source import load_model, resolve
from kvconvert.hub.modelcard import NotKVConvertGGUF, base_model, model_card, read_card_info
from kvconvert.conversion.profile import ModelShape, Policy, Profile
from kvconvert.kvcache.turboquant import KConfig
from tests.fakehub import FakeHub

TOKEN = "hf_SECRETSECRET"  # the fake's valid token for user alice; must never be printed
K_CONFIGS = [KConfig(d=64, lo_bits=4), KConfig(d=64, n_hi=16, hi_bits=8, lo_bits=3, qjl_hi=True)]
MEASURED = {"k_bpv": 4.6, "v_bpv": 4.25, "ppl": 12.345, "ppl_f16": 12.001, "kld": 0.0123, "top1": 0.931,
            "text": "Austen eval", "ctx": 512, "chunks": 4}


@pytest.fixture(scope="module")
def kv_gguf(tiny_models, tmp_path_factory) -> Path:
    """A tiny qwen2 GGUF with TurboQuant K/V cache metadata (per-layer K configs, means, permutation)."""
    src = load_model(tiny_models["qwen2-hd64"])
    a, rng = src.args, np.random.default_rng(0)
    meta = CacheMeta(k_type="tq", v_type="tq", k_configs=K_CONFIGS, v_configs=[KConfig(d=64, lo_bits=4)] * 2,
                     k_perm=np.stack([rng.permutation(64) for _ in range(a.num_hidden_layers)]),
                     k_mean=rng.standard_normal((a.num_hidden_layers, a.num_key_value_heads, 64)).astype(np.float32))
    out = tmp_path_factory.mktemp("kvgguf") / "tiny-kv.gguf"
    convert(src, out, weights="f16", kv_meta=meta)
    return out


@pytest.fixture(scope="module")
def profile_file(tiny_models, tmp_path_factory) -> Path:
    a = load_model(tiny_models["qwen2-hd64"]).args
    prof = Profile(name="tiny-test", model=ModelShape.of("tiny-qwen", "qwen2", a), k_type="tq", v_type="tq",
                   k_layers=[c.spec() for c in K_CONFIGS], v_layers=["tq4", "tq4"], policy="balanced",
                   provenance={"model": "tiny-org/tiny-qwen", "text": "austen-calib", "tokens": 4096},
                   measured=MEASURED)
    return prof.save(tmp_path_factory.mktemp("prof") / "tiny.profile.json")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running fake Hub that huggingface_hub talks to; cache and token file in tmp_path, no token."""
    import huggingface_hub.constants as c

    with FakeHub(tokens={TOKEN: "alice"}, orgs={"alice": ["alice-org"]}) as fake:
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(c, "ENDPOINT", fake.url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)  # the fake speaks LFS, not Xet
        monkeypatch.setattr(c, "HF_HUB_DISABLE_PROGRESS_BARS", True)
        yield fake


def go_offline(monkeypatch) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def front_matter(card: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


# -- push ---------------------------------------------------------------------------------------


def test_push_one_commit_with_card_and_profile(hub, kv_gguf, profile_file):
    url = push(kv_gguf, "alice/tiny-kv", private=True, profile=profile_file, token=TOKEN)
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert url == f"{hub.url}/alice/tiny-kv/commit/{commit.sha}"
    assert set(commit.files) == {"tiny-kv.gguf", "tiny-kv.profile.json", "README.md"}
    assert commit.files["tiny-kv.gguf"] == kv_gguf.read_bytes() and commit.lfs_paths == {"tiny-kv.gguf"}
    assert hub.created[0]["visibility"] == "private" and hub.repos["alice/tiny-kv"].private
    back = Profile.from_json(json.loads(commit.files["tiny-kv.profile.json"]))
    assert back.to_json() == Profile.from_json(json.loads(profile_file.read_text())).to_json()

    card = commit.files["README.md"].decode()
    meta = front_matter(card)
    assert meta["base_model"] == "tiny-org/tiny-qwen"  # source is a local dir name: the profile's model
    assert meta["base_model_relation"] == "quantized"
    assert meta["tags"] == ["gguf", "llama-cpp", "kv-cache-quantization", "kvconvert"] and meta["library_name"] == "gguf"
    assert "license" not in meta  # the GGUF has no general.license
    # what was patched: per-layer configs counted, mean bits
    k0, k1 = (c.bits_per_value() for c in K_CONFIGS)
    assert f"| K | `tq4` | 1 of 2 | {k0:.2f} |" in card
    assert f"| K | `{K_CONFIGS[1].spec()}` | 1 of 2 | {k1:.2f} |" in card
    assert "| V | `tq4` | 2 of 2 | 4.25 |" in card
    assert f"K {(k0 + k1) / 2:.2f}, V 4.25" in card
    assert "Layout **portable**" in card and "K means" in card and "permutation" in card
    # measured quality from the profile
    assert "| f16 | 16 | 16 | 12.001 | 0 | 1 |" in card
    kb, vb = Profile.from_json(json.loads(profile_file.read_text())).budget_bits()  # what the TUI shows
    assert f"| this file | {kb:.2f} | {vb:.2f} | 12.345 | 0.0123 | 0.931 |" in card
    assert "Austen eval, context 512 tokens, 4 chunks" in card
    # memory at 4k/32k/128k and usage
    for ctx in ("| 4k", "| 32k", "| 128k"):
        assert ctx in card
    assert "kvconvert run alice/tiny-kv" in card and "llama-cli -m tiny-kv.gguf" in card
    # every API write carried the token (the LFS PUT goes to a pre-signed URL, without it)
    assert all(auth for method, path, auth in hub.requests if method == "POST" and path.startswith("/api/"))


def test_push_token_from_env_existing_repo(hub, kv_gguf, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push(kv_gguf, "alice-org/tiny-kv")
    push(kv_gguf, "https://huggingface.co/alice-org/tiny-kv")  # exists now (409 is fine); a URL is accepted
    assert [c.repo_id for c in hub.commits] == ["alice-org/tiny-kv"] * 2
    assert set(hub.commits[0].files) == {"tiny-kv.gguf", "README.md"}  # no profile given
    assert not hub.repos["alice-org/tiny-kv"].private and hub.created[0]["visibility"] == "public"
    card = hub.commits[0].files["README.md"].decode()
    assert "base_model" not in front_matter(card) and "Measured quality" not in card


def test_push_cli(hub, kv_gguf, profile_file, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(kv_gguf), "--repo", "alice/cli", "--profile", str(profile_file), "--private"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{hub.url}/alice/cli/commit/{hub.commits[0].sha}"
    assert hub.repos["alice/cli"].private


def test_push_cli_finds_the_conversions_profile(hub, kv_gguf, profile_file, tmp_path, monkeypatch, capsys):
    """`kvconvert convert` saves OUT.profile.json beside OUT.gguf; push takes it without --profile."""
    import shutil

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "model.gguf"
    shutil.copy(kv_gguf, out)
    shutil.copy(profile_file, tmp_path / "model.profile.json")
    assert main(["push", str(out), "--repo", "alice/auto"]) == 0
    assert "using the conversion's profile" in capsys.readouterr().err
    assert set(hub.commits[0].files) == {"model.gguf", "model.profile.json", "README.md"}
    assert "Measured quality" in hub.commits[0].files["README.md"].decode()


def test_card_kv_bytes_match_runtime(kv_gguf):
    runtime = pytest.importorskip("kvconvert.runtime.engine")
    pytest.importorskip("kvconvert._kvc", reason="native runtime not built")
    info = read_card_info(kv_gguf)
    ctx = runtime.Model(kv_gguf).context(n_ctx=32)
    assert info.kv_bytes_per_token() == pytest.approx(ctx.kv_bytes_per_token)
    assert info.f16_bytes_per_token() == info.n_layer * info.n_head_kv * info.head_dim * 4


def test_card_variants(kv_gguf):
    info = read_card_info(kv_gguf)
    folded = model_card(dataclasses.replace(info, layout="folded", license="apache-2.0",
                                            source="Qwen/Qwen2.5-0.5B"), "bob/x")
    meta = front_matter(folded)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert "llama-cli" not in folded and "needs kvconvert" in folded and "Layout **folded**" in folded
    assert base_model(dataclasses.replace(info, source="/home/me/models/qwen")) is None
    assert model_card(info, "bob/x") == model_card(info, "bob/x")  # pure
    # the 128k row is past this model's trained context and says so
    assert f"beyond the model's trained context ({info.context_length} tokens)" in model_card(info, "bob/x")


# -- failures: one line, non-zero exit, nothing written locally, the token never shown ----------------


def strip_kvconvert_keys(src: Path, dst: Path) -> None:
    """Copy a GGUF without its kvconvert.* keys: another tool's GGUF."""
    from tests.ggufmix import DROP, rewrite

    rewrite(src, dst, metadata=lambda key, val: DROP if key.startswith("kvconvert.") else val)


def no_retry_sleep(monkeypatch) -> None:
    """huggingface_hub retries dropped uploads with 1-8 s sleeps; make them instant."""
    import types

    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda s: None, time=_http.time.time,
                                                              monotonic=_http.time.monotonic))


CASES = {
    # name: (setup(hub, monkeypatch, workdir) -> (gguf or None, repo, token), error class, message needles)
    "no-token": (lambda h, mp, w: (None, "alice/x", None), HubAuthError, ["no Hugging Face token", "HF_TOKEN"]),
    "bad-token": (lambda h, mp, w: (None, "alice/x", "hf_SECRETWRONG"), HubAuthError, ["HTTP 401", "HF_TOKEN"]),
    "forbidden-create": (lambda h, mp, w: (None, "someone-else/x", TOKEN), HubPermissionError,
                         ["someone-else/x", "HTTP 403", "write access"]),
    "forbidden-commit": (lambda h, mp, w: (h.fail.update(commit=403), None, "alice/x", TOKEN)[1:], HubPermissionError,
                         ["uploading to alice/x", "403", "nothing was committed"]),
    "server-error": (lambda h, mp, w: (h.fail.update(commit=400), None, "alice/x", TOKEN)[1:], KVConvertError,
                     ["alice/x", "HTTP 400"]),
    "drop-during-lfs-upload": (lambda h, mp, w: (h.fail.update(lfs="drop"), no_retry_sleep(mp), None, "alice/x",
                                                 TOKEN)[2:], HubNetworkError,
                               ["uploading to alice/x", "network failure", "did not finish"]),
    "drop-during-commit": (lambda h, mp, w: (h.fail.update(commit="drop"), None, "alice/x", TOKEN)[1:],
                           HubNetworkError, ["alice/x", "network failure"]),
    "offline": (lambda h, mp, w: (go_offline(mp), None, "alice/x", TOKEN)[1:], HubOfflineError, ["HF_HUB_OFFLINE"]),
    "dataset-id": (lambda h, mp, w: (None, "datasets/alice/x", TOKEN), RepoTypeError, ["dataset", "model repo"]),
    "space-url": (lambda h, mp, w: (None, "https://huggingface.co/spaces/alice/x", TOKEN), RepoTypeError,
                  ["space"]),
    "not-kvconvert-gguf": (lambda h, mp, w: (w / "other.gguf", "alice/x", TOKEN), NotKVConvertGGUF,
                           ["other.gguf", "kvconvert.schema_version", "kvconvert convert"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_push_failures(case, hub, kv_gguf, tmp_path, monkeypatch, capsys, caplog):
    setup, err_type, needles = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    gguf_path = work / kv_gguf.name
    gguf_path.write_bytes(kv_gguf.read_bytes())
    strip_kvconvert_keys(kv_gguf, work / "other.gguf")
    before = sorted(p.name for p in work.iterdir())
    path, repo, token = setup(hub, monkeypatch, work)
    path = path or gguf_path
    caplog.set_level(logging.DEBUG)

    with pytest.raises(err_type) as exc:
        push(path, repo, token=token, profile=None)
    msg = str(exc.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not hub.commits
    # the CLI: same line on stderr, non-zero exit (the token comes from HF_TOKEN there)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    code = main(["push", str(path), "--repo", repo])
    out, err = capsys.readouterr()
    assert code != 0 and err.strip().splitlines() == [f"kvconvert: error: {msg}"] and "Traceback" not in err
    for text in (msg, out, err, caplog.text, repr(exc.value), str(exc.value.__cause__), str(exc.value.__context__)):
        assert "SECRET" not in text
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written next to the GGUF
    assert not hub.commits
    if case in ("no-token", "offline", "dataset-id", "space-url", "not-kvconvert-gguf"):
        assert hub.requests == []  # refused before any request
    if case == "drop-during-lfs-upload":
        assert any(m == "PUT" and p.startswith("/lfs/") for m, p, _ in hub.requests)


def test_push_checks_before_network(hub, kv_gguf, tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"schema": 1, "kind": "policy", "name": "p", "description": "d", "k_budget": 4}))
    with pytest.raises(InputError, match="search policy, not a calibrated profile"):
        push(kv_gguf, "alice/x", profile=bad, token=TOKEN)
    with pytest.raises(InputError, match="search policy"):
        push(kv_gguf, "alice/x", profile=Policy("p", "a policy", k_budget=4.0, v_budget=None), token=TOKEN)
    with pytest.raises(InputError, match="no such GGUF file"):
        push(tmp_path / "missing.gguf", "alice/x", token=TOKEN)
    with pytest.raises(InputError, match="OWNER/NAME"):
        push(kv_gguf, "not a repo", token=TOKEN)
    assert hub.requests == []


def test_profile_must_match_gguf(hub, kv_gguf, tiny_models, tmp_path):
    a = load_model(tiny_models["llama-hd128-bias-rope3"]).args
    other = Profile(name="other", model=ModelShape.of("llama", "llama", a), k_type="f16", v_type="f16")
    with pytest.raises(InputError, match="does not match this model"):
        prepare_push(kv_gguf, "alice/x", other)


def test_repo_id_forms():
    assert repo_id_of("alice/m") == "alice/m"
    assert repo_id_of("https://huggingface.co/alice/m/") == "alice/m"
    assert repo_id_of("models/alice/m") == "alice/m"
    with pytest.raises(RepoTypeError):
        repo_id_of("datasets/alice/m")


# -- pull -----------------------------------------------------------------------------------------


def test_pull_round_trip_then_offline(hub, kv_gguf, profile_file, monkeypatch, capsys):
    push(kv_gguf, "alice/tiny-kv", profile=profile_file, token=TOKEN)
    import huggingface_hub.constants as c

    cache = Path(c.HF_HUB_CACHE)
    assert main(["pull", "alice/tiny-kv"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "tiny-kv.gguf" and path.read_bytes() == kv_gguf.read_bytes()
    assert cache in path.parents
    assert {p.name for p in path.parent.iterdir()} == {"tiny-kv.gguf", "tiny-kv.profile.json", "README.md"}

    go_offline(monkeypatch)
    n_requests = len(hub.requests)
    assert resolve("alice/tiny-kv") == path.parent
    m = load_model("alice/tiny-kv")
    assert m.format == "gguf" and m.path.name == "tiny-kv.gguf" and m.args.num_hidden_layers == 2
    assert pull("alice/tiny-kv") == path
    if _native_built():  # the repo id works wherever a model path does, e.g. `kvconvert run`
        assert main(["run", "alice/tiny-kv", "-p", "Hello", "-n", "2", "--seed", "0", "--ctx", "64"]) == 0
    assert len(hub.requests) == n_requests  # nothing went to the network
    with pytest.raises(HubOfflineError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        pull("alice/never-pulled")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        load_model("alice/never-pulled")


def _native_built() -> bool:
    try:
        import kvconvert._kvc  # noqa: F401
    except ImportError:
        return False
    return True


def test_resolve_downloads_a_gguf_repo(hub, kv_gguf):
    hub.add_repo("alice/hosted", {"model.gguf": kv_gguf.read_bytes(), "README.md": b"---\n{}\n---\n",
                                  "big.bin": b"\0" * 64})
    m = load_model("alice/hosted")  # not cached: resolve fetches the GGUF (not big.bin)
    assert m.format == "gguf" and m.path.name == "model.gguf"
    assert sorted(p.name for p in m.path.parent.iterdir()) == ["README.md", "model.gguf"]


def test_pull_choices_and_errors(hub, kv_gguf, capsys):
    data = kv_gguf.read_bytes()
    hub.add_repo("alice/two", {"a.gguf": data, "b.gguf": data})
    with pytest.raises(InputError, match=r"2 GGUF files \(a.gguf, b.gguf\).*--file"):
        pull("alice/two")
    assert pull("alice/two", filename="b.gguf").name == "b.gguf"
    with pytest.raises(InputError, match="no file c.gguf"):
        pull("alice/two", filename="c.gguf")
    hub.add_repo("alice/empty", {"README.md": b"hi"})
    with pytest.raises(InputError, match="no GGUF file"):
        pull("alice/empty")
    with pytest.raises(RepoNotFound, match="alice/nothing.*404"):
        pull("alice/nothing")
    hub.other_types["alice/data"] = "dataset"
    with pytest.raises(RepoTypeError, match="alice/data: this is a dataset repo"):
        pull("alice/data")
    hub.add_repo("bob/private", {"m.gguf": data}, private=True)
    assert main(["pull", "bob/private"]) != 0
    assert "bob/private" in capsys.readouterr().err


def test_pull_network_failure(hub, kv_gguf, monkeypatch):
    hub.add_repo("alice/m", {"m.gguf": kv_gguf.read_bytes()})
    hub.fail["resolve"] = "drop"
    no_retry_sleep(monkeypatch)
    with pytest.raises(HubNetworkError, match="downloading from alice/m: network failure") as exc:
        pull("alice/m")
    assert "\n" not in str(exc.value)
    import huggingface_hub.constants as c

    assert not list(Path(c.HF_HUB_CACHE).rglob("snapshots/*/*.gguf"))  # no partial file where resolve looks


def test_resolve_partially_pulled_gguf_repo(hub, kv_gguf, monkeypatch):
    """A repo of which one GGUF was pulled, with a cached tree listing naming both (as snapshot_download
    leaves it), still resolves offline to that GGUF."""
    data = kv_gguf.read_bytes()
    repo = hub.add_repo("alice/two", {"a.gguf": data, "b.gguf": data})
    path = pull("alice/two", filename="b.gguf")
    tree = path.parents[2] / "trees" / f"{repo.sha}.json"
    tree.parent.mkdir()
    entry = {"size": len(data), "blob_id": "0" * 40}
    tree.write_text(json.dumps({"format_version": 1, "files": {"a.gguf": entry, "b.gguf": entry}}))
    go_offline(monkeypatch)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    with pytest.raises(IncompleteSnapshotError):  # what resolve has to get past
        snapshot_download("alice/two", allow_patterns=["*.gguf"], local_files_only=True)
    assert resolve("alice/two") == path.parent
    assert load_model("alice/two").path == path


def test_hub_library_warnings_are_one_line_without_the_token(caplog):
    """huggingface_hub logs a retry warning with the server's echoed body: scrubbed to one line."""
    import logging

    from kvconvert.models.hub_files import scrubbed_hub_logs as _scrubbed_hub_logs

    with caplog.at_level(logging.WARNING), _scrubbed_hub_logs(TOKEN):
        logging.getLogger("huggingface_hub.utils._http").warning(
            "HTTP Error 500 thrown while requesting PUT: body was\n{'auth': 'Bearer %s'}\n" + "x" * 400, TOKEN)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs and all(TOKEN not in m and "\n" not in m and len(m) <= 200 for m in msgs)
    assert "hf_***" in msgs[0]
    logging.getLogger("huggingface_hub.utils._http").warning("after: %s", TOKEN)  # the filter is gone again
    assert TOKEN in caplog.records[-1].getMessage()
