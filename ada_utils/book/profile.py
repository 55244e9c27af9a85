"""Where a book build spends its time: seconds per chapter and its slowest cells, read from executed notebooks.

papermill records each cell's wall-clock seconds in the executed copy (``metadata.papermill.duration``);
:func:`chapter_profile` reads them back, and :func:`profile_markdown` renders the clean-clone measurements of
``bench/bench_book.py`` (before and after a change, each run from ``git clone``) as the reproducibility page's
tables.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from ada_utils.files import read_json


def _label(source: str) -> str:
    """A cell's first line of work: the first statement that is not an import (else the cell's first line)."""
    lines = source.splitlines() or [""]
    try:
        work = [node.lineno for node in ast.parse(source).body if not isinstance(node, (ast.Import, ast.ImportFrom))]
    except SyntaxError:  # IPython magics
        work = []
    return lines[work[0] - 1 if work else 0][:60].replace("`", "'")


def cell_seconds(path: Path) -> list[dict]:
    """``[{"cell": index, "label": first line of work, "seconds": s}]`` for every executed code cell of ``path``."""
    cells = json.loads(path.read_text())["cells"]
    out = []
    for i, cell in enumerate(cells):
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell["cell_type"] == "code" and seconds is not None:
            out.append({"cell": i, "label": _label("".join(cell["source"])), "seconds": round(float(seconds), 1)})
    return out


def chapter_profile(executed: Path, *, top: int = 3) -> dict[str, dict]:
    """Per executed notebook in ``executed``: total seconds of its cells and its ``top`` slowest cells."""
    out = {}
    for path in sorted(executed.glob("*.ipynb")):
        cells = cell_seconds(path)
        out[path.stem] = {"seconds": round(sum(c["seconds"] for c in cells), 1),
                          "slowest": sorted(cells, key=lambda c: -c["seconds"])[:top]}
    return out


def _runs_by_label(runs: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["label"], []).append(run)
    return grouped


def profile_markdown(results: Path) -> str:
    """The clean-clone tables (install, each chapter, HTML, total; slowest cells) of ``results``, a JSON file
    written by ``bench/bench_book.py``; a line saying how to make it when there is none."""
    if not results.is_file():
        return f"*No clean-clone measurement yet: run `python bench/bench_book.py` (writes `{results.name}`).*\n"
    data = read_json(results)
    runs = data["runs"]
    heads = [f"{r['label']} ({r['commit'][:7]}, {r['date']})" for r in runs]
    chapters = list(dict.fromkeys(c for r in runs for c in r["notebooks"]))
    rows = [("install (`make venv`)", [r["install_s"] for r in runs])]
    rows += [(f"`{c}`", [r["notebooks"].get(c) for r in runs]) for c in chapters]
    rows += [("HTML (jupyter-book) and photos", [r["book_s"] - sum(r["notebooks"].values()) for r in runs])]
    lines = [f"| step | {' | '.join(heads)} |", "|---|" + "---|" * len(runs)]
    lines += [f"| {name} | {' | '.join('' if s is None else f'{s:,.0f} s' for s in vals)} |" for name, vals in rows]
    totals = [r["install_s"] + r["book_s"] for r in runs]
    lines.append("| **total, from `git clone`** | " + " | ".join(f"**{s / 60:.1f} min**" for s in totals) + " |")
    cells = ["", "The two slowest cells per chapter (seconds, cell number, its first statement after the imports):", "",
             "| chapter | " + " | ".join(_runs_by_label(runs)) + " |", "|---|" + "---|" * len(_runs_by_label(runs))]
    for c in chapters:
        first = [group[0]["profile"].get(c, {}).get("slowest", [])[:2] for group in _runs_by_label(runs).values()]
        cells.append(f"| `{c}` | " + " | ".join("; ".join(f"{x['seconds']:.0f} s cell {x['cell']} `{x['label']}`"
                                                          .replace("|", "\\|")
                                                          for x in top) for top in first) + " |")
    machine = {r["hardware"] for r in runs}
    return (f"Machine: {'; '.join(sorted(machine))}. Each column is one run from `git clone` "
            "(`bench/bench_book.py`).\n\n" + "\n".join(lines + cells) + "\n")


def compare_markdown(path: Path) -> str:
    """``bench/compare_runs.py``'s verdicts as text: which results are identical, and the gradient axes' rows and
    conclusions under both budgets; empty when the file does not exist."""
    if not path.is_file():
        return ""
    data = read_json(path)
    same = [k for k, v in data["exact"].items() if v]
    differ = [k for k, v in data["exact"].items() if not v]
    lines = [f"Identical in both builds ({len(same)} of {len(data['exact'])} checks): " +
             ", ".join(f"`{k}`" for k in same) + "." + (f" **Different**: {', '.join(differ)}." if differ else ""),
             "", f"Gradient-solver axes: **{data['gradient_conclusions_kept']} of {data['gradient_conclusions']}** "
             "conclusions kept (the best variant per axis, and each variant's side of the closed-form default):", "",
             "| row | R@5 objects, before | after | R@5 styles, before | after |", "|---|---|---|---|---|"]
    for row, v in data["gradient_rows"].items():
        b, a = v["before"], v["after"]
        lines.append(f"| `{row}` | {b['R@5 objects']:.3f} | {a['R@5 objects']:.3f} | {b['R@5 styles']:.3f} | "
                     f"{a['R@5 styles']:.3f} |")
    changed = [f"{k} ({v['before']} → {v['after']})" for k, v in data["gradient_axes"].items() if not v["kept"]]
    if changed:
        lines += ["", "Conclusions that changed: " + "; ".join(changed) + "."]
    return "\n".join(lines) + "\n"
