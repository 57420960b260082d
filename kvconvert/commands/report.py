"""Human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from ..conversion.writer import ConvertResult
from ..kvcache import kbasis
from ..kvcache.kvmeta import RECENT_SLACK
from ..models.arch import cache_rows
from ..models.source import ModelSource, load_model


FILE_WIDTH = 128  # columns of tables written to a file or a pipe


def make_console() -> Console:
    """Rich on a terminal; to a file or a pipe, a layout at least FILE_WIDTH wide whatever an
    inherited COLUMNS says (often 80), so that a table's rows do not wrap in a log."""
    import os
    import sys

    if sys.stdout.isatty():
        return Console()
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    return Console(width=max(FILE_WIDTH, columns))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def print_convert_result(r: ConvertResult, console: Console | None = None) -> None:
    console = console or make_console()
    t = Table(title=f"wrote {r.output}", show_header=False)
    t.add_row("source", r.source)
    t.add_row("weights", r.weights)
    t.add_row("tensors", f"{r.n_tensors} (" + ", ".join(f"{k} {v}" for k, v in sorted(r.types.items())) + ")")
    t.add_row("parameters", f"{r.n_params / 1e6:.1f}M")
    t.add_row("file size", _size(r.file_bytes))
    console.print(t)


def print_model_info(m: ModelSource, console: Console | None = None) -> None:
    console = console or make_console()
    a = m.args
    t = Table(title=str(m.path), show_header=False)
    t.add_row("format", m.format)
    t.add_row("architecture", f"{a.architecture} (GGUF arch {m.arch.name})")
    t.add_row("layers", str(a.num_hidden_layers))
    t.add_row("hidden / FFN", f"{a.hidden_size} / {a.intermediate_size}")
    t.add_row("heads / KV heads / head dim", f"{a.num_attention_heads} / {a.num_key_value_heads} / {a.head_dim}")
    t.add_row("vocab", str(a.vocab_size))
    t.add_row("RoPE θ", f"{a.rope_theta:g}" + (f" ({a.rope_scaling.rope_type})" if a.rope_scaling else ""))
    t.add_row("tied embeddings", str(a.tie_word_embeddings))
    t.add_row("parameters", f"{sum(_numel(s.shape) for s in m.specs) / 1e6:.1f}M")
    if m.format == "gguf":
        types = Counter(tt.tensor_type.name for tt in m.weights.reader.tensors)  # type: ignore[attr-defined]
        t.add_row("tensor types", ", ".join(f"{k} {v}" for k, v in sorted(types.items())))
    console.print(t)


INFO_CTX = 32768  # the context `info` states bits and KV MiB for
SCALE_RULES = {"ls": "ls (least-squares)", "proj": "proj (‖y‖²/⟨y, c⟩: inner products unshrunk)",
               "norm": "norm (the group's norm)"}  # turboquant.SCALES, for people


def print_patch_info(m: ModelSource, console: Console | None = None) -> None:
    """The KV patch a GGUF carries (kvconvert.* metadata): layout, what the weights hold, sinks,
    the transforms and where each is applied, and a per-layer K/V table with the bpv and KV MiB
    at a 32k context (sink positions spread over it, as the runtime stores them)."""
    from ..formats.gguf_io import field_value
    from ..formats.gguf_keys import Keys
    from ..kvcache.kvmeta import DEFAULT_SINK, CacheMeta, exact_bits
    from ..kvcache.types import STANDARD_BITS

    console = console or make_console()
    reader = m.weights.reader  # type: ignore[attr-defined]
    meta = CacheMeta.from_gguf(reader, m.args, str(m.path))
    if meta is None:
        made = field_value(reader, Keys.KVConvert.VERSION)
        console.print("KV patch: none" + (f" (written by kvconvert {made} as a plain conversion)" if made else
                                          " (not converted by kvconvert): the runtime uses f16 caches"))
        return
    a = m.args
    L, Hk, d = a.num_hidden_layers, a.num_key_value_heads, a.head_dim
    kept = field_value(reader, Keys.KVConvert.WEIGHTS) == "keep"
    n_sink = meta.n_sink if meta.n_sink is not None else DEFAULT_SINK
    n_recent = meta.n_recent or 0
    smooth_layers = meta.k_smooth is not None and int((abs(meta.k_smooth - 1) > 1e-6).any(axis=(1, 2)).sum())
    t = Table(title="KV patch (kvconvert.* metadata)", show_header=False)
    t.add_row("layout", meta.layout + (" (stock architecture: llama.cpp runs it, ignoring the patch)"
                                       if meta.layout == "portable" else " (renamed architecture: kvconvert only)"))
    t.add_row("weights", "kept byte for byte from the source GGUF; every transform applied by the runtime" if kept
              else "re-encoded by kvconvert" + ("; transforms folded into them" if meta.layout == "folded" else ""))
    t.add_row("K→Q smoothing", f"{smooth_layers} of {L} layers, applied by the runtime (k_cache.smooth)"
              if meta.k_smooth is not None else "in the weights" if not kept else "none")
    t.add_row("K centering", "none" if meta.k_mean is None else
              ("mean folded into b_k" if meta.k_mean_folded else "calibrated mean, runtime") +
              (f", {meta.center_pairs} pairs" if meta.center_pairs else ", all pairs"))
    t.add_row("K channel order", "calibrated permutation after RoPE" if meta.k_perm is not None else
              "pairs permuted in the weights (RoPE θ table per layer)" if meta.rope_pair_src is not None else "as is")
    if meta.k_basis is not None:
        nb = sum(kbasis.used(meta.k_basis, L))
        follows = (f"; follows RoPE in blocks of {meta.k_basis_block} positions (each block coded as if it started at "
                   "position 0)" if meta.k_basis_block else "")
        t.add_row("K basis", f"calibrated (keys weighted by the queries) on {nb} of {L} layers: K coded as k·A, "
                  f"queries scored as q·A⁻ᵀ{follows} (CPU backend)")
    t.add_row("V centering", "calibrated mean, runtime" if meta.v_mean is not None else
              "folded (b_v, b_o)" if meta.layout == "folded" else "none")
    t.add_row("attention sinks", f"first {n_sink} position{'s' if n_sink != 1 else ''} kept in f16 "
              "(TurboQuant caches)" if n_sink else "none")
    t.add_row("recent window", f"the last {n_recent} positions before each query used exactly (f16 ring, "
              "TurboQuant caches, CPU backend)" if n_recent else "none")
    scales = [(side, cfgs[0].scale) for side, cfgs in (("K", meta.k_configs), ("V", meta.v_configs)) if cfgs]
    if scales:
        t.add_row("group scale rule", "; ".join(f"{side} {SCALE_RULES[mode]}" for side, mode in scales))
        def codes(cfgs) -> str:
            n = sum(c.trellis > 0 for c in cfgs)
            mixed = sum(c.trellis > 0 and any(not g.trellis for g in c.groups()) for c in cfgs)
            if not n:
                return "Lloyd–Max"
            keep = f", {mixed} of them with a 7–8-bit outlier group on Lloyd–Max codes" if mixed else ""
            rest = "the rest Lloyd–Max; " if n < L else ""
            return f"bitshift trellis on {n} of {L} layers{keep} ({rest}CPU backend)"
        t.add_row("codes", "; ".join(f"{side} {codes(cfgs)}" for side, cfgs in (("K", meta.k_configs),
                                                                               ("V", meta.v_configs)) if cfgs))
    t.add_row("rotation seed", f"{meta.seed:#x}")
    console.print(t)

    def side(kind: str, cfgs, on_basis=(False,) * L):
        if cfgs is None:
            return [(kind, "", "", "", "", STANDARD_BITS[kind], "")] * L
        return [(("tq+tc" if c.trellis else "tq") + ("+kb" if on_basis[i] else ""), str(c.n_hi) if c.n_hi else "—",
                 f"{c.hi_bits}" if c.n_hi else "—", str(c.lo_bits),
                 "/".join(g for g, on in (("hi", c.qjl_hi and c.n_hi), ("lo", c.qjl_lo)) if on) or "—",
                 c.bits_per_value(), "fp16" if c.scale_base is None else "8-bit") for i, c in enumerate(cfgs)]

    ks, vs = side(meta.k_type, meta.k_configs, kbasis.used(meta.k_basis, L)), side(meta.v_type, meta.v_configs)
    per = Table(title="per layer (split: channels in the hi group; hi/lo: bits of each group; scale: each "
                      "group's, fp16 or one byte on a log grid; tq+tc: trellis codes; +kb: K in the calibrated basis)")
    for col in ("layer", "K type", "K split", "K hi", "K lo", "K QJL", "K scale", "K bpv", "V type", "V split",
                "V hi", "V lo", "V scale", "V bpv"):
        per.add_column(col, justify="right", no_wrap=col.endswith("type"), min_width=8 if col == "K type" else None)
    for l in range(L):
        k, v = ks[l], vs[l]
        per.add_row(str(l), k[0], k[1], k[2], k[3], k[4], k[6], f"{k[5]:.2f}", v[0], v[1], v[2], v[3], v[6],
                    f"{v[5]:.2f}")
    console.print(per)

    def sink(cfgs) -> float:  # the f16 sink rows and the recent window's rows, spread over the context
        return exact_bits(n_sink, n_recent, INFO_CTX) if cfgs is not None else 0.0

    kb = sum(k[5] for k in ks) / L + sink(meta.k_configs)
    vb = sum(v[5] for v in vs) / L + sink(meta.v_configs)
    rows = cache_rows(m.args, INFO_CTX)  # sliding-window layers hold only their window
    sinks = sink(meta.k_configs) + sink(meta.v_configs)
    mib = sum(r * Hk * d * (k[5] + v[5] + sinks) for r, k, v in zip(rows, ks, vs)) / 8 / 2**20
    f16 = sum(rows) * Hk * d * 32 / 8 / 2**20
    counted = "group scales, sinks" + (" and the recent window" if n_recent else "")
    console.print(f"K {kb:.2f} / V {vb:.2f} bits per value at a {INFO_CTX // 1024}k context ({counted} "
                  f"counted); KV cache at {INFO_CTX // 1024}k: {mib:.1f} MiB (f16: {f16:.1f} MiB, "
                  f"{f16 / mib:.1f}× smaller)")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def print_calibration(cal, console: Console | None = None) -> None:
    """Per-layer summary of a calibration: where K's energy is and how concentrated."""
    console = console or make_console()
    t = Table(title=f"calibration of {cal.model}: {cal.n_tokens} tokens ({cal.text_source}), chunks of {cal.n_ctx}")
    for col in ("layer", "K energy in mean", "K top-d/4 share (centered)", "V top-d/4 share"):
        t.add_column(col, justify="right")
    for s in cal.layer_summary():
        t.add_row(str(s.layer), f"{s.k_mean_share:.1%}", f"{s.k_outlier:.1%}", f"{s.v_outlier:.1%}")
    console.print(t)
    console.print(f"written to {cal.path}")


def print_search(result, console: Console | None = None) -> None:
    """The chosen per-layer configs, the candidate table and the end-to-end check."""
    console = console or make_console()
    p = result.profile
    t = Table(title=f"profile {p.name} (policy {p.policy})")
    for col in ("layer", "K cache", "V cache", "K smoothing"):
        t.add_column(col, justify="right")
    for l in range(p.model.n_layer):
        sm = p.transforms.k_scale is not None and bool((abs(p.transforms.k_scale[l] - 1) > 1e-6).any())
        t.add_row(str(l), p.k_layers[l] if p.k_layers else p.k_type, p.v_layers[l] if p.v_layers else p.v_type,
                  "yes" if sm else "no")
    console.print(t)
    c = Table(title="candidates (proxy: summed attention KL over layers on the calibration windows)")
    for col in ("config", "K bpv", "V bpv", "proxy error", "KLD", "PPL", "top-1"):
        c.add_column(col, justify="right")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in result.candidates:
        c.add_row(r.name, f"{r.k_bpv:.3f}", f"{r.v_bpv:.3f}", f"{r.proxy_error:.4f}", fmt(r.kld, ".5f"),
                  fmt(r.ppl, ".3f"), fmt(r.top1, ".2%"))
    console.print(c)
    m = p.measured
    if m.get("kld") is not None:
        console.print(f"checked on {m['text']} ({m['chunks']} × {m['n_ctx']} tokens, {m['weights']} weights): "
                      f"PPL {m['ppl']:.3f} (f16 cache {m['ppl_f16']:.3f}), KLD {m['kld']:.5f}, top-1 {m['top1']:.2%}")


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], lo: float = 2.0, hi: float = 8.0) -> str:
    """One character per value, ▁ at ``lo`` up to █ at ``hi``."""
    n = len(SPARK) - 1
    return "".join(SPARK[max(0, min(n, round((v - lo) / (hi - lo) * n)))] for v in values)


def kv_mib(profile, rows: list[int], n_ctx: int = 32768) -> tuple[float, float]:
    """KV-cache MiB of ``profile``'s caches and of an f16 cache at n_ctx tokens, K and V, with
    ``rows[l]`` positions held by layer l (models.arch.cache_rows: sliding-window layers fewer)."""
    s = profile.model
    kb, vb = profile.bits(n_ctx)
    values = sum(rows) * s.n_head_kv * s.head_dim
    return values * (kb + vb) / 8 / 2**20, values * 32 / 8 / 2**20


def print_profile_summary(p, output, console: Console | None = None, measured: bool = True) -> None:
    """The KV cache a profile gives the written file: bits per layer, memory at 32k, the window,
    and (measured: a calibrated profile applied as it is) what was measured when it was made."""
    console = console or make_console()
    kc, vc = p.k_configs(), p.v_configs()
    t = Table(title=f"KV cache profile {p.name} (policy {p.policy})")
    for col in ("", "bits/value at 32k", "per layer (▁ 2 … █ 8 bits)", "range", "8-bit scales", "trellis codes",
                "calibrated basis"):
        t.add_column(col)
    kb, vb = p.bits(32768)
    on_basis = kbasis.used(p.transforms.k_basis, p.model.n_layer)
    for label, cfgs, mean, kind in (("K", kc, kb, p.k_type), ("V", vc, vb, p.v_type)):
        if cfgs:
            bits = [c.bits_per_value() for c in cfgs]
            s8 = sum(c.scale_base is not None for c in cfgs)
            tc = sum(c.trellis > 0 for c in cfgs)
            t.add_row(label, f"{mean:.2f}", sparkline(bits), f"{min(bits):.2f}–{max(bits):.2f}",
                      f"{s8} of {len(cfgs)} layers", f"{tc} of {len(cfgs)} layers",
                      f"{sum(on_basis)} of {len(cfgs)} layers" if label == "K" else "—")
        else:
            t.add_row(label, f"{mean:.2f}", kind, "", "", "", "")
    console.print(t)
    mib, f16 = kv_mib(p, cache_rows(load_model(output).args, 32768))
    console.print(f"KV cache at a 32k context: {mib:.0f} MiB (f16: {f16:.0f} MiB, {f16 / mib:.1f}× smaller)")
    if p.recent:
        console.print(f"recent window: the last {p.recent} positions are used exactly (an f16 ring of "
                      f"{p.recent + RECENT_SLACK} rows, counted above; `--recent 0` at run time turns it off)")
    m = p.measured
    if measured and m.get("kld") is not None and m.get("text"):
        console.print(f"measured when the profile was made: {m['text']}, {m.get('chunks', '?')} × "
                      f"{m.get('n_ctx', '?')} tokens, KLD {m['kld']:.5f} vs the f16 cache, top-1 {m['top1']:.1%} "
                      "(`kvconvert eval` measures the written file on your text)")


def print_convert_job(job, console: Console | None = None) -> None:
    """What `kvconvert convert` did with a policy: the file, the chosen bits per layer, the
    memory, the check on the written file and its verdict, where the time went."""
    console = console or make_console()
    print_convert_result(job, console)
    p = job.profile
    if p is None:
        return
    print_profile_summary(p, job.output, console, measured=False)  # the check below is this file's
    c = job.check
    if c is not None:
        r = Table(title=f"check of the written file: {c.chunks} × {c.n_ctx} tokens, {c.text}")
        for col in ("cache", "PPL", "KLD vs f16 cache", "top-1 agreement"):
            r.add_column(col, justify="right")
        r.add_row("f16 K / f16 V", f"{c.ppl_f16:.3f}", "0", "100%")
        ck, cv = p.bits(c.n_ctx)  # the bits in effect at the check's context (its sink share included)
        r.add_row(f"profile ({ck:.2f} / {cv:.2f} bpv at {c.n_ctx})", f"{c.ppl:.3f}", f"{c.kld:.5f} ± {c.kld_err:.5f}",
                  f"{c.top1:.1%}")
        console.print(r)
        if getattr(c, "float_products", False):
            console.print("(both runs with float products: this file's quantized weights times unrounded activations, "
                          "so the KLD is the cache's own; with the default 8-bit activations any change of the "
                          "cache, even to an exact f32 one, also re-rounds every later layer — "
                          "`kvconvert eval --float-products` measures as this check does)")
    if len(job.attempts) > 1:
        for i, a in enumerate(job.attempts):
            kld = "-" if a.check is None else f"{a.check.kld:.5f}"
            console.print(f"  attempt {i + 1}: budget K {a.k_budget:g} / V {a.v_budget if a.v_budget else 'f16'} "
                          f"→ {a.k_bpv:.2f} / {a.v_bpv:.2f} bpv, KLD {kld}")
    console.print(f"verdict: {job.verdict}")
    if job.timings:
        console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in job.timings.items()) +
                      f" (total {sum(job.timings.values()):.0f} s)")
    if job.profile_path is not None:
        console.print(f"profile written to {job.profile_path} (used by `kvconvert push` and reruns)")
