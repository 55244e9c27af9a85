"""Comparing trained variants (04_ablations): per-query metrics, cell means, the paired bootstrap over
models and its verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ada_utils.train import feature_maps, train

if TYPE_CHECKING:
    from ada_utils.train_config import TrainConfig
    from ada_utils.train_data import TrainData


def per_query_metrics(bf, *, real_map: Callable | None = None, synth_map: Callable | None = None,
                      ks: tuple[int, ...] = (5, 10, 100)) -> dict[str, dict[str, np.ndarray]]:
    """Per-query official metrics of every cell: ``{cell: {"R@5": (Q,), ..., "AP": (Q,), "model": (Q,)}}``.

    Same protocol, gallery and maps as ``evaluate.evaluate`` (``cell_means`` of this equals its output); the
    per-query values feed the paired bootstrap over models. ``model`` ids are unique across test cases.
    """
    from ada_utils.evaluate import stack_cells
    from ada_utils.retrieval import abc_metrics

    q, qm, ex, em, cells = stack_cells(bf)
    res = abc_metrics(q, qm, ex, em, bf.distractors, ks, real_map=real_map, synth_map=synth_map)
    return {name: {**{f"R@{k}": np.asarray(res["recall_per_query"][k][sl]) for k in ks},
                   "AP": np.asarray(res["ap"][sl]), "model": qm[sl]} for name, sl in cells}


def cell_means(per_query: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """``evaluate``-format cell metrics (``R@k``, ``mAP``, ``n_queries``) from ``per_query_metrics``."""
    return {cell: {**{k: float(v.mean()) for k, v in d.items() if k.startswith("R@")}, "mAP": float(d["AP"].mean()),
                   "n_queries": len(d["AP"])} for cell, d in per_query.items()}


def run_variant(cfg: TrainConfig, data: TrainData, bf, out_dir: str | Path, *, progress: bool = False) -> dict:
    """Train one variant (replacing any run in ``out_dir``), evaluate it, write ``metrics.json``.

    Returns:
        ``{"cells": evaluate-format metrics, "per_query": per_query_metrics, "seconds": training time,
        "steps": int}``.
    """
    from ada_utils.io import write_json

    res = train(cfg, data, out_dir, overwrite=True, progress=progress)
    real_map, synth_map = feature_maps(res.model)
    pq = per_query_metrics(bf, real_map=real_map, synth_map=synth_map)
    cells = cell_means(pq)
    write_json(Path(out_dir) / "metrics.json", {"cells": cells, "config": dataclasses.asdict(cfg),
                                                "train_seconds": res.seconds, "steps": res.steps})
    return {"cells": cells, "per_query": pq, "seconds": res.seconds, "steps": res.steps}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, model: np.ndarray, *, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean difference ``a - b`` over queries and its 95 % paired bootstrap interval, resampling *models*.

    Args:
        a, b: (Q,) per-query metric of two methods on the same queries (e.g. means over seeds).
        model: (Q,) model id of each query; models are drawn with replacement, all their queries kept.
        n_boot: bootstrap replicates. seed: RNG seed.

    Returns:
        (difference, 2.5 % quantile, 97.5 % quantile).
    """
    ids, inverse = np.unique(model, return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(a, np.float64) - np.asarray(b, np.float64), minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    boot = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(sums.sum() / counts.sum()), float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    """Design section 8: ">" when the interval lies above zero, "≥" when not entirely below, else "<"."""
    return ">" if lo > 0 else ("≥" if hi >= 0 else "<")
