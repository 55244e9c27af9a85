"""``bench/bench_gpu.py --smoke`` runs every part at tiny sizes on the CPU and records a ratio and a target for each.

The full run needs a CUDA GPU (see bench/README.md); here only the script's plumbing is checked: every part runs,
none fails, and the JSON holds what the GPU run will report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_gpu.py"
PARTS = {"embed", "train", "notebook", "metric"}


def _smoke(out: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # ADA_WORK (the session's folder, tiny benchmark inside) is inherited
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = list(out.glob("*-smoke.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def _check(part: dict) -> None:
    assert part["status"] == "ok" and part["error"] is None, part.get("traceback")
    assert isinstance(part["ratio"], float) and math.isfinite(part["ratio"]) and part["ratio"] > 0
    assert isinstance(part["target"], float) and 0 < part["target"] <= 1
    assert part["meets_target"] == (part["ratio"] >= part["target"])


@pytest.mark.slow
def test_smoke_run_records_every_part(tiny_root: Path, tmp_path: Path):
    """Part 3 makes the notebook's library calls, as on a bare GPU machine without papermill (the papermill run of
    03 on the rehearsal root is tests/test_paper_path.py's)."""
    result = _smoke(tmp_path, "--runner", "library")
    assert set(result["parts"]) == PARTS
    for part in result["parts"].values():
        _check(part)
    meta = result["meta"]
    assert meta["smoke"] and meta["torch"] and meta["timm"] and meta["sizes"]["image_size"] == 32
    assert {m["model"] for m in result["parts"]["embed"]["models"]} == {"dino_vits16", "dino_vitb16"}
    assert result["parts"]["notebook"]["steps"] > 0 and result["parts"]["notebook"]["runner"] == "library"
