"""kvconvert run MODEL -p TEXT: generate text, streaming it as it comes."""

from __future__ import annotations

import argparse
import sys

from ..runtime.generate import SamplerParams, generate
from ..runtime.engine import ContextParams, Model
from . import args as A
from .common import add_runtime_args




def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or a directory holding one)")
    p.add_argument("-p", "--prompt", required=True, type=A.nonempty, help="prompt text (not empty)")
    p.add_argument("-n", "--max-tokens", type=A.non_negative, default=128, help="tokens to generate (default %(default)s)")
    p.add_argument("--temp", type=A.temperature, default=0.8, help="temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=A.non_negative, default=40, help="top-k (0 = off; default %(default)s)")
    p.add_argument("--top-p", type=A.probability, default=0.95, help="top-p, in (0, 1] (1 = off; default %(default)s)")
    p.add_argument("--repeat-penalty", type=A.penalty, default=1.1, help="repetition penalty (default %(default)s)")
    p.add_argument("--seed", type=A.seed, default=None, help="random seed")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the GGUF's chat template")
    p.add_argument("--system", metavar="PROMPT", default=None, help="--chat: system prompt")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if args.chat:
        from .chat import answer, session_from_args

        answer(session_from_args(args, args.system), args.prompt, args.max_tokens)
        return 0
    model = Model(args.model)
    sampler = SamplerParams(args.temp, args.top_k, args.top_p, args.repeat_penalty, seed=args.seed)
    ctx = ContextParams(n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads, n_sink=args.sink,
                        n_recent=args.recent)
    sys.stdout.write(args.prompt)
    try:
        for piece in generate(model, args.prompt, args.max_tokens, sampler, ctx):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:  # also before an error line (non-finite logits), so it starts a line of its own
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
