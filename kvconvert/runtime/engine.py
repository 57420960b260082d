"""Python side of the native runtime: load a GGUF into the C engine, make
contexts, evaluate tokens.

The GGUF stays memory-mapped (gguf-py's reader); C receives pointers into the
mapping and validates every size. A ``Model`` keeps the mapping alive; a
``Context`` keeps its ``Model`` alive, so handles are freed in the right order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._native import NativeError, check, ffi, lib  # noqa: F401  (ffi re-exported for tests)
from ..base.errors import InputError
from ..formats.gguf_io import tensor_map
from ..kvcache.kvmeta import DEFAULT_RECENT, DEFAULT_SINK
from ..kvcache.types import AUTO, DEFAULT_SEED, TQ, CacheSpec
from ..models.arch.base import ACTIVATIONS
from ..models.source import ROPE_FREQS, ModelSource, load_model
from ..models.rope import inv_freq

SCALE_MODES = {"norm": 0, "ls": 1, "proj": 2}  # turboquant.SCALES, as numbered in tq.c
BACKENDS = {None: 0, "cpu": 1, "metal": 2, "auto": 3}  # kvc_context_params.backend (kvc.h)

@dataclass(frozen=True)
class ContextParams:
    """Context settings. type_k/type_v: f32, f16, q8_0, q4_0, or a TurboQuant spec
    ("tq4", "tq3", "tq:split=32,hi=8,lo=3,qjl=hi"; see turboquant.KConfig.parse),
    applied to every layer unless tq_k_layers/tq_v_layers give one config per layer.
    k_center: K mean-centering (None: on for TurboQuant K), over the k_center_pairs
    RoPE pairs of largest mean energy per head (0: all), with k_mean (layers, kv
    heads, head_dim) if calibrated, else the first batch's mean."""

    n_ctx: int = 4096
    n_batch: int = 512
    type_k: str = "auto"  # auto: what the GGUF's kvconvert metadata says, else f16
    type_v: str = "auto"
    n_threads: int = 0  # 0: all cores
    tq_k_layers: tuple | None = None
    tq_v_layers: tuple | None = None
    tq_seed: int = DEFAULT_SEED  # files carry their own
    k_center: bool | None = None
    k_center_pairs: int = 0
    k_mean: np.ndarray | None = field(default=None, compare=False)
    k_perm: np.ndarray | None = field(default=None, compare=False)  # (layers, head_dim) post-RoPE channel order
    # (layers, kv heads, head_dim, head_dim): TurboQuant K coded in this basis after the permutation
    # (kvcache.kbasis); queries get its inverse transpose. None: the permuted channels as they are.
    k_basis: np.ndarray | None = field(default=None, compare=False)
    # > 0: the basis follows RoPE in blocks of this many positions (kvcache.kbasis: each block's keys
    # turned back to its first position, as are the queries scoring them). None: what the file says
    k_basis_block: int | None = None
    k_mean_folded: bool = False  # the weights already subtract k_mean (folded layout): correction only
    v_mean: np.ndarray | None = field(default=None, compare=False)  # (layers, kv heads, head_dim): V centering
    # TurboQuant caches: leading positions also kept in f16 and used exactly (attention
    # sinks). None: what the GGUF's metadata says, else kvmeta.DEFAULT_SINK.
    n_sink: int | None = None
    # TurboQuant caches: each query also uses the last n_recent positions (its own included)
    # exactly, from an f16 ring of n_recent + 16 rows per layer and KV head and one batch buffer
    # (fixed memory, counted in kv_bytes; a rewind may go back n_rewind positions). None: what the GGUF's
    # metadata says, else 0 (off). CPU backend only (backend auto picks the CPU for it).
    n_recent: int | None = None
    # with a recent window: how many positions a rewind (Context.reset) may go back without
    # evaluating again — the ring's f16 rows beyond the window (0: 16)
    n_rewind: int = 0
    # sliding-window layers cache only what their window can still see (False), or every position
    kv_keep_all: bool = False
    # where the context runs: "auto" (Metal where the build has it, a device exists and it runs
    # this model and these caches; else the CPU), "cpu", "metal"; None: $KVC_BACKEND, else auto
    backend: str | None = None
    # weight products with float activations (quantized rows expanded to float) instead of activations
    # rounded to 8 bits per block: slower, for measuring a cache's own error on a quantized-weight
    # model (kvc.h says why). CPU backend only.
    float_products: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"backend {self.backend!r}: choose one of auto, cpu, metal")
        # the cache types are parsed once, here: from now on they are CacheSpecs (still strings)
        object.__setattr__(self, "type_k", CacheSpec(self.type_k))
        object.__setattr__(self, "type_v", CacheSpec(self.type_v))

    def resolved_threads(self) -> int:
        return self.n_threads if self.n_threads > 0 else (os.cpu_count() or 1)


_HF_TYPES = {"F32": 0, "F16": 1, "BF16": 30}  # safetensors dtype -> kvc_type
_FLOAT_KVC_TYPES = frozenset(_HF_TYPES.values())  # weight types whose products need no activation rounding


def runs_directly(src: ModelSource) -> bool:
    """The engine can run ``src`` as it is: a GGUF, or a safetensors checkpoint whose tensors are all
    F32/F16/BF16 (mapped, no copy; calibration then needs no f16 GGUF of it)."""
    if src.format == "gguf":
        return True
    idx = getattr(src.weights, "index", None)
    return idx is not None and all(idx.dtype(s.hf) in _HF_TYPES for s in src.specs if s.hf != ROPE_FREQS)


def check_logits(logits: np.ndarray, ctx: "Context", where: str) -> np.ndarray:
    """``logits`` (computed in ``ctx``) if all finite, else InputError: one line naming the model
    file and a likely cause.

    One float64 sum (it cannot overflow for float32 inputs) carries any NaN/Inf through, so the
    check costs a single pass over the logits."""
    if np.isfinite(np.sum(logits, dtype=np.float64)):
        return logits
    what = "NaN" if np.isnan(logits).any() else "infinite"
    tk, tv = ctx.params.type_k, ctx.params.type_v
    hint = "" if {tk, tv} <= {"f16", "f32"} else \
        f", or the {tk}/{tv} cache cannot hold its values (try --ctk f16 --ctv f16)"
    model_path = ctx.model.path
    raise InputError(f"{model_path}: the model computed {what} logits {where}; its weights are likely corrupt or "
                     f"out of range (e.g. overflowing f16 in a conversion){hint}; re-download or re-convert it")


def tq_configs(spec: str, layers: tuple | None, n_layer: int, head_dim: int):
    """One turboquant.KConfig per layer from a CLI spec or explicit per-layer configs."""
    from ..kvcache.turboquant import KConfig

    if layers is not None:
        if len(layers) != n_layer:
            raise InputError(f"{len(layers)} TurboQuant layer configs for a model of {n_layer} layers")
        return list(layers)
    try:
        return [KConfig.parse(spec, head_dim)] * n_layer
    except ValueError as e:
        raise InputError(str(e)) from None


class Model:
    """A GGUF loaded into the native engine."""

    def __init__(self, path: str | os.PathLike | ModelSource, smoothing: bool = True):
        """smoothing: apply the file's K→Q smoothing (kvconvert.k_cache.smooth) to the q and k products; False runs
        the weights exactly as stored (calibration measures those)."""
        src = path if isinstance(path, ModelSource) else load_model(path)
        self._smoothing = smoothing
        if not runs_directly(src):
            raise InputError(f"{src.path}: the runtime runs GGUF files and float (F32/F16/BF16) safetensors "
                             "checkpoints; convert it first (kvconvert convert)")
        self.source = src
        self.path = Path(src.path)
        self.args = src.args
        self._keep: list = []  # cffi objects that must outlive the C model
        desc = self._describe()
        out = ffi().new("kvc_model **")
        err = ffi().new("char[512]")
        status = lib().kvc_model_create(desc, out, err, 512)
        if status != 0:
            raise InputError(f"{self.path}: {ffi().string(err).decode(errors='replace')}")
        self._ptr = ffi().gc(out[0], lib().kvc_model_free)
        self._tokenizer = None
        mats = [getattr(desc.layers[i], slot) for i in range(self.args.num_hidden_layers)
                for slot in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]
        mats.append(desc.output if desc.output.data != ffi().NULL else desc.tok_embd)  # tied: the embedding
        #: some weight product rounds its activations to 8 bits per block by default (a quantized
        #: weight type): ContextParams.float_products then changes what the runtime computes
        self.quantized_weights = any(t.type not in _FLOAT_KVC_TYPES for t in mats)

    def _tensor(self, dst, t) -> None:
        f = ffi()
        name = f.new("char[]", t.name.encode())
        data = np.asarray(t.data)
        buf = f.from_buffer("char[]", data)
        self._keep += [name, buf]
        dst.name = name
        dst.type = int(t.tensor_type)
        shape = [int(n) for n in t.shape.tolist()]
        dst.ne[0] = shape[0]
        dst.ne[1] = shape[1] if len(shape) > 1 else 1
        dst.data = buf
        dst.nbytes = data.nbytes

    @property
    def rope_pairing(self) -> str:
        """How the weights the engine runs pair RoPE channels: a GGUF's own order, or HF order
        ("neox") for a safetensors checkpoint read directly."""
        return "neox" if self.source.format == "hf" else self.source.arch.gguf_rope_pairing

    def _hf_tensors(self, desc, layers) -> None:
        """A Hugging Face checkpoint's float tensors, straight from the mapped safetensors files (HF row
        order, so RoPE pairs are NeoX's); norm gains an architecture stores with an offset get a small
        float32 copy with it added."""
        idx = self.source.weights.index  # type: ignore[attr-defined]
        for spec in self.source.specs:
            if spec.hf == ROPE_FREQS:
                continue
            dst = getattr(desc if spec.layer < 0 else layers[spec.layer], spec.slot)
            if spec.norm_offset:
                self._tensor_array(dst, spec.hf, np.ascontiguousarray(idx.get(spec.hf) + spec.norm_offset,
                                                                       dtype=np.float32))
                continue
            raw = idx.raw(spec.hf)
            f = ffi()
            name, buf = f.new("char[]", spec.hf.encode()), f.from_buffer("char[]", raw)
            self._keep += [name, buf]
            dst.name, dst.type, dst.data, dst.nbytes = name, _HF_TYPES[idx.dtype(spec.hf)], buf, raw.nbytes
            dst.ne[0] = raw.shape[-1]
            dst.ne[1] = raw.shape[0] if raw.ndim > 1 else 1

    def _describe(self):
        f, a, src = ffi(), self.args, self.source
        tensors = tensor_map(src.weights.reader) if src.format == "gguf" else {}  # type: ignore[attr-defined]
        desc = f.new("kvc_model_desc *")
        layers = f.new("kvc_layer_desc[]", a.num_hidden_layers)
        freqs = np.ascontiguousarray(inv_freq(a), dtype=np.float32)
        freqs_buf = f.from_buffer("float[]", freqs)
        self._keep += [desc, layers, freqs, freqs_buf]
        desc.n_vocab, desc.n_embd, desc.n_layer = a.vocab_size, a.hidden_size, a.num_hidden_layers
        desc.n_head, desc.n_head_kv, desc.head_dim = a.num_attention_heads, a.num_key_value_heads, a.head_dim
        desc.n_ff, desc.rms_eps = a.intermediate_size, a.rms_norm_eps
        desc.rope_pairing = 1 if self.rope_pairing == "interleaved" else 0
        desc.rope_freqs = freqs_buf
        meta = self.cache_meta
        if meta is not None and meta.rope_pair_src is not None:
            src_map = np.ascontiguousarray(meta.rope_pair_src, dtype=np.int32)
            src_buf = f.cast("int *", f.from_buffer(src_map))
            self._keep += [src_map, src_buf]
            desc.rope_pair_src = src_buf
        desc.layers = layers
        self._block(desc, layers, src.arch.block(a))
        if src.format == "hf":
            self._hf_tensors(desc, layers)
            return desc
        for spec in src.specs:  # each tensor into the descriptor field its architecture names (spec.slot)
            if spec.hf == ROPE_FREQS:
                continue
            self._tensor(getattr(desc if spec.layer < 0 else layers[spec.layer], spec.slot), tensors[spec.gguf])
        if self._smoothing and meta is not None and meta.k_smooth is not None:
            self._smooth(layers, tensors, meta.k_smooth)
        return desc

    def _block(self, desc, layers, blk) -> None:
        """The architecture's Block (models/arch/base.py) into kvc_model_desc / kvc_layer_desc."""
        f = ffi()
        have = {name for name, _ in f.typeof("kvc_model_desc").fields}
        if "activation" not in have:  # a runtime built before the Block fields: plain Llama blocks only
            if (blk.activation, blk.embed_scale, blk.qk_norm, blk.post_norms) != ("silu", 1.0, False, False) or \
                    any(blk.windows) or not np.isclose(blk.attn_scale, 1.0 / np.sqrt(self.args.head_dim)):
                raise InputError(f"{self.path}: this build of the native runtime cannot run "
                                 f"{self.args.architecture} (rebuild kvconvert)")
            return
        desc.activation = ACTIVATIONS.index(blk.activation)
        desc.embd_scale, desc.attn_scale = blk.embed_scale, blk.attn_scale
        for i, (window, freqs) in enumerate(zip(blk.windows, blk.inv_freq)):
            layers[i].window = window
            fq = np.ascontiguousarray(freqs, dtype=np.float32)
            buf = f.from_buffer("float[]", fq)
            self._keep += [fq, buf]
            layers[i].rope_freqs = buf

    def _smooth(self, layers, tensors, k_smooth: np.ndarray) -> None:
        """K→Q smoothing from metadata (a file patched with --weights keep, docs/design.md §2):
        rows of pair j of KV head g divided by s[l, g, j] in k and multiplied by it in q of the
        group's query heads — as per-row scales of the q and k products (kvc_layer_desc.q_scale,
        k_scale), so the weights run as stored (quantized, their own kernels) and no float copy
        of W_q/W_k is made. Exact, as a per-pair scale commutes with RoPE. QK-norm families scale
        the norm gains instead. Layers whose scales are all 1 get none."""
        a, arch = self.args, self.source.arch
        H, Hk = a.num_attention_heads, a.num_key_value_heads
        for layer, s in enumerate(np.asarray(k_smooth, dtype=np.float64)):
            if np.all(s == 1):
                continue
            # (Hk, P) pair scales → one factor per row, in the file's channel order
            rows = np.concatenate([s, s], -1) if arch.gguf_rope_pairing == "neox" else np.repeat(s, 2, -1)
            if arch.qk_norm:  # q and k are normalised per head after W_q/W_k: the scales go into the gains
                self._smooth_qk_norm(layers[layer], layer, rows, tensors)
                continue
            q_scale = np.repeat(rows, H // Hk, 0).reshape(-1)
            for slot, scale in (("q_scale", q_scale), ("k_scale", 1.0 / rows.reshape(-1))):
                self._tensor_array(getattr(layers[layer], slot), f"blk.{layer}.{slot}",
                                   np.ascontiguousarray(scale, dtype=np.float32))

    def _smooth_qk_norm(self, layer_desc, layer: int, rows: np.ndarray, tensors) -> None:
        """QK-norm families (docs/design.md §2): q_norm times, k_norm divided by the layer's per-pair
        scales (rows (Hk, d), the same for every KV head), on float32 copies of the gains."""
        from ..formats.gguf_io import dequantize

        if not np.allclose(rows, rows[:1]):
            raise InputError(f"{self.path}: kvconvert.k_cache.smooth differs between the KV heads of layer "
                             f"{layer}; with QK-norm it must be one set per layer (re-convert the model)")
        for spec in self.source.specs:
            if spec.layer == layer and spec.slot in ("q_norm", "k_norm"):
                g = dequantize(tensors[spec.gguf]).astype(np.float64)
                g = g * rows[0] if spec.slot == "q_norm" else g / rows[0]
                self._tensor_array(getattr(layer_desc, spec.slot), spec.gguf, np.ascontiguousarray(g, dtype=np.float32))

    def _tensor_array(self, dst, name: str, arr: np.ndarray) -> None:
        """Point ``dst`` at a float32 array (rows, row length) or (n,) held by this Model."""
        f = ffi()
        cname = f.new("char[]", name.encode())
        buf = f.from_buffer("char[]", arr)
        self._keep += [cname, arr, buf]
        dst.name, dst.type, dst.data, dst.nbytes = cname, 0, buf, arr.nbytes
        dst.ne[0] = arr.shape[-1]
        dst.ne[1] = arr.shape[0] if arr.ndim > 1 else 1

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..formats.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.source.tokenizer_spec())
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        spec = self.source.tokenizer_spec()
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos is None:
            add_bos = spec.effective_add_bos()
        if add_bos and spec.bos_id is not None:
            ids = [spec.bos_id] + ids
        return ids

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def cache_meta(self):
        """The file's kvconvert cache description (kvmeta.CacheMeta) or None."""
        if not hasattr(self, "_cache_meta"):
            from ..kvcache.kvmeta import CacheMeta

            self._cache_meta = None if self.source.format != "gguf" else \
                CacheMeta.from_gguf(self.source.weights.reader, self.args, str(self.path))
        return self._cache_meta

    def resolve(self, params: ContextParams) -> ContextParams:
        """Replace "auto" cache types by the file's metadata (or f16 without it)."""
        import dataclasses

        meta = self.cache_meta
        kw: dict = {}
        if meta is not None and meta.k_mean_folded:  # b_k subtracts μ: the correction is not optional
            kw.update(k_center=True, k_mean_folded=True, k_mean=meta.k_mean)
        if meta is not None and meta.v_mean is not None and params.v_mean is None:
            kw["v_mean"] = meta.v_mean
        if params.type_k.kind == AUTO:
            if meta is None:
                kw["type_k"] = "f16"
            elif meta.k_type == TQ:
                kw.update(type_k=TQ, tq_k_layers=tuple(meta.k_configs), tq_seed=meta.seed,
                          k_center_pairs=meta.center_pairs)
                if params.k_mean is None and meta.k_mean is not None:
                    kw["k_mean"] = meta.k_mean
                if params.k_perm is None and meta.k_perm is not None:
                    kw["k_perm"] = meta.k_perm
                if params.k_basis is None and meta.k_basis is not None:
                    kw["k_basis"] = meta.k_basis
                    if params.k_basis_block is None:
                        kw["k_basis_block"] = meta.k_basis_block
            else:
                kw["type_k"] = meta.k_type
        if params.n_sink is None:
            kw["n_sink"] = meta.n_sink if meta is not None and meta.n_sink is not None else DEFAULT_SINK
        if params.n_recent is None:
            kw["n_recent"] = meta.n_recent if meta is not None and meta.n_recent is not None else DEFAULT_RECENT
        if params.type_v.kind == AUTO:
            if meta is not None and meta.v_type == TQ:
                kw.update(type_v=TQ, tq_v_layers=tuple(meta.v_configs))
            else:
                kw["type_v"] = meta.v_type if meta is not None else "f16"
        return dataclasses.replace(params, **kw) if kw else params

    def context(self, params: ContextParams | None = None, **kw) -> "Context":
        return Context(self, self.resolve(params or ContextParams(**kw)))


class Context:
    """A KV cache and scratch space for evaluating tokens with a Model."""

    def __init__(self, model: Model, params: ContextParams):
        self.model, self.params = model, params
        p = ffi().new("kvc_context_params *")
        p.n_ctx, p.n_batch = params.n_ctx, params.n_batch
        if AUTO in (params.type_k.kind, params.type_v.kind):
            raise ValueError("Context needs resolved cache types: use Model.context (it resolves 'auto')")
        p.type_k, p.type_v = params.type_k.native_id, params.type_v.native_id
        p.n_threads = params.resolved_threads()
        self._keep: list = [p]
        a = model.args
        k_mode = v_mode = None  # each side's encode scale (one per side: turboquant.SCALES)
        if params.type_k.kind == TQ:
            p.tq_k, k_mode = self._tq_layers(tq_configs(params.type_k, params.tq_k_layers, a.num_hidden_layers,
                                                        a.head_dim), "K", params.k_perm, params.k_basis,
                                                 params.k_basis_block or 0)
        if params.type_v.kind == TQ:
            p.tq_v, v_mode = self._tq_layers(tq_configs(params.type_v, params.tq_v_layers, a.num_hidden_layers,
                                                        a.head_dim), "V")
        p.tq_seed = params.tq_seed
        p.tq_scale_mode = SCALE_MODES[k_mode or v_mode or "ls"]
        if k_mode and v_mode and v_mode != k_mode:  # kvc.h: 0 = as K, else 1 + V's mode
            p.tq_v_scale_mode = 1 + SCALE_MODES[v_mode]
        center = params.k_center if params.k_center is not None else params.type_k.kind == TQ
        p.k_center, p.k_center_pairs = int(center), params.k_center_pairs
        if center and params.k_mean is not None:
            p.k_mean = self._per_head(params.k_mean, "K mean")
        p.k_mean_folded = int(params.k_mean_folded)
        p.n_sink = params.n_sink or 0
        p.n_recent = params.n_recent or 0
        p.n_rewind = params.n_rewind
        p.kv_keep_all = int(params.kv_keep_all)
        p.float_products = int(params.float_products)
        p.backend = BACKENDS[params.backend]
        if params.v_mean is not None:
            p.v_mean = self._per_head(params.v_mean, "V mean")
        out = ffi().new("kvc_context **")
        err = ffi().new("char[512]")
        status = lib().kvc_context_create(model._ptr, p, out, err, 512)
        if status != 0:
            raise NativeError(f"cannot create a context: {ffi().string(err).decode(errors='replace')}")
        self._ptr = ffi().gc(out[0], lib().kvc_context_free)
        self.n_vocab = model.args.vocab_size

    def _per_head(self, x: np.ndarray, what: str):
        """A float buffer for C of a (layers, kv heads, head_dim) array, kept alive with the context."""
        a = self.model.args
        arr = np.ascontiguousarray(x, dtype=np.float32)
        want = (a.num_hidden_layers, a.num_key_value_heads, a.head_dim)
        if arr.shape != want:
            raise InputError(f"{what} has shape {arr.shape}, the model needs {want}")
        buf = ffi().from_buffer("float[]", arr)
        self._keep += [arr, buf]
        return buf

    def _tq_layers(self, configs, side: str, perm: np.ndarray | None = None, basis: np.ndarray | None = None,
                   basis_block: int = 0):
        """The kvc_tq_layer array for one cache side, and that side's scale mode."""
        f = ffi()
        from ..kvcache.kbasis import MAX_BASIS_BLOCK, query_basis, used
        from ..kvcache.turboquant import group_codebook, side_scale

        arr = f.new("kvc_tq_layer[]", len(configs))
        self._keep.append(arr)
        if perm is not None:
            perm = np.ascontiguousarray(perm, dtype=np.int32)
            if perm.shape != (len(configs), configs[0].d):
                raise InputError(f"K permutation has shape {perm.shape}, expected {(len(configs), configs[0].d)}")
            self._keep.append(perm)
        if basis is not None:
            a = self.model.args
            want = (len(configs), a.num_key_value_heads, configs[0].d, configs[0].d)
            if np.shape(basis) != want:
                raise InputError(f"K basis has shape {np.shape(basis)}, expected {want}")
            if not 0 <= basis_block <= MAX_BASIS_BLOCK:
                raise InputError(f"K basis block {basis_block} is outside 0..{MAX_BASIS_BLOCK}")
            basis = np.ascontiguousarray(basis, dtype=np.float32)
            qbasis = np.ascontiguousarray(query_basis(basis), dtype=np.float32)
            on_basis = used(basis, len(configs))
            self._keep += [basis, qbasis]
        try:
            mode = side_scale(configs, side)
        except ValueError as e:
            raise InputError(str(e)) from None
        for i, c in enumerate(configs):
            t = arr[i]
            t.n_hi, t.hi_bits, t.lo_bits, t.qjl_hi, t.qjl_lo = c.n_hi, c.hi_bits, c.lo_bits, int(c.qjl_hi), int(c.qjl_lo)
            t.scale8, t.scale_base = _scale8_args(c)
            t.trellis = c.trellis
            for grp, name in zip(c.groups(), ("codebook_hi", "codebook_lo") if c.n_hi else ("codebook_lo",)):
                cb = np.ascontiguousarray(group_codebook(grp), dtype=np.float32)
                buf = f.from_buffer("float[]", cb)
                self._keep += [cb, buf]
                setattr(t, name, buf)
            if perm is not None:
                pbuf = f.cast("int *", f.from_buffer(perm[i]))
                self._keep.append(pbuf)
                t.perm = pbuf
            if basis is not None and on_basis[i]:  # identity layers: no product (and no turn) at all
                for name, b in (("basis", basis), ("qbasis", qbasis)):
                    buf = f.cast("float *", f.from_buffer(b[i]))
                    self._keep.append(buf)
                    setattr(t, name, buf)
                t.basis_block = basis_block
        return arr, mode

    def capture(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Turn on calibration capture; returns the buffers q (layers, n_batch, H*D),
        k and v (layers, n_batch, Hk*D) that every later eval batch fills (pre-RoPE,
        bias added, in the file's channel order; rows beyond the batch are stale)."""
        a = self.model.args
        T = min(self.params.n_batch, self.params.n_ctx)
        bufs = tuple(np.zeros((a.num_hidden_layers, T, n * a.head_dim), dtype=np.float32)
                     for n in (a.num_attention_heads, a.num_key_value_heads, a.num_key_value_heads))
        f = ffi()
        ptrs = [f.cast("float *", f.from_buffer(b)) for b in bufs]
        self._keep += list(bufs) + ptrs
        check(lib().kvc_set_capture(self._ptr, *ptrs), "capture")
        return bufs  # type: ignore[return-value]

    @property
    def n_past(self) -> int:
        return lib().kvc_n_past(self._ptr)

    @property
    def backend(self) -> str:
        """The backend this context runs on: "cpu" or "metal"."""
        return ffi().string(lib().kvc_context_backend(self._ptr)).decode()

    @property
    def kv_bytes_per_token(self) -> int:
        return lib().kvc_kv_bytes_per_token(self._ptr)

    @property
    def rewind_floor(self) -> int:
        """The smallest n_past > 0 that reset() accepts now (sliding-window layers keep only their window)."""
        return lib().kvc_rewind_floor(self._ptr)

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache rows this context holds (sliding-window layers: about their window; the
        recent window's fixed f16 ring included)."""
        return lib().kvc_kv_bytes(self._ptr)

    def reset(self, n_past: int = 0) -> None:
        """Forget tokens from n_past on: 0, or at least rewind_floor (sliding-window caches)."""
        if lib().kvc_set_n_past(self._ptr, n_past) != 0:
            msg = ffi().string(lib().kvc_context_error(self._ptr)).decode(errors="replace")
            raise NativeError(f"reset: {msg or 'n_past must be between 0 and the tokens in the context'}")

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache; logits (n, vocab) if all_logits else (vocab,)."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        if toks.ndim != 1 or toks.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        out = np.empty((toks.size if all_logits else 1, self.n_vocab), dtype=np.float32)
        f = ffi()
        status = lib().kvc_eval(self._ptr, f.cast("int *", f.from_buffer(toks)), toks.size,
                                f.cast("float *", f.from_buffer(out)), int(all_logits))
        if status != 0:
            raise NativeError(f"eval: {f.string(lib().kvc_context_error(self._ptr)).decode(errors='replace')}")
        return out if all_logits else out[0]


def eval_multi(contexts: list[Context], tokens: list[int]) -> np.ndarray:
    """Append tokens[i] to contexts[i] for every i, evaluated as one batch (kvc_eval_multi:
    each weight row is read once for all the sequences); logits (n, vocab), row i for
    contexts[i]. The contexts must be distinct, of one model, and at most contexts[0]'s
    n_batch; a failed call (NativeError) appends nothing to any of them."""
    toks = np.ascontiguousarray(tokens, dtype=np.int32)
    if toks.ndim != 1 or toks.size == 0 or toks.size != len(contexts):
        raise ValueError(f"one token per context: {len(contexts)} contexts, tokens of shape {toks.shape}")
    lead = contexts[0]
    out = np.empty((toks.size, lead.n_vocab), dtype=np.float32)
    f = ffi()
    ptrs = f.new("kvc_context *[]", [c._ptr for c in contexts])
    status = lib().kvc_eval_multi(ptrs, toks.size, f.cast("int *", f.from_buffer(toks)),
                                  f.cast("float *", f.from_buffer(out)))
    if status != 0:
        raise NativeError(f"eval_multi: {f.string(lib().kvc_context_error(lead._ptr)).decode(errors='replace')}")
    return out


def _scale8_args(cfg) -> tuple[int, int]:
    """(scale8, scale_base) of the C ABI (kvc_tq_layer, kvc_tq_encode) for a KConfig."""
    return int(cfg.scale_base is not None), cfg.scale_base or 0


def tq_roundtrip(x: np.ndarray, cfg, seed: int, layer: int) -> np.ndarray:
    """x (..., d) float32 → its TurboQuant reconstruction by the C kernels (encode, then
    decode without the QJL term): the twin of turboquant.decode(encode(x), qjl=False)."""
    from ..kvcache.turboquant import group_codebook

    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1, cfg.d)
    n = flat.shape[0]
    out = np.empty_like(flat)
    f, impl = ffi(), lib().kvc_cpu_best_impl()
    for g, (gc, (a, b)) in enumerate(zip(cfg.groups(), cfg.bounds())):
        xg = np.ascontiguousarray(flat[:, a:b])
        cb = np.ascontiguousarray(group_codebook(gc), dtype=np.float32)
        s8, base = _scale8_args(cfg)
        rows = np.empty((n, lib().kvc_tq_row_bytes(gc.m, gc.bits, int(gc.qjl), s8)), np.uint8)
        yg = np.empty_like(xg)
        fcb = f.cast("float *", f.from_buffer(cb))
        check(lib().kvc_tq_encode(impl, gc.m, gc.bits, int(gc.qjl), gc.trellis, s8, base, SCALE_MODES[cfg.scale],
                                  fcb, seed, layer, g, f.cast("float *", f.from_buffer(xg)), n, f.from_buffer(rows)),
              "kvc_tq_encode")
        check(lib().kvc_tq_decode(impl, gc.m, gc.bits, int(gc.qjl), gc.trellis, s8, base, fcb, seed, layer, g,
                                  f.from_buffer(rows), n, f.cast("float *", f.from_buffer(yg))), "kvc_tq_decode")
        out[:, a:b] = yg
    return out.reshape(x.shape)
