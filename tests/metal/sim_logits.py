"""Logits of one tiny GGUF through the CPU backend and through the Metal host logic on the
simulated device (sim.cpp), in a process of its own (it loads kvconvert's extension with
RTLD_GLOBAL so that the simulator library can use its symbols). Prints the largest
|sim − cpu| / max |cpu| over a prefill with all logits and two decode steps.

    python tests/metal/sim_logits.py LIBSIM.so MODEL.gguf '{"type_k": "tq4", "means": true, ...}'
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

import numpy as np


def main(libsim: str, gguf: str, spec: str) -> None:
    import kvconvert._kvc as K
    from kvconvert.runtime import engine

    ctypes.CDLL(K.__file__, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
    create = ctypes.CDLL(libsim).kvm_sim_context_create
    create.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]

    def addr(p) -> int:
        return int(K.ffi.cast("uintptr_t", p))

    real = engine.lib

    class OnSim:  # the extension, but contexts are created on the simulated Metal backend
        def kvc_context_create(self, m, p, out, err, n):
            return create(addr(m), addr(p), addr(out), addr(err), n)

        def __getattr__(self, name):
            return getattr(real(), name)

    kw = json.loads(spec)
    outs = {}
    for backend, lib in (("cpu", real), ("sim", OnSim)):
        engine.lib = lib if backend == "cpu" else (lambda: OnSim())
        model = engine.Model(gguf)
        a, rng = model.args, np.random.default_rng(0)
        params = dict(kw)
        if params.pop("means", False):  # calibrated K and V means (a given K mean is all Metal takes)
            shape = (a.num_hidden_layers, a.num_key_value_heads, a.head_dim)
            params["k_mean"] = rng.normal(0, 0.5, shape).astype(np.float32)
            params["v_mean"] = rng.normal(0, 0.2, shape).astype(np.float32)
        ctx = model.context(n_ctx=48, n_batch=12, n_threads=1, **params)
        first = ctx.eval(list(range(3, 15)), all_logits=True)
        steps = [ctx.eval([int(np.argmax(first[-1])) + i]) for i in range(2)]
        outs[backend] = np.concatenate([first, np.stack(steps)])
    engine.lib = real
    print(float(np.abs(outs["sim"] - outs["cpu"]).max() / np.abs(outs["cpu"]).max()))


if __name__ == "__main__":
    main(*sys.argv[1:4])
