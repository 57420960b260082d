"""kvconvert cache [list | clean [--kind KIND ...] [--older-than DAYS] [--dry-run]]"""

from __future__ import annotations

import argparse

from ..base import cache
from ..base.paths import cache_dir
from .report import _size, make_console


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "clean"], default="list",
                   help="list (default): what the cache holds; clean: remove it")
    p.add_argument("--kind", action="append", choices=list(cache.KINDS), metavar="KIND",
                   help=f"what clean removes, repeatable: {', '.join(cache.KINDS)} "
                        f"(default: {', '.join(cache.DEFAULT_CLEAN)}; fixtures only when named)")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="clean only entries not modified for this many days")
    p.add_argument("--dry-run", action="store_true", help="clean: say what would be removed, remove nothing")


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    console = make_console()
    root = cache_dir()
    if args.action == "list":
        found = cache.entries(root)
        t = Table(title=f"kvconvert cache: {root}")
        for col, just in (("kind", "left"), ("size", "right"), ("age", "right"), ("path", "left")):
            t.add_column(col, justify=just)
        for e in found:
            t.add_row(e.kind, _size(e.bytes), f"{e.age_days:.0f} d", str(e.path.relative_to(root)))
        console.print(t)
        by_kind = {k: sum(e.bytes for e in found if e.kind == k) for k in cache.KINDS}
        console.print("total " + _size(sum(by_kind.values())) + ": " +
                      ", ".join(f"{k} {_size(b)}" for k, b in by_kind.items() if b))
        return 0
    gone = cache.clean(tuple(args.kind or cache.DEFAULT_CLEAN), args.older_than, args.dry_run, root)
    verb = "would remove" if args.dry_run else "removed"
    for e in gone:
        console.print(f"{verb} {e.path.relative_to(root)} ({e.kind}, {_size(e.bytes)})")
    console.print(f"{verb} {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}, {_size(sum(e.bytes for e in gone))}")
    return 0
