"""cffi (API mode) build of the native runtime: ``kvconvert._kvc``.

Run by the package build (setup.py ``cffi_modules``). The public header
native/include/kvc.h is the cdef; every .c file under native/src is compiled.
Flags are portable (no -march=native); SIMD kernels select their instruction
sets per function with target attributes and are chosen at run time.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"

ffibuilder = FFI()
ffibuilder.cdef((NATIVE / "include" / "kvc.h").read_text())
ffibuilder.set_source(
    "kvconvert._kvc",
    '#include "kvc.h"\n',
    sources=sorted(str(p.relative_to(ROOT)) for p in (NATIVE / "src").rglob("*.c")),
    include_dirs=[str(NATIVE / "include"), str(NATIVE / "src")],
    # -ffp-contract=off: no implicit fused multiply-adds, so scalar code rounds like
    # its numpy twins on every CPU (SIMD kernels use FMA explicitly where intended)
    extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fno-math-errno", "-ffp-contract=off", "-Wall",
                        "-Wno-unused-function"],
    extra_link_args=["-pthread"],
    libraries=["m"],
)

if __name__ == "__main__":  # development: python setup.py build_ext --inplace does the same
    import os

    os.chdir(ROOT)  # source paths are relative to the repository root
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
