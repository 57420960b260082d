"""kvconvert tui [MODEL]: the guided Textual app (calibrate, choose a profile,
convert, evaluate, share). The app only calls the library functions the other
commands use; Textual is imported only when this command runs."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model to start with: Hugging Face directory, GGUF file, or Hub repo id "
                                            "(from the local cache); default: pick one in the app")


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    if importlib.util.find_spec("textual") is None:
        print("kvconvert tui: the TUI needs Textual, an optional extra: pip install 'kvconvert[tui]' "
              "(or pip install textual==8.2.8)", file=sys.stderr)
        return 2
    from ..tui.app import KVConvertApp

    KVConvertApp(args.model).run()
    return 0
