"""Did a faster book change a result? Diff the result files of two builds' ``runs/`` folders.

Exact equality is required of the final comparison of 04 (table, per-seed cells, bootstrap comparisons, chance),
its validation and oracle measurements, and of 05's JSON files (verdicts, best method per cell, calibration).
Timings, hardware lines and run-folder names are not results and are left out. The gradient-solver ablation axes
of 04 may run on a smaller budget in the second build; for those the script compares *conclusions* per axis:
which variant is best (object and style cells) and on which side of the closed-form default each variant lies.

Usage: ``python bench/compare_runs.py BEFORE/runs AFTER/runs [--out bench/results/book-compare.json]``; exits 1
when an exact comparison fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ada_utils.files import read_json, write_json

NOT_RESULTS = {"hardware", "train_seconds", "seconds", "train s", "final_runs", "source", "path"}
EXACT_04 = ("final", "chance", "comparisons", "per_seed", "why", "seeds", "scale", "data_root", "config")
COLUMNS = ("R@5 objects", "R@5 styles")
REFERENCE = "solver/closed_form"  # the closed-form default the gradient rows are read against


def strip(obj):
    """``obj`` without the fields that are not results (timings, hardware, folder names), recursively."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in NOT_RESULTS}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def axis_conclusions(ablations: dict[str, dict]) -> dict[str, dict]:
    """Per ``gradient: …`` / ``solver`` axis: best variant per column and each variant's side of the reference."""
    ref = ablations[REFERENCE]
    axes: dict[str, dict[str, dict]] = {}
    for key, row in ablations.items():
        axis, variant = key.split("/", 1)
        if axis.startswith("gradient") or axis == "solver":
            axes.setdefault(axis, {})[variant] = row
    out = {}
    for axis, rows in axes.items():
        out[axis] = {f"best {c}": max(rows, key=lambda v: rows[v][c]) for c in COLUMNS}
        out[axis] |= {f"{v} vs closed form, {c}": "above" if r[c] > ref[c] else "below" if r[c] < ref[c] else "equal"
                      for v, r in rows.items() if f"{axis}/{v}" != REFERENCE for c in COLUMNS}
    return out


def compare(before: Path, after: Path) -> dict:
    """Exact checks of 04's final results and 05's files, and the gradient axes' conclusions."""
    b04, a04 = (read_json(r / "04_ablations" / "summary.json") for r in (before, after))
    exact = {f"04 {k}": strip(b04.get(k)) == strip(a04.get(k)) for k in EXACT_04}
    closed = {k: v for k, v in b04["ablations"].items() if not k.startswith(("gradient", "solver/gradient"))}
    exact["04 closed-form ablation rows"] = strip(closed) == strip({k: a04["ablations"][k] for k in closed})
    for path in sorted((before / "05_results").rglob("*.json")):
        other = after / path.relative_to(before)
        exact[f"05 {path.relative_to(before / '05_results')}"] = other.is_file() and \
            strip(read_json(path)) == strip(read_json(other))
    cb, ca = axis_conclusions(b04["ablations"]), axis_conclusions(a04["ablations"])
    kept = {f"{axis}: {k}": {"before": v, "after": ca[axis][k], "kept": v == ca[axis][k]}
            for axis in cb for k, v in cb[axis].items()}
    return {"exact": exact, "all_exact": all(exact.values()), "gradient_axes": kept,
            "gradient_conclusions_kept": sum(v["kept"] for v in kept.values()), "gradient_conclusions": len(kept),
            "gradient_rows": {k: {"before": {c: b04["ablations"][k][c] for c in COLUMNS},
                                  "after": {c: a04["ablations"][k][c] for c in COLUMNS}}
                              for k in b04["ablations"] if k.startswith(("gradient", "solver/gradient"))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="runs/ folder of the reference build")
    parser.add_argument("after", type=Path, help="runs/ folder of the new build")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "book-compare.json")
    args = parser.parse_args()
    result = compare(args.before, args.after)
    write_json(args.out, result)
    for name, same in result["exact"].items():
        print(f"{'identical' if same else 'DIFFERENT'}  {name}")
    print(f"gradient axes: {result['gradient_conclusions_kept']}/{result['gradient_conclusions']} conclusions kept")
    for name, v in result["gradient_axes"].items():
        if not v["kept"]:
            print(f"  changed: {name}: {v['before']} -> {v['after']}")
    print(f"wrote {args.out}")
    sys.exit(0 if result["all_exact"] else 1)


if __name__ == "__main__":
    main()
