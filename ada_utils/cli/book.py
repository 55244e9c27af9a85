"""``ada book``: execute the notebooks that changed (papermill) and build the Jupyter Book from the copies."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ada_utils.project import repo_root


COMMANDS = {"book": "execute changed notebooks with papermill, then build the book"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``book`` subcommand."""
    p = subparsers.add_parser("book", help=COMMANDS["book"])
    p.add_argument("--params", type=Path, default=None, help="papermill YAML file for every notebook")
    p.add_argument("--only", nargs="*", default=None, help="only these notebooks (and what they need)")
    p.add_argument("--force", action="store_true", help="re-run notebooks even when nothing changed")
    p.add_argument("--no-html", action="store_true", help="execute notebooks only; skip jupyter-book")
    p.set_defaults(func=_book)


def _book(args: argparse.Namespace) -> int:
    from ada_utils.book.runner import copy_findings, run_notebooks, write_profile, write_timings

    root = repo_root()
    start = time.perf_counter()
    times = run_notebooks(params=args.params, only=args.only, force=args.force)
    write_timings(root / "executed", times)
    copy_findings(root / "executed")
    write_profile(root / "executed")
    if args.no_html:
        return 0
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "-W", "-n", "--keep-going"]
    if subprocess.run(cmd, cwd=root).returncode != 0:
        print("ada book: jupyter-book reported warnings or errors (see above)", file=sys.stderr)
        return 1
    print(f"[book] built in {time.perf_counter() - start:.0f} s: {root / '_build' / 'html' / 'index.html'}")
    return 0

