"""Does the default calibration generalise? (issue 13) A benchmark, not a test.

    python bench/calibration.py [--model qwen|smollm2] [--policy balanced] [--chunks 8] [--tokens 4096]

Calibrates the model (an f16 Hugging Face import of the fixture) three ways —
on its own generated text (the data-free default of `kvconvert convert`), on
the Austen calibration part, and on Python source from one set of standard-
library modules — searches the policy on each, writes each profile's file,
and measures every file with kvconvert's runtime on two held-out texts of
different kinds: the Austen evaluation part (prose) and Python source from
*other* standard-library modules (code). KLD and top-1 are against the
f16-cache run of the same weights; K+V compressed, and K alone (V f16).
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from kvconvert.testdata import fixtures
from kvconvert.conversion.calibrate import calibrate
from kvconvert.conversion.writer import convert as write_gguf
from kvconvert.runtime.evaluate import evaluate
from kvconvert.conversion.import_gguf import import_gguf
from kvconvert.base.paths import cache_dir
from kvconvert.conversion.pipeline import DEFAULT_TOKENS
from kvconvert.conversion.search import search

MODELS = {"qwen": ("qwen2.5-coder-0.5b", fixtures.qwen25_coder_gguf),
          "smollm2": ("smollm2-135m", fixtures.smollm2_gguf)}
# Disjoint sets of standard-library modules: calibration code vs held-out evaluation code.
CODE_CALIB = ("argparse.py", "dataclasses.py", "typing.py", "functools.py", "pathlib.py")
CODE_EVAL = ("textwrap.py", "difflib.py", "heapq.py", "fractions.py", "statistics.py", "shlex.py")


def stdlib_text(names: tuple[str, ...]) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join((root / n).read_text(encoding="utf-8") for n in names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen", choices=list(MODELS))
    p.add_argument("--policy", default="balanced")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="calibration tokens")
    args = p.parse_args()
    slug, fetch = MODELS[args.model]
    work = cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    hf = work / f"{slug}-hf"
    if not (hf / "config.json").exists():
        import_gguf(fetch(), hf, dtype="f16", overwrite=True)
    base = work / f"{slug}.f16.gguf"
    if not base.exists():
        write_gguf(hf, base, weights="f16")
    evals = {"Austen eval (prose)": fixtures.austen_text("eval"), "stdlib code": stdlib_text(CODE_EVAL)}
    calibs = {"data-free (default)": None, "Austen calib": fixtures.austen_text("calib"),
              "stdlib code calib": stdlib_text(CODE_CALIB)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logp = {}
        for name, text in evals.items():
            logp[name] = Path(tmp) / f"{len(logp)}.logp"
            evaluate(base, text, text_name=name, n_ctx=args.ctx, n_chunks=args.chunks, type_k="f16", type_v="f16",
                     save_logits=logp[name])
        for cname, ctext in calibs.items():
            t0 = time.time()
            cal = calibrate(hf, text=ctext, tokens=args.tokens, n_ctx=args.ctx)
            t_cal = time.time() - t0
            t0 = time.time()
            prof = search(cal, policy=args.policy, check=False).profile
            t_search = time.time() - t0
            out = Path(tmp) / "p.gguf"
            write_gguf(hf, out, weights="f16", profile=prof)
            kb, vb = prof.budget_bits()
            cells = []
            for ename, etext in evals.items():
                for v in ("auto", "f16"):
                    r = evaluate(out, etext, text_name=ename, n_ctx=args.ctx, n_chunks=args.chunks, type_v=v,
                                 kld_base=logp[ename])
                    cells.append(f"{r.kld:.5f} ({r.top1:.3f})")
            rows.append(f"| {cname} | {cal.n_tokens} | {kb:.2f} / {vb:.2f} | " + " | ".join(cells) +
                        f" | {t_cal:.0f} + {t_search:.0f} s |")
            print(rows[-1], flush=True)
    print(f"\n{slug} (f16 weights), policy {args.policy}, {args.chunks} chunks × {args.ctx} tokens per evaluation "
          f"text; KLD vs the f16 cache (top-1 in parentheses); Python {sys.version.split()[0]} standard library\n")
    cols = [f"{e}: {kv}" for e in evals for kv in ("K+V", "K only")]
    print("| calibrated on | tokens | K / V bpv | " + " | ".join(cols) + " | calibrate + search |")
    print("|---" * (4 + len(cols)) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
