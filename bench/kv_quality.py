"""KV-cache quality table: perplexity, KLD and top-1 agreement against the f16
cache, for standard and TurboQuant cache types, on held-out Austen text
(evaluation part), with kvconvert's runtime. A benchmark, not a test.

    python bench/kv_quality.py [--model FILE] [--chunks 4] [--ctx 512] [CONFIG ...]

CONFIG is K/V, e.g. q8_0/f16 tq4/tq4 "tq:split=32,hi=8,lo=3,qjl=hi/f16".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kvconvert.testdata import fixtures
from kvconvert.runtime.evaluate import evaluate
from kvconvert.runtime.engine import Model

DEFAULT = ["q8_0/f16", "q4_0/f16", "tq3/f16", "tq4/f16", "tq5/f16", "tq4:qjl=lo/f16", "tq4/tq4", "tq4/q8_0",
           "tq5/tq4"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="GGUF (default: the Qwen2.5-Coder-0.5B fixture)")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("configs", nargs="*", default=DEFAULT)
    args = p.parse_args()
    path = Path(args.model) if args.model else fixtures.qwen25_coder_gguf()
    m, text = Model(path), fixtures.austen_text("eval")
    common = dict(text_name="austen-eval", n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.logp"
        r0 = evaluate(m, text, type_k="f16", type_v="f16", save_logits=base, **common)  # the base is f16, whatever the file says
        head = m.args.num_hidden_layers * m.args.num_key_value_heads * m.args.head_dim
        print(f"\n{path.name}, Austen eval, {r0.n_chunks} chunks x {args.ctx} tokens; KLD/top-1 vs the f16 cache\n")
        print("| K | V | K+V bits/value | KV MiB @32k | PPL | KLD | top-1 |")
        print("|---|---|---|---|---|---|---|")
        print(f"| f16 | f16 | 16.00 | {r0.kv_bytes_per_token * 32768 / 2**20:.0f} | {r0.ppl:.3f} | 0 | 1 |", flush=True)
        for cfg in args.configs:
            k, v = cfg.rsplit("/", 1)
            t0 = time.time()
            r = evaluate(m, text, type_k=k, type_v=v, kld_base=base, **common)
            bpv = r.kv_bytes_per_token * 8 / (2 * head)
            print(f"| {k} | {v} | {bpv:.2f} | {r.kv_bytes_per_token * 32768 / 2**20:.0f} | {r.ppl:.3f} | "
                  f"{r.kld:.4f} ± {r.kld_err:.4f} | {r.top1:.3f} |  <!-- {time.time() - t0:.0f}s -->", flush=True)


if __name__ == "__main__":
    main()
