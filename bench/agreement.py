"""Generation agreement (issue 19 item 4): 20 varied chat prompts × 128 greedy tokens
per cache config, compared position by position with the same engine's f16-cache continuation.
A benchmark, not a test.

    python bench/agreement.py [--configs all] [--tokens 128] [--threads 2] [--model smollm2]
    python bench/agreement.py --table

Prompts go through the model's chat template (it is an instruct model); decoding is greedy
(argmax, no penalties) for exactly --tokens tokens, then each continuation is cut after its first
end-of-turn token. Per config: the mean length of the prefix identical to the reference, the share
of the reference's positions holding the same token, and how many continuations are identical.
kvconvert configs decode the 20 prompts as one batch (runtime BatchDecoder: each sequence gets
what it would get alone); llama.cpp configs one prompt after another. Token ids are saved to
~/.cache/kvconvert/bench19/agreement.json (Qwen; another --model: agreement-<slug>.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import longctx as L  # noqa: E402

PROMPTS = [
    "Write a short paragraph describing a foggy morning in a harbour town.",
    "Continue this story in three sentences: The letter had been sitting on the table for a week before anyone dared to open it.",
    "Write a dialogue of six lines between a baker and a customer who wants a cake shaped like a dragon.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Write a C function that reverses a singly linked list in place.",
    "Write a Rust function that counts the words in a string and returns a HashMap<String, usize>.",
    "Write a SQL query that returns the ten customers with the highest total order value from tables customers(id, name) and orders(id, customer_id, amount).",
    "Write a JavaScript function that debounces another function by a given number of milliseconds.",
    "Write a bash script that finds the five largest files under the current directory.",
    "Solve step by step: a train travels 180 km in 2.5 hours. What is its average speed in km/h, and how long does it take to travel 252 km at that speed?",
    "Compute the derivative of f(x) = x^3 * sin(x) and explain each step.",
    "What is 17 * 23? Show the multiplication in steps.",
    "请用中文简单介绍一下长城的历史。",
    "Расскажи коротко, почему небо голубое.",
    "日本の四季について短く説明してください。",
    "List seven fruits that are rich in vitamin C, one per line, with a short note for each.",
    "Give a numbered list of five tips for writing readable code.",
    "Summarise the plot of Romeo and Juliet in four sentences.",
    "Translate into French: 'The meeting has been moved to Thursday afternoon because the director is travelling.'",
    "Explain what a hash table is to a ten-year-old.",
]
RESULTS = "agreement.json"


def compare(ref: list[int], test: list[int]) -> tuple[int, int, int]:
    """(identical-prefix length, positions of ref that hold the same token in test, len(ref))."""
    prefix = 0
    for a, b in zip(ref, test):
        if a != b:
            break
        prefix += 1
    same = sum(1 for a, b in zip(ref, test) if a == b)
    return prefix, same, len(ref)


def cut(tokens: list[int], stops: set[int]) -> list[int]:
    """Tokens up to and including the first stop id."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return list(tokens)


def stats(ref: list[list[int]], test: list[list[int]], stops: set[int]) -> dict:
    rows = [compare(cut(a, stops), cut(b, stops)) for a, b in zip(ref, test)]
    n_ref = sum(r[2] for r in rows)
    return {"prompts": len(rows), "prefix_mean": sum(r[0] for r in rows) / len(rows),
            "share_same": sum(r[1] for r in rows) / n_ref, "ref_tokens": n_ref,
            "identical": sum(1 for r in rows if r[0] == r[2] and r[1] == r[2]),
            "prefix_min": min(r[0] for r in rows)}


def generate(cfg: L.Config, prompts: list[list[int]], n_tok: int, threads: int) -> list[list[int]]:
    if cfg.engine == "kvc":
        from kvconvert.runtime.engine import ContextParams, Model
        from kvconvert.runtime.generate import SamplerParams, generate_batch

        m = Model(L.model_file(cfg.file))
        params = ContextParams(n_ctx=max(map(len, prompts)) + n_tok + 8, n_batch=64, type_k=cfg.type_k,
                               type_v=cfg.type_v, n_threads=threads, n_recent=cfg.recent)
        out: list[list[int]] = [[] for _ in prompts]
        for i, tok in generate_batch(m, prompts, n_tok, SamplerParams(temperature=0, repeat_penalty=1.0), params,
                                     stop_at_eos=False):
            out[i].append(tok)
        return out
    r = L.runner(cfg, max(map(len, prompts)) + n_tok + 8, threads, n_batch=512)
    out = []
    for p in prompts:
        r.rewind(0)
        out.append(L.greedy(r, r.feed(p, "last"), n_tok))
    r.close()
    return out


def table(saved: dict, stops: set[int]) -> str:
    toks = saved["tokens"]
    lines = ["| cache | reference | identical prefix, mean tokens | positions identical | "
             "continuations identical | shortest prefix |", "|---|---|---|---|---|---|"]
    ref_of = {n: L.BASE_OF[L.CONFIGS[n].engine] for n in L.CONFIGS}
    pairs = [(n, ref_of[n]) for n in L.CONFIGS if n in toks and n != ref_of[n]]
    if "f16" in toks and "llama-f16" in toks:
        pairs.append(("llama-f16", "f16"))
    for name, ref in pairs:
        if ref not in toks:
            continue
        s = stats(toks[ref], toks[name], stops)
        lines.append(f"| {L.CONFIGS[name].label} | {L.CONFIGS[ref].label} | {s['prefix_mean']:.1f} | "
                     f"{s['share_same']:.3f} | {s['identical']}/{s['prompts']} | {s['prefix_min']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen", choices=sorted(L.MODELS),
                   help="the fixture and shipped profiles to generate with")
    p.add_argument("--configs", default="all")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    L.use_model(args.model)
    from kvconvert.runtime.engine import Model
    from kvconvert.serving.chat import ChatFormat

    fmt = ChatFormat.for_model(Model(L.model_file("base")))
    prompts = [fmt.tokenize_chat([{"role": "user", "content": x}]) for x in PROMPTS]
    path = L.work_dir() / (RESULTS if args.model == "qwen" else f"agreement-{L.slug()}.json")
    saved = json.loads(path.read_text()) if path.exists() else {"tokens": {}, "meta": {}}
    if saved.get("prompts") not in (None, prompts) or saved.get("n_tokens") not in (None, args.tokens):
        saved = {"tokens": {}, "meta": {}}
    saved.update(prompts=prompts, n_tokens=args.tokens)
    if not args.table:
        for cfg in L.parse_configs(args.configs):
            t0 = time.time()
            saved["tokens"][cfg.name] = generate(cfg, prompts, args.tokens, args.threads)
            saved["meta"][cfg.name] = {"secs": time.time() - t0, "date": time.strftime("%Y-%m-%d %H:%M"),
                                       "threads": args.threads}
            path.write_text(json.dumps(saved))
            print(f"{cfg.name}: {time.time() - t0:.0f}s", flush=True)
    print(table(saved, fmt.stop_ids))
    if "f16" in saved["tokens"]:
        m = fmt.model
        for i in (0, 3, 12):
            print(f"\n[f16, prompt {i}] {m.detokenize(saved['tokens']['f16'][i])[:300]!r}")


if __name__ == "__main__":
    main()
