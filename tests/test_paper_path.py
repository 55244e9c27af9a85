"""The paper's path, rehearsed on a CPU: the paper parameter files drive the chapters on an AbC-named root, with
DINO and MoCo v3 ViT-S/16 weights written in their official formats (random values; the formats are real).

Each run takes ``-f params/paper/<file>.yaml`` exactly as a GPU user would, plus a small override (tiny root,
32 px, one epoch, CPU), like ``papermill -f FILE -p NAME VALUE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import papermill as pm
import pytest
import timm
import torch
import yaml

from ada_utils.data.rehearsal import build_rehearsal

REPO = Path(__file__).resolve().parents[1]
ABC_CELLS = {"test_observed_imagenet/gpt", "test_observed_imagenet/media", "test_unobserved_imagenet/gpt",
             "test_unobserved_imagenet/media", "test_bamfg/gpt", "test_bamfg/object", "test_artchive/gpt",
             "test_artchive/object"}
SMALL = {"image_size": 32, "epochs": 1, "device": "cpu", "batch_size": 64, "num_workers": 0, "n_views": 1,
         "nn_refresh": 2, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def abc_root(tiny_root: Path, tmp_path_factory) -> Path:
    return build_rehearsal(tiny_root, tmp_path_factory.mktemp("paper") / "abc")


def _vits16_state(num_heads: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, num_heads=num_heads)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _official_weights(kind: str, folder: Path) -> Path:
    """DINO: the backbone-only state dict of ``dino_deitsmall16_pretrain.pth``; MoCo v3: ``vit-s-300ep.pth.tar``'s
    ``state_dict`` with ``module.base_encoder.`` / ``module.momentum_encoder.`` keys, heads and predictor."""
    if kind == "dino":
        path = folder / "dino_deitsmall16_pretrain.pth"
        torch.save(_vits16_state(6), path)
        return path
    sd = _vits16_state(12)
    state = {f"module.{enc}.{k}": v for enc in ("base_encoder", "momentum_encoder") for k, v in sd.items()}
    state |= {f"module.base_encoder.head.{i}.weight": torch.randn(8, 8) for i in (0, 3)}
    state |= {"module.predictor.0.weight": torch.randn(8, 8)}
    path = folder / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state}, path)
    return path


def _run(notebook: str, params_file: str | None, out: Path, **override) -> None:
    params = yaml.safe_load((REPO / "params" / "paper" / params_file).read_text()) if params_file else {}
    pm.execute_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb"), str(out), parameters={**params, **override},
                        cwd=str(REPO), kernel_name="python3", progress_bar=False)


PAPER_FILES = {"dino": "03_train_dino_vits16.yaml", "mocov3": "03_train_mocov3_vits16.yaml"}


@pytest.fixture(scope="module")
def paper_runs(abc_root: Path, tmp_path_factory) -> dict[str, dict]:
    """03 with each paper file on the rehearsal root, DINO then MoCo v3: each run gets a folder of its own (its
    configuration's), with no ``overwrite``; the chapters after it find the MoCo v3 run, the newest."""
    from ada_utils.train.run_folder import find_run

    out = {}
    for kind, params_file in PAPER_FILES.items():
        folder = tmp_path_factory.mktemp(kind)
        _run("03_train", params_file, folder / "03.ipynb", data_root=str(abc_root),
             weights=str(_official_weights(kind, folder)), **SMALL)
        runs = find_run(Path(os.environ["ADA_WORK"]) / "runs" / "03_train", root=abc_root, backbone=f"{kind}_vits16")
        out[kind] = {"metrics": json.loads((runs / "metrics.json").read_text()),
                     "config": json.loads((runs / "config.json").read_text())["config"],
                     "encoder": (runs / "encoder.safetensors").is_file()}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", PAPER_FILES)
def test_training_chapter_fine_tunes_official_weights_on_an_abc_root(kind, paper_runs):
    run = paper_runs[kind]
    assert set(run["metrics"]["cells"]) == ABC_CELLS and run["metrics"]["train_pool"] == "train_json"
    config = run["config"]
    assert config["finetune"] == "last_k" and config["backbone"] == f"{kind}_vits16" and config["solver"] == "gradient"
    assert run["encoder"]


@pytest.mark.slow
def test_ablations_and_results_group_abc_cells(paper_runs, abc_root, tmp_path):
    """04 and 05 select object and style cells from the cells table: on AbC's test cases no NaN, no 0/0. 05 shows
    the fine-tuned MoCo v3 run of the paper file, with the encoder that run trained. 07 audits pseudo-pairs on
    AbC's training split and gives its verdicts on AbC's cells."""
    _run("04_ablations", None, tmp_path / "04.ipynb", data_root=str(abc_root), smoke=True, image_size=32, seeds=[0],
         n_boot=200)
    summary = json.loads((Path(os.environ["ADA_WORK"]) / "runs" / "04_ablations" /
                          "summary.json").read_text())
    assert set(summary["chance"]) == ABC_CELLS
    rows = summary["ablations"].values()
    assert all(r["R@5 objects"] == r["R@5 objects"] and r["R@5 styles"] == r["R@5 styles"] for r in rows)  # no NaN
    _run("05_results", None, tmp_path / "05.ipynb", data_root=str(abc_root), smoke=True)
    findings = (Path(os.environ["ADA_WORK"]) / "runs" / "05_results" / "findings.md").read_text()
    assert "AbC-named rehearsal" in findings and "8 cells" in findings
    # 07 on the same root: pseudo-pairs of AbC's training split, verdicts on AbC's cells.
    _run("07_mechanism", None, tmp_path / "07.ipynb", data_root=str(abc_root), smoke=True, image_size=32, seeds=[0],
         n_boot=200)
    mechanism = json.loads((Path(os.environ["ADA_WORK"]) / "runs" / "07_mechanism" / "summary.json").read_text())
    assert {c["cell"] for c in mechanism["comparisons"]} == ABC_CELLS and mechanism["data"].startswith("AbC-named")
    assert all(0 <= r["precision"] <= 1 for r in mechanism["audit"])


@pytest.mark.slow
def test_every_other_chapter_reads_an_abc_root(tiny_root, abc_root, tmp_path, monkeypatch):
    """00, 01, 02 and 06 on AbC-named roots (00 on the Hugging Face layout): counts, claims and attributions come
    from AbC's four test cases, and every page names the data it ran on. A fresh work folder: 01 and 02 fit their
    own heads instead of reading another test's run."""
    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    hf_root = build_rehearsal(tiny_root, tmp_path / "abc-hf", layout="hf")
    _run("00_data", None, tmp_path / "00.ipynb", data_root=str(hf_root), smoke=True, scale="tiny")
    metrics = json.loads((Path(os.environ["ADA_WORK"]) / "runs" / "00_data" / "benchmark-seed0" /
                          "metrics.json").read_text())
    assert set(metrics["cells"]) == ABC_CELLS and metrics["data"].startswith("AbC-named rehearsal")
    assert metrics["train"]["models"] > 0 and metrics["distractors"] > 0
    common = {"data_root": str(abc_root), "smoke": True, "scale": "tiny", "image_size": 32,
              "encoders": ["pretrained", "whiten"]}
    for chapter in ("01_cross_covariance", "02_cca_decomposition"):
        _run(chapter, None, tmp_path / f"{chapter}.ipynb", **common)
        text = (tmp_path / f"{chapter}.ipynb").read_text()
        assert "AbC-named rehearsal" in text and "embedded benchmark `" not in text
    _run("06_attribute_your_images", None, tmp_path / "06.ipynb", data_root=str(abc_root), smoke=True, scale="tiny",
         image_size=32)
    runs = Path(os.environ["ADA_WORK"]) / "runs" / "06_attribute_your_images"
    attribution = json.loads(next(runs.glob("*/metrics.json")).read_text())
    assert attribution["data"].startswith("AbC-named rehearsal") and attribution["gallery"]["exemplars"] > 0
    assert all(r["gallery"].startswith("dataset/exemplar/") or r["gallery"].startswith("dataset/laion_subset/")
               for r in attribution["rows"])
