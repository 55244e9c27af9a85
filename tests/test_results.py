"""The results chapter's helpers: protocol top-k galleries follow the official ranking; tables; verdict counts."""

import numpy as np
import pytest

from ada_utils.encoders import BenchmarkFeatures, CaseFeatures
from ada_utils.eval.results import findings, gallery_rows, metric_table, protocol_top_k, unverified_paper_table, verdict_counts
from ada_utils.eval.statistics import Comparison
from ada_utils.retrieval import abc_metrics_bruteforce, rank_gallery


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


def test_paper_table_is_labelled_unverified_real_abc_and_sourced():
    table = unverified_paper_table()
    assert list(table.columns) == ["test case", "prompt type", "R@5 (%)", "data", "source", "status"]
    assert table["status"].str.startswith("UNVERIFIED").all()
    assert table["data"].str.contains("real AbC").all() and table["source"].str.contains("2601.22663").all()
    # AbC's own test cases, never a cell of the embedded benchmark.
    assert not table["test case"].str.startswith("test_").any()


def test_rank_gallery_is_the_bruteforce_order():
    rng = np.random.default_rng(3)
    d, e = rng.normal(size=50).round(1), rng.normal(size=4).round(1)  # rounding makes ties
    order = rank_gallery(d, e)
    scores = np.r_[d, e][order]
    assert (np.diff(scores) <= 0).all() and sorted(order) == list(range(54))
    for i in range(53):  # ties: distractors (index < 50) ahead of exemplars, each group by index
        if scores[i] == scores[i + 1]:
            assert (order[i] >= 50, order[i]) < (order[i + 1] >= 50, order[i + 1])


def test_gallery_rows_put_hits_first_and_resolve_paths(tmp_path):
    rng = np.random.default_rng(1)
    ex = rng.normal(size=(3, 8)).astype(np.float32)
    qm = np.array([0, 1, 2, 0])
    queries = ex[qm].copy()
    queries[3] = -ex[0]  # the last query points away from its exemplar: a miss
    case = CaseFeatures({"gpt": queries}, {"gpt": qm}, ex, np.arange(3), {"gpt": [f"q{i}.png" for i in range(4)]},
                        [f"e{i}.png" for i in range(3)])
    bf = BenchmarkFeatures({"test_observed_imagenet": case}, rng.normal(size=(20, 8)).astype(np.float32), {},
                           [f"d{i}.png" for i in range(20)], tmp_path)
    rows = gallery_rows(bf, "test_observed_imagenet", "gpt", real_map=lambda x: x, synth_map=lambda x: x,
                        distractors=bf.distractors, n_rows=2, k=5)
    assert len(rows) == 3 and rows[0][0] == tmp_path / "q0.png" and rows[0][1] == tmp_path / "e0.png"
    assert rows[0][2][0] == (tmp_path / "e0.png", pytest.approx(1.0), True)
    assert rows[-1][0] == tmp_path / "q3.png" and not any(hit for _, _, hit in rows[-1][2])


def test_verdict_counts_are_made_from_intervals():
    comps = [Comparison("ada", "pretrained", f"c{i}", "R@5", 0.1, lo, 0.2)
             for i, lo in enumerate((0.1, -0.1, 0.05, -0.005))]
    text = verdict_counts(comps, "ada", scale="small", seeds=[0, 1])
    assert text.startswith("On the embedded benchmark (small scale, seeds [0, 1]):")
    assert ("- `ada` vs `pretrained` (R@5, 4 cells): `ada > pretrained` in 2 cell(s), `ada ? pretrained` in 1 cell(s), "
            "`ada ≥ pretrained` in 1 cell(s)") in text
    assert verdict_counts([], "ada", scale="small", seeds=[0]).endswith("- no comparisons were recorded")


def test_findings_are_generated_from_the_summary():
    cells = ["test_objects_seen/scene", "test_styles/object"]
    final = {m: {"mean": {c: {"R@5": v} for c in cells}} for m, v in
             (("ada", 0.4), ("whiten_pd", 0.3), ("supervised", 0.45), ("pretrained", 0.2))}
    comps = [Comparison("ada", b, c, "R@5", d, lo, hi).record() for b, d, lo, hi in
             (("pretrained", 0.1, 0.05, 0.2), ("whiten_pd", 0.0, -0.005, 0.01), ("supervised", -0.1, -0.3, -0.05))
             for c in cells]
    summary = {"final": final, "chance": {c: {"R@5": 0.0025} for c in cells}, "comparisons": comps,
               "seeds": [0, 1, 2], "scale": "small", "hardware": "CPU: 2 cores",
               "encoder": {"name": "efficientnet_lite0", "image_size": 128}}
    text = findings(summary)
    assert text.startswith("**What this book finds** (embedded benchmark, scale `small`, 2 cells, seeds [0, 1, 2], "
                           "`efficientnet_lite0` at 128 px, CPU: 2 cores;")
    assert "(chance 0.0025): ada 0.400, per-domain whitening 0.300, the supervised baseline (AbC init) 0.450, the " \
           "pretrained features 0.200." in text
    assert ("`ada` against the pretrained features: better in 2, non-inferior in 0, inconclusive in 0 and worse in 0 "
            "of 2 cells.") in text
    assert "against per-domain whitening: better in 0, non-inferior in 2, inconclusive in 0" in text
    assert "against the supervised baseline (AbC init): better in 0, non-inferior in 0, inconclusive in 0 and worse " \
           "in 2 of 2 cells." in text
    assert "TRANSDUCTIVE" not in text and "TRANSDUCTIVE" in findings({**summary, "train_pool": "transductive"})
