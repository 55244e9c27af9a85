"""The whole book from a clean clone: install, every chapter, the HTML, timed as a newcomer would run it.

Each run clones the repository (``git clone`` of the working copy's HEAD) into a temporary folder, then times the
README's command in two parts: ``make venv`` (the install) and ``make book`` (photos, benchmark, every notebook,
jupyter-book). The runner's ``executed/timings.json`` gives each chapter's seconds and the executed notebooks give
each cell's (papermill records them), so the result says where the time goes, not only how much. Run it on an idle
machine: a second job on two cores doubles every figure.

Usage::

    python bench/bench_book.py --label after --runs 2          # two clean clones of HEAD, one after the other
    python bench/bench_book.py --label before --harvest DIR --install-s 270 --book-s 1600
                                                               # a clone already built by hand (e.g. an old commit)

Appends to ``bench/results/book-cpu<cores>.json`` (``--out``): per run the label, commit, date, hardware, install
and book seconds, seconds per chapter and the slowest cells. The reproducibility page renders that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ada_utils.book.profile import chapter_profile
from ada_utils.files import read_json, write_json
from ada_utils.project import hardware

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], cwd: Path, log: Path) -> float:
    """Seconds ``cmd`` ran in ``cwd`` (output to ``log``); raise naming the log when it fails."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        if subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed in {cwd}: see {log}")
    return round(time.perf_counter() - start, 1)


def harvest(clone: Path, *, label: str, install_s: float, book_s: float) -> dict:
    """One run's record from a built clone: chapter seconds (runner), slowest cells (executed notebooks)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    return {"label": label, "commit": commit, "date": dt.date.today().isoformat(), "hardware": hardware(),
            "install_s": install_s, "book_s": book_s,
            "notebooks": read_json(clone / "executed" / "timings.json"),
            "profile": chapter_profile(clone / "executed")}


def clean_clone_run(label: str, keep: Path | None) -> dict:
    """Clone HEAD, time ``make venv`` then ``make book``, harvest; the clone (with its logs and ``runs/``) stays in
    ``keep`` when given, else it is removed."""
    tmp = Path(tempfile.mkdtemp(prefix="ada-book-"))
    clone = keep or tmp / "ada"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    install_s = _timed(["make", "venv"], clone, tmp / "install.log")
    book_s = _timed(["make", "book"], clone, tmp / "book.log")
    record = harvest(clone, label=label, install_s=install_s, book_s=book_s)
    shutil.rmtree(tmp, ignore_errors=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="what this run measures, e.g. before or after")
    parser.add_argument("--runs", type=int, default=1, help="clean clones, one after the other")
    parser.add_argument("--harvest", type=Path, default=None, help="record a clone already built by hand")
    parser.add_argument("--install-s", type=float, default=0.0, help="with --harvest: its make venv seconds")
    parser.add_argument("--book-s", type=float, default=0.0, help="with --harvest: its make book seconds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"book-cpu{os.cpu_count()}.json")
    parser.add_argument("--keep", type=Path, default=None, help="clone into this new folder and keep it (its runs/ "
                        "are what bench/compare_runs.py reads); one run only")
    args = parser.parse_args()
    if args.harvest:
        records = [harvest(args.harvest, label=args.label, install_s=args.install_s, book_s=args.book_s)]
    else:
        if args.keep and args.runs != 1:
            parser.error("--keep takes one run (--runs 1)")
        records = [clean_clone_run(args.label, args.keep) for _ in range(args.runs)]
    old = read_json(args.out)["runs"] if args.out.is_file() else []
    write_json(args.out, {"what": "make venv + make book from git clone (bench/bench_book.py)", "runs": old + records})
    for r in records:
        print(f"{r['label']} {r['commit'][:7]}: install {r['install_s']:.0f} s + book {r['book_s']:.0f} s = "
              f"{(r['install_s'] + r['book_s']) / 60:.1f} min; " +
              ", ".join(f"{k} {v:.0f} s" for k, v in r["notebooks"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
