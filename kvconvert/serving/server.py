"""An OpenAI-compatible HTTP server on the native runtime (``kvconvert serve``).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streaming as
server-sent events or not), ``GET /v1/models``, ``GET /health``.

One engine thread owns the model and ``parallel`` slots, each a context (KV cache) of
``n_ctx`` tokens with the file's cache profile. HTTP handlers (asyncio, Starlette on
uvicorn) turn a request into a ``Job`` and hand it to the engine through a queue; the
engine streams text pieces back into the handler's asyncio queue. Each engine iteration
prefills one chunk of one waiting prompt, then samples one token for every decoding slot
and evaluates all of them as one ``runtime.eval_multi`` batch (continuous batching: jobs
join and leave between steps). A job whose client went away is dropped at the next
iteration and its slot is free again. A new job takes the free slot whose cache shares the
longest prefix with its prompt and prefills only the rest (the next turn of a multi-turn
chat re-evaluates only the new messages); ``/health`` counts the reused tokens. Admission
control: at most ``parallel`` running
plus ``max_queue`` waiting jobs; beyond that a request gets 429 with ``Retry-After``.

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .chat import ChatFormat, ChatTemplateError, TextStream, keeps_first_batch_mean
from ..base.errors import KVConvertError
from ..runtime.generate import SamplerParams, sample
from ..runtime.engine import Context, ContextParams, Model, NativeError, check_logits, eval_multi

MAX_STOP = 4  # OpenAI's limit on stop sequences


# --------------------------------------------------------------------------- errors

class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


# --------------------------------------------------------------------------- engine

@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    sampler: SamplerParams
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: bool = False
    # engine state
    ctx: Context | None = None
    pos: int = 0  # prompt tokens prefilled
    logits: np.ndarray | None = None
    history: list[int] = field(default_factory=list)
    made: int = 0
    rng: np.random.Generator | None = None
    stream: TextStream | None = None

    def emit(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled = True


class Engine:
    """Slots, a queue of waiting jobs and the thread that runs them (see the module docstring)."""

    def __init__(self, model: Model, ctx_params: ContextParams, parallel: int = 4, max_queue: int = 16):
        self.model = model
        self.fmt = ChatFormat.for_model(model)
        self.ctx_params = ctx_params
        contexts = [model.context(ctx_params) for _ in range(parallel)]
        self.params = contexts[0].params  # resolved: the file's cache profile for "auto"
        self.n_ctx = self.params.n_ctx
        # A centered K cache without calibrated means takes its mean from a context's first batch
        # and keeps it (the runtime has no way to forget it): such a slot gets a new context for
        # each request, so an answer never depends on what the slot ran before.
        self._fresh_contexts = keeps_first_batch_mean(self.params)
        self.parallel, self.max_queue = parallel, max_queue
        self._free = contexts
        self._cached: dict[int, list[int]] = {}  # id(free context) -> the tokens its cache holds
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kvconvert-engine", daemon=True)
        self.steps = 0  # eval_multi batches run, and the tokens they held (mean batch = tokens / steps)
        self.batched_tokens = 0
        self.reused_tokens = 0  # prompt tokens not prefilled again: a free slot's cache already held them

    # -- handler side ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers 429)."""
        with self._cond:
            if len(self._running) + len(self._waiting) >= self.parallel + self.max_queue:
                return False
            self._waiting.append(job)
            self._cond.notify()
            return True

    def cancel(self, job: Job) -> None:
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def stats(self) -> dict:
        with self._cond:
            return {"slots_idle": len(self._free), "slots_processing": len(self._running),
                    "requests_waiting": len(self._waiting), "slots_total": self.parallel,
                    "decode_batches": self.steps, "decode_tokens": self.batched_tokens,
                    "prompt_tokens_reused": self.reused_tokens}

    # -- engine thread -----------------------------------------------------------
    def _finish(self, job: Job, reason: str | None, error: str | None = None) -> None:
        """Free the job's slot and tell its handler (with the lock held)."""
        if job in self._running:
            self._running.remove(job)
        if job.ctx is not None:
            # what the cache holds now: every evaluated token (the last sampled one was not); after an
            # error nothing is trusted
            self._cached[id(job.ctx)] = [] if error is not None else job.history[:job.ctx.n_past]
            self._free.append(job.ctx)
            job.ctx = None
        if error is not None:
            job.emit(("error", error))
        elif not job.cancelled:
            if job.stream is not None:
                tail = job.stream.flush()
                if tail:
                    job.emit(("text", tail))
            job.emit(("done", reason, len(job.prompt), job.made))

    def _admit(self) -> None:
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
        for job in [j for j in self._running if j.cancelled]:
            self._finish(job, None)
        while self._free and self._waiting:
            job = self._waiting.popleft()
            keep = 0
            if self._fresh_contexts:
                ctx = self._free.pop()
                if ctx.n_past:
                    try:
                        ctx = self.model.context(self.ctx_params)  # the old one is freed with its last reference
                    except (KVConvertError, MemoryError) as e:
                        self._free.append(ctx)
                        job.emit(("error", f"cannot make a context for the request: {e}"))
                        continue
            else:  # the free slot whose cache shares the longest prefix with the prompt (a multi-turn chat)
                ctx, keep = max(((c, _common_prefix(self._cached.get(id(c), []), job.prompt)) for c in self._free),
                                key=lambda ck: ck[1])
                self._free.remove(ctx)
                keep = max(0, min(keep, len(job.prompt) - 1))  # one prompt token is evaluated, for its logits
                if 0 < keep < ctx.n_past and keep < ctx.rewind_floor:
                    keep = 0  # sliding-window layers dropped what position `keep` needs: prefill it all
            self._cached.pop(id(ctx), None)
            ctx.reset(keep)
            job.pos = keep
            self.reused_tokens += keep
            job.ctx = ctx
            job.rng = np.random.default_rng(job.sampler.seed)
            job.history = list(job.prompt)
            job.stream = TextStream(self.model, job.stop)
            self._running.append(job)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._running and not any(not j.cancelled for j in self._waiting):
                    self._waiting.clear()
                    self._cond.wait()
                if self._stop:
                    for job in list(self._running) + list(self._waiting):
                        job.emit(("error", "the server is shutting down"))
                    return
                self._admit()
                running = list(self._running)
            try:
                self._iteration(running)
            except Exception as e:  # a bug must not kill the engine: fail the jobs, keep serving
                with self._cond:
                    for job in running:
                        if job in self._running:
                            self._finish(job, None, f"internal error: {e}")

    def _iteration(self, running: list[Job]) -> None:
        prefilling = [j for j in running if j.logits is None]
        if prefilling:  # one chunk of one prompt per iteration, so decoding slots keep going
            job = prefilling[0]
            chunk = job.prompt[job.pos:job.pos + job.ctx.params.n_batch]
            try:
                logits = job.ctx.eval(chunk)
                job.pos += len(chunk)
                if job.pos >= len(job.prompt):
                    job.logits = check_logits(logits, job.ctx, "for the prompt")
            except (NativeError, KVConvertError) as e:
                with self._cond:
                    self._finish(job, None, str(e))
        decoding = [j for j in running if j.logits is not None and not j.cancelled and j.ctx is not None]
        if not decoding:
            return
        go: list[tuple[Job, int]] = []
        done: list[tuple[Job, str]] = []
        for job in decoding:
            if job.made >= job.max_tokens:
                done.append((job, "length"))
                continue
            tok = sample(job.logits, job.sampler, job.history, job.rng)
            if tok in self.fmt.stop_ids:
                done.append((job, "stop"))
                continue
            job.history.append(tok)
            job.made += 1
            piece = job.stream.push(tok)
            if piece:
                job.emit(("text", piece))
            if job.stream.stopped:
                done.append((job, "stop"))
            elif job.made >= job.max_tokens or job.ctx.n_past >= job.ctx.params.n_ctx:
                done.append((job, "length"))
            else:
                go.append((job, tok))
        if done:
            with self._cond:
                for job, reason in done:
                    self._finish(job, reason)
        j = 0
        while j < len(go):
            lead = go[j][0].ctx.params
            group = go[j:j + max(1, min(lead.n_batch, lead.n_ctx))]
            try:
                rows = eval_multi([g.ctx for g, _ in group], [t for _, t in group])
                self.steps += 1
                self.batched_tokens += len(group)
                for (g, _), row in zip(group, rows):
                    g.logits = check_logits(row, g.ctx, f"at position {g.ctx.n_past}")
            except (NativeError, KVConvertError) as e:
                with self._cond:
                    for g, _ in group:
                        self._finish(g, None, str(e))
            j += len(group)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# --------------------------------------------------------------------------- request parsing

def _number(body: dict, name: str, default, lo=None, hi=None, integer=False, lo_open=False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _bad(f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if not np.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        rng = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        if hi is not None:
            rng += f"{' and ' if rng else ''}<= {hi}"
        raise _bad(f"'{name}' must be {rng}, got {v!r}", name)
    return v


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text is supported
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}: only text content parts are supported", "messages")
            out.append(part["text"])
        return "".join(out)
    if content is None:
        return ""
    raise _bad(f"{where}: 'content' must be a string or a list of text parts", "messages")


class JobStream(StreamingResponse):
    """A streamed answer whose job is cancelled however the response ends (also when the client
    is gone before the first event, when the body generator never starts)."""

    def __init__(self, engine: Engine, job: Job, *args, **kw):
        super().__init__(*args, **kw)
        self.engine, self.job = engine, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)  # a no-op for a finished job


class Server:
    """The HTTP side: validation, admission, streaming (a Starlette app in ``self.app``)."""

    def __init__(self, engine: Engine, model_id: str, api_key: str | None = None, retry_after: int = 1):
        self.engine, self.model_id, self.api_key, self.retry_after = engine, model_id, api_key, retry_after
        self.created = int(time.time())
        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ], lifespan=self._lifespan, exception_handlers={404: self._not_found, 405: self._not_allowed})

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.engine.shutdown)

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def _error(e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def _not_found(self, request, exc):
        return self._error(APIError(404, f"no such endpoint: {request.url.path}", "invalid_request_error",
                                    code="not_found"))

    async def _not_allowed(self, request, exc):
        return self._error(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    "invalid_request_error", code="method_not_allowed"))

    def _auth(self, request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "invalid API key (send it as 'Authorization: Bearer KEY')",
                           "authentication_error", code="invalid_api_key")

    async def _body(self, request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _bad(f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise _bad(f"the model '{model}' does not exist; this server serves '{self.model_id}'", "model",
                       "model_not_found")
        return body

    def _params(self, body: dict, prompt: list[int], chat: bool) -> tuple[int, SamplerParams, list[str], bool]:
        if _number(body, "n", 1, 1, integer=True) != 1:
            raise _bad("only n = 1 is supported", "n")
        for name in ("frequency_penalty", "presence_penalty"):
            if _number(body, name, 0.0, -2, 2) != 0:
                raise _bad(f"'{name}' is not supported (use repeat_penalty)", name)
        unsupported = {"logprobs": (None, False), "top_logprobs": (None, 0), "best_of": (None, 1),
                       "echo": (None, False), "suffix": (None, ""), "tools": (None, [])}
        for name, fine in unsupported.items():
            if body.get(name) not in fine:
                raise _bad(f"'{name}' is not supported", name)
        limit = self.engine.n_ctx - len(prompt)
        if limit <= 0:
            raise _bad(f"the prompt is {len(prompt)} tokens; this server's context is {self.engine.n_ctx} tokens",
                       "messages" if chat else "prompt", "context_length_exceeded")
        key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _number(body, key, None, 0, integer=True)
        max_tokens = limit if max_tokens is None else min(max_tokens, limit)
        sampler = SamplerParams(
            temperature=_number(body, "temperature", 0.8, 0, 2),
            top_k=_number(body, "top_k", 40, 0, integer=True),
            top_p=_number(body, "top_p", 0.95, 0, 1, lo_open=True),
            repeat_penalty=_number(body, "repeat_penalty", 1.0, 0, lo_open=True),
            seed=_number(body, "seed", None, 0, (1 << 64) - 1, integer=True))
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise _bad("'stop' must be a string or a list of strings", "stop")
        if len(stop) > MAX_STOP:
            raise _bad(f"at most {MAX_STOP} stop sequences", "stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _bad("'stream' must be true or false", "stream")
        return max_tokens, sampler, stop, stream

    def _chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list", "messages")
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}] needs a 'role'", "messages")
            msgs.append({"role": m["role"], "content": _text_content(m.get("content"), f"messages[{i}]")})
        try:
            return self.engine.fmt.tokenize_chat(msgs)
        except ChatTemplateError as e:
            raise _bad(str(e), "messages") from None

    def _completion_prompt(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            if not all(0 <= t < self.engine.model.args.vocab_size for t in prompt):
                raise _bad("token ids in 'prompt' must be in the vocabulary", "prompt")
            return list(prompt)
        if not isinstance(prompt, str) or not prompt:
            raise _bad("'prompt' must be a non-empty string (or one string, or a list of token ids)", "prompt")
        return self.engine.fmt.encode(prompt)

    # -- endpoints ---------------------------------------------------------------
    async def health(self, request):
        return JSONResponse({"status": "ok", **self.engine.stats(), "rss_mib": _rss_mib()})

    async def models(self, request):
        try:
            self._auth(request)
        except APIError as e:
            return self._error(e)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "kvconvert",
             "meta": {"n_ctx": self.engine.n_ctx, "cache_k": self.engine.params.type_k,
                      "cache_v": self.engine.params.type_v}}]})

    async def chat_completions(self, request):
        return await self._complete(request, chat=True)

    async def completions(self, request):
        return await self._complete(request, chat=False)

    async def _complete(self, request, chat: bool):
        try:
            self._auth(request)
            body = await self._body(request)
            prompt = self._chat_prompt(body) if chat else self._completion_prompt(body)
            max_tokens, sampler, stop, stream = self._params(body, prompt, chat)
            loop = asyncio.get_running_loop()
            job = Job(prompt, max_tokens, sampler, stop, loop, asyncio.Queue())
            if not self.engine.submit(job):
                raise APIError(429, "the server is busy (all slots and the queue are full); retry later",
                               "rate_limit_error", code="server_busy",
                               headers={"Retry-After": str(self.retry_after)})
        except APIError as e:
            return self._error(e)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) \
                if isinstance(body.get("stream_options"), dict) else False
            return self._stream(request, job, chat, rid, created, include_usage)
        return await self._collect(request, job, chat, rid, created)

    def _usage(self, n_prompt: int, n_made: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_made, "total_tokens": n_prompt + n_made}

    async def _collect(self, request, job: Job, chat: bool, rid: str, created: int):
        parts: list[str] = []
        checked = time.monotonic()
        try:
            while True:
                item = None
                try:
                    item = await asyncio.wait_for(job.queue.get(), 0.2)
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - checked >= 0.2:  # also while tokens keep coming
                    checked = time.monotonic()
                    if await request.is_disconnected():  # nobody to answer: free the slot now
                        self.engine.cancel(job)
                        return JSONResponse({}, status_code=499)
                if item is None:
                    continue
                if item[0] == "text":
                    parts.append(item[1])
                elif item[0] == "error":
                    return self._error(APIError(500, item[1], "server_error", code="engine_error"))
                else:
                    _, reason, n_prompt, n_made = item
                    break
        except asyncio.CancelledError:
            self.engine.cancel(job)
            raise
        text = "".join(parts)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": self.model_id,
                             "choices": [choice], "usage": self._usage(n_prompt, n_made)})

    def _stream(self, request, job: Job, chat: bool, rid: str, created: int, include_usage: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(content: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta: dict = {}
                if first:
                    delta["role"] = "assistant"
                if content is not None:
                    delta["content"] = content
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": reason}
            data = {"id": rid, "object": obj, "created": created, "model": self.model_id, "choices": [choice]}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events():
            finished = False
            try:
                if chat:
                    yield chunk("", None, first=True)
                while True:
                    item = await job.queue.get()
                    if item[0] == "text":
                        yield chunk(item[1], None)
                    elif item[0] == "error":
                        err = APIError(500, item[1], "server_error", code="engine_error")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        finished = True
                        return
                    else:
                        _, reason, n_prompt, n_made = item
                        yield chunk(None if chat else "", reason)
                        if include_usage:
                            data = {"id": rid, "object": obj, "created": created, "model": self.model_id,
                                    "choices": [], "usage": self._usage(n_prompt, n_made)}
                            yield f"data: {json.dumps(data)}\n\n"
                        yield "data: [DONE]\n\n"
                        finished = True
                        return
            finally:
                if not finished:  # the client went away (or the response was cancelled): free the slot
                    self.engine.cancel(job)

        return JobStream(self.engine, job, events(), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def make_server(model: Model | str, *, parallel: int = 4, n_ctx: int = 4096, type_k: str = "auto",
                type_v: str = "auto", n_threads: int = 0, n_sink: int | None = None,
                n_recent: int | None = None, api_key: str | None = None,
                max_queue: int | None = None, model_id: str | None = None) -> Server:
    """Load the model (if a path), make the slots' contexts and the app (engine not started:
    the app's startup starts it)."""
    from pathlib import Path

    if not isinstance(model, Model):
        model = Model(model)
    params = ContextParams(n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_threads=n_threads, n_sink=n_sink,
                           n_recent=n_recent)
    engine = Engine(model, params, parallel, 4 * parallel if max_queue is None else max_queue)
    return Server(engine, model_id or Path(model.path).stem, api_key)


def _rss_mib() -> float | None:
    """This process's resident memory in MiB (Linux /proc; None elsewhere): /health reports it so
    an operator (and the load test) can see memory return to its idle level after a load."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
