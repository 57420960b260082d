"""Hugging Face model (or GGUF) → GGUF, the way llama.cpp's converter writes it.

Tensors are streamed: the header and tensor table are written from shapes
alone, then each tensor is loaded (mmap), put in GGUF row order, quantized and
written before the next is touched. Output goes to a temporary file renamed
into place only when complete.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .._version import __version__
from ..models.arch.base import TensorSpec
from ..base.atomic import atomic_path, check_parent, refuse_overwrite
from ..base.errors import InputError, OutputError
from ..formats.gguf_keys import SCHEMA_VERSION, Keys
from ..models.source import ModelSource, load_model
from ..base.progress import ProgressFn, check_cancel, start_phase

MIB = float(1 << 20)
Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# --weights choice -> (type of 2-D weights, file_type written to general.file_type)
WEIGHT_TYPES: dict[str, tuple[Q, FT]] = {
    "f32": (Q.F32, FT.ALL_F32),
    "f16": (Q.F16, FT.MOSTLY_F16),
    "bf16": (Q.BF16, FT.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0),
    "q4_k_m": (Q.Q4_K, FT.MOSTLY_Q4_K_M),  # llama-quantize's per-tensor mixes: k_quant_type
    "q5_k_m": (Q.Q5_K, FT.MOSTLY_Q5_K_M),
    "q6_k": (Q.Q6_K, FT.MOSTLY_Q6_K),
}
K_MIXES = ("q4_k_m", "q5_k_m", "q6_k")
KEEP = "keep"  # a GGUF input's tensors copied byte for byte, only kvconvert.* metadata added (write_kept)
WEIGHT_CHOICES = (KEEP, *WEIGHT_TYPES)


def default_weights(src: ModelSource) -> str:
    """--weights when not given: keep a GGUF's tensors as they are; f16 for a Hugging Face model."""
    return KEEP if src.format == "gguf" else "f16"


@dataclass
class ConvertResult:
    output: Path
    weights: str
    n_tensors: int
    n_params: int
    file_bytes: int
    types: dict[str, int]  # GGML type name -> tensor count
    source: str


def tensor_type(spec: TensorSpec, weights: str) -> Q:
    """GGML type of one tensor: 1-D stays F32; matrices take the requested type.

    Quantized types need rows divisible by the block size, else F16 (as
    llama.cpp's converter falls back). With q4_0, the token embedding and output
    matrices are kept at Q8_0: they are the most sensitive weights, and llama.cpp's
    own Q4_0 recipe also keeps the output at higher precision.
    """
    qtype = WEIGHT_TYPES[weights][0]
    if len(spec.shape) == 1:
        return Q.F32
    if qtype in (Q.Q8_0, Q.Q4_0):
        if spec.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            return Q.F16
        if qtype == Q.Q4_0 and spec.gguf in ("token_embd.weight", "output.weight"):
            return Q.Q8_0
    return qtype


# Row length not a multiple of 256: the type llama-quantize falls back to (tensor_type_fallback)
K_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def _more_bits(i: int, n: int) -> bool:
    """llama-quantize's use_more_bits: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def k_quant_type(spec: TensorSpec, weights: str, n_layer: int, tied: bool) -> Q:
    """GGML type of one tensor in a k-quant mix, following llama.cpp's llama-quantize without an
    importance matrix (src/llama-quant.cpp, llama_tensor_get_type_impl and tensor_type_fallback, as
    vendored in llama-cpp-python 0.3.36), for dense non-Falcon models:

    * 1-D tensors (norms, biases, rope factors) stay F32;
    * output.weight, and token_embd.weight when the embeddings are tied (no output.weight): Q6_K
      (Q8_0 when the row length is not a multiple of 256);
    * q4_k_m / q5_k_m: attn_v and ffn_down of the layers use_more_bits picks get Q6_K; every other
      matrix (token_embd when untied included) the mix's type, Q4_K / Q5_K; q6_k: Q6_K everywhere;
    * a row length that is not a multiple of 256 falls back: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0,
      and to F16 if not a multiple of 32 either.

    ``n_layer``: the count of attn_v (= ffn_down) tensors, which llama-quantize counts.
    """
    if len(spec.shape) == 1:
        return Q.F32
    name, ne0 = spec.gguf, spec.shape[-1]
    q = WEIGHT_TYPES[weights][0]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return Q.Q6_K if ne0 % 256 == 0 else Q.Q8_0
    if weights in ("q4_k_m", "q5_k_m") and name.startswith("blk.") and \
            name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(name.split(".")[1]), n_layer):
        q = Q.Q6_K
    if ne0 % 256:
        q = K_FALLBACK[q]
        if ne0 % 32:
            q = Q.F16
    return q


def plan_types(specs, weights: str) -> list[tuple[TensorSpec, Q]]:
    """(spec, GGML type) of every tensor: k-quant mixes per k_quant_type, else tensor_type."""
    if weights not in K_MIXES:
        return [(s, tensor_type(s, weights)) for s in specs]
    names = [s.gguf for s in specs]
    tied = "output.weight" not in names
    n_layer = sum(n.endswith("attn_v.weight") for n in names)
    return [(s, k_quant_type(s, weights, n_layer, tied)) for s in specs]


def _encode(x: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(x, dtype=np.float16)
    from ..runtime.quantize import NATIVE_QUANTIZERS, quantize

    if int(qtype) in NATIVE_QUANTIZERS:  # the runtime's C quantizers: ggml's bytes
        return quantize(x, int(qtype))
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def source_identity(model, src: ModelSource) -> tuple[str, str | None]:
    """(the model's name, its Hub repo id or None) from what the user gave: a repo id, or a path
    (a repo id's snapshot in the Hugging Face cache counts as that repo). Never a local path: the
    name is the repo's or the file's/directory's own name (kvconvert.source, general.name)."""
    from ..base.paths import repo_of_cache_path
    from ..models.hub_files import REPO_ID

    given = None if isinstance(model, ModelSource) else str(model)
    repo = given if given and REPO_ID.match(given) and not Path(given).exists() else None
    repo = repo or repo_of_cache_path(src.path)
    name = repo.split("/")[-1] if repo else Path(src.path).name
    return name.removesuffix(".gguf"), repo


def write_metadata(w: gguf.GGUFWriter, src: ModelSource, weights: str, name: str, kv_meta=None,
                   arch=None, repo: str | None = None) -> None:
    """Standard and kvconvert.* metadata of a written GGUF. ``repo``: the Hub repo the model came
    from, recorded as general.base_model.0.* (as llama.cpp's converter records a base model) and as
    kvconvert.source; else kvconvert.source is ``name``."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    if repo:
        w.add_uint32(gguf.Keys.General.BASE_MODEL_COUNT, 1)
        w.add_string(gguf.Keys.General.BASE_MODEL_NAME.format(id=0), repo.split("/")[-1])
        w.add_string(gguf.Keys.General.BASE_MODEL_ORGANIZATION.format(id=0), repo.split("/")[0])
        w.add_string(gguf.Keys.General.BASE_MODEL_REPO_URL.format(id=0), f"https://huggingface.co/{repo}")
    (arch or src.arch).write_gguf_params(w, src.args)
    w.add_file_type(WEIGHT_TYPES[weights][1])
    if weights not in ("f32", "f16", "bf16"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    from ..formats.tokenizer import add_to_gguf

    add_to_gguf(w, src.tokenizer_spec())
    w.add_uint32(Keys.KVConvert.SCHEMA_VERSION, SCHEMA_VERSION)
    w.add_string(Keys.KVConvert.VERSION, __version__)
    w.add_string(Keys.KVConvert.SOURCE, repo or name)
    w.add_string(Keys.KVConvert.SOURCE_FORMAT, src.format)
    if kv_meta is not None:
        kv_meta.add_to_gguf(w)


def check_output(src: ModelSource, output: Path, inputs=()) -> None:
    """Refuse an output that cannot be written or would touch the input (the model's file or
    directory, and ``inputs``: e.g. the path the user gave) — before any long work."""
    refuse_overwrite(output, [src.path, *inputs])
    if output.exists() and output.is_dir():
        raise OutputError(f"cannot write {output}: it is a directory; give a .gguf file path")
    check_parent(output)


def convert(model: str | os.PathLike | ModelSource, output: str | os.PathLike, *, weights: str | None = None,
            profile=None, layout: str = "portable", kv_meta=None, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, phase: str = "write") -> ConvertResult:
    """Write ``model`` (HF dir, GGUF or repo id) as a GGUF at ``output``.

    profile: None — a plain conversion (``kv_meta``, a kvmeta.CacheMeta, may still
    describe caches); a calibrated Profile (or its name/file) — applied in
    ``layout`` ("portable" or "folded", see patch.py). Policies (calibrate, search,
    check, then write) are the pipeline's job: kvconvert.conversion.pipeline.convert.
    weights: a type from WEIGHT_TYPES, or "keep" (a GGUF input's tensors byte for byte, see
    write_kept); None: default_weights (keep for a GGUF, f16 for a Hugging Face model).
    Progress is one phase, ``phase``, counted in MiB written."""
    if weights is not None and weights not in WEIGHT_CHOICES:
        raise InputError(f"unknown weight type {weights!r} (choose from {', '.join(WEIGHT_CHOICES)})")
    src = model if isinstance(model, ModelSource) else load_model(model)
    weights = weights or default_weights(src)
    if weights == KEEP and src.format != "gguf":
        raise InputError(f"{src.path}: --weights keep patches a GGUF file in place; a Hugging Face model needs a "
                         f"weight type ({', '.join(WEIGHT_TYPES)})")
    output = Path(output)
    check_output(src, output, [] if isinstance(model, ModelSource) else [model])
    name, repo = source_identity(model, src)
    patch = None
    if profile is not None:
        from .patch import Patch
        from .profile import Profile, load_profile

        prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
        if not isinstance(prof, Profile):
            raise InputError(f"{profile if isinstance(profile, (str, os.PathLike)) else 'profile'} is a policy, "
                             "not a calibrated profile: use kvconvert.conversion.pipeline.convert (or `kvconvert convert`) "
                             "to calibrate, search and apply it")
        patch = Patch(prof, layout, src, keep_weights=weights == KEEP)
        kv_meta = patch.cache_meta()
    elif weights == KEEP and layout != "portable":
        raise InputError("--weights keep leaves every tensor as it is, so it needs --layout portable; "
                         "for the folded layout choose a weight type (e.g. --weights f16)")
    if weights == KEEP:
        return write_kept(src, output, repo or name, kv_meta, progress=progress, cancel=cancel, phase=phase)
    arch = patch.arch if patch else src.arch
    specs = patch.specs() if patch else src.specs
    plan = plan_types(specs, weights)
    total = sum(_nbytes(s.shape, q) for s, q in plan) / MIB

    w = gguf.GGUFWriter(None, arch.name)
    write_metadata(w, src, weights, name, kv_meta, arch, repo=repo)
    for s, q in plan:
        w.add_tensor_info(s.gguf, s.shape, np.dtype(np.float32), _nbytes(s.shape, q), raw_dtype=q)

    done = 0
    types: dict[str, int] = {}
    start_phase(progress, phase, "MiB")
    with atomic_path(output) as tmp:
        try:
            w.write_header_to_file(tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for s, q in plan:
                check_cancel(cancel)
                x = arch.to_gguf_order(s, patch.tensor(s) if patch else src.weights.get(s.hf))
                data = _encode(x, q)
                w.write_tensor_data(data)
                done += data.nbytes
                types[q.name] = types.get(q.name, 0) + 1
                if progress:
                    progress(round(done / MIB, 1), round(total, 1), s.gguf)
            w.close()
        except OSError as e:
            w.close()
            raise OutputError(f"cannot write {output}: {e.strerror or e}") from None
        except BaseException:
            w.close()
            raise
    n_params = sum(int(np.prod(s.shape)) for s in specs)
    return ConvertResult(output, weights, len(plan), n_params, output.stat().st_size, types, str(src.path))


def write_kept(src: ModelSource, output: Path, source: str, kv_meta=None, *, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None, phase: str = "write") -> ConvertResult:
    """``src`` (a GGUF) at ``output`` with every tensor and every metadata entry byte for byte, except
    that its kvconvert.* entries are replaced by this conversion's (provenance and ``kv_meta``); the
    transforms a profile needs are then all applied by the runtime from metadata (k_cache.smooth for
    K→Q smoothing, docs/design.md §3). llama.cpp computes exactly what it computed on the input.
    The source GGUF's general.* entries (its name, base model, license) stay as they are."""
    from ..formats.gguf_patch import pack_entries, write_patched

    reader = src.weights.reader  # type: ignore[attr-defined]
    if reader.fields.get(Keys.KVConvert.LAYOUT) is not None and \
            str(reader.fields[Keys.KVConvert.LAYOUT].contents()) == "folded":
        raise InputError(f"{src.path}: this file has folded transforms in its weights; patch the original model")
    w = gguf.GGUFWriter(None, src.arch.name)
    w.add_uint32(Keys.KVConvert.SCHEMA_VERSION, SCHEMA_VERSION)
    w.add_string(Keys.KVConvert.VERSION, __version__)
    w.add_string(Keys.KVConvert.SOURCE, source)  # a repo id or the file's name, never its path
    w.add_string(Keys.KVConvert.SOURCE_FORMAT, src.format)
    w.add_string(Keys.KVConvert.WEIGHTS, KEEP)
    if kv_meta is not None:
        kv_meta.add_to_gguf(w)
    mine = lambda key: key.startswith("kvconvert.")  # noqa: E731
    entries, n = pack_entries(w, mine)
    total = (len(reader.data) - reader.data_offset) / MIB
    start_phase(progress, phase, "MiB")
    report = (lambda done, _: progress(round(done / MIB, 1), round(total, 1), "tensor data")) if progress else None
    with atomic_path(output) as tmp:
        try:
            with open(tmp, "wb") as fh:
                write_patched(reader, fh, mine, entries, n, report, lambda: check_cancel(cancel))
        except OSError as e:
            raise OutputError(f"cannot write {output}: {e.strerror or e}") from None
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return ConvertResult(output, KEEP, len(reader.tensors), sum(t.n_elements for t in reader.tensors),
                         output.stat().st_size, types, str(src.path))
