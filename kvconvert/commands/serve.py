"""kvconvert serve MODEL: an OpenAI-compatible HTTP server (chat and text completions,
streaming, continuous batching over per-slot compressed KV caches)."""

from __future__ import annotations

import argparse
import os
import sys

from . import args as A
from .common import add_cache_args

port = A.int_in(0, 65535)
parallel = A.int_in(1, 256)
queue = A.int_in(0, 1 << 16)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or a directory holding one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=port, default=8080, help="port (default %(default)s; 0: any free port)")
    p.add_argument("--parallel", "-np", type=parallel, default=4,
                   help="slots: requests decoded together, each with its own KV cache (default %(default)s)")
    p.add_argument("--queue", type=queue, default=None, metavar="N",
                   help="requests that may wait for a slot; beyond that: 429 (default 4 x --parallel)")
    p.add_argument("--ctx", type=A.ctx, default=4096, help="context length of each slot, in tokens "
                                                           "(default %(default)s)")
    add_cache_args(p)
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (default: $KVCONVERT_API_KEY if set, else none)")
    p.add_argument("--alias", default=None, metavar="NAME", help="model id in the API (default: the file name)")


def run(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from ..serving.server import make_server

    key = args.api_key if args.api_key is not None else os.environ.get("KVCONVERT_API_KEY") or None
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        from ..base.errors import InputError

        raise InputError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; choose another --port") \
            from None
    server = make_server(args.model, parallel=args.parallel, n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv,
                         n_threads=args.threads, n_sink=args.sink, n_recent=args.recent, api_key=key,
                         max_queue=args.queue,
                         model_id=args.alias)
    host, bound = sock.getsockname()[:2]
    ctx = server.engine.params
    print(f"kvconvert serve: {server.model_id} on http://{host}:{bound}/v1 ({args.parallel} slots x {ctx.n_ctx} "
          f"tokens, K cache {ctx.type_k}, V cache {ctx.type_v}{', API key required' if key else ''})",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(server.app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
