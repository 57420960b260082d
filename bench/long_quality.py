"""KV cache quality deep in a long context (issue 19 item 3): PPL, KLD, 99.9th-percentile per-token
KLD and top-1 agreement on the last N tokens of long windows of the held-out Austen evaluation text.
A benchmark, not a test.

    python bench/long_quality.py --lengths 8192,16384 --configs f16,balanced,llama-f16 [--scored 1024]
    python bench/long_quality.py --model smollm2 --lengths 4096,8192 --configs f16,balanced+w32
    python bench/long_quality.py --table          # print the table of every result so far

Windows are nested prefixes of one token stream: window L is tokens [start, start+L) of the
evaluation part (Pride & Prejudice + Persuasion, tokenized whole; start 0 = the beginning of
Pride & Prejudice), so one pass to the longest length scores every shorter window on the way.
Only the last N tokens of each window are scored: the logits at window positions
[L-N-1, L-1) predict tokens L-N .. L-1 (N predictions), so memory stays at one 512-token batch
of logits, and the scored tokens sit 7k/15k/31k deep in context.

KLD and top-1 are against the same engine's f16-cache run of the same window (kvconvert's f16 for
kvconvert configs, llama.cpp's f16 for llama.cpp configs); the reference log-probs of the scored
tokens are cached on disk (kvconvert's KVCLOGP1 base-logits format, see runtime/evaluate.py;
~/.cache/kvconvert/bench19/base-*.logp) and made first when missing. Results are appended to
~/.cache/kvconvert/bench19/long_quality.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

import longctx as L  # noqa: E402

VERSION = 1  # of the cached base log-probs; bump when what they mean changes
RESULTS = "long_quality.jsonl"


def scored_rows(lengths: list[int], n: int) -> dict[int, tuple[int, int]]:
    """Per window length: the logits rows [a, b) to score (rows a..b-1 predict tokens a+1..b)."""
    out = {}
    for length in lengths:
        if not 0 < n < length:
            raise ValueError(f"cannot score {n} tokens of a {length}-token window")
        out[length] = (length - n - 1, length - 1)
    return out


def segments(total: int, rows: dict[int, tuple[int, int]], step: int = 512) -> list[tuple[int, int, bool]]:
    """Feed slices (start, end, want logits) covering [0, total): at most ``step`` tokens each,
    split at multiples of step and at every scored range's ends, so a slice is wholly in or out."""
    cuts = set(range(0, total, step)) | {total}
    for a, b in rows.values():
        cuts |= {min(a, total), min(b, total)}
    cuts = sorted(cuts)
    out = []
    for s, e in zip(cuts, cuts[1:]):
        want = any(a <= s and e <= b for a, b in rows.values())
        out.append((s, e, want))
    return out


def p999(x: np.ndarray) -> float:
    return float(np.quantile(np.asarray(x, dtype=np.float64), 0.999))


def window_tokens(model, start: int, length: int) -> np.ndarray:
    from kvconvert.runtime import metrics
    from kvconvert.testdata import fixtures

    toks = model.tokenize(fixtures.austen_text("eval"), add_bos=False)
    spec = model.source.tokenizer_spec()
    bos = spec.bos_id if spec.effective_add_bos() else None
    return metrics.chunks(toks[start:start + length], length, 1, bos=bos)[0]


def base_path(engine: str, length: int, n: int, start: int, digest: str) -> Path:
    return L.work_dir() / f"base-v{VERSION}-{engine}-L{length}-N{n}-s{start}-{digest[:12]}.logp"


def run_config(cfg: L.Config, toks: np.ndarray, lengths: list[int], n: int, start: int, threads: int,
               on_result=None, wait: bool = False) -> list[dict]:
    from kvconvert.runtime import metrics
    from kvconvert.runtime.evaluate import _write_base, read_base

    rows = scored_rows(lengths, n)
    total = max(lengths)
    is_base = L.BASE_OF[cfg.engine] == cfg.name
    digests = {ln: hashlib.sha256(np.asarray(toks[:ln], np.int64).tobytes()).hexdigest() for ln in lengths}
    bases = {}
    if not is_base:
        for ln in lengths:
            p = base_path(cfg.engine, ln, n, start, digests[ln])
            while wait and not p.exists():
                time.sleep(30)
            if not p.exists():
                raise SystemExit(f"{p} is missing: run {L.BASE_OF[cfg.engine]} first")
            bases[ln] = read_base(p)[1]
    acc = {ln: {"nll": [], "kld": [], "top1": [], "saved": []} for ln in lengths}
    t0 = time.time()
    r = L.runner(cfg, total, threads)
    out = []

    def finish(ln: int) -> dict:
        """A window's result (and, for the reference config, its cached log-probs) as soon as it is done."""
        d = acc.pop(ln)
        nll = np.concatenate(d["nll"])
        s = metrics.score(nll)
        rec = dict(config=cfg.name, label=cfg.label, engine=cfg.engine, model=L.slug(), length=ln,
                   scored=int(nll.size), start=start,
                   text="austen-eval (Pride & Prejudice + Persuasion)", ppl=s.ppl, ppl_err=s.ppl_err,
                   kv_bytes_per_token=r.kv_bytes_per_token, secs=time.time() - t0, threads=threads, version=VERSION)
        if is_base:
            header = {"n_ctx": ln, "n_chunks": 1, "text_sha256": digests[ln], "n_vocab": r.n_vocab,
                      "n_positions": int(nll.size), "model": L.model_file(cfg.file).name, "engine": cfg.engine,
                      "type_k": cfg.type_k, "type_v": cfg.type_v, "start": start, "scored": n, "version": VERSION}
            _write_base(base_path(cfg.engine, ln, n, start, digests[ln]), header, d["saved"])
            rec.update(kld=0.0, kld_p999=0.0, top1=1.0)
        else:
            k = np.concatenate(d["kld"])
            rec.update(kld=float(k.mean()), kld_err=float(k.std(ddof=1) / np.sqrt(k.size)), kld_p999=p999(k),
                       kld_max=float(k.max()), top1=float(np.concatenate(d["top1"]).mean()))
        return rec

    for s, e, want in segments(total, rows):
        lg = r.feed(toks[s:e], "all" if want else "none")
        if want:
            lp = metrics.log_probs(lg)
            del lg
            for ln, (a, b) in rows.items():
                if not (a <= s and e <= b):
                    continue
                d = acc[ln]
                d["nll"].append(-lp[np.arange(e - s), toks[s + 1:e + 1]])
                if is_base:
                    d["saved"].append(lp.astype(np.float16))
                else:
                    ref = np.asarray(bases[ln][s - a:e - a], dtype=np.float64)
                    d["kld"].append((np.exp(ref) * (ref - lp)).sum(-1))
                    d["top1"].append(ref.argmax(-1) == lp.argmax(-1))
            del lp
        for ln, (a, b) in rows.items():
            if ln in acc and e >= b:
                out.append(finish(ln))
                if on_result:
                    on_result(out[-1])
        print(f"  {cfg.name}: {e}/{total} tokens, {e / (time.time() - t0):.1f} tok/s", flush=True)
    return out


def table(recs: list[dict]) -> str:
    """The latest result per (config, window, scored, start) of the current model (records from before
    --model existed are Qwen's)."""
    latest = {}
    for r in recs:
        if L.is_current(r):
            latest[(r["config"], r["length"], r["scored"], r["start"])] = r
    order = list(L.CONFIGS)
    lines = ["| cache | window (tokens) | scored | PPL | KLD vs same engine's f16 | KLD p99.9 | top-1 |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(latest, key=lambda k: (k[1], order.index(k[0]) if k[0] in order else 99)):
        r = latest[key]
        lines.append(f"| {r['label']} | {r['length']} | last {r['scored']} | {r['ppl']:.3f} ± {r['ppl_err']:.3f} | "
                     f"{r['kld']:.4f} | {r['kld_p999']:.3f} | {r['top1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen", choices=sorted(L.MODELS),
                   help="the fixture and shipped profiles to measure (SmolLM2-135M's context is 8192)")
    p.add_argument("--lengths", default="8192,16384", help="window lengths (nested prefixes of one stream)")
    p.add_argument("--scored", type=int, default=1024, help="score the last N tokens of each window")
    p.add_argument("--start", type=int, default=0, help="first token of the windows in the evaluation part")
    p.add_argument("--configs", default="all", help=f"comma list of {', '.join(L.CONFIGS)} "
                   "(all: every one but the one-question studies: QJL, larger windows, more sinks)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="only print the table of the saved results")
    p.add_argument("--wait-base", action="store_true", help="wait for another run to write the f16 reference")
    args = p.parse_args()
    L.use_model(args.model)
    res = L.work_dir() / RESULTS
    if args.table:
        print(table(L.read_jsonl(res)))
        return
    from kvconvert.runtime.engine import Model

    lengths = sorted(int(x) for x in args.lengths.split(","))
    toks = window_tokens(Model(L.model_file("base")), args.start, max(lengths))
    if toks.size < max(lengths):
        raise SystemExit(f"the evaluation text has only {toks.size} tokens from {args.start}")
    for cfg in L.parse_configs(args.configs):
        print(f"{cfg.name}: windows {lengths}, last {args.scored} scored", flush=True)
        def save(rec: dict) -> None:
            L.append_jsonl(res, rec)
            print(f"  {rec['label']} @ {rec['length']}: PPL {rec['ppl']:.3f} KLD {rec['kld']:.4f} "
                  f"p99.9 {rec['kld_p999']:.3f} top-1 {rec['top1']:.3f} ({rec['secs']:.0f}s)", flush=True)

        run_config(cfg, toks, lengths, args.scored, args.start, args.threads, on_result=save, wait=args.wait_base)
    print(table(L.read_jsonl(res)))


if __name__ == "__main__":
    main()
