"""Comparing variants: per-query metrics equal ``evaluate``, the paired bootstrap resamples models."""

from __future__ import annotations

import numpy as np


def test_per_query_metrics_match_evaluate_and_bootstrap_resamples_models() -> None:
    from ada_utils.compare import cell_means, paired_bootstrap, per_query_metrics, verdict
    from ada_utils.evaluate import BenchmarkFeatures, CaseFeatures, evaluate

    rng = np.random.default_rng(0)
    cases = {}
    for name, n_models in (("test_a", 5), ("test_b", 4)):
        ex = rng.normal(size=(n_models, 8)).astype(np.float32)
        qm = np.repeat(np.arange(n_models), 3)
        cases[name] = CaseFeatures({"scene": (ex[qm] + rng.normal(size=(len(qm), 8))).astype(np.float32)},
                                   {"scene": qm}, ex, np.arange(n_models))
    bf = BenchmarkFeatures(cases, rng.normal(size=(30, 8)).astype(np.float32), {})
    def fmap(x):
        return 2 * x + 1
    pq = per_query_metrics(bf, real_map=fmap, synth_map=fmap)
    ref = evaluate(bf, real_map=fmap, synth_map=fmap)
    assert cell_means(pq).keys() == ref.keys()
    for cell, vals in cell_means(pq).items():
        assert all(np.isclose(vals[m], ref[cell][m]) for m in ("R@5", "R@10", "mAP", "n_queries"))
    assert len(np.unique(np.concatenate([d["model"] for d in pq.values()]))) == 9
    model = np.repeat(np.arange(40), 5)
    a = rng.random(200)
    diff, lo, hi = paired_bootstrap(a + 0.05, a, model)
    assert np.isclose(diff, 0.05) and np.isclose(lo, 0.05) and verdict(lo, hi) == ">"
    noisy = a + rng.normal(0, 0.5, 200)
    diff, lo, hi = paired_bootstrap(noisy, a, model)
    assert lo < diff < hi and np.isclose(diff, (noisy - a).mean())
    assert verdict(-0.1, 0.2) == "≥" and verdict(-0.3, -0.1) == "<"
