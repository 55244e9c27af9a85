"""The ablation study's library side: per-query metrics equal ``evaluate``, rows and summaries use the cells table,
comparisons resample models, the generated summary counts verdicts from the numbers; the cells table itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ada_utils.data import cells
from ada_utils.encoders import BenchmarkFeatures, CaseFeatures
from ada_utils.eval import cell_means, evaluate, per_query_metrics
from ada_utils.eval import ablation
from ada_utils.eval.statistics import Comparison, Verdict


def _bench(rng: np.random.Generator) -> BenchmarkFeatures:
    cases = {}
    for name, n_models in (("test_observed_imagenet", 5), ("test_bamfg", 4)):
        ex = rng.normal(size=(n_models, 8)).astype(np.float32)
        qm = np.repeat(np.arange(n_models), 3)
        cases[name] = CaseFeatures({"gpt": (ex[qm] + rng.normal(size=(len(qm), 8))).astype(np.float32)},
                                   {"gpt": qm}, ex, np.arange(n_models))
    return BenchmarkFeatures(cases, rng.normal(size=(30, 8)).astype(np.float32), {})


def test_per_query_metrics_match_evaluate() -> None:
    bf = _bench(np.random.default_rng(0))

    def fmap(x: np.ndarray) -> np.ndarray:
        return 2 * x + 1

    pq = per_query_metrics(bf, real_map=fmap, synth_map=fmap)
    ref = evaluate(bf, real_map=fmap, synth_map=fmap)
    assert cell_means(pq).keys() == ref.keys()
    for cell, vals in cell_means(pq).items():
        assert all(np.isclose(vals[m], ref[cell][m]) for m in ("R@5", "R@10", "mAP", "n_queries"))
    assert len(np.unique(np.concatenate([d["model"] for d in pq.values()]))) == 9


def test_cells_table_groups_abc_and_embedded_cases() -> None:
    names = ["test_observed_imagenet/gpt", "test_unobserved_imagenet/media", "test_bamfg/object",
             "test_artchive/gpt", "test_objects_seen/scene", "test_objects_unseen/media", "test_styles/object"]
    assert cells.object_cells(names) == [names[0], names[1], names[4], names[5]]
    assert cells.style_cells(names) == [names[2], names[3], names[6]]
    assert cells.seen_object_cells(names) == [names[0], names[4]]
    assert cells.unseen_cells(names) == [names[1], names[2], names[3], names[5], names[6]]
    with pytest.raises(KeyError, match="test_mine.*TEST_CASE_KINDS"):
        cells.case_kind("test_mine/gpt")


def _runs(rng: np.random.Generator, offset: float, n_seeds: int = 2) -> list[dict]:
    model = np.repeat(np.arange(20), 4)
    out = []
    for _ in range(n_seeds):
        pq = {c: {"R@5": np.clip(rng.random(80) * 0.3 + offset, 0, 1), "AP": rng.random(80) * 0.2 + offset,
                  "model": model} for c in ("test_objects_seen/scene", "test_styles/object")}
        out.append({"per_query": pq, "cells": {c: {"R@5": float(d["R@5"].mean()), "R@10": 0.5, "R@100": 0.9,
                                                   "mAP": float(d["AP"].mean())} for c, d in pq.items()},
                    "seconds": 1.0, "steps": 0})
    return out


def test_summary_row_seed_summary_and_comparisons() -> None:
    rng = np.random.default_rng(1)
    final = {"ada": _runs(rng, 0.5), "pretrained": _runs(rng, 0.1)}
    row = ablation.summary_row(final["ada"][0])
    names = list(final["ada"][0]["cells"])
    assert row["R@5 objects"] == final["ada"][0]["cells"]["test_objects_seen/scene"]["R@5"]
    assert row["R@5 styles"] == final["ada"][0]["cells"]["test_styles/object"]["R@5"]
    s = ablation.seed_summary(final["ada"], names)
    vals = [r["cells"]["test_styles/object"]["R@5"] for r in final["ada"]]
    assert s["mean"]["test_styles/object"]["R@5"] == pytest.approx(np.mean(vals))
    assert s["std"]["test_styles/object"]["R@5"] == pytest.approx(np.std(vals, ddof=1))
    comps = ablation.compare(final, [("ada", "pretrained")], names, n_boot=200)
    assert [(c.cell, c.metric) for c in comps] == [(n, m) for n in names for m in ("R@5", "mAP")]
    assert all(c.verdict is Verdict.ABOVE and c.ci_low <= c.diff <= c.ci_high for c in comps)
    assert comps[0].diff == pytest.approx(np.mean([ablation.seed_mean(final[m], names[0], "R@5").mean() * s
                                                   for m, s in (("ada", 1), ("pretrained", -1))]) * 2)


def test_target_lines_count_verdicts_per_group() -> None:
    cells_ = ["test_objects_seen/scene", "test_objects_unseen/scene", "test_styles/object"]
    comps = [Comparison("ada", b, c, "R@5", 0.1, lo, 0.2) for b in ("pretrained", "whiten_pd", "supervised")
             for c, lo in zip(cells_, (0.05, -0.005, -0.3))]
    comps += [Comparison("supervised", "pretrained", c, "R@5", 0.1, 0.05, 0.2) for c in cells_]
    why = ablation.Validation(pd.DataFrame({"lam": [1.0, 30.0], "transductive": [0.3, 0.2], "held out": [0.1, 0.25]}),
                              {"transductive": 0.22, "held out": 0.24}, 30.0)
    lines = ablation.target_lines(comps, cells_, why, margin=0.01)
    assert lines[0].startswith("Verdicts on R@5 (Holm-corrected over the 12 comparisons of the table, "
                               "non-inferiority margin δ = 0.01")
    assert lines[1] == ("- `ada` vs `pretrained`: all cells: ada > pretrained in 1, ada ≥ pretrained in 1, "
                        "inconclusive in 1 (of 3 cells); object cells: ada > pretrained in 1, ada ≥ pretrained in 1 "
                        "(of 2 cells); style cells: inconclusive in 1 (of 1 cells).")
    assert "on the seen-object cells (where it must win): supervised > pretrained in 1 (of 1 cells)" in lines[-2]
    assert "λ = 30 is chosen" in lines[-1] and "head scores 0.250 against per-domain whitening's 0.240" in lines[-1]
    assert "(a difference of +0.010)" in lines[-1]
    stop = [{"best_step": 0, "budget_steps": 160}, {"best_step": 15, "budget_steps": 160}]
    lines = ablation.target_lines(comps, cells_, why, stopping={"align": stop, "whiten": [{}]})
    assert lines[-2] == ("- `align` kept the step with the best validation R@5: steps [0, 15] of budgets [160, 160]; "
                         "1 of 2 seeds kept the starting weights (no step improved on validation).")
    assert why.record()["lam_path"]["lam"] == [1.0, 30.0] and why.record()["lam"] == 30.0