"""Sharing kvconvert GGUFs on the Hugging Face Hub: ``push`` and ``pull``.

``push`` uploads a kvconvert GGUF, its profile JSON (when given) and a model card
generated from the file's metadata (``kvconvert.modelcard``) to a model repo in
one commit, creating the repo if needed. ``pull`` downloads a repo's GGUF (and its
small companions: profile JSON, README.md) into the huggingface_hub cache, where
``kvconvert.model.resolve`` then finds the repo id offline.

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
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InputError, KVConvertError
from .model import _REPO_ID, load_gguf  # _REPO_ID: what `resolve` treats as a repo id
from .modelcard import model_card, read_card_info
from .profile import Policy, Profile, load_profile
from .progress import ProgressFn

_OTHER_TYPES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel", "buckets": "bucket"}
_SMALL_FILES = (".json", ".md")  # pulled next to the GGUF: profile JSON, model card


class HubError(KVConvertError):
    """A Hub operation failed; the message says what to do."""


class HubAuthError(HubError):
    """No token, or the Hub rejected it (401)."""


class HubPermissionError(HubError):
    """The token may not write to (or read) the repo (403)."""


class HubOfflineError(HubError):
    """HF_HUB_OFFLINE is set and the operation needs the network."""


class HubNetworkError(HubError):
    """The connection failed or dropped (e.g. mid-upload)."""


class RepoTypeError(HubError):
    """The id names a dataset, Space or other non-model repo."""


class RepoNotFound(HubError):
    """No such model repo (or it is private and the token cannot see it)."""


@dataclass(frozen=True)
class Upload:
    """One file of the push commit: its path in the repo and where its bytes come from."""

    path_in_repo: str
    source: Path | bytes  # a local file (streamed) or bytes built in memory

    @property
    def size(self) -> int:
        return self.source.stat().st_size if isinstance(self.source, Path) else len(self.source)


def repo_id_of(text: str) -> str:
    """A model repo id ("owner/name") from an id or a Hub URL; RepoTypeError for dataset/Space ids."""
    s = str(text).strip().rstrip("/")
    s = re.sub(r"^https?://[^/]+/", "", s)  # https://huggingface.co/owner/name
    head, _, rest = s.partition("/")
    if head in _OTHER_TYPES:
        raise RepoTypeError(f"{text}: this is a {_OTHER_TYPES[head]} repo id; kvconvert pushes and pulls model repos "
                            f"only: give a model repo id such as {rest or 'owner/name'}")
    if head == "models":
        s = rest
    if not _REPO_ID.match(s) or s.endswith(".git") or ".." in s:
        raise InputError(f"{text}: not a Hub model repo id; give it as OWNER/NAME (e.g. your-name/my-model-kv)")
    return s


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


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


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def _is_network(e: BaseException) -> bool:
    # httpx(2)'s TransportError covers connect/read/write errors, timeouts and dropped connections;
    # matched by name so this does not depend on which httpx package huggingface_hub uses.
    return isinstance(e, (ConnectionError, TimeoutError)) or any(c.__name__ == "TransportError"
                                                                 for c in type(e).__mro__)


def _one_line(text: str, token: str | None, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    if token:
        text = text.replace(token, "hf_***")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hub_error(e: BaseException, action: str, repo_id: str, token: str | None, committing: bool = False) -> HubError:
    """Turn any exception raised by huggingface_hub into one HubError line (never containing the token).
    ``committing``: the failure came during the upload/commit, so say whether anything was committed."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    after = "; nothing was committed" if committing else ""
    chain = list(_chain(e))
    if any(isinstance(x, OfflineModeIsEnabled) for x in chain):
        return HubOfflineError(f"{action} {repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    http = next((x for x in chain if isinstance(x, HfHubHTTPError) and x.response is not None), None)
    if http is not None:
        status = http.response.status_code
        detail = _one_line(http.server_message or "", token)
        detail = f": {detail}" if detail else ""
        owner = repo_id.split("/")[0]
        if status == 401 and token:
            return HubAuthError(f"{action} {repo_id}: the Hub rejected the token (HTTP 401{detail}){after}; "
                                "set HF_TOKEN to a valid token or run `hf auth login`")
        if status == 401:
            return HubAuthError(f"{action} {repo_id}: the Hub wants a token (HTTP 401{detail}): the repo is private "
                                "or does not exist; check the id, or set HF_TOKEN / run `hf auth login`")
        if status == 403:
            return HubPermissionError(f"{action} {repo_id}: permission denied (HTTP 403{detail}){after}; use a token "
                                      f"with write access to '{owner}', or a repo under your own name")
        if status == 404:
            return RepoNotFound(f"{action} {repo_id}: no such model repo (HTTP 404{detail}){after}; check the id, "
                                "or log in if it is private")
        return HubError(f"{action} {repo_id}: the Hub answered HTTP {status}{detail}{after}; try again later")
    net = next((x for x in chain if _is_network(x)), None)
    if net is not None:
        # a connection lost during the commit request may or may not have committed: do not claim either
        after = "; the upload did not finish" if committing else ""
        return HubNetworkError(f"{action} {repo_id}: network failure ({type(net).__name__}){after}; "
                               "check your connection and run the same command again")
    msg = _one_line(str(e), token, 120)
    return HubError(f"{action} {repo_id}: {type(e).__name__}{': ' + msg if msg else ''}{after}; "
                    "run the same command again, or report this if it persists")


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
    from .gguf_io import field_value
    from .gguf_keys import Keys

    text = field_value(src.weights.reader, Keys.KVConvert.PROFILE)
    if not text:
        return None
    try:
        return Profile.from_json(json.loads(text), f"{gguf_path} (kvconvert.profile)")
    except (ValueError, InputError):
        return None  # an unreadable summary only costs the card its quality table


def prepare_push(gguf_path: str | os.PathLike, repo_id: str,
                 profile: str | os.PathLike | Profile | Policy | None = None) -> tuple[str, list[Upload]]:
    """Everything ``push`` checks and builds before touching the network: the repo id and the
    files of the commit (GGUF, profile JSON, README.md card), in memory except the GGUF."""
    repo_id = repo_id_of(repo_id)
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: no such GGUF file; give the path of a GGUF written by `kvconvert convert`")
    src = load_gguf(gguf_path)
    info = read_card_info(gguf_path, src)
    prof = _profile(profile, src.args, gguf_path)
    files = [Upload(info.file_name, gguf_path)]
    profile_file = None
    if prof is not None:
        profile_file = f"{gguf_path.stem}.profile.json"
        files.append(Upload(profile_file, (json.dumps(prof.to_json(), indent=1) + "\n").encode()))
    else:  # the profile summary convert embedded (configs, provenance, measurements) still fills the card
        prof = _embedded_profile(src, gguf_path)
    card = model_card(info, repo_id, prof, profile_file)
    files.append(Upload("README.md", card.encode()))
    return repo_id, files


class _ScrubHubLogs(logging.Filter):
    """huggingface_hub logs its own warnings (e.g. before a retry) with the server's response
    body: while kvconvert talks to the Hub, each such record becomes one short line without
    the token. Installed on the handlers (a logger's filters do not see its children's records)."""

    def __init__(self, token: str | None):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("huggingface_hub"):
            record.msg, record.args = _one_line(record.getMessage(), self.token), None
        return True


@contextmanager
def _scrubbed_hub_logs(token: str | None) -> Iterator[None]:
    """While talking to the Hub: huggingface_hub's log records scrubbed (_ScrubHubLogs), and its
    upload/download bars off when stderr is not a terminal (a log gets kvconvert's own lines)."""
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    f = _ScrubHubLogs(token)
    handlers = set(logging.getLogger().handlers) | set(logging.getLogger("huggingface_hub").handlers)
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)  # where records go when nothing is configured (the CLI)
    for h in handlers:
        h.addFilter(f)
    bars_off = not sys.stderr.isatty() and not are_progress_bars_disabled()
    if bars_off:
        disable_progress_bars()
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)
        if bars_off:
            enable_progress_bars()


def push(gguf_path: str | os.PathLike, repo_id: str, *, private: bool = False,
         profile: str | os.PathLike | Profile | Policy | None = None, token: str | None = None,
         progress: ProgressFn | None = None) -> str:
    """Upload a kvconvert GGUF, its profile (if given) and a generated model card to the model
    repo ``repo_id`` in one commit, creating the repo (private if asked) when it does not exist.
    Returns the commit URL. ``progress(done_bytes, total_bytes, what)`` is told each stage."""
    repo_id, files = prepare_push(gguf_path, repo_id, profile)
    if _offline():
        raise HubOfflineError(f"pushing to {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    tok = _token(token, repo_id)
    with _scrubbed_hub_logs(tok):
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
        raise _hub_error(e, stage, repo_id, tok, committing=stage == "uploading to") from None
    step("committed", total)
    return str(info.commit_url)


def _commit_message(files: list[Upload]) -> str:
    return "kvconvert: upload " + ", ".join(f.path_in_repo for f in files if f.path_in_repo != "README.md") + \
        " and model card"


def pull(repo_id: str, *, filename: str | None = None, revision: str | None = None) -> Path:
    """Download the repo's GGUF (``filename``, or its only one) with the repo's JSON and Markdown
    files into the huggingface_hub cache; return the local GGUF path. With HF_HUB_OFFLINE set,
    return the cached file or raise HubOfflineError."""
    repo_id = repo_id_of(repo_id)
    if filename is not None and not filename.endswith(".gguf"):
        raise InputError(f"{filename}: not a GGUF file name; give --file NAME.gguf")
    if _offline():
        return _cached_gguf(repo_id, filename, revision)

    from huggingface_hub import get_token

    tok = get_token()  # optional (private repos); only to scrub it from messages
    with _scrubbed_hub_logs(tok):
        return _pull(repo_id, filename, revision, tok)


def _pull(repo_id: str, filename: str | None, revision: str | None, tok: str | None) -> Path:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    try:
        files = [s.rfilename for s in (api.model_info(repo_id, revision=revision).siblings or [])]
    except Exception as e:  # noqa: BLE001
        err = _hub_error(e, "looking up", repo_id, tok)
        if isinstance(err, RepoNotFound):
            _raise_if_other_type(api, repo_id)
        raise err from None
    gguf_name = _choose_gguf(repo_id, files, filename)
    extras = [f for f in files if "/" not in f and f.endswith(_SMALL_FILES)]
    try:
        path = Path(hf_hub_download(repo_id, gguf_name, revision=revision))
        for f in extras:
            hf_hub_download(repo_id, f, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, "downloading from", repo_id, tok) from None
    return path


def _choose_gguf(repo_id: str, files: list[str], filename: str | None) -> str:
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if filename is not None:
        if filename not in files:
            have = ", ".join(ggufs) or "no GGUF files"
            raise InputError(f"{repo_id}: no file {filename} in the repo (it has {have}); check --file")
        return filename
    if not ggufs:
        raise InputError(f"{repo_id}: the repo has no GGUF file; push one with `kvconvert push`, "
                         "or use the repo id directly with `kvconvert convert` if it is a Hugging Face model")
    if len(ggufs) > 1:
        raise InputError(f"{repo_id}: the repo has {len(ggufs)} GGUF files ({', '.join(ggufs)}); "
                         "choose one with --file NAME.gguf")
    return ggufs[0]


def _raise_if_other_type(api, repo_id: str) -> None:
    """After a 404 on a model repo: say so if the id exists as a dataset or Space."""
    for kind in ("dataset", "space"):
        try:
            exists = api.repo_exists(repo_id, repo_type=kind)
        except Exception:  # noqa: BLE001 - the probe is only for a better message
            return
        if exists:
            raise RepoTypeError(f"{repo_id}: this is a {kind} repo, not a model repo; kvconvert pulls model repos "
                                "holding a GGUF")


def _cached_gguf(repo_id: str, filename: str | None, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.gguf"],
                                          local_files_only=True))
        except IncompleteSnapshotError as e:  # some of the repo's GGUFs were pulled: choose among those
            snap = Path(e.snapshot_path)
        return snap / _choose_gguf(repo_id, [p.name for p in snap.glob("*.gguf")], None)
    except KVConvertError:
        raise
    except Exception:  # noqa: BLE001 - not in the cache (or a partial entry)
        what = f"{filename} of {repo_id}" if filename else repo_id
        raise HubOfflineError(f"{what}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                              "unset HF_HUB_OFFLINE to download it") from None


def download_for_resolve(repo_id: str) -> Path:
    """The local directory of a repo id that is not cached yet (``kvconvert.model.resolve``'s download
    path): a Hugging Face checkpoint's config, tokenizer and safetensors, or a GGUF repo's one GGUF
    (with its JSON and card) — never every GGUF of a repo that holds several."""
    from huggingface_hub import HfApi, get_token, snapshot_download

    tok = get_token()
    try:
        files = [s.rfilename for s in (HfApi().model_info(repo_id).siblings or [])]
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, "looking up", repo_id, tok) from None
    if "config.json" in files:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as e:  # noqa: BLE001
            raise _hub_error(e, "downloading from", repo_id, tok) from None
    return pull(repo_id).parent
