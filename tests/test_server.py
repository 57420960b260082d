"""`kvconvert serve` through the official `openai` client (SmolLM2-135M-Instruct, real file).

Servers run as subprocesses (the CLI) on a free 127.0.0.1 port. Greedy answers must equal
the same greedy generation without the server (generate.generate_tokens in this process,
same context parameters), also under a bounded concurrent load.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")

from kvconvert.testdata import fixtures  # noqa: E402
from kvconvert.serving.chat import ChatFormat  # noqa: E402
from kvconvert.runtime.generate import SamplerParams, generate_tokens  # noqa: E402
from kvconvert.runtime.engine import ContextParams, Model  # noqa: E402

CTX = 1024
GREEDY = SamplerParams(temperature=0.0, repeat_penalty=1.0)
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextmanager
def _serve(*extra: str):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kvconvert.cli", "serve", str(fixtures.smollm2_gguf()),
                             "--port", str(port), "--ctx", str(CTX), "--threads", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {proc.communicate(timeout=5)[1]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server():
    with _serve("--parallel", "4", "--queue", "16") as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local():
    model = Model(fixtures.smollm2_gguf())
    return model, ChatFormat.for_model(model)


def _greedy(local, ids: list[int], max_tokens: int) -> str:
    model, _ = local
    out = list(generate_tokens(model, ids, max_tokens, GREEDY, ContextParams(n_ctx=CTX, n_threads=2)))
    return model.detokenize(out)


def _chat_ids(local, messages) -> list[int]:
    return local[1].tokenize_chat(messages)


def test_models_and_health(server, client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    status, body = _get(server + "/health")
    assert status == 200 and body["status"] == "ok" and body["slots_total"] == 4


def test_chat_completion_equals_local_greedy(client, local) -> None:
    messages = [{"role": "user", "content": "Write a sentence about the sea."}]
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, max_tokens=24)
    ids = _chat_ids(local, messages)
    want = _greedy(local, ids, 24)
    assert len(want) > 20
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens <= 24
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")
    assert r.object == "chat.completion" and r.model == MODEL_ID
    # streamed: the same text in pieces, role first, finish_reason last
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    usage = chunks.pop()  # asked for: a last chunk with the usage and no choices
    assert usage.choices == [] and usage.usage.model_dump() == r.usage.model_dump()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 5  # really streamed, not one piece


def test_multi_turn_reuses_the_common_prefix(local) -> None:
    """The second turn of a chat goes to the slot holding the first: only the new tokens are
    prefilled, and the answer is the same as a fresh greedy run of the whole conversation."""
    with _serve("--parallel", "2") as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        turn1 = [{"role": "user", "content": "Name a colour of the sky."}]
        a1 = c.chat.completions.create(model=MODEL_ID, messages=turn1, temperature=0, max_tokens=16)
        assert _get(base + "/health")[1]["prompt_tokens_reused"] == 0
        turn2 = turn1 + [{"role": "assistant", "content": a1.choices[0].message.content},
                         {"role": "user", "content": "And of grass?"}]
        a2 = c.chat.completions.create(model=MODEL_ID, messages=turn2, temperature=0, max_tokens=16)
        reused = _get(base + "/health")[1]["prompt_tokens_reused"]
    ids1, ids2 = _chat_ids(local, turn1), _chat_ids(local, turn2)
    assert len(ids1) - 1 <= reused < len(ids2)  # at least the first turn's prompt was not prefilled again
    assert a2.choices[0].message.content == _greedy(local, ids2, 16)


def test_long_prompt_prefilled_in_chunks(client, local) -> None:
    """A prompt over n_batch (512) is prefilled a chunk per engine iteration; same answer."""
    model, fmt = local
    lines = [f"Note {i}: {TOPICS[i % len(TOPICS)]} and {TOPICS[(3 * i) % len(TOPICS)]} are listed." for i in range(80)]
    text = "\n".join(lines)
    ids = fmt.encode(text)
    while len(ids) > 560:
        lines.pop()
        text = "\n".join(lines)
        ids = fmt.encode(text)
    assert 512 < len(ids) <= 560
    r = client.completions.create(model=MODEL_ID, prompt=text, temperature=0, max_tokens=8)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].text == _greedy(local, ids, 8)


def test_completion_and_stop_strings(client, local) -> None:
    prompt = "The capital of France is"
    model, fmt = local
    limit = 32
    want = _greedy(local, fmt.encode(prompt), limit)
    r = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0, max_tokens=limit)
    n = len(local[0].tokenizer.encode(want, add_special_tokens=False).ids)
    assert r.choices[0].text == want and r.usage.completion_tokens == n and 8 < n <= limit
    # EOS before max_tokens is "stop", else "length" (whether greedy SmolLM2 ends within 32 tokens
    # here moves with float rounding; the stop strings below always end in "stop")
    assert r.choices[0].finish_reason == ("stop" if n < limit else "length")
    streamed = list(client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0, max_tokens=limit,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want
    # a stop string from the middle of the greedy text: the text before it, finish_reason "stop"
    words = want.split()
    stop = " " + words[len(words) // 2]
    cut = want.index(stop)
    assert cut > 0
    for stream in (False, True):
        res = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0, max_tokens=limit,
                                        stop=["@@never@@", stop], stream=stream)
        if stream:
            res = list(res)
            text, reason = "".join(c.choices[0].text for c in res), res[-1].choices[0].finish_reason
        else:
            text, reason = res.choices[0].text, res.choices[0].finish_reason
        assert (text, reason) == (want[:cut], "stop")
    # sampling with a seed is reproducible, and differs from greedy at a high temperature
    kw = dict(model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=1.5, top_p=1.0, seed=7,
              extra_body={"top_k": 0})
    a, b = (client.completions.create(**kw).choices[0].text for _ in range(2))
    assert a == b and a != want[:len(a)]


def _error(excinfo) -> dict:
    return excinfo.value.response.json()["error"]


def test_bad_requests_get_openai_errors(server, client) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400 and _error(e)["code"] == "model_not_found" and _error(e)["param"] == "model"
    assert set(_error(e)) == {"message", "type", "param", "code"} and _error(e)["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=-1)
    assert _error(e)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="word " * (CTX + 10), max_tokens=4)
    assert _error(e)["code"] == "context_length_exceeded" and str(CTX) in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert _error(e)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[])
    assert _error(e)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="hi", stop=["a", "b", "c", "d", "e"])
    assert _error(e)["param"] == "stop"
    status, body = _post(server + "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = _get(server + "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    # and the server keeps serving
    r = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3


PROMPTS = ["Tell me about {}.", "Write one line about {}.", "What is {}?", "Describe {} briefly."]
TOPICS = ["cats", "the moon", "bread", "rivers", "music", "winter", "trains", "gardens"]


def test_concurrent_streaming_clients_match_sequential_greedy(server, client, local) -> None:
    n_clients, per_client, max_tokens = 16, 4, 24
    # 32 different conversations, each asked by two clients at different times
    jobs = [[[{"role": "user", "content": PROMPTS[(c // len(TOPICS) * 2 + k) % len(PROMPTS)].format(
        TOPICS[c % len(TOPICS)])}] for k in range(per_client)] for c in range(n_clients)]
    answers: dict[str, str] = {}
    for msgs in jobs:
        for m in msgs:
            if m[0]["content"] not in answers:
                answers[m[0]["content"]] = _greedy(local, _chat_ids(local, m), max_tokens)
    want = [[answers[m[0]["content"]] for m in msgs] for msgs in jobs]
    assert len(answers) == 32 and len(set(answers.values())) >= 30  # different answers
    # idle level: after a warm-up of the same shape on every slot (the slots' caches and scratch are
    # allocated once; measured: RSS then stays flat over repeated rounds of this load)
    warm = [threading.Thread(target=lambda m=msgs[0]: client.chat.completions.create(
        model=MODEL_ID, messages=m, temperature=0, max_tokens=max_tokens)) for msgs in jobs[:4]]
    for t in warm:
        t.start()
    for t in warm:
        t.join(timeout=60)
    _, before = _get(server + "/health")
    got: list[list] = [[None] * per_client for _ in range(n_clients)]
    latency: list[float] = []
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        try:
            for k, messages in enumerate(jobs[c]):
                t0 = time.monotonic()
                chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0,
                                                             max_tokens=max_tokens, stream=True))
                latency.append(time.monotonic() - t0)
                got[c][k] = ("".join(ch.choices[0].delta.content or "" for ch in chunks),
                             chunks[-1].choices[0].finish_reason)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    wall = time.monotonic() - t0
    assert not errors and not any(t.is_alive() for t in threads)
    for c in range(n_clients):
        for k in range(per_client):
            text, reason = got[c][k]
            assert reason in ("stop", "length")  # every stream ended properly
            assert text == want[c][k], (c, k)
    _, after = _get(server + "/health")
    batches = after["decode_batches"] - before["decode_batches"]
    tokens = after["decode_tokens"] - before["decode_tokens"]
    assert tokens / batches > 2.0  # continuous batching: several slots per eval_multi step
    assert after["slots_processing"] == 0 and after["requests_waiting"] == 0
    assert wall < 60  # the bound the issue sets for this load on SmolLM2
    if before["rss_mib"] is not None:  # memory back to the idle level: nothing per request is kept
        assert after["rss_mib"] <= before["rss_mib"] + 8, (before["rss_mib"], after["rss_mib"])
    lat = sorted(latency)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"\nload: {n_clients} clients x {per_client} streaming requests x {max_tokens} tokens in {wall:.1f} s; "
          f"latency p50 {p50:.2f} s, p99 {p99:.2f} s; aggregate {tokens / wall:.1f} tok/s; "
          f"mean decode batch {tokens / batches:.2f}; RSS {before['rss_mib']} -> {after['rss_mib']} MiB")


def test_busy_server_disconnect_api_key_and_slot_reuse(local) -> None:
    # TurboQuant caches without calibrated means (the fixture has none): K is centered on the
    # mean of a context's first batch, so a reused slot must not keep the previous request's
    with _serve("--parallel", "1", "--queue", "0", "--api-key", "s3cret", "--ctk", "tq4", "--ctv", "tq4") as base:
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        assert e.value.status_code == 401 and _error(e)["code"] == "invalid_api_key"
        assert _get(base + "/v1/models")[0] == 401
        c = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == [MODEL_ID]
        messages = [{"role": "user", "content": "Tell me a very long story about a dragon."}]
        stream = c.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=900, temperature=1.0,
                                           top_p=1.0, seed=1, stream=True, extra_body={"top_k": 0})
        it = iter(stream)
        next(it), next(it)  # the only slot is decoding
        assert _get(base + "/health")[1]["slots_processing"] == 1
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
        assert e.value.status_code == 429 and int(e.value.response.headers["retry-after"]) >= 1
        assert _error(e)["type"] == "rate_limit_error"
        t0 = time.monotonic()
        stream.close()  # the client goes away mid-answer: its slot is free at once
        while _get(base + "/health")[1]["slots_processing"] and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        freed = time.monotonic() - t0
        assert freed < 1.0, freed
        # the one slot ran three requests already: a greedy answer equals a fresh tq4 context's
        model, fmt = local
        for prompt in ("The capital of France is", "Once upon a time"):
            want = model.detokenize(list(generate_tokens(
                model, fmt.encode(prompt), 16, GREEDY, ContextParams(n_ctx=CTX, n_threads=2, type_k="tq4",
                                                                      type_v="tq4"))))
            got = c.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16, temperature=0)
            assert got.choices[0].text == want
        assert [m.model_extra["meta"]["cache_k"] for m in c.models.list().data] == ["tq4"]
        r = c.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2, temperature=0)
        assert r.usage.completion_tokens == 2
        # the same for a client waiting for a whole (non-streamed) answer
        body = json.dumps({"model": MODEL_ID, "messages": messages, "max_tokens": 900, "temperature": 1.0,
                           "top_k": 0, "top_p": 1.0, "seed": 1}).encode()
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            t0 = time.monotonic()
            while not _get(base + "/health")[1]["slots_processing"] and time.monotonic() - t0 < 5:
                time.sleep(0.02)
            time.sleep(0.3)
            assert _get(base + "/health")[1]["slots_processing"] == 1
        t0 = time.monotonic()
        while _get(base + "/health")[1]["slots_processing"] and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        freed = time.monotonic() - t0
        assert freed < 1.0, freed


def test_serve_refuses_a_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "kvconvert.cli", "serve", str(fixtures.smollm2_gguf()), "--port",
                            str(port)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "KVCONVERT_API_KEY": ""})
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
