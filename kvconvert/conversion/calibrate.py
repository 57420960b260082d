"""Calibration (docs/design.md §5): run the model in the native runtime (f32 cache) on
text and record, per layer and KV head, what the search and the transforms need.

Recorded (float64 sums over every calibration token, Hugging Face channel
order — see profile.py for the conventions):
  K: mean and per-channel second moment (pre-RoPE, before centering);
  Q: per-channel second moment summed over the query heads of each KV head;
  V: mean and per-channel second moment;
plus ``n_windows`` whole chunks of pre-RoPE (q, k, v) vectors (float16) that the
search replays to measure attention-level error, and held-out chunks of token
ids (never in the statistics) for its end-to-end check.

Text: the user's, or by default text the model writes itself from a few seed
prompts (data-free: no download, works for any model). Progress is
checkpointed after every chunk, so an interrupted run resumes; the finished
file is versioned and reused by reruns with the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_path, refuse_overwrite
from ..base.errors import InputError
from ..models.source import ModelSource, load_model
from ..base.paths import cache_dir
from ..base.progress import ProgressFn, check_cancel, start_phase

CALIB_SCHEMA = 2  # 2: held-out tokens split by tokens, windows = the longest chunks
CALIB_MAGIC = "kvconvert-calibration"

# Seed prompts for data-free calibration: varied registers (prose, code, dialogue,
# technical, lists) so the K/V statistics are not those of a single genre.
SEED_PROMPTS = (
    "The lighthouse keeper had not spoken to anyone in three weeks when the boat appeared",
    "def merge_intervals(intervals):\n    \"\"\"Merge overlapping intervals and return them sorted.\"\"\"\n",
    "Q: Why does ice float on water?\nA:",
    "Dear committee members,\n\nI am writing to explain why the bridge repairs were delayed",
    "A short history of the printing press, and how it changed what people read:",
    "# Recipe: lentil soup for a cold evening\n\nIngredients:\n-",
    "In this lecture we derive the equations of motion of a pendulum from energy conservation.",
    "\"You're late again,\" said Maria, without looking up from the map.",
    "SELECT customer_id, SUM(amount) AS total\nFROM orders\nWHERE",
    "Travel notes, day four: the train left the coast and climbed into the hills,",
    "The quarterly report shows that revenue grew while costs",
    "Here are ten questions to ask before adopting a new programming language:\n1.",
)


@dataclass
class LayerStats:
    layer: int
    k_mean_share: float  # share of K energy in its mean (before centering), mean over KV heads
    k_outlier: float  # share of centered K energy in the top d/4 channels
    v_outlier: float  # same for V


@dataclass
class Calibration:
    """Statistics of one model on one text; arrays (L, Hk, d) unless noted."""

    model: str
    fingerprint: str
    arch: str
    rope_pairing: str  # of the file the runtime ran ("neox"/"interleaved"); arrays are in HF order anyway
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_theta: float
    text_source: str
    text_sha256: str
    n_ctx: int
    n_tokens: int  # tokens in the statistics
    k_sum: np.ndarray
    k_sq: np.ndarray
    q_sq: np.ndarray
    v_sum: np.ndarray
    v_sq: np.ndarray
    win_q: np.ndarray  # (W, L, T, H, d) float16, pre-RoPE
    win_k: np.ndarray  # (W, L, T, Hk, d)
    win_v: np.ndarray  # (W, L, T, Hk, d)
    rope_freqs: np.ndarray  # (d/2,) the model's RoPE frequencies (pair j in HF order)
    holdout: np.ndarray  # (n, n_ctx) int32 token chunks not in the statistics
    path: Path | None = None

    # -- derived --------------------------------------------------------
    @property
    def k_mean(self) -> np.ndarray:
        return self.k_sum / max(self.n_tokens, 1)

    @property
    def v_mean(self) -> np.ndarray:
        return self.v_sum / max(self.n_tokens, 1)

    def k_energy(self, centered: bool = True) -> np.ndarray:
        """Per-channel E[k²] (raw) or E[(k − μ)²] (centered)."""
        e = self.k_sq / max(self.n_tokens, 1)
        return np.maximum(e - self.k_mean ** 2, 0) if centered else e

    def q_energy(self) -> np.ndarray:
        return self.q_sq / max(self.n_tokens, 1)

    def v_energy(self, centered: bool = True) -> np.ndarray:
        e = self.v_sq / max(self.n_tokens, 1)
        return np.maximum(e - self.v_mean ** 2, 0) if centered else e

    @staticmethod
    def pairs(x: np.ndarray) -> np.ndarray:
        """Per-pair sums of a per-channel array (..., d) in HF order → (..., d/2)."""
        p = x.shape[-1] // 2
        return x[..., :p] + x[..., p:]

    def layer_summary(self) -> list[LayerStats]:
        raw, cen, v = self.k_energy(False), self.k_energy(True), self.v_energy(True)
        share = 1 - cen.sum(-1) / np.maximum(raw.sum(-1), 1e-30)
        return [LayerStats(l, float(share[l].mean()), float(_top_share(cen[l]).mean()), float(_top_share(v[l]).mean()))
                for l in range(self.n_layer)]

    def check_model(self, args, what: str = "calibration") -> None:
        have = (args.num_hidden_layers, args.num_attention_heads, args.num_key_value_heads, args.head_dim)
        mine = (self.n_layer, self.n_head, self.n_head_kv, self.head_dim)
        if have != mine:
            raise InputError(f"{what} is for {self.model} (layers, heads, kv heads, head dim = {mine}), "
                             f"not this model {have}; calibrate this model")

    # -- files ----------------------------------------------------------
    _ARRAYS = ("k_sum", "k_sq", "q_sq", "v_sum", "v_sq", "win_q", "win_k", "win_v", "rope_freqs", "holdout")
    _META = ("model", "fingerprint", "arch", "rope_pairing", "n_layer", "n_head", "n_head_kv", "head_dim",
             "rope_theta", "text_source", "text_sha256", "n_ctx", "n_tokens")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        meta = {k: getattr(self, k) for k in self._META} | {"magic": CALIB_MAGIC, "schema": CALIB_SCHEMA}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                         **{k: getattr(self, k) for k in self._ARRAYS})
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        from ..base import validate as V

        path = Path(path)
        try:
            if path.exists():
                V.regular_file(path, "calibration file")
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not a kvconvert calibration file (not an .npz archive)")
            with z:
                meta = json.loads(bytes(z["meta"]).decode())
                if not isinstance(meta, dict) or meta.get("magic") != CALIB_MAGIC:
                    raise ValueError("not a kvconvert calibration file")
                if meta.get("schema") != CALIB_SCHEMA:
                    raise ValueError(f"schema {meta.get('schema')}, this kvconvert reads {CALIB_SCHEMA}")
                V.calibration_meta(path, meta)
                arrays = {k: z[k] for k in cls._ARRAYS}
            cal = cls(**{k: meta[k] for k in cls._META}, **arrays, path=path)
            V.calibration_arrays(path, cal)
        except FileNotFoundError:
            raise InputError(f"{path}: no such calibration file; run `kvconvert calibrate` first") from None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, EOFError, zipfile.BadZipFile,
                RecursionError) as e:
            raise InputError(f"{path}: corrupt or unreadable calibration file ({e}); "
                             "delete it and run `kvconvert calibrate` again") from None
        return cal


def _top_share(e: np.ndarray) -> np.ndarray:
    """Share of energy in the top d/4 channels of e (..., d)."""
    s = np.sort(e, axis=-1)[..., ::-1]
    return s[..., : max(1, e.shape[-1] // 4)].sum(-1) / np.maximum(s.sum(-1), 1e-30)


def to_hf_channels(x: np.ndarray, pairing: str) -> np.ndarray:
    """Head vectors (..., d) from a file's channel order to HF order."""
    if pairing == "neox":
        return x
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def fingerprint(src: ModelSource) -> str:
    """Cheap identity of a model's weights: sizes and the first MiB of every weight file."""
    h = hashlib.sha256()
    files = [Path(src.path)] if Path(src.path).is_file() else sorted(Path(src.path).glob("*.safetensors"))
    files += [Path(src.path) / "config.json"] if Path(src.path).is_dir() else []
    for f in files:
        h.update(f.name.encode() + str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def runtime_gguf(src: ModelSource, progress: ProgressFn | None = None, cancel=None) -> Path | ModelSource:
    """What the runtime runs for calibration: the model itself (a GGUF, or a float safetensors
    checkpoint read in place: no second copy), else a cached f16 conversion of an HF model."""
    from ..runtime.engine import runs_directly

    if src.format == "hf" and runs_directly(src):
        return src
    if src.format == "gguf":
        from ..formats.gguf_keys import Keys
        from ..formats.gguf_io import field_value

        if field_value(src.weights.reader, Keys.KVConvert.LAYOUT, "portable") == "folded":  # type: ignore[attr-defined]
            raise InputError(f"{src.path}: this file already has folded transforms; calibrate the original model")
        return Path(src.path)
    from .writer import convert

    out = cache_dir() / "calibration" / f"{Path(src.path).name}-{fingerprint(src)}.f16.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(src, out, weights="f16", progress=progress, cancel=cancel, phase="f16 copy for the runtime")
    return out


def generate_text(model, n_tokens: int, n_ctx: int, seed: int = 0, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, batch: int = len(SEED_PROMPTS),
                  n_threads: int = 0) -> list[list[int]]:
    """Data-free calibration text: sequences of up to n_ctx tokens the model writes from SEED_PROMPTS
    (temperature 0.8, top-p 0.95, repetition penalty 1.1), until n_tokens are collected.

    Sequence i starts from seed prompt i mod 12 with sampler seed ``seed + i`` and may
    write what the text still misses (at most n_ctx tokens with its prompt, at least 9
    new ones); a sequence the model ends within 8 tokens of its prompt is dropped. Up to
    ``batch`` sequences are written at once (generate.BatchDecoder: one decode batch per
    step), the next one starting as soon as one ends; sequences are returned in order of i."""
    from ..runtime.generate import BatchDecoder, SamplerParams
    from ..runtime.engine import ContextParams

    prompts = [model.tokenize(p)[: n_ctx // 2] for p in SEED_PROMPTS]
    params = ContextParams(n_ctx=n_ctx, n_batch=min(n_ctx, max(batch, *map(len, prompts))), type_k="f16",
                           type_v="f16", n_threads=n_threads)
    dec = BatchDecoder(model, params)
    start_phase(progress, "generate text", "tok")
    kept: dict[int, list[int]] = {}
    running: dict[int, tuple[list[int], int, int]] = {}  # id -> (tokens so far, prompt length, planned length)
    total, i, made = 0, 0, 0
    while True:
        check_cancel(cancel)
        while len(running) < batch and total + sum(r[2] for r in running.values()) < n_tokens:
            if i > 8 * len(SEED_PROMPTS) + n_tokens // 8:
                raise InputError(f"{model.path}: the model stops generating almost at once; "
                                 "calibrate with --text FILE")
            prompt = prompts[i % len(prompts)]
            missing = n_tokens - total - sum(r[2] for r in running.values())
            new = max(min(n_ctx, len(prompt) + missing) - len(prompt), 9)  # at least enough to be kept
            sampler = SamplerParams(temperature=0.8, top_p=0.95, repeat_penalty=1.1, seed=seed + i)
            running[dec.add(prompt, new, sampler)] = (list(prompt), len(prompt), len(prompt) + new)
            i += 1
        if not running:
            break
        tokens, finished = dec.step()
        for sid, tok in tokens:
            running[sid][0].append(tok)
            made += 1
            if made % 32 == 0:
                check_cancel(cancel)
                if progress:
                    progress(min(total + sum(len(r[0]) for r in running.values()), n_tokens), n_tokens,
                             f"{len(kept)} sequences done")
        for sid in finished:
            seq, n_prompt, _ = running.pop(sid)
            if len(seq) > n_prompt + 8:
                kept[sid] = seq
                total += len(seq)
    return [kept[k] for k in sorted(kept)]


def _bos_ids(src: ModelSource) -> list[int]:
    spec = src.tokenizer_spec()
    return [spec.bos_id] if spec.effective_add_bos() and spec.bos_id is not None else []


def text_chunks(src: ModelSource, text: str, tokens: int, n_ctx: int, holdout: int) -> list[np.ndarray]:
    """The user's text as chunks of n_ctx tokens (BOS first where the model adds one): enough for
    ``tokens`` calibration tokens, then ``holdout`` held-out chunks. Refuses a text too short for
    one calibration chunk and the held-out ones — cheaply, before any long work."""
    from ..formats.tokenizer import load_tokenizer

    bos = _bos_ids(src)
    ids = load_tokenizer(src.tokenizer_spec()).encode(text, add_special_tokens=False).ids
    body = n_ctx - len(bos)
    chunks = [np.asarray(bos + ids[i:i + body], dtype=np.int32) for i in range(0, len(ids) - body + 1, body)]
    if len(chunks) < holdout + 1:
        raise InputError(f"the calibration text has {len(ids)} tokens; need at least {(holdout + 1) * body} "
                         f"(chunks of {n_ctx}: one to calibrate on, {holdout} held out for the check); "
                         "give a longer --text, or leave it out to calibrate on the model's own text")
    n_cal = min(len(chunks) - holdout, max(1, -(-tokens // n_ctx)))
    return chunks[:n_cal] + chunks[len(chunks) - holdout:]


def split_generated(seqs: list[list[int]], n_hold_tokens: int, bos: list[int]) -> tuple[list[list[int]], list[int]]:
    """Generated sequences → (calibration sequences, held-out token stream without BOS).

    The held-out stream takes whole sequences from the end until it has
    ``n_hold_tokens`` tokens, whatever their lengths (at least one sequence
    always stays for calibration)."""
    held: list[int] = []
    k = len(seqs)
    while k > 1 and len(held) < n_hold_tokens:
        k -= 1
        s = seqs[k][len(bos):] if bos and seqs[k][:len(bos)] == bos else seqs[k]
        held = list(s) + held
    return seqs[:k], held


def holdout_rows(stream: list[int], n_ctx: int, holdout: int) -> np.ndarray:
    """(n ≤ holdout, n_ctx) rows of a held-out token stream (BOS excluded; evaluation adds it)."""
    n = min(holdout, len(stream) // n_ctx)
    return np.asarray(stream[:n * n_ctx], dtype=np.int32).reshape(n, n_ctx)


# Version of generate_text's output, part of the cache file name: text cached by an older
# version is not reused (v2: up to 12 sequences written at once with batched decode,
# each new one budgeted on what the running ones may still write).
GEN_VERSION = 2


def _cached_generation(model, n_tokens: int, n_ctx: int, progress, cancel, n_threads: int = 0) -> list[list[int]]:
    path = cache_dir() / "calibration" / f"gen-v{GEN_VERSION}-{fingerprint(model.source)}-{n_tokens}-{n_ctx}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())["sequences"]
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
    seqs = generate_text(model, n_tokens, n_ctx, progress=progress, cancel=cancel, n_threads=n_threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"schema": GEN_VERSION, "sequences": seqs}))
    return seqs


def default_output(src: ModelSource, fp: str, text_sha: str, tokens: int, n_ctx: int) -> Path:
    key = hashlib.sha256(f"{fp}|{text_sha}|{tokens}|{n_ctx}|{CALIB_SCHEMA}".encode()).hexdigest()[:12]
    return cache_dir() / "calibration" / f"{Path(src.path).name.removesuffix('.gguf')}-{key}.calib.npz"


def calibrate(model: str | os.PathLike | ModelSource, *, text: str | None = None, tokens: int = 16384,
              n_ctx: int = 512, n_windows: int = 3, holdout: int = 2, out: str | os.PathLike | None = None,
              n_threads: int = 0, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> Calibration:
    """Calibrate ``model`` on ``text`` (None: data-free, the model's own text) over about
    ``tokens`` tokens in chunks of ``n_ctx``; returns (and writes) the Calibration.

    An existing output for the same inputs is reused; an interrupted run resumes
    from its checkpoint (``<out>.partial``)."""
    from ..runtime.engine import ContextParams, Model

    if tokens < 1 or n_ctx < 16 or holdout < 0:
        raise InputError(f"calibration needs tokens >= 1, n_ctx >= 16 and holdout >= 0 (got {tokens}, {n_ctx}, "
                         f"{holdout})")
    src = model if isinstance(model, ModelSource) else load_model(model)
    refuse_overwrite(out, [src.path], what="calibration output path")
    user_chunks = text_chunks(src, text, tokens, n_ctx, holdout) if text is not None else None  # refuse early
    # the stored weights, without a kept file's k_cache.smooth: the new profile replaces that smoothing
    rt = Model(runtime_gguf(src, progress, cancel), smoothing=False)
    if user_chunks is not None:
        chunks, held = user_chunks[:len(user_chunks) - holdout], user_chunks[len(user_chunks) - holdout:]
        held_rows = np.stack([h[len(_bos_ids(src)):] for h in held]) if held else np.zeros((0, n_ctx), np.int32)
        text_source, text_sha = "user text", hashlib.sha256(text.encode()).hexdigest()
    else:
        # holdout chunks' worth of tokens (plus a margin for the BOS) are generated on top of the calibration text
        n_hold = holdout * n_ctx + (8 if holdout else 0)
        seqs = _cached_generation(rt, tokens + n_hold, n_ctx, progress, cancel, n_threads)
        cal_seqs, stream = split_generated(seqs, n_hold, _bos_ids(src))
        chunks = [np.asarray(q, dtype=np.int32) for q in cal_seqs]
        held_rows = holdout_rows(stream, n_ctx, holdout)
        text_source = "generated by the model (data-free)"
        text_sha = hashlib.sha256(np.concatenate([np.asarray(q, np.int64) for q in seqs]).tobytes()).hexdigest()
    n_expected = sum(len(c) for c in chunks)
    fp = fingerprint(src)  # reads the head of every weight file: once per call
    out = Path(out) if out is not None else default_output(src, fp, text_sha, tokens, n_ctx)
    if out.exists():
        cal = Calibration.load(out)
        if cal.fingerprint == fp and cal.text_sha256 == text_sha and cal.n_ctx == n_ctx and \
                cal.n_tokens == n_expected and len(cal.holdout) == len(held_rows):
            return cal
    a = rt.args
    L, H, Hk, d = a.num_hidden_layers, a.num_attention_heads, a.num_key_value_heads, a.head_dim
    pairing = rt.rope_pairing
    from ..models.rope import inv_freq

    state = _Partial.resume(out, text_sha, fp) or _Partial.new(L, Hk, d)
    ctx = rt.context(ContextParams(n_ctx=n_ctx, n_batch=n_ctx, type_k="f32", type_v="f32", n_threads=n_threads,
                                   backend="cpu"))  # capture runs on the CPU backend only
    cq, ck, cv = ctx.capture()
    # sample windows: the longest chunks (generated sequences end at different lengths; the proxy wants long ones)
    by_len = sorted(range(len(chunks)), key=lambda i: (-len(chunks[i]), i))
    win = set(by_len[:max(1, min(n_windows, len(chunks)))])
    start_phase(progress, "calibrate", "tok")
    seen = sum(len(c) for c in chunks[:state.next_chunk])
    for i in range(state.next_chunk, len(chunks)):
        check_cancel(cancel)
        chunk = chunks[i]
        T = len(chunk)
        ctx.reset()
        ctx.eval(chunk)
        q = to_hf_channels(cq[:, :T].reshape(L, T, H, d), pairing).astype(np.float64)
        k = to_hf_channels(ck[:, :T].reshape(L, T, Hk, d), pairing).astype(np.float64)
        v = cv[:, :T].reshape(L, T, Hk, d).astype(np.float64)
        state.add(q.reshape(L, T, Hk, H // Hk, d), k, v)
        if i in win:
            state.windows.append((q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)))
        state.next_chunk = i + 1
        state.save(out, text_sha, fp, windows_changed=i in win)
        seen += T
        if progress:
            progress(seen, n_expected, f"chunk {i + 1}/{len(chunks)}")
    T_w = min(w[1].shape[1] for w in state.windows)
    cal = Calibration(
        model=str(src.path), fingerprint=fp, arch=src.arch.name, rope_pairing=pairing,
        n_layer=L, n_head=H, n_head_kv=Hk, head_dim=d, rope_theta=float(a.rope_theta), text_source=text_source,
        text_sha256=text_sha, n_ctx=n_ctx, n_tokens=int(state.n), k_sum=state.k_sum, k_sq=state.k_sq,
        q_sq=state.q_sq, v_sum=state.v_sum, v_sq=state.v_sq,
        win_q=np.stack([w[0][:, :T_w] for w in state.windows]), win_k=np.stack([w[1][:, :T_w] for w in state.windows]),
        win_v=np.stack([w[2][:, :T_w] for w in state.windows]), rope_freqs=inv_freq(a).astype(np.float64),
        holdout=held_rows.astype(np.int32))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not all(np.isfinite(getattr(cal, k)).all() for k in ("k_sum", "k_sq", "q_sq", "v_sum", "v_sq", "win_q", "win_k", "win_v")):
        raise InputError(f"{src.path}: calibration gave NaN/infinite K/Q/V statistics (corrupt or out-of-range weights); {out} not written")
    cal.save(out)
    _Partial.path(out).unlink(missing_ok=True)
    _Partial.path(out).with_suffix(".windows").unlink(missing_ok=True)
    return cal


class _Partial:
    """Running sums and windows, checkpointed after every chunk."""

    def __init__(self, L: int, Hk: int, d: int):
        z = lambda: np.zeros((L, Hk, d))  # noqa: E731
        self.n, self.next_chunk = 0, 0
        self.k_sum, self.k_sq, self.q_sq, self.v_sum, self.v_sq = z(), z(), z(), z(), z()
        self.windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    new = classmethod(lambda cls, L, Hk, d: cls(L, Hk, d))

    def add(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """q (L, T, Hk, rep, d), k and v (L, T, Hk, d)."""
        self.n += k.shape[1]
        self.k_sum += k.sum(1)
        self.k_sq += (k * k).sum(1)
        self.q_sq += (q * q).sum((1, 3))
        self.v_sum += v.sum(1)
        self.v_sq += (v * v).sum(1)

    @staticmethod
    def path(out: Path) -> Path:
        return out.with_name(out.name + ".partial")

    def save(self, out: Path, text_sha: str, fp: str, windows_changed: bool) -> None:
        """Sums every chunk; the (large) windows only when one was added, to a side file."""
        out.parent.mkdir(parents=True, exist_ok=True)
        if windows_changed:
            arrays = {f"w{i}_{j}": w[j] for i, w in enumerate(self.windows) for j in range(3)}
            with atomic_path(self.path(out).with_suffix(".windows")) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        meta = json.dumps({"text_sha256": text_sha, "fingerprint": fp, "n": self.n, "next": self.next_chunk,
                           "windows": len(self.windows)})
        with atomic_path(self.path(out)) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8), k_sum=self.k_sum, k_sq=self.k_sq,
                     q_sq=self.q_sq, v_sum=self.v_sum, v_sq=self.v_sq)

    @classmethod
    def resume(cls, out: Path, text_sha: str, fp: str) -> "_Partial | None":
        p = cls.path(out)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                if meta["text_sha256"] != text_sha or meta["fingerprint"] != fp:
                    return None
                st = cls(*z["k_sum"].shape)
                st.n, st.next_chunk = int(meta["n"]), int(meta["next"])
                st.k_sum, st.k_sq, st.q_sq, st.v_sum, st.v_sq = (z[k] for k in ("k_sum", "k_sq", "q_sq", "v_sum", "v_sq"))
            n_win = int(meta["windows"])
            if n_win:
                with np.load(p.with_suffix(".windows"), allow_pickle=False) as w:
                    st.windows = [tuple(w[f"w{i}_{j}"] for j in range(3)) for i in range(n_win)]
            return st
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            p.unlink(missing_ok=True)  # a damaged checkpoint: start over
            p.with_suffix(".windows").unlink(missing_ok=True)
            return None
