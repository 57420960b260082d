"""cffi (API mode) build of the native runtime: ``kvconvert._kvc``.

Run by the package build (setup.py ``cffi_modules``). The public header
native/include/kvc.h is the cdef. Which sources are compiled is decided here,
per platform (`native_sources`): the portable C11 core everywhere, the SIMD
kernel files of the build machine's instruction-set family only, Objective-C
(``*.m``, a Metal backend) only on macOS. Flags are portable (no
-march=native); SIMD kernels select their instruction sets per function with
target attributes and are chosen at run time (native/src/cpu/dispatch.c).
"""

from __future__ import annotations

import fnmatch
import platform
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
SRC = NATIVE / "src"

# SIMD kernel files (native/src/cpu) per instruction-set family, and the machines
# (platform.machine(), lower case) that compile them. Every other .c file is portable.
SIMD_FILES = {
    "x86-64": (("*_avx2*.c", "*_avx512*.c"), {"x86_64", "amd64"}),
    "aarch64": (("*_neon*.c",), {"aarch64", "arm64"}),
}
APPLE_FILES = ("*.m",)  # Objective-C (GPU backends on Metal): macOS only


def native_sources(system: str | None = None, machine: str | None = None) -> list[str]:
    """Sources (relative to the repository root) to compile for this OS and CPU."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    out = []
    for p in sorted(SRC.rglob("*")):
        name = p.name
        if p.suffix == ".m":
            if system != "Darwin":
                continue
        elif p.suffix != ".c":
            continue
        for patterns, machines in SIMD_FILES.values():
            if any(fnmatch.fnmatch(name, pat) for pat in patterns) and machine not in machines:
                break
        else:
            out.append(str(p.relative_to(ROOT)))
    return out


ffibuilder = FFI()
ffibuilder.cdef((NATIVE / "include" / "kvc.h").read_text())
ffibuilder.set_source(
    "kvconvert._kvc",
    '#include "kvc.h"\n',
    sources=native_sources(),
    include_dirs=[str(NATIVE / "include"), str(SRC)],
    # -ffp-contract=off: no implicit fused multiply-adds, so scalar code rounds like
    # its numpy twins on every CPU (SIMD kernels use FMA explicitly where intended)
    extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fno-math-errno", "-ffp-contract=off", "-Wall",
                        "-Wno-unused-function"],
    # the Metal backend (native/src/metal/backend_metal.m, macOS only) links Apple's frameworks
    extra_link_args=["-pthread"] + (["-framework", "Metal", "-framework", "Foundation"]
                                    if platform.system() == "Darwin" else []),
    libraries=["m"],
)

if __name__ == "__main__":  # development: python setup.py build_ext --inplace does the same
    import os

    os.chdir(ROOT)  # source paths are relative to the repository root
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
