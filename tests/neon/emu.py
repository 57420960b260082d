"""Run aarch64 kernels bare in the Unicorn CPU emulator.

`build_image` cross-compiles C files with zig (the `ziglang` package) into one
static, position-dependent image at a fixed address (image.ld): no OS, no libc;
driver.c supplies the few libc functions the code calls. `Machine` loads it into
an emulated Cortex-class CPU ("max": ARMv8.x with NEON and dotprod, FP/SIMD
enabled), and `call` runs one function by name under the AAPCS64 calling
convention: integer and pointer arguments in x0-x7, float arguments in s0-s7,
the result in x0 or s0, and the return address a sentinel where emulation stops.
Inputs and outputs live in a bump-allocated data arena written and read with
numpy.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import unicorn
from unicorn import arm64_const as A

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NATIVE = ROOT / "native"

IMAGE_BASE = 0x100000  # image.ld
RETURN = 0x80000  # sentinel return address (mapped, never executed)
STACK_BASE, STACK_SIZE = 0x20000000, 4 << 20
ARENA_BASE, ARENA_SIZE = 0x40000000, 64 << 20
PAGE = 0x1000

ZIG_CC = [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl"]
# The runtime's own flags (kvconvert/_build_native.py) for a baseline ARMv8 CPU, plus
# what a bare image needs: no stack protector (it calls libc), droppable sections.
CFLAGS = ["-mcpu=generic", "-O3", "-std=gnu11", "-fno-math-errno", "-ffp-contract=off", "-Wall",
          "-Wno-unused-function", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
          "-ffunction-sections", "-fdata-sections", "-g0", "-I", str(NATIVE / "include"), "-I", str(NATIVE / "src")]


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\nfailed:\n{r.stderr}")


def build_image(sources: list[tuple[Path, list[str]]], out_dir: Path, cc: list[str] | None = None) -> Path:
    """Compile each (source, extra flags) with cc (default: zig's clang; an aarch64
    GCC works too) and link them with image.ld (zig's lld); returns the ELF."""
    objs = []
    for src, extra in sources:
        obj = out_dir / (src.stem + ".o")
        run([*(cc or ZIG_CC), *CFLAGS, *extra, "-c", str(src), "-o", str(obj)])
        objs.append(str(obj))
    elf = out_dir / "neon.elf"
    run([*ZIG_CC, "-nostdlib", "-static", "-Wl,--gc-sections", "-Wl,-e,kvc_neon_test_entry",
         "-T", str(HERE / "image.ld"), *objs, "-o", str(elf)])
    return elf


def read_elf(path: Path) -> tuple[list[tuple[int, bytes, int]], dict[str, int]]:
    """ELF64 little-endian: loadable segments (vaddr, file bytes, memsz) and symbol addresses."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segments.append((vaddr, data[off:off + filesz], memsz))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    symbols = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]][4]
        for j in range(sh[5] // 24):
            name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, sh[4] + j * 24)
            end = data.index(b"\0", strtab + name)
            symbols[data[strtab + name:end].decode()] = value
    return segments, symbols


class Machine:
    """One emulated aarch64 CPU with the image loaded; `call` runs a function."""

    def __init__(self, elf: Path):
        segments, self.symbols = read_elf(elf)
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_MAX)  # NEON + dotprod
        lo = min(v for v, _, _ in segments) & ~(PAGE - 1)
        hi = (max(v + m for v, _, m in segments) + PAGE - 1) & ~(PAGE - 1)
        uc.mem_map(lo, hi - lo)
        for vaddr, blob, _ in segments:
            uc.mem_write(vaddr, blob)  # the rest (bss) stays zero
        uc.mem_map(RETURN, PAGE)
        uc.mem_map(STACK_BASE, STACK_SIZE)
        uc.mem_map(ARENA_BASE, ARENA_SIZE)
        uc.reg_write(A.UC_ARM64_REG_CPACR_EL1, 3 << 20)  # FPEN = 0b11: FP/SIMD without traps
        self.uc, self.top = uc, ARENA_BASE

    # ---- data arena ----
    def reset(self) -> None:
        self.top = ARENA_BASE

    def alloc(self, x: np.ndarray | int, offset: int = 0) -> int:
        """Room for x (an array's bytes, copied in, or a byte count), 64-byte aligned + offset."""
        nbytes = x if isinstance(x, int) else np.ascontiguousarray(x).nbytes
        addr = ((self.top + 63) & ~63) + offset
        self.top = addr + nbytes + 8
        if self.top > ARENA_BASE + ARENA_SIZE:
            raise MemoryError("emulator arena full")
        if not isinstance(x, int):
            self.uc.mem_write(addr, np.ascontiguousarray(x).tobytes())
        return addr

    def read(self, addr: int, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(bytes(self.uc.mem_read(addr, dtype.itemsize * count)), dtype).copy()

    def write(self, addr: int, x: np.ndarray) -> None:
        self.uc.mem_write(addr, np.ascontiguousarray(x).tobytes())

    # ---- calls ----
    def addr(self, fn: str | int) -> int:
        return fn if isinstance(fn, int) else self.symbols[fn]

    def _run(self, fn: str | int, args) -> None:
        ints, floats = [], []
        for a in args:
            (floats if isinstance(a, (float, np.floating)) else ints).append(a)
        assert len(ints) <= 8 and len(floats) <= 8, "stack arguments are not supported"
        for i, v in enumerate(ints):
            self.uc.reg_write(A.UC_ARM64_REG_X0 + i, int(v) & (2**64 - 1))
        for i, v in enumerate(floats):
            self.uc.reg_write(A.UC_ARM64_REG_Q0 + i, int(np.float32(v).view(np.uint32)))
        self.uc.reg_write(A.UC_ARM64_REG_SP, STACK_BASE + STACK_SIZE - 64)
        self.uc.reg_write(A.UC_ARM64_REG_LR, RETURN)
        self.uc.emu_start(self.addr(fn), RETURN, timeout=60_000_000)  # µs: a hang fails, not blocks
        pc = self.uc.reg_read(A.UC_ARM64_REG_PC)
        if pc != RETURN:
            raise RuntimeError(f"{fn} did not return (pc {pc:#x})")

    def call(self, fn: str | int, *args) -> int:
        """Run fn(*args); returns x0 as a signed 64-bit int."""
        self._run(fn, args)
        return int(np.uint64(self.uc.reg_read(A.UC_ARM64_REG_X0)).view(np.int64))

    def callf(self, fn: str | int, *args) -> np.float32:
        """Run fn(*args); returns s0."""
        self._run(fn, args)
        return np.uint32(self.uc.reg_read(A.UC_ARM64_REG_Q0) & 0xFFFFFFFF).view(np.float32)
