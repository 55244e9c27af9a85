"""``ada``: the command line of the project (``python -m ada_utils`` is the same).

Each area registers its own subcommands from ``ada_utils/cli/<area>.py`` (``register(subparsers)``); every
subcommand sets ``func(args) -> int``. Heavy imports (torch, timm) happen inside the subcommands, so
``ada --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands, in the order ``ada --help`` lists them.
CLI_MODULES = ("data", "eval", "train", "book")


def build_parser() -> argparse.ArgumentParser:
    """The full ``ada`` argument parser with every area's subcommands."""
    parser = argparse.ArgumentParser(prog="ada", description="ada: synthetic image attribution by alignment and "
                                     "disentanglement (data, embeddings, evaluation, training, the book)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in CLI_MODULES:
        importlib.import_module(f"ada_utils.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ada`` console script; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"ada {args.command}: error: {err}", file=sys.stderr)
        return 2
