"""Would trellis codes pay? A numpy twin of a profile file with its codes swapped (issue 19, direction i).
A benchmark, not a test.

    python bench/trellis_twin.py --profile long-context --chunks 8 --codes engine,scalar,trellis
    python bench/trellis_twin.py --profile long-context --ctx 8192 --scored 1024 --codes scalar,trellis

The twin is the runtime's TurboQuant cache written out in numpy over the reference model's
blocks: the file's per-layer K and V configs (groups, bits, scale rule, 8-bit scales), its
post-RoPE channel permutation and K basis (fixed or following RoPE), pre-RoPE K mean centering added
back exactly, V mean centering, the attention sink and the recent exact window. `scalar` puts every layer on Lloyd–Max codes,
`trellis` on bitshift-trellis codes of the same bits where the layer admits them (both through
kvcache.turboquant, the C kernels' twin), everything else kept, so the bits per value are identical.
`engine` runs the file through the native runtime with its own codes (the shipped profiles carry
trellis codes since 2026-12-07; the twin with the same codes should match it), `engine-trellis` the
profile rewritten with trellis codes. Before the runtime had trellis codes, this twin measured them.

Scored: 512-token chunks of the held-out Austen evaluation part (second half of each chunk), or
the last --scored tokens of the first --ctx tokens (7k deep at 8192). KLD and top-1 against the
twin's own f16 cache on the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longctx as L  # noqa: E402

from kvconvert.kvcache import kbasis, turboquant as tq  # noqa: E402
from kvconvert.kvcache.kvmeta import CacheMeta  # noqa: E402
from kvconvert.models import reference as R  # noqa: E402
from kvconvert.models.rope import apply_rope  # noqa: E402
from kvconvert.models.source import load_model  # noqa: E402

Q_BLOCK = 1024  # query rows per attention block (scores of one block: heads × block × context floats)


def f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def roundtrip(x: np.ndarray, cfg: tq.KConfig, seed: int, layer: int, codes: str) -> np.ndarray:
    """What the cache returns for head vectors x (N, d) with the config's bits on these codes (layers
    that cannot take trellis codes keep Lloyd–Max codes, as the search writes them)."""
    c = cfg.with_codes("trellis" if codes == "trellis" else "lloyd")
    return tq.decode(tq.encode(x, c, seed, layer), c, seed, layer, qjl=False)


class Twin:
    def __init__(self, path: Path):
        src = load_model(path)
        weights, self.pairing = src.file_order()
        self.args = src.args
        self.meta = CacheMeta.from_gguf(src.weights.reader, self.args)
        if self.meta.k_configs is None or self.meta.v_configs is None:
            raise SystemExit(f"{path}: not a TurboQuant K+V profile file")
        self.m = R._Model(self.args, R._Typed(weights, np.dtype(np.float32)))

    def _cache(self, layer: int, k: np.ndarray, kr: np.ndarray, v: np.ndarray, pos: np.ndarray, codes: str):
        """What the cache returns for post-RoPE keys kr and values v (T, Hk, d)."""
        meta, d = self.meta, self.args.head_dim
        if codes == "f16":
            return f16(kr), f16(v)
        mu = np.zeros_like(k) if meta.k_mean is None else np.broadcast_to(meta.k_mean[layer][None], k.shape)
        mu_r = apply_rope(mu.astype(np.float32), pos, self.m.block.inv_freq[layer], self.pairing).astype(np.float32)
        perm = meta.k_perm[layer] if meta.k_perm is not None else np.arange(d)
        kc = (kr - mu_r)[..., perm]
        cfg = meta.k_configs[layer]
        if meta.k_basis is None:
            kc = roundtrip(kc.reshape(-1, d), cfg, meta.seed, layer, codes).reshape(kc.shape)
        else:  # coded as k·A, read back as k̂'·A⁻¹ (kvcache/kbasis.py)
            inv, freqs = np.argsort(perm), self.m.block.inv_freq[layer]  # a basis following RoPE turns in RoPE's order
            kc = kbasis.read_back(kc, meta.k_basis[layer], lambda x: roundtrip(x, cfg, meta.seed, layer, codes),
                                  kbasis.block_starts(pos, meta.k_basis_block),
                                  lambda x, p: apply_rope(x[..., inv], p, freqs, self.pairing)[..., perm])
        kh = np.empty_like(kr)
        kh[..., perm] = kc
        kh += mu_r
        vm = 0 if meta.v_mean is None else meta.v_mean[layer][None]
        vh = roundtrip((v - vm).reshape(-1, d), meta.v_configs[layer], meta.seed, layer, codes).reshape(v.shape) + vm
        ns = meta.n_sink or 0
        kh[:ns], vh[:ns] = f16(kr[:ns]), f16(v[:ns])
        return kh, vh

    def _attention(self, layer: int, x: np.ndarray, pos: np.ndarray, codes: str) -> np.ndarray:
        a, m, d = self.args, self.m, self.args.head_dim
        t = x.shape[0]
        q = m.linear(x, layer, "wq", "bq").reshape(t, a.num_attention_heads, d)
        k = m.linear(x, layer, "wk", "bk").reshape(t, a.num_key_value_heads, d)
        v = m.linear(x, layer, "wv", "bv").reshape(t, a.num_key_value_heads, d)
        freqs = m.block.inv_freq[layer]
        q = apply_rope(q, pos, freqs, self.pairing).astype(np.float32)
        kr = apply_rope(k, pos, freqs, self.pairing).astype(np.float32)
        kh, vh = self._cache(layer, k, kr, v, pos, codes)
        rep = lambda z: np.repeat(z, a.n_rep, axis=1)  # noqa: E731
        ke, kq, ve, vdiff = rep(f16(kr)), rep(kh), rep(vh), rep(f16(v) - vh)
        w = self.meta.n_recent or 0
        out = np.empty((t, a.num_attention_heads, d), dtype=np.float32)
        for r0 in range(0, t, Q_BLOCK):
            r1 = min(t, r0 + Q_BLOCK)
            dist = pos[r0:r1, None] - pos[None, :r1]
            win = (dist >= 0) & (dist < w)
            qb = q[r0:r1]
            s = np.einsum("thd,shd->hts", qb, kq[:r1])
            if w:
                s = np.where(win[None], np.einsum("thd,shd->hts", qb, ke[:r1]), s)
            s *= np.float32(m.block.attn_scale)
            s[:, dist < 0] = -np.inf
            p = R.softmax(s)
            out[r0:r1] = np.einsum("hts,shd->thd", p, ve[:r1])
            if w:
                out[r0:r1] += np.einsum("hts,shd->thd", p * win[None], vdiff[:r1])
        return m.linear(out.reshape(t, a.q_dim), layer, "wo", "bo")

    def logprobs(self, tokens: np.ndarray, codes: str, last: int) -> np.ndarray:
        m, blk = self.m, self.m.block
        pos = np.arange(len(tokens))
        x = m("tok_embd")[np.asarray(tokens)] * np.float32(blk.embed_scale)
        for layer in range(self.args.num_hidden_layers):
            x = x + self._attention(layer, m.norm(x, "attn_norm", layer), pos, codes)
            x = x + R.mlp(m, layer, m.norm(x, "ffn_norm", layer))
        x = m.norm(x[-last:], "output_norm")
        return R.log_softmax((x @ (m("output") if m.has("output") else m("tok_embd")).T).astype(np.float64))


def trellis_profile(profile: str) -> Path:
    """The profile JSON with its K and V layers on trellis codes (same bits) where they admit them, next to
    the bench's files."""
    import json

    src = Path(profile) if profile.endswith(".json") else L.REPO / "profiles" / f"{L.slug()}-{profile}.json"
    obj = json.loads(src.read_text())
    d = obj["model"]["head_dim"]
    for side in ("k", "v"):  # KConfig.with_codes: layers that cannot take trellis codes keep theirs
        obj[side]["layers"] = [tq.KConfig.parse(s, d).with_codes("trellis").spec() for s in obj[side]["layers"]]
    obj["name"] += "-trellis"
    out = L.work_dir() / f"{src.stem}-trellis.json"
    out.write_text(json.dumps(obj, indent=1))
    return out


def engine_logprobs(path: Path, tokens: np.ndarray, last: int, threads: int) -> np.ndarray:
    from kvconvert.runtime.engine import Model

    ctx = Model(path).context(n_ctx=len(tokens), n_threads=threads)
    if len(tokens) > last:
        ctx.eval(list(map(int, tokens[:-last])))
    return R.log_softmax(ctx.eval(list(map(int, tokens[-last:])), all_logits=True).astype(np.float64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="long-context", help="a shipped Qwen profile name or a profile JSON")
    ap.add_argument("--chunks", type=int, default=8, help="512-token chunks (second halves scored)")
    ap.add_argument("--ctx", type=int, default=0, help="one window of this many tokens instead of chunks")
    ap.add_argument("--scored", type=int, default=1024, help="with --ctx: the last N tokens scored")
    ap.add_argument("--codes", default="engine,scalar,trellis",
                    help="engine (the file in the runtime), engine-trellis (its profile on trellis codes, in the "
                         "runtime), scalar / trellis (the numpy twin with either code)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from kvconvert.runtime.engine import Model
    from long_quality import window_tokens

    path = L.model_file(a.profile)
    twin = Twin(path)
    if a.ctx:
        windows, last = [window_tokens(Model(path), 0, a.ctx)], a.scored
    else:
        windows, last = [window_tokens(Model(path), 512 * i, 512) for i in range(a.chunks)], 256
    print(f"{path.name}: {len(windows)} × {len(windows[0])} tokens, last {last} of each scored", flush=True)
    t0 = time.time()
    base = [twin.logprobs(w, "f16", last) for w in windows]
    print(f"  f16 twin base: {time.time() - t0:.0f} s", flush=True)
    for codes in a.codes.split(","):
        t0 = time.time()
        kl, top = [], []
        for w, b in zip(windows, base):
            if codes == "engine":
                lp = engine_logprobs(path, w, last, a.threads)
            elif codes == "engine-trellis":
                lp = engine_logprobs(L.model_file(str(trellis_profile(a.profile))), w, last, a.threads)
            else:
                lp = twin.logprobs(w, codes, last)
            kl.append((np.exp(b) * (b - lp)).sum(-1))
            top.append(b.argmax(-1) == lp.argmax(-1))
        kl = np.concatenate(kl)
        print(f"  {codes:8s} KLD {kl.mean():.5f} ± {kl.std() / np.sqrt(kl.size):.5f}  p99.9 "
              f"{np.quantile(kl, 0.999):.4f}  top-1 {np.concatenate(top).mean():.4f}  ({time.time() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
