"""Reading from the Hugging Face Hub: a repo id as a source of model files.

``resolve`` (models.source) turns a repo id into a local directory through this
module: the local huggingface_hub cache first (``cached_snapshot``), then a
download of a checkpoint's files or a GGUF repo's one GGUF (``download_for_resolve``,
``pull``). Writing to the Hub (``push``, the model card) is the ``hub`` stage's,
above the conversion; it shares the error classes and log scrubbing defined here.

Contracts: only huggingface_hub talks to the network (endpoint, cache and offline
mode are its own: ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``); every failure
is a ``HubError`` with a one-line message that never contains the token.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..base.errors import InputError, KVConvertError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # what `resolve` treats as a Hub repo id
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
    if not REPO_ID.match(s) or s.endswith(".git") or ".." in s:
        raise InputError(f"{text}: not a Hub model repo id; give it as OWNER/NAME (e.g. your-name/my-model-kv)")
    return s


def is_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


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


def hub_error(e: BaseException, action: str, repo_id: str, token: str | None, committing: bool = False) -> HubError:
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
def scrubbed_hub_logs(token: str | None) -> Iterator[None]:
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


def pull(repo_id: str, *, filename: str | None = None, revision: str | None = None) -> Path:
    """Download the repo's GGUF (``filename``, or its only one) with the repo's JSON and Markdown
    files into the huggingface_hub cache; return the local GGUF path. With HF_HUB_OFFLINE set,
    return the cached file or raise HubOfflineError."""
    repo_id = repo_id_of(repo_id)
    if filename is not None and not filename.endswith(".gguf"):
        raise InputError(f"{filename}: not a GGUF file name; give --file NAME.gguf")
    if is_offline():
        return _cached_gguf(repo_id, filename, revision)

    from huggingface_hub import get_token

    tok = get_token()  # optional (private repos); only to scrub it from messages
    with scrubbed_hub_logs(tok):
        return _pull(repo_id, filename, revision, tok)


def _pull(repo_id: str, filename: str | None, revision: str | None, tok: str | None) -> Path:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    try:
        files = [s.rfilename for s in (api.model_info(repo_id, revision=revision).siblings or [])]
    except Exception as e:  # noqa: BLE001
        err = hub_error(e, "looking up", repo_id, tok)
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
        raise hub_error(e, "downloading from", repo_id, tok) from None
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


def cached_snapshot(repo_id: str, patterns: list[str], revision: str | None = None,
                    partial_ok=lambda snap: True) -> Path | None:
    """The repo's snapshot directory in the local huggingface_hub cache (files matching
    ``patterns``), without the network; None when it is not there. A snapshot of which only
    some files were fetched (``kvconvert pull`` takes one GGUF of several) is returned when
    ``partial_ok(snapshot_dir)`` says it is usable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except IncompleteSnapshotError as e:
        if e.snapshot_path and partial_ok(Path(e.snapshot_path)):
            return Path(e.snapshot_path)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        pass
    return None


def _cached_gguf(repo_id: str, filename: str | None, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        snap = cached_snapshot(repo_id, ["*.gguf"], revision)
        if snap is not None:
            return snap / _choose_gguf(repo_id, [p.name for p in snap.glob("*.gguf")], None)
    except KVConvertError:
        raise
    except Exception:  # noqa: BLE001 - not in the cache (or a partial entry)
        pass
    what = f"{filename} of {repo_id}" if filename else repo_id
    raise HubOfflineError(f"{what}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          "unset HF_HUB_OFFLINE to download it")


def download_for_resolve(repo_id: str) -> Path:
    """The local directory of a repo id that is not cached yet (``models.source.resolve``'s download
    path): a Hugging Face checkpoint's config, tokenizer and safetensors, or a GGUF repo's one GGUF
    (with its JSON and card) — never every GGUF of a repo that holds several."""
    from huggingface_hub import HfApi, get_token, snapshot_download

    tok = get_token()
    try:
        files = [s.rfilename for s in (HfApi().model_info(repo_id).siblings or [])]
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, "looking up", repo_id, tok) from None
    if "config.json" in files:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, "downloading from", repo_id, tok) from None
    return pull(repo_id).parent
