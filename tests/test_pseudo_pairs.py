"""Pseudo-pair sources on small problems with known pairs: each finds true pairs where the signal is clear, none does
on features without signal, precision is computed right, and an iterated refit does not lose precision."""

from __future__ import annotations

import numpy as np
import pytest

from ada_utils import pseudo_pairs as pp
from ada_utils.closed_form import ada_head, pair_scatter
from ada_utils.whitening import Whitening


def _problem(models: int = 30, per_model: int = 8, signal: float = 1.0, nuisance: int = 24, seed: int = 0):
    """Concepts in 8 dimensions, per-image nuisance in ``nuisance`` more, a shift of the synthetic domain.

    Returns (zs, zr, synth_model, real_model): one real exemplar and ``per_model`` synthetic images per model.
    """
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(models, 8)) * signal
    def images(owner: np.ndarray, shift: float) -> np.ndarray:
        return np.hstack([concept[owner] + 0.3 * rng.normal(size=(len(owner), 8)),
                          rng.normal(size=(len(owner), nuisance))]) + shift
    real_model, synth_model = np.arange(models), np.repeat(np.arange(models), per_model)
    return images(synth_model, 0.5), images(real_model, 0.0), synth_model, real_model


def test_mutual_nn_pairs_keep_only_pairs_that_pick_each_other() -> None:
    synth = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    real = np.array([[1.0, 0.05], [0.05, 1.0]])
    # synth 0 and 1 both pick real 0, which picks synth 0 back; synth 2 and real 1 pick each other
    assert pp.mutual_nn(synth, real).tolist() == [[0, 0], [2, 1]]
    assert pp.nearest(synth, real).tolist() == [[0, 0], [1, 0], [2, 1]]


def test_audit_counts_pairs_of_one_model() -> None:
    pairs = np.array([[0, 0], [1, 1], [2, 0]])
    out = pp.audit(pairs, synth_model=np.array([0, 1, 1, 2]), real_model=np.array([0, 1, -1]))
    assert out == {"pairs": 3, "precision": pytest.approx(2 / 3), "coverage": 0.75, "real_used": pytest.approx(2 / 3)}
    assert pp.audit(np.array([[0, 2]]), np.array([-1]), np.array([0, 1, -1]))["precision"] == 0.0  # -1 never matches
    assert np.isnan(pp.audit(np.zeros((0, 2)), np.array([0]), np.array([0]))["precision"])


@pytest.mark.parametrize("name", sorted(pp.SOURCES))
def test_every_source_finds_true_pairs_when_the_signal_is_clear_and_none_without(name: str) -> None:
    zs, zr, sm, rm = _problem(nuisance=2, signal=3.0)
    clear = pp.audit(pp.SOURCES[name](zs, zr), sm, rm)
    assert clear["pairs"] > 0 and clear["precision"] >= 0.9, clear
    rng = np.random.default_rng(1)  # no signal: independent features, the same grouping
    none = pp.audit(pp.SOURCES[name](rng.normal(size=zs.shape), rng.normal(size=zr.shape)), sm, rm)
    assert none["precision"] < 0.2, none  # chance is 1/30


def test_sources_keep_their_promises() -> None:
    zs, zr, sm, rm = _problem(signal=0.8)
    mutual = pp.mutual_nn(zs, zr)
    assert len(np.unique(mutual[:, 1])) == len(mutual)  # a real image is in at most one mutual pair
    assert set(map(tuple, mutual)) <= set(map(tuple, pp.nearest(zs, zr)))
    margin = pp.margin_filtered(zs, zr, keep=0.25)
    assert len(margin) == round(0.25 * len(zs))
    near = pp.audit(pp.nearest(zs, zr), sm, rm)["precision"]
    assert pp.audit(margin, sm, rm)["precision"] >= near  # the confident quarter is at least as precise
    assert pp.audit(pp.k_reciprocal(zs, zr, k=1, k_back=len(zs)), sm, rm) == pp.audit(pp.nearest(zs, zr), sm, rm)
    plan = pp.sinkhorn_plan(pp.cosine(zs, zr), eps=0.05)
    np.testing.assert_allclose(plan.sum(1), 1.0, atol=1e-9)
    cols = plan.sum(0)  # uniform marginals: every real image receives about n_s / n_r synthetic images' mass
    np.testing.assert_allclose(cols, len(zs) / len(zr), rtol=0.05)
    clustered = pp.cluster_match(zs, zr, n_clusters=30, seed=0)
    assert np.array_equal(clustered, pp.cluster_match(zs, zr, n_clusters=30, seed=0))  # seeded
    with pytest.raises(ValueError, match="keep"):
        pp.margin_filtered(zs, zr, keep=0.0)
    with pytest.raises(ValueError, match="width"):
        pp.nearest(zs, zr[:, :3])


def test_iterated_refit_does_not_lose_precision() -> None:
    """Whitened features, the closed-form ada head fitted on the pairs, pairs again in its space: the head shrinks the
    directions along which pseudo-pairs differ (mostly nuisance), so later rounds are at least as precise; a head
    fitted on the true pairs moves the space far more (the loop does use the fitted head)."""
    zs, zr, sm, rm = _problem(models=100, per_model=5, signal=1.0, nuisance=24, seed=3)
    us, ur = Whitening("zca").fit_transform(zs).astype(np.float64), Whitening("zca").fit_transform(zr).astype(np.float64)

    def fit(pairs: np.ndarray):
        head = ada_head(pair_scatter(us[pairs[:, 0]], ur[pairs[:, 1]]), 3.0)[0]
        return lambda a, b: (a @ head.T, b @ head.T)

    for name in ("nearest", "k_reciprocal", "margin"):
        rounds = [pp.audit(p, sm, rm)["precision"] for p in pp.iterate(pp.SOURCES[name], fit, us, ur, rounds=3)]
        assert len(rounds) == 4 and rounds[-1] >= rounds[0] > 0.1, (name, rounds)
    true = np.stack([np.arange(len(zs)), sm], axis=1)  # the real exemplar of each synthetic image's model
    oracle = pp.audit(pp.nearest(*fit(true)(us, ur)), sm, rm)["precision"]
    assert oracle > pp.audit(pp.nearest(us, ur), sm, rm)["precision"] + 0.2
