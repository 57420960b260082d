"""Sharing kvconvert GGUFs on the Hugging Face Hub: ``push`` (and ``pull``, from models.hub_files).

``push`` uploads a kvconvert GGUF, its profile JSON (when given) and a model card
generated from the file's metadata (``hub.modelcard``) to a model repo in
one commit, creating the repo if needed. ``pull`` downloads a repo's GGUF (and its
small companions: profile JSON, README.md) into the huggingface_hub cache, where
``models.source.resolve`` then finds the repo id offline.

Contracts:

* Only ``huggingface_hub`` talks to the network (``HfApi.create_repo``,
  ``create_commit`` with ``CommitOperationAdd``s, ``hf_hub_download``); the
  endpoint, cache and offline mode are huggingface_hub's (``HF_ENDPOINT``,
  ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``).
* Everything that can be checked locally (repo id, GGUF, profile, card, offline
  mode, a token) is checked before the first request. Nothing is written locally
  by ``push``: the card and the profile JSON are uploaded from memory.
* Every failure is a ``HubError`` (a ``KVConvertError``) whose message is one line:
  what failed, with which repo or file, and what to do. The token never appears in
  a message: messages are built from status codes and the server's short error text,
  with the token scrubbed out.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import InputError, KVConvertError
from ..models.hub_files import (  # noqa: F401 - pull and the errors are part of this module's API
    HubAuthError, HubError, HubNetworkError, HubOfflineError, HubPermissionError, RepoNotFound, RepoTypeError,
    hub_error, is_offline, pull, repo_id_of, scrubbed_hub_logs)
from ..models.source import load_gguf
from .modelcard import model_card, read_card_info
from ..conversion.profile import Policy, Profile, load_profile
from ..base.progress import ProgressFn


@dataclass(frozen=True)
class Upload:
    """One file of the push commit: its path in the repo and where its bytes come from."""

    path_in_repo: str
    source: Path | bytes  # a local file (streamed) or bytes built in memory

    @property
    def size(self) -> int:
        return self.source.stat().st_size if isinstance(self.source, Path) else len(self.source)


def _token(token: str | None, repo_id: str) -> str:
    """The explicit token, else HF_TOKEN, else the local login; HubAuthError if none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubAuthError(f"{repo_id}: no Hugging Face token: set HF_TOKEN to a token with write access, "
                           "or run `hf auth login`, then push again")
    return found


def _profile(profile: str | os.PathLike | Profile | Policy | None, args, gguf_path: Path) -> Profile | None:
    """The calibrated profile to upload (a Profile, or a file/shipped name holding one), checked
    against the GGUF's model shape."""
    if profile is None:
        return None
    prof = profile if isinstance(profile, (Profile, Policy)) else load_profile(profile)
    if isinstance(prof, Policy):
        raise InputError(f"{getattr(profile, 'name', profile)}: this is a search policy, not a calibrated profile; "
                         "pass the profile JSON written by `kvconvert search`")
    prof.model.check(args, f"{prof.describe()} (for {gguf_path.name})")
    return prof


def _embedded_profile(src, gguf_path: Path) -> Profile | None:
    """The profile summary `convert` stores in kvconvert.profile (no arrays), or None."""
    from ..formats.gguf_io import field_value
    from ..formats.gguf_keys import Keys

    text = field_value(src.weights.reader, Keys.KVConvert.PROFILE)
    if not text:
        return None
    try:
        return Profile.from_json(json.loads(text), f"{gguf_path} (kvconvert.profile)")
    except (ValueError, InputError):
        return None  # an unreadable summary only costs the card its quality table


EVAL_KIND = "kvconvert-eval"  # the "kind" of an eval report (`kvconvert eval --save-report`, the TUI)
# an absolute path (/dir/…), a home-relative one (~/…) or a Windows one (C:\…) inside a metadata string
_LOCAL_PATH = re.compile(r"""(?:^|["'\s(=])(?:/[^\s"'/]+/|~/|[A-Za-z]:\\)""")


def eval_report(result: dict, gguf_path: str | os.PathLike) -> dict:
    """An eval result (runtime.evaluate.EvalResult.to_dict) as a report of the file it measured:
    the file named by its name and size (so push can tell it belongs), no local paths."""
    from ..base.paths import public_name

    p = Path(gguf_path)
    r = {k: v for k, v in result.items() if k != "model"}
    r["text"] = public_name(str(r.get("text", "")))
    return {"kind": EVAL_KIND, "file": p.name, "file_bytes": p.stat().st_size, **r}


def eval_reports_for(gguf_path: Path, given=()) -> list[dict]:
    """The eval reports of ``gguf_path``: the files ``given`` (each must be a report of this very file,
    else InputError), else the reports saved beside it as ``STEM.eval*.json`` that match it."""
    out = []
    paths = [Path(g) for g in given] or sorted(gguf_path.parent.glob(f"{gguf_path.stem}.eval*.json"))
    for path in paths:
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a readable eval report ({e})") from None
        ok = isinstance(r, dict) and r.get("kind") == EVAL_KIND and r.get("file") == gguf_path.name and \
            r.get("file_bytes") == gguf_path.stat().st_size
        if not ok and given:
            raise InputError(f"{path}: not an eval report of {gguf_path.name} (written by `kvconvert eval "
                             f"{gguf_path.name} --save-report FILE` on this very file)")
        if ok:
            out.append(r)
    return out


def _no_local_paths(src, gguf_path: Path) -> None:
    """Refuse a GGUF whose kvconvert.* metadata holds a local path (files written before kvconvert kept
    names only): uploading it would publish the uploader's directories."""
    reader = src.weights.reader
    for key, f in reader.fields.items():
        if not key.startswith("kvconvert.") or f.types[0].name != "STRING":
            continue
        value = str(f.contents())
        if _LOCAL_PATH.search(value):
            raise InputError(f"{gguf_path}: its {key} metadata holds a local path; re-patch the file first "
                             f"(`kvconvert convert {gguf_path.name} -o NEW.gguf --profile PROFILE.json`, which "
                             "records names only) and push that")


def prepare_push(gguf_path: str | os.PathLike, repo_id: str,
                 profile: str | os.PathLike | Profile | Policy | None = None, base_model: str | None = None,
                 evals=()) -> tuple[str, list[Upload]]:
    """Everything ``push`` checks and builds before touching the network: the repo id and the
    files of the commit (GGUF, profile JSON, README.md card), in memory except the GGUF.
    base_model: the card's base_model (a repo id) when the file cannot tell; evals: eval report
    files to put on the card (default: STEM.eval*.json beside the GGUF)."""
    from ..conversion.patch import public_profile_json

    repo_id = repo_id_of(repo_id)
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: no such GGUF file; give the path of a GGUF written by `kvconvert convert`")
    src = load_gguf(gguf_path)
    info = read_card_info(gguf_path, src)
    _no_local_paths(src, gguf_path)
    prof = _profile(profile, src.args, gguf_path)
    reports = eval_reports_for(gguf_path, evals)
    files = [Upload(info.file_name, gguf_path)]
    profile_file = None
    if prof is not None:
        profile_file = f"{gguf_path.stem}.profile.json"
        prof = Profile.from_json(public_profile_json(prof), str(profile))  # names and hashes, no local paths
        files.append(Upload(profile_file, prof.dumps().encode()))
    else:  # the profile summary convert embedded (configs, provenance, measurements) still fills the card
        prof = _embedded_profile(src, gguf_path)
    card = model_card(info, repo_id, prof, profile_file, base=base_model, evals=reports)
    files.append(Upload("README.md", card.encode()))
    return repo_id, files


def push(gguf_path: str | os.PathLike, repo_id: str, *, private: bool = False,
         profile: str | os.PathLike | Profile | Policy | None = None, token: str | None = None,
         base_model: str | None = None, evals=(), progress: ProgressFn | None = None) -> str:
    """Upload a kvconvert GGUF, its profile (if given) and a generated model card to the model
    repo ``repo_id`` in one commit, creating the repo (private if asked) when it does not exist.
    Returns the commit URL. ``progress(done_bytes, total_bytes, what)`` is told each stage."""
    repo_id, files = prepare_push(gguf_path, repo_id, profile, base_model, evals)
    if is_offline():
        raise HubOfflineError(f"pushing to {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    tok = _token(token, repo_id)
    with scrubbed_hub_logs(tok):
        return _push(repo_id, files, tok, private, progress)


def _push(repo_id: str, files: list, tok: str, private: bool, progress: ProgressFn | None) -> str:
    total = sum(f.size for f in files)
    step = (lambda what, done=0: progress(done, total, what)) if progress else (lambda what, done=0: None)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=tok)
    stage = "checking the token for"
    try:
        step("checking token")
        api.whoami()
        stage = "creating"
        step("creating repo")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        stage = "uploading to"
        step(f"uploading {len(files)} files")
        ops = [CommitOperationAdd(path_in_repo=f.path_in_repo,
                                  path_or_fileobj=str(f.source) if isinstance(f.source, Path) else f.source)
               for f in files]
        info = api.create_commit(repo_id, ops, repo_type="model", commit_message=_commit_message(files))
    except KVConvertError:
        raise
    except Exception as e:  # noqa: BLE001 - every Hub/network failure becomes one HubError line
        raise hub_error(e, stage, repo_id, tok, committing=stage == "uploading to") from None
    step("committed", total)
    return str(info.commit_url)


def _commit_message(files: list[Upload]) -> str:
    return "kvconvert: upload " + ", ".join(f.path_in_repo for f in files if f.path_in_repo != "README.md") + \
        " and model card"

