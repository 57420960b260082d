"""The README's results table (issue 5): calibrate on the Austen calibration
part, search the three shipped policies, and measure every cache config with
kvconvert's runtime on the held-out Austen evaluation part — plus llama.cpp's
own q8_0/q4_0 caches on the same file and text. A benchmark, not a test.

    python bench/results.py [--model qwen|smollm2|FILE] [--chunks 8] [--tokens 16384] [--save-profiles]
                            [--policies-only]

All files are f16 conversions of the fixture (the transforms are exact, so the
profile files compute the same function as the base file); KLD and top-1 are
against the f16-cache run of the base file (llama.cpp rows: against llama.cpp's
own f16-cache run). --save-profiles writes the calibrated profiles, with these
measurements, to profiles/<model>-<policy>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from kvconvert import convert
from kvconvert.testdata import fixtures
from kvconvert.runtime import metrics
from kvconvert.conversion.calibrate import Calibration, calibrate
from kvconvert.runtime.evaluate import evaluate
from kvconvert.kvcache.kvmeta import DEFAULT_SINK, sink_bits
from kvconvert.kvcache.types import STANDARD_BITS
from kvconvert.base.paths import cache_dir
from kvconvert.runtime.engine import Model
from kvconvert.conversion.search import search

POLICIES = ("long-context", "balanced", "max-quality")
MODELS = {"qwen": ("qwen2.5-coder-0.5b", fixtures.qwen25_coder_gguf),
          "smollm2": ("smollm2-135m", fixtures.smollm2_gguf)}


LONG = 32768  # the second context bits and memory are stated at


def row(label: str, bits: tuple[float, float], bits_long: tuple[float, float], head_values: int, ppl: float, kld,
        top1, secs: float) -> str:
    """A table row: K/V bits per value at the evaluation context and at LONG tokens (f16 sink and
    recent-window rows spread over each), and the KV cache's MiB at LONG tokens."""
    k = "0" if kld is None else f"{kld:.4f}"
    t = "1" if top1 is None else f"{top1:.3f}"
    mib = head_values * sum(bits_long) / 8 * LONG / 2**20
    return (f"| {label} | {bits[0]:.2f} / {bits[1]:.2f} | {bits_long[0]:.2f} / {bits_long[1]:.2f} | {mib:.0f} | "
            f"{ppl:.3f} | {k} | {t} |  <!-- {secs:.0f}s -->")


def llama_cpp_rows(path: Path, chunks, n_ctx: int, configs, head_values: int) -> list[str]:
    """PPL, KLD and top-1 of llama.cpp's caches vs its own f16-cache run on the same token chunks."""
    from kvconvert.kvcache.llama_cpp_peer import load, quiet

    from kvconvert.kvcache.types import STANDARD_BITS as bits

    out, base = [], None
    first = metrics.first_scored(n_ctx)
    for k, v in [("f16", "f16")] + list(configs):
        t0 = time.time()
        llm = load(path, n_ctx, type_k=k, type_v=v, flash_attn=True)
        nll, lps = [], []
        for c in chunks:
            llm.reset()
            with quiet():
                llm.eval([int(t) for t in c])
            lg = np.array(llm.scores[: len(c)], dtype=np.float32)
            nll.append(metrics.chunk_nll(lg, c))
            lps.append(lg[first:-1])
        s = metrics.score(np.concatenate(nll))
        if base is None:
            base = [metrics.log_probs(x) for x in lps]
            kld, top1 = None, None
        else:
            kl = np.concatenate([metrics.kld(b.astype(np.float64), x) for b, x in zip(base, lps)])
            kld = float(kl.mean())
            top1 = float(np.mean(np.concatenate([b.argmax(-1) == x.argmax(-1) for b, x in zip(base, lps)])))
        b = (bits[k], bits[v])
        out.append(row(f"llama.cpp {k} K / {v} V", b, b, head_values, s.ppl, kld, top1, time.time() - t0))
        del llm
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen", help="qwen, smollm2 or a GGUF/HF path")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--tokens", type=int, default=16384, help="calibration tokens (Austen calibration part)")
    p.add_argument("--calibration", help="reuse this calibration file (default: calibrate, cached)")
    p.add_argument("--save-profiles", action="store_true")
    p.add_argument("--no-llama-cpp", action="store_true")
    p.add_argument("--policies-only", action="store_true",
                   help="only the f16 reference and the policies' rows (re-make the shipped profiles after a "
                        "change to the search or the codes without re-measuring the fixed baselines)")
    args = p.parse_args()
    slug, path = (MODELS[args.model][0], MODELS[args.model][1]()) if args.model in MODELS else \
        (Path(args.model).stem, Path(args.model))
    work = cache_dir() / "results"
    work.mkdir(parents=True, exist_ok=True)
    base_file = work / f"{slug}.f16.gguf"
    if not base_file.exists():
        convert(path, base_file, weights="f16")
    cal = Calibration.load(args.calibration) if args.calibration else \
        calibrate(path, text=fixtures.austen_text("calib"), tokens=args.tokens, n_ctx=args.ctx)
    text = fixtures.austen_text("eval")
    common = dict(text_name="austen-eval", n_ctx=args.ctx, n_chunks=args.chunks)
    base = Model(base_file)
    a = base.args
    head_values = a.num_hidden_layers * a.num_key_value_heads * a.head_dim
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        logp = Path(tmp) / "base.logp"
        t0 = time.time()
        r0 = evaluate(base, text, type_k="f16", type_v="f16", save_logits=logp, **common)
        lines.append(row("f16 K / f16 V", (16, 16), (16, 16), head_values, r0.ppl, None, None, time.time() - t0))

        def measure(label, model, k="auto", v="auto", n_sink=None, n_recent=None):
            t0 = time.time()
            r = evaluate(model, text, type_k=k, type_v=v, kld_base=logp, n_sink=n_sink, n_recent=n_recent, **common)
            return r, time.time() - t0

        def tq_bits(n_ctx: int, n_sink: int) -> float:  # uniform tq4 with n_sink f16 positions over n_ctx
            return 4.25 + sink_bits(n_sink, n_ctx)

        baselines = () if args.policies_only else (("q8_0", "f16", None), ("q8_0", "q8_0", None), ("q4_0", "q4_0", None),
                                                   ("tq4", "f16", 0), ("tq4", "f16", None), ("tq4", "tq4", None))
        for k, v, sink in baselines:
            r, secs = measure(f"{k}/{v}", base, k, v, n_sink=sink)
            n = DEFAULT_SINK if sink is None else sink
            at = lambda ctx: tuple(tq_bits(ctx, n) if t == "tq4" else STANDARD_BITS[t] for t in (k, v))  # noqa: E731
            note = {0: " (uniform TurboQuant, centered, no sink)", None: " (uniform TurboQuant, centered)"}[sink]
            lines.append(row(f"{k} K / {v} V" + (note if k == "tq4" else ""), at(args.ctx), at(LONG), head_values,
                             r.ppl, r.kld, r.top1, secs))
            print(lines[-1], flush=True)
        for pol in POLICIES:
            res = search(cal, policy=pol, check=False)
            prof = res.profile
            out = Path(tmp) / f"{pol}.gguf"
            convert(path, out, weights="f16", profile=prof)
            here, long = prof.bits(args.ctx), prof.bits(LONG)
            m = Model(out)
            r, secs = measure(pol, m)
            w = f" (recent window {prof.recent})" if prof.recent else ""
            lines.append(row(f"kvconvert {pol}{w}", here, long, head_values, r.ppl, r.kld, r.top1, secs))
            print(lines[-1], flush=True)
            rk, secs = measure(pol, m, v="f16")
            lines.append(row(f"kvconvert {pol} K / f16 V{w}", (here[0], 16), (long[0], 16), head_values, rk.ppl,
                             rk.kld, rk.top1, secs))
            print(lines[-1], flush=True)
            if prof.recent:  # the same codes without the window: what the window buys
                r0w, secs = measure(pol, m, n_recent=0)
                codes = replace(prof, recent=0)
                lines.append(row(f"kvconvert {pol}, no recent window", codes.bits(args.ctx), codes.bits(LONG),
                                 head_values, r0w.ppl, r0w.kld, r0w.top1, secs))
                print(lines[-1], flush=True)
            prof.measured.update(kld=r.kld, kld_err=r.kld_err, top1=r.top1, ppl=r.ppl, ppl_err=r.ppl_err,
                                 ppl_f16=r0.ppl, kld_k_only=rk.kld, text="austen-eval (held out)",
                                 text_sha256=r.text_sha256, n_ctx=args.ctx, chunks=r.n_chunks, weights="f16")
            if args.save_profiles:
                dest = Path(__file__).resolve().parents[1] / "profiles" / f"{slug}-{pol}.json"
                prof.name = f"{slug}-{pol}"
                # local paths mean nothing to others: name the fixture file and text instead
                prof.provenance.update(calibration=None, model=Path(path).name, text="austen-calib")
                prof.save(dest)
        if not (args.no_llama_cpp or args.policies_only):  # the same token chunks as kvconvert's evaluate (identical tokenizers)
            spec = base.source.tokenizer_spec()
            bos = spec.bos_id if spec.effective_add_bos() else None
            chunks = metrics.chunks(base.tokenize(text, add_bos=False), args.ctx, args.chunks, bos=bos)
            lines += llama_cpp_rows(base_file, chunks, args.ctx,
                                    [("q8_0", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")], head_values)
    print(f"\n{slug} (f16 weights), Austen eval (held out), {r0.n_chunks} chunks × {args.ctx} tokens; "
          f"calibration: {cal.n_tokens} tokens of the Austen calibration part\n")
    print(f"| cache | K / V bpv @{args.ctx} | K / V bpv @32k | KV MiB @32k | PPL | KLD vs f16 | top-1 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    (work / f"{slug}-results{'-policies' if args.policies_only else ''}.json").write_text(json.dumps(lines, indent=1))


if __name__ == "__main__":
    main()
