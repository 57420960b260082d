"""What the wizard knows between screens, and the small pure helpers the
screens share (recent models, the local Hub cache, sizes, paths, errors).

Nothing here talks to Textual: the screens read and write one ``Session``
and call the library; this module only formats and remembers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..conversion.writer import WEIGHT_TYPES
from ..base.errors import KVConvertError
from ..base.paths import cache_dir
from ..conversion.search import DEFAULT_POLICY

RECENT_SCHEMA = 1
RECENT_MAX = 8


@dataclass
class Session:
    """Results of the steps so far; a later step reads what earlier ones left.

    Changing the model clears everything downstream (``set_model``); a new
    calibration clears the search and what was built from it.
    """

    model: str | None = None  # what the user typed or picked (path or repo id)
    source: Any = None  # kvconvert.models.source.ModelSource of ``model``
    calibration: Any = None  # kvconvert.conversion.calibrate.Calibration
    search: Any = None  # kvconvert.conversion.search.SearchResult (its .profile is the chosen one)
    policy: str = DEFAULT_POLICY  # policy name the last search used
    converted: Any = None  # kvconvert.conversion.writer.ConvertResult
    evals: dict[str, Any] = field(default_factory=dict)  # row name -> EvalResult

    @property
    def profile(self):
        return None if self.search is None else self.search.profile

    def set_model(self, model: str, source) -> None:
        self.model, self.source = model, source
        self.set_calibration(None)

    def set_calibration(self, calibration) -> None:
        self.calibration = calibration
        self.set_search(None)

    def set_search(self, result) -> None:
        self.search = result
        self.converted = None
        self.evals = {}


# ---- recent models: a small JSON list under kvconvert's cache directory ----

def recent_path() -> Path:
    return cache_dir() / "tui-recent.json"


def load_recent() -> list[str]:
    """Most recent first; a missing or damaged file is an empty list."""
    try:
        obj = json.loads(recent_path().read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(obj, dict) or obj.get("schema") != RECENT_SCHEMA:
        return []
    return [m for m in obj.get("models", []) if isinstance(m, str)][:RECENT_MAX]


def remember(model: str) -> list[str]:
    """Put ``model`` first in the recent list and save it (best effort: a
    read-only cache directory only means nothing is remembered)."""
    models = [model] + [m for m in load_recent() if m != model]
    models = models[:RECENT_MAX]
    path = recent_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"schema": RECENT_SCHEMA, "models": models}, indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        pass
    return models


def hub_cache_models() -> list[str]:
    """Repo ids of the models in the local Hugging Face cache (sorted)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # no cache yet, unreadable cache: nothing to offer
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")


def token_source() -> str | None:
    """Where a Hub token would come from ("environment", "local login") or
    None. The token itself is never returned to the UI."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "environment"
    try:
        from huggingface_hub import get_token

        return "local login" if get_token() else None
    except Exception:
        return None


def hub_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


# ---- numbers the tables show ----

def kv_mib(args, n_ctx: int, k_bpv: float, v_bpv: float) -> float:
    """KV cache size in MiB at ``n_ctx`` tokens (args: kvconvert.models.config.ModelArgs), with the
    positions each layer holds (sliding-window layers only their window: models.arch.cache_rows)."""
    from ..models.arch import cache_rows

    return sum(cache_rows(args, n_ctx)) * args.num_key_value_heads * args.head_dim * (k_bpv + v_bpv) / 8 / 2**20


def est_speed(args, n_ctx: int, k_bpv: float, v_bpv: float, weight_bytes: float) -> float:
    """Estimated decode speed relative to an f16 cache at ``n_ctx``.

    Decode is memory-bound: each token reads all weights plus the whole KV
    cache, so speed ~ 1 / (weight bytes + KV bytes). Compute costs of
    TurboQuant scoring are ignored; this is a guide for choosing, not a
    measurement (`kvconvert bench` measures).
    """
    mib = 2**20
    f16 = weight_bytes + kv_mib(args, n_ctx, 16, 16) * mib
    return f16 / (weight_bytes + kv_mib(args, n_ctx, k_bpv, v_bpv) * mib)


def weight_bytes(source, weights: str = "f16") -> float:
    """Approximate size of the converted weights: every tensor at the ``weights`` type."""
    block, size = gguf.GGML_QUANT_SIZES[WEIGHT_TYPES[weights][0]]
    return sum(math.prod(s.shape) for s in source.specs) * size / block


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


# ---- display ----

def short_path(p: str | os.PathLike) -> str:
    """A path as the user would type it: relative to the working directory
    when inside it, else with ~ for the home directory."""
    path = Path(p).expanduser()
    try:
        resolved = path.resolve()
    except OSError:
        return str(p)
    try:
        return str(resolved.relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        pass
    try:
        return "~/" + str(resolved.relative_to(Path.home().resolve()))
    except ValueError:
        return str(resolved)


def error_message(exc: BaseException) -> str:
    """One line for the user: a KVConvertError's own message (it already says
    what to do), or, for anything unexpected, its type and first line."""
    if isinstance(exc, KVConvertError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"unexpected error ({what}); try again, and report it if it persists"
