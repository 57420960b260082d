"""Passkey retrieval at long context (issue 19 item 3): several random 5-6 digit pass keys hidden
at several depths of Austen evaluation-text filler, asked back at several context lengths.
A benchmark, not a test.

    python bench/needle.py --contexts 8192,16384,32768 --configs f16,balanced [--docs 2 --needles 6]
    python bench/needle.py --model smollm2 --contexts 4096,8192 --configs f16,balanced --docs 2
    python bench/needle.py --table

One document per --docs, each holding --needles needle paragraphs ("The pass key for the <colour>
door is 48213. Remember it.", a distinct colour and key each) at fixed fractions of the longest
context, in filler paragraphs of Persuasion (held-out evaluation part; document i starts at
paragraph 40*i+1). The chat is the model's template: a user turn "Below is a long excerpt ... " +
the document + the question "What is the pass key for the <colour> door? ...", then the assistant
turn is decoded greedily (at most 24 tokens, until the end of turn). To save compute, one context
per document and config is prefilled up to the first question point, every needle before it is
asked (question appended, answer decoded, then rewound to the question point: Context.reset(n_past)
/ llama.cpp's seq_rm), the prefill continues to the next question point, and so on. An answer is
right when its first run of digits is the key. Depth = the needle's first token position / the
context length at the question. Records go to ~/.cache/kvconvert/bench19/needle.jsonl.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import longctx as L  # noqa: E402

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "black", "white", "brown", "golden",
           "grey"]
INTRO = ("Below is a long excerpt from a novel. Hidden in it are several pass keys for doors of different colours. "
         "Remember them; I will ask about one of them afterwards.")
NEEDLE = "The pass key for the {colour} door is {key}. Remember it."
QUESTION = "What is the pass key for the {colour} door? Answer with the number only."
FRACTIONS = (0.04, 0.2, 0.37, 0.55, 0.72, 0.9)  # needle positions, as fractions of the longest context
# SmolLM2 restates the question before the key, one token per digit: "The pass key for the red door
# is 621841" is 15 tokens (12 cut it to "621"); Qwen answers with the number alone (7 tokens)
ANSWER_TOKENS = 24
RESULTS = "needle.jsonl"


def place(fractions, n: int, doc: int, total: int) -> list[int]:
    """Needle target positions for document ``doc``: the first n fractions of ``total``, shifted
    by doc half-gaps (mean gap between the fractions) so several documents cover more depths."""
    fr = list(fractions[:n])
    gap = (fr[-1] - fr[0]) / (len(fr) - 1) if len(fr) > 1 else 0.2
    return [int(min(0.97, f + doc * 0.5 * gap) * total) for f in fr]


def bucket(depth: float) -> str:
    q = min(3, int(depth * 4))
    return f"{25 * q}-{25 * q + 25}%"


def answer_key(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def build_document(para_tokens: list[list[int]], needles: list[tuple[int, list[int]]],
                   length: int) -> tuple[list[int], list[int]]:
    """Filler paragraphs (token lists, cycled) with each needle's tokens inserted at the first
    paragraph boundary at or after its target position; returns (tokens[:length], needle starts)."""
    out: list[int] = []
    starts = []
    pending = sorted(needles, key=lambda x: x[0])
    i = 0
    while len(out) < length:
        while pending and len(out) >= pending[0][0]:
            starts.append(len(out))
            out += pending.pop(0)[1]
        out += para_tokens[i % len(para_tokens)]
        i += 1
    return out[:length], starts


def run(cfg: L.Config, args, fmt, res: Path) -> None:
    from kvconvert.testdata import fixtures

    model = fmt.model
    pre, post = fmt.render([{"role": "user", "content": INTRO + "\n\n" + "\x00"}]).split("\x00")
    head = fmt.encode(pre)
    contexts = sorted(int(x) for x in args.contexts.split(","))
    paras = [p.strip() for p in fixtures.austen_novels()["Persuasion"].split("\n\n") if p.strip()]
    r = L.runner(cfg, max(contexts), args.threads)
    for d in range(args.docs):
        rng = np.random.default_rng(1900 + d)
        colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:args.needles]]
        keys = [str(int(rng.integers(10000, 1000000))) for _ in colours]
        questions = {c: fmt.encode("\n\n" + QUESTION.format(colour=c) + post, add_special=False) for c in colours}
        room = max(map(len, questions.values())) + ANSWER_TOKENS
        start = 40 * d + 1
        filler = [model.tokenize(p + "\n\n", add_bos=False) for p in paras[start:start + 2000]]
        n_doc = max(contexts) - len(head) - room
        targets = place(FRACTIONS, args.needles, d, max(contexts))
        needles = [(max(0, t - len(head)), model.tokenize(NEEDLE.format(colour=c, key=k) + "\n\n", add_bos=False))
                   for t, c, k in zip(targets, colours, keys)]
        doc, starts = build_document(filler, needles, n_doc)
        r.rewind(0)
        r.feed(head, "none")
        fed, t0 = 0, time.time()
        for ctx_len in contexts:
            upto = ctx_len - len(head) - room
            r.feed(doc[fed:upto], "none")
            fed = upto
            mark = r.n_past
            for c, k, s, (_, nt) in zip(colours, keys, starts, needles):
                if s + len(nt) > upto:
                    continue
                lg = r.feed(questions[c], "last")
                ans = model.detokenize(L.greedy(r, lg, ANSWER_TOKENS, fmt.stop_ids))
                r.rewind(mark)
                depth = (len(head) + s) / ctx_len
                rec = dict(config=cfg.name, label=cfg.label, model=L.slug(), doc=d, context=ctx_len, depth=depth,
                           colour=c, key=k, answer=ans, correct=answer_key(ans) == k, answer_tokens=ANSWER_TOKENS,
                           threads=args.threads, secs=time.time() - t0)
                L.append_jsonl(res, rec)
                print(f"  {cfg.name} doc {d} @ {ctx_len}: depth {depth:.2f} {c} {k} -> {ans!r} "
                      f"{'ok' if rec['correct'] else 'WRONG'} ({time.time() - t0:.0f}s)", flush=True)


def table(recs: list[dict]) -> str:
    latest = {}
    for x in recs:
        if not L.is_current(x):
            continue
        latest[(x["config"], x["doc"], x["context"], x["colour"])] = x
    cells: dict = defaultdict(lambda: [0, 0])
    contexts, buckets = set(), set()
    for x in latest.values():
        b = bucket(x["depth"])
        cells[(x["config"], x["context"], b)][0] += int(x["correct"])
        cells[(x["config"], x["context"], b)][1] += 1
        cells[(x["config"], x["context"], "all")][0] += int(x["correct"])
        cells[(x["config"], x["context"], "all")][1] += 1
        contexts.add(x["context"])
        buckets.add(b)
    cols = sorted(buckets) + ["all"]
    lines = ["| cache | context | " + " | ".join(f"depth {b}" if b != "all" else "all depths" for b in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    names = [n for n in L.CONFIGS if any(k[0] == n for k in cells)]
    for n in names:
        for c in sorted(contexts):
            if (n, c, "all") not in cells:
                continue
            row = []
            for b in cols:
                ok, tot = cells.get((n, c, b), (0, 0))
                row.append(f"{ok}/{tot}" if tot else "–")
            lines.append(f"| {L.CONFIGS[n].label} | {c} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen", choices=sorted(L.MODELS),
                   help="the fixture and shipped profiles to ask (SmolLM2-135M's context is 8192)")
    p.add_argument("--contexts", default="8192,16384,32768")
    p.add_argument("--configs", default="f16,balanced,long-context,q8_0,llama-f16,llama-q8_0")
    p.add_argument("--docs", type=int, default=1)
    p.add_argument("--needles", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    L.use_model(args.model)
    res = L.work_dir() / RESULTS
    if not args.table:
        from kvconvert.runtime.engine import Model
        from kvconvert.serving.chat import ChatFormat

        fmt = ChatFormat.for_model(Model(L.model_file("base")))
        for cfg in L.parse_configs(args.configs):
            run(cfg, args, fmt, res)
    print(table(L.read_jsonl(res)))


if __name__ == "__main__":
    main()
