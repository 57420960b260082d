"""kvconvert chat MODEL: an interactive conversation with the model's chat template,
streaming each answer; the conversation stays in the KV cache between turns."""

from __future__ import annotations

import argparse
import sys

from . import args as A
from .common import add_runtime_args


def add_sampling_args(p: argparse.ArgumentParser, temp: float = 0.8) -> None:
    p.add_argument("-n", "--max-tokens", type=A.non_negative, default=512,
                   help="most tokens per answer (default %(default)s)")
    p.add_argument("--temp", type=A.temperature, default=temp, help="temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=A.non_negative, default=40, help="top-k (0 = off; default %(default)s)")
    p.add_argument("--top-p", type=A.probability, default=0.95, help="top-p, in (0, 1] (1 = off; default %(default)s)")
    p.add_argument("--repeat-penalty", type=A.penalty, default=1.1, help="repetition penalty (default %(default)s)")
    p.add_argument("--seed", type=A.seed, default=None, help="random seed")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or a directory holding one)")
    p.add_argument("--system", metavar="PROMPT", default=None, help="system prompt")
    add_sampling_args(p)
    add_runtime_args(p)


def session_from_args(args: argparse.Namespace, system: str | None = None):
    from ..serving.chat import ChatSession
    from ..runtime.generate import SamplerParams
    from ..runtime.engine import ContextParams, Model

    model = Model(args.model)
    sampler = SamplerParams(args.temp, args.top_k, args.top_p, args.repeat_penalty, seed=args.seed)
    ctx = ContextParams(n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads, n_sink=args.sink,
                        n_recent=args.recent)
    return ChatSession(model, ctx, sampler, system=system)


def answer(session, text: str, max_tokens: int) -> None:
    """Stream one answer to stdout, ending its line (also before an error line)."""
    try:
        for piece in session.send(text, max_tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from ..serving.chat import ContextFull

    session = session_from_args(args, args.system)
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print("kvconvert chat: type a message; /reset forgets the conversation, /exit (or Ctrl-D) quits; "
              "Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            text = input("> ") if tty else sys.stdin.readline() or None
        except EOFError:
            text = None
        if text is None:  # end of input (Ctrl-D)
            if tty:
                print(file=sys.stderr)
            return 0
        text = text.rstrip("\n")
        cmd = text.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        try:
            answer(session, text, args.max_tokens)
        except ContextFull as e:  # the conversation outgrew the context: say so, keep the loop
            print(f"kvconvert: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            if not tty:
                raise
            print("(answer stopped)", file=sys.stderr)
