"""The results chapter's helpers: protocol top-k galleries agree with the official metric; tables."""

import numpy as np

from ada_utils.eval.results import metric_table, protocol_top_k, unverified_paper_table
from ada_utils.retrieval import abc_metrics_bruteforce


def test_top_k_matches_the_official_ranking():
    rng = np.random.default_rng(0)
    dist, ex = rng.normal(size=(200, 8)), rng.normal(size=(3, 8))
    for q in rng.normal(size=(20, 8)):
        top = protocol_top_k(q, ex, dist, k=203)
        assert [m.rank for m in top] == list(range(1, 204))
        assert all(a.score >= b.score for a, b in zip(top, top[1:]))
        hits = [m.rank for m in top if m.is_exemplar]
        ref = abc_metrics_bruteforce(q[None], np.zeros(1, int), ex, np.zeros(3, int), dist, ks=(5,))
        assert np.isclose(ref["recall"][5], sum(r <= 5 for r in hits) / 3)
        assert np.isclose(ref["map"], np.mean([(i + 1) / r for i, r in enumerate(hits)]))


def test_ties_put_distractors_first():
    q = np.array([1.0, 0.0])
    top = protocol_top_k(q, np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0]]), k=3)
    assert [(m.is_exemplar, m.index) for m in top] == [(False, 0), (True, 0), (False, 1)]


def test_metric_table_has_chance_row_and_mean_std():
    cell = {"R@5": 0.5, "mAP": 0.25}
    summary = {"final": {"ada": {"mean": {"a/b": cell}, "std": {"a/b": {"R@5": 0.1, "mAP": 0.0}}},
                         "random": {"mean": {"a/b": cell}, "std": {}}},
               "chance": {"a/b": {"R@5": 0.01, "mAP": 0.02}}}
    table = metric_table(summary, "R@5")
    assert table.loc["ada", "a/b"] == "0.500 ± 0.100" and table.loc["random", "a/b"] == "0.500"
    assert table.loc["chance", "a/b"] == "0.0100"
    assert set(unverified_paper_table()["R@5 (%)"]) == {49.1, 20.3}
