"""Benchmark-level evaluation: score every (test case, prompt type) cell of embedded benchmark features.

Cells are ``"<test case>/<prompt type>"`` (e.g. ``test_styles/object``); each reports the official metrics of
:mod:`ada_utils.retrieval` as fractions in [0, 1]: ``{"R@5", "R@10", "R@100", "mAP", "n_queries"}``, means over
the cell's queries (never pooled across cells, as AbC reports them; :mod:`ada_utils.retrieval`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import digamma

from ada_utils.encoders.features import BenchmarkFeatures, stack_cells
from ada_utils.retrieval import FeatureMap, abc_metrics


def evaluate(bf: BenchmarkFeatures, *, real_map: FeatureMap | None = None, synth_map: FeatureMap | None = None,
             ks: Sequence[int] = (5, 10, 100), device: str = "cpu", progress: bool = False) -> dict[str, dict]:
    """Official metrics per cell. ``real_map`` maps exemplars and distractors, ``synth_map`` queries (AbC eval).

    Every cell's gallery is all distractors + its own model's exemplars; the distractors are streamed once for
    all cells (model ids are made unique across test cases).

    Returns:
        ``{"<test case>/<prompt>": {"R@5": float, "R@10": float, "R@100": float, "mAP": float,
        "n_queries": int}}`` (one ``R@k`` per k in ``ks``), fractions in [0, 1].
    """
    q, qm, ex, em, cells = stack_cells(bf)
    res = abc_metrics(q, qm, ex, em, bf.distractors, ks, real_map=real_map, synth_map=synth_map, device=device,
                      progress=progress)
    return {name: {**{f"R@{k}": float(res["recall_per_query"][k][sl].mean()) for k in ks},
                   "mAP": float(res["ap"][sl].mean()), "n_queries": sl.stop - sl.start}
            for name, sl in cells}


def per_query_metrics(bf: BenchmarkFeatures, *, real_map: FeatureMap | None = None,
                      synth_map: FeatureMap | None = None,
                      ks: tuple[int, ...] = (5, 10, 100)) -> dict[str, dict[str, np.ndarray]]:
    """Per-query official metrics of every cell: ``{cell: {"R@5": (Q,), ..., "AP": (Q,), "model": (Q,)}}``.

    Same protocol, gallery and maps as :func:`evaluate` (``cell_means`` of this equals its output); the
    per-query values feed the paired bootstrap over models. ``model`` ids are unique across test cases.
    """
    q, qm, ex, em, cells = stack_cells(bf)
    res = abc_metrics(q, qm, ex, em, bf.distractors, ks, real_map=real_map, synth_map=synth_map)
    return {name: {**{f"R@{k}": np.asarray(res["recall_per_query"][k][sl]) for k in ks},
                   "AP": np.asarray(res["ap"][sl]), "model": qm[sl]} for name, sl in cells}


def cell_means(per_query: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """``evaluate``-format cell metrics (``R@k``, ``mAP``, ``n_queries``) from ``per_query_metrics``."""
    return {cell: {**{k: float(v.mean()) for k, v in d.items() if k.startswith("R@")}, "mAP": float(d["AP"].mean()),
                   "n_queries": len(d["AP"])} for cell, d in per_query.items()}


def expected_random_ap(n_relevant: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """E[AP] of a uniformly random ranking of ``gallery`` items of which ``n_relevant`` are positives.

    A positive at position p has on average (R - 1)(p - 1)/(G - 1) positives ahead of it, so its expected
    precision is (1/G) sum_p (1/p)(1 + (R - 1)(p - 1)/(G - 1)) = (H_G + (R - 1)(G - H_G)/(G - 1)) / G,
    with H_G the G-th harmonic number; AP averages this over the R positives.
    """
    r, g = np.asarray(n_relevant, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    h = digamma(g + 1) + np.euler_gamma  # H_G
    return np.where(g > 1, (h + (r - 1) * (g - h) / np.maximum(g - 1, 1)) / g, 1.0)


def chance_level(bf: BenchmarkFeatures, *, ks: Sequence[int] = (5, 10, 100)) -> dict[str, dict]:
    """Expected metrics of a random ranking, same layout as :func:`evaluate` (R@K = min(K, G)/G, G = N + E_m)."""
    n = len(bf.distractors)
    out = {}
    for name, case in bf.cases.items():
        per_model = np.bincount(case.exemplar_model)
        for prompt, qm in case.query_model.items():
            r = per_model[qm]
            g = n + r
            out[f"{name}/{prompt}"] = {**{f"R@{k}": float(np.mean(np.minimum(k, g) / g)) for k in ks},
                                       "mAP": float(np.mean(expected_random_ap(r, g))), "n_queries": len(qm)}
    return out
