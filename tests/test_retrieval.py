"""AbC metrics: hand-computed rankings with ties, agreement with the brute-force reference, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ada_utils.retrieval import abc_metrics, abc_metrics_bruteforce

BOTH = pytest.mark.parametrize("fn", [abc_metrics, abc_metrics_bruteforce], ids=["fast", "bruteforce"])


def _toy():
    """2-D toy: query 0 (model 0) = [1, 0]; query 1 (model 1) = [0, 1].

    Query 0 scores: d0 1.0, d3 0.8 = e0 0.8, d1 0.6 = e1 0.6, d2 0 (e2 of model 1 is not in its gallery).
    Distractors rank ahead of tied exemplars: e0 at 3, e1 at 5 -> AP = (1/3 + 2/5) / 2.
    Query 1 scores: d2 1, d1 0.8, d3 0.6, d0 0 = e2 0 = e3 -0 -> exemplars at 5, 6 -> AP = (1/5 + 2/6) / 2.
    """
    dist = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.8, 0.6]], np.float32)
    ex = np.array([[0.8, 0.6], [0.6, -0.8], [1, 0], [-1, 0]], np.float32)
    q = np.array([[1, 0], [0, 1]], np.float32)
    return q, np.array([0, 1]), ex, np.array([0, 0, 1, 1]), dist


@BOTH
def test_hand_computed_ranking_with_ties(fn):
    out = fn(*_toy(), ks=(1, 3, 5))
    np.testing.assert_allclose(out["ap"], [(1 / 3 + 2 / 5) / 2, (1 / 5 + 2 / 6) / 2], atol=1e-12)
    assert out["recall_per_query"][1].tolist() == [0.0, 0.0]
    assert out["recall_per_query"][3].tolist() == [0.5, 0.0]
    assert out["recall_per_query"][5].tolist() == [1.0, 0.5]
    assert out["recall"][5] == pytest.approx(0.75)
    assert out["map"] == pytest.approx(np.mean(out["ap"]))


def _random_case(rng, *, n_models=12, n_dist=300, dim=16, q_per_model=3):
    n_ex = rng.integers(1, 21, n_models)
    n_ex[:3] = [1, 1, 50]  # one-exemplar models; one above K and wide enough for the searchsorted counting
    ex_model = np.repeat(np.arange(n_models), n_ex) * 7 + 3  # arbitrary, non-contiguous ids
    rng.shuffle(ex_model)
    q_model = np.repeat(np.unique(ex_model), q_per_model)
    ex = rng.normal(size=(len(ex_model), dim))
    centres = {m: ex[ex_model == m].mean(0) for m in np.unique(ex_model)}
    q = np.stack([centres[m] for m in q_model]) + rng.normal(scale=1.5, size=(len(q_model), dim))
    dist = rng.normal(size=(n_dist, dim))
    return q, q_model, ex, ex_model, dist


def _agree(a, b, ks):
    np.testing.assert_allclose(a["ap"], b["ap"], atol=1e-6, rtol=0)
    for k in ks:
        np.testing.assert_allclose(a["recall_per_query"][k], b["recall_per_query"][k], atol=1e-6, rtol=0)
    assert a["map"] == pytest.approx(b["map"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_bruteforce_on_random_data(seed):
    q, qm, ex, em, dist = _random_case(np.random.default_rng(seed))
    ks = (1, 5, 10, 100)
    ref = abc_metrics_bruteforce(q, qm, ex, em, dist, ks, dtype=torch.float64)
    fast = abc_metrics(q, qm, ex, em, dist, ks, dtype=torch.float64, block=37, query_block=5)
    _agree(fast, ref, ks)
    assert 0 < ref["map"] < 1 and ref["recall"][100] > ref["recall"][1]


def test_agrees_with_bruteforce_under_exact_ties():
    """Quantised features (4 entries of +-1 per row: every cosine is an exact multiple of 1/4 in float32)."""
    rng = np.random.default_rng(3)

    def quantised(n, dim=8):
        x = np.zeros((n, dim), np.float32)
        for row in x:
            row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        return x

    em = np.repeat(np.arange(6), [1, 1, 3, 8, 17, 25])
    qm = np.repeat(np.arange(6), 4)
    q, ex, dist = quantised(len(qm)), quantised(len(em)), quantised(400)
    ks = (1, 5, 10, 100)
    ref = abc_metrics_bruteforce(q, qm, ex, em, dist, ks)
    _agree(abc_metrics(q, qm, ex, em, dist, ks, block=64, query_block=7), ref, ks)
    # The data really is full of exemplar/distractor ties (cosines are multiples of 1/4).
    tied = [np.isin((ex[em == m] @ q[i]) / 4, (dist @ q[i]) / 4).sum() for i, m in enumerate(qm)]
    assert sum(tied) > len(qm)


def test_inputs_torch_memmap_and_maps(tmp_path):
    q, qm, ex, em, dist = _random_case(np.random.default_rng(4), n_dist=120)
    path = tmp_path / "distractors.npy"
    np.save(path, dist.astype(np.float32))
    w = np.random.default_rng(5).normal(size=(16, 6)).astype(np.float32)
    kw = dict(real_map=lambda x: x @ w, synth_map=lambda x: x @ w[:, ::-1])
    ref = abc_metrics_bruteforce(q.astype(np.float32), qm, ex.astype(np.float32), em, dist.astype(np.float32), **kw)
    fast = abc_metrics(torch.tensor(q, dtype=torch.float32), torch.tensor(qm), torch.tensor(ex, dtype=torch.float32),
                       torch.tensor(em), path, block=50, **kw)
    _agree(fast, ref, (5, 10, 100))
    assert set(fast) == {"recall", "map", "ap", "recall_per_query"} and fast["ap"].shape == (len(q),)


def test_no_distractors_and_one_exemplar_is_perfect_when_closest():
    ex = np.eye(3, dtype=np.float32)
    out = abc_metrics(ex, np.arange(3), ex, np.arange(3), np.zeros((0, 3), np.float32), (1,))
    assert out["map"] == 1.0 and out["recall"][1] == 1.0


@BOTH
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "query_feats": a["query_feats"][:, :1]}, "feature dimensions differ"),
        (lambda a: {**a, "exemplar_feats": a["exemplar_feats"][:0], "exemplar_model": a["exemplar_model"][:0]},
         "exemplar_feats: expected a non-empty"),
        (lambda a: {**a, "query_feats": np.where(np.eye(2, dtype=bool), np.nan, a["query_feats"])},
         "query_feats: row 0 has NaN"),
        (lambda a: {**a, "distractor_feats": np.vstack([a["distractor_feats"], [[np.inf, 0]]])},
         "distractor_feats: row 4 has NaN"),
        (lambda a: {**a, "query_model": np.array([0, 9])}, r"query_model: models \[9\] have no exemplars"),
        (lambda a: {**a, "exemplar_model": np.array([0, 0, 1])}, "exemplar_model: expected"),
    ],
)
def test_bad_inputs_name_the_array(fn, change, message):
    q, qm, ex, em, dist = _toy()
    args = dict(query_feats=q, query_model=qm, exemplar_feats=ex, exemplar_model=em, distractor_feats=dist)
    with pytest.raises(ValueError, match=message):
        fn(**change(args))


def test_cpu_counting_kernel_matches_torch_counting():
    """The numba kernel (CPU) and the torch comparisons (GPU path) count the same, padding and ties included."""
    from ada_utils.retrieval import _count_at_least, _count_at_least_torch

    rng = np.random.default_rng(6)
    s = torch.from_numpy(rng.integers(-3, 4, (9, 50)).astype(np.float32))
    t = torch.from_numpy(rng.integers(-3, 4, (9, 5)).astype(np.float32))
    t[::2, 3:] = float("inf")
    a, b = torch.zeros(9, 5, dtype=torch.int64), torch.zeros(9, 5, dtype=torch.int64)
    _count_at_least(s, t, a)
    _count_at_least_torch(s, t, b)
    assert torch.equal(a, b) and torch.equal(a, (s[:, :, None] >= t[:, None, :]).sum(1))


def test_chance_level_matches_exhaustive_enumeration():
    """E[AP] of a random ranking against all 6! orderings (1, 2 or 6 positives); R@K = min(K, G) / G."""
    from itertools import permutations

    from ada_utils.encoders import BenchmarkFeatures, CaseFeatures
    from ada_utils.eval.benchmark import chance_level, expected_random_ap

    for r in (1, 2, 6):
        aps = []
        for perm in permutations(range(6)):
            pos = np.sort([perm.index(i) + 1 for i in range(r)])
            aps.append(np.mean(np.arange(1, r + 1) / pos))
        assert expected_random_ap(np.array([r]), np.array([6]))[0] == pytest.approx(np.mean(aps), abs=1e-12)
    case = CaseFeatures(queries={"p": np.zeros((2, 3))}, query_model={"p": np.array([0, 1])},
                        exemplars=np.zeros((3, 3)), exemplar_model=np.array([0, 1, 1]))
    chance = chance_level(BenchmarkFeatures({"t": case}, np.zeros((4, 3)), {}), ks=(2,))["t/p"]
    assert chance["R@2"] == pytest.approx(np.mean([2 / 5, 2 / 6]))
    assert chance["mAP"] == pytest.approx(np.mean(expected_random_ap(np.array([1, 2]), np.array([5, 6]))))


def test_evaluate_cells_equal_separate_metric_calls():
    """One streamed call over all cells equals per-cell calls with each case's own exemplars."""
    from ada_utils.encoders import BenchmarkFeatures, CaseFeatures
    from ada_utils.eval import evaluate

    rng = np.random.default_rng(7)
    cases = {}
    for name, n_ex in (("a", [1, 1, 1]), ("b", [2, 5])):
        em = np.repeat(np.arange(len(n_ex)), n_ex)
        qm = {p: np.repeat(np.arange(len(n_ex)), 4) for p in ("x", "y")}
        cases[name] = CaseFeatures({p: rng.normal(size=(len(m), 8)) for p, m in qm.items()}, qm,
                                   rng.normal(size=(len(em), 8)), em)
    bf = BenchmarkFeatures(cases, rng.normal(size=(50, 8)), {"name": "toy"})
    out = evaluate(bf, ks=(1, 5))
    assert list(out) == ["a/x", "a/y", "b/x", "b/y"]
    for cell, got in out.items():
        name, prompt = cell.split("/")
        c = cases[name]
        ref = abc_metrics(c.queries[prompt], c.query_model[prompt], c.exemplars, c.exemplar_model, bf.distractors,
                          (1, 5))
        assert got == pytest.approx({"R@1": ref["recall"][1], "R@5": ref["recall"][5], "mAP": ref["map"],
                                     "n_queries": len(c.query_model[prompt])}, abs=1e-12)
