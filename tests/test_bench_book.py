"""``bench/compare_runs.py``: exact equality where the book's results must not move, conclusions where a
smaller budget is allowed (the gradient-solver ablation axes of chapter 04)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from compare_runs import axis_conclusions, compare  # noqa: E402


def _row(objects: float, styles: float, seconds: float = 1.0) -> dict:
    return {"R@5 objects": objects, "R@5 styles": styles, "mAP all": 0.1, "train s": seconds}


def _runs(folder: Path, ablations: dict, final_r5: float, hardware: str) -> Path:
    summary = {"final": {"ada": {"mean": {"c": {"R@5": final_r5}}}}, "chance": {"c": {"R@5": 0.01}},
               "comparisons": [], "per_seed": {}, "why": {"lam_path": {"lam": [1.0]}}, "seeds": [0], "scale": "tiny",
               "data_root": "x", "config": {"epochs": 8}, "ablations": ablations, "hardware": hardware,
               "train_seconds": {"ada": [float(len(hardware))]}}
    (folder / "04_ablations").mkdir(parents=True)
    (folder / "04_ablations" / "summary.json").write_text(json.dumps(summary))
    (folder / "05_results" / "summary-seed0").mkdir(parents=True)
    (folder / "05_results" / "summary-seed0" / "metrics.json").write_text(json.dumps({"best": "ada",
                                                                                       "hardware": hardware}))
    return folder


ABLATIONS = {"method/ada": _row(0.5, 0.3), "solver/closed_form": _row(0.5, 0.3),
             "solver/gradient, both": _row(0.4, 0.35), "gradient: tau/tau=0.1": _row(0.4, 0.35),
             "gradient: tau/tau=0.05": _row(0.45, 0.2)}


def test_conclusions_are_the_best_variant_and_the_side_of_the_closed_form():
    got = axis_conclusions(ABLATIONS)
    tau = got["gradient: tau"]
    assert tau["best R@5 objects"] == "tau=0.05" and tau["best R@5 styles"] == "tau=0.1"
    assert got["solver"]["gradient, both vs closed form, R@5 objects"] == "below"
    assert got["solver"]["gradient, both vs closed form, R@5 styles"] == "above"
    assert "method" not in got


def test_timings_do_not_count_and_results_must_match(tmp_path):
    before = _runs(tmp_path / "a", ABLATIONS, 0.6, "CPU: 2 cores")
    smaller = copy.deepcopy(ABLATIONS)
    smaller["gradient: tau/tau=0.05"] = _row(0.44, 0.25, seconds=0.2)  # smaller budget, same conclusions
    after = _runs(tmp_path / "b", smaller, 0.6, "GPU: another card")
    result = compare(before, after)
    assert result["all_exact"] and result["gradient_conclusions_kept"] == result["gradient_conclusions"] == 10
    smaller["method/ada"] = _row(0.51, 0.3)  # a closed-form row moved: not allowed
    moved = _runs(tmp_path / "c", smaller, 0.61, "CPU: 2 cores")
    result = compare(before, moved)
    assert not result["exact"]["04 final"] and not result["exact"]["04 closed-form ablation rows"]
    assert result["exact"]["05 summary-seed0/metrics.json"] and not result["all_exact"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "compare_runs.py"), str(before), str(moved), "--out",
                           str(tmp_path / "cmp.json")], capture_output=True, text=True)
    assert proc.returncode == 1 and "DIFFERENT  04 final" in proc.stdout
