"""The closed-form ada head: the Lagrange condition, optimality against perturbations, limits, pair builders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ada_utils import closed_form
from ada_utils.train import feature_maps, train
from ada_utils.train import TrainConfig
from ada_utils.train import TrainData


def _scatter(d: int = 8, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(4 * d, d)) * np.linspace(0.2, 2.0, d)
    return a.T @ a / len(a)


def test_pair_scatter_known_value() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.zeros((2, 2))
    assert np.allclose(closed_form.pair_scatter(a, b), [[0.5, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="pair_scatter"):
        closed_form.pair_scatter(a, np.zeros((3, 2)))


@pytest.mark.parametrize("lam", [0.3, 1.5, 20.0])
def test_lagrange_multiplier_solves_its_equation(lam: float) -> None:
    s = np.linspace(0.1, 1.9, 10)
    mu = closed_form.lagrange_multiplier(s, lam)
    assert (s + mu > 0).all() and np.isclose(0.5 * lam * np.mean(1 / (s + mu)), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="λ > 0"):
        closed_form.lagrange_multiplier(s, 0.0)


def test_head_is_symmetric_on_the_constraint_and_beats_perturbed_heads() -> None:
    scatter, lam = _scatter(), 1.5
    w, info = closed_form.ada_head(scatter, lam)
    d = len(w)
    assert np.allclose(w, w.T) and np.isclose(np.sum(w * w), d)
    assert np.isclose(np.sum(np.square(info["gains"])), d)
    best = closed_form.objective(w, scatter, lam)
    rng = np.random.default_rng(1)
    for _ in range(50):  # any other head of the same Frobenius norm scores worse
        other = w + 0.05 * rng.normal(size=w.shape)
        other *= np.sqrt(d / np.sum(other * other))
        assert closed_form.objective(other, scatter, lam) > best


def test_projected_gradient_descent_reaches_the_closed_form() -> None:
    """Reference: minimise L_A + λ L_D on the sphere ‖W‖_F² = D by projected gradient steps from W = I."""
    scatter, lam = _scatter(d=6, seed=2), 2.0
    s = scatter * (6 / np.trace(scatter))
    w = np.eye(6)
    for _ in range(4000):
        grad = 2 * w @ s - lam * np.linalg.inv(w).T
        w = w - 0.01 * grad
        w *= np.sqrt(6 / np.sum(w * w))
    target, _ = closed_form.ada_head(scatter, lam)
    assert np.isclose(closed_form.objective(w, scatter, lam), closed_form.objective(target, scatter, lam), atol=1e-6)


def test_limits_whitening_for_large_lambda_and_nuisance_directions_shrink() -> None:
    d = 5
    scatter = np.diag([4.0, 1.0, 1.0, 1.0, 1.0])  # positive pairs differ mostly along coordinate 0 (nuisance)
    w_big, _ = closed_form.ada_head(scatter, 1e6)
    assert np.allclose(w_big, np.eye(d), atol=1e-3)  # pure Infomax: the whitening head
    w, info = closed_form.ada_head(scatter, 1.5)
    assert w[0, 0] < w[1, 1] and np.allclose(np.diag(w)[1:], w[1, 1])
    path = closed_form.lambda_path(info["eigvals"], np.array([0.5, 1.5, 10.0, 1e4]))
    assert np.all(np.diff(path["align"]) > 0) and np.all(np.diff(path["infomax"]) < 0)
    assert np.isclose(path["align"][-1], d, rtol=1e-3) and abs(path["infomax"][-1]) < 1e-3


def test_closed_form_run_writes_its_spectrum_and_maps_per_domain(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 6)).astype(np.float32)
    views = feats[None] + np.array([1.0, 0, 0, 0, 0, 0], np.float32) * rng.normal(size=(1, 300, 1)).astype(np.float32)
    data = TrainData(feats, (np.arange(300) % 3 == 0).astype(np.int64), views, [str(i) for i in range(300)])
    res = train(TrainConfig(), data, tmp_path / "ada", progress=False)
    fit = json.loads((tmp_path / "ada" / "config.json").read_text())["fit"]
    assert res.steps == 0 and not res.model.shared and len(fit["eigvals"]) == 6 and fit["lam"] == TrainConfig().lam
    real_map, synth_map = feature_maps(tmp_path / "ada")
    assert real_map(feats).shape == synth_map(feats).shape == (300, 6)
    no_views = TrainData(feats, data.domain, None, data.ids)
    with pytest.raises(ValueError, match="n_views >= 1"):
        train(TrainConfig(), no_views, tmp_path / "bad", progress=False)


def test_subspace_procrustes_recovers_a_rotation_inside_the_subspace_only() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(6, 3)))[0].T  # (3, 6) orthonormal rows
    theta = 0.7
    rot = np.eye(3)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    true = np.eye(6) + basis.T @ (rot - np.eye(3)) @ basis
    a = rng.normal(size=(200, 6))
    m = closed_form.subspace_procrustes(a, a @ true.T, basis)
    assert np.allclose(m, true, atol=1e-8) and np.allclose(m @ m.T, np.eye(6), atol=1e-8)
