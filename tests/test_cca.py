"""Tests for ada_utils.cca: closed forms, scikit-learn agreement, exact identities, degenerate inputs.

``latent_pairs`` is shared with ``test_cca_stats.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA

from ada_utils import cca
from ada_utils import covariance as cov


def latent_pairs(n: int, rhos: list[float], *, p: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x = Mx [s + e_x; noise], y = My [s + e_y; noise] with canonical correlations 1/(1+σ²) = ρ, mixed by
    random invertible maps (CCA is invariant to them)."""
    rng = np.random.default_rng(seed)
    k = len(rhos)
    s = rng.standard_normal((n, k))
    sig = np.sqrt(1 / np.asarray(rhos) - 1)
    x = np.hstack([s + sig * rng.standard_normal((n, k)), rng.standard_normal((n, p - k))])
    y = np.hstack([s + sig * rng.standard_normal((n, k)), rng.standard_normal((n, q - k))])
    return x @ rng.standard_normal((p, p)) + 3.0, y @ rng.standard_normal((q, q)) - 1.0


def test_population_closed_form_exact() -> None:
    # Centred orthonormal columns (QR of centred noise stays centred): sample moments equal the population
    # ones exactly, so corr(s + σe, s + σf) = 1 / (1 + σ²) = ρ holds to round-off.
    rhos = np.array([0.9, 0.6, 0.25])
    n, k = 64, 3
    G = np.random.default_rng(1).standard_normal((n, 3 * k + 2))
    H = np.linalg.qr(G - G.mean(0))[0] * np.sqrt(n)
    s, e, f = H[:, :k], H[:, k:2 * k], H[:, 2 * k:3 * k]
    sig = np.sqrt(1 / rhos - 1)
    X, Y = np.hstack([s + sig * e, H[:, -2:-1]]), np.hstack([s + sig * f, H[:, -1:]])
    np.testing.assert_allclose(cca.canonical_correlations(X, Y, reg=0), [0.9, 0.6, 0.25, 0.0], atol=1e-9)


def test_sample_closed_form() -> None:
    X, Y = latent_pairs(20000, [0.8, 0.5], p=5, q=4)
    got = cca.canonical_correlations(X, Y, reg=0)
    assert got.shape == (4,)
    np.testing.assert_allclose(got[:2], [0.8, 0.5], atol=0.02)
    assert np.all(got[2:] < 0.05)


def test_agrees_with_sklearn() -> None:
    X, Y = latent_pairs(3000, [0.85, 0.55, 0.3], p=6, q=4, seed=2)
    model = CCA(n_components=3, max_iter=2000, tol=1e-12).fit(X, Y)
    u, v = model.transform(X, Y)
    ref = cca.column_correlations(u, v)
    np.testing.assert_allclose(cca.canonical_correlations(X, Y, reg=0)[:3], ref, atol=1e-5)
    ours = cca.fit_cca(X, Y, k=3, reg=0)
    a, b = ours.transform(X, Y)
    np.testing.assert_allclose(np.abs(cca.column_correlations(a, b)), ref, atol=1e-5)
    # canonical variates are unit-variance and uncorrelated within each domain
    np.testing.assert_allclose(np.cov(a.T, bias=True), np.eye(3), atol=1e-8)
    np.testing.assert_allclose(np.cov(b.T, bias=True), np.eye(3), atol=1e-8)


def test_identities_on_random_data() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    Y = 0.5 * X[:, :5] @ rng.standard_normal((5, 5)) + rng.standard_normal((200, 5))
    for reg in (0, "auto", "ledoit_wolf", 0.3):
        mi = cca.gaussian_mutual_information(X, Y, reg=reg)
        assert mi["logdet"] == pytest.approx(mi["canonical"], rel=1e-9)
        assert np.all(cca.canonical_correlations(X, Y, reg=reg) < 1)
    a, b = X[:, :5] @ rng.standard_normal((5, 3)), Y @ rng.standard_normal((5, 3)) + 2.0
    t = cca.distance_terms(a, b)
    assert t["distance"] == pytest.approx(t["trace_a"] + t["trace_b"] - 2 * t["cross_trace"] + t["mean_gap"])
    # whitened matched distance = 2d(1 − coordinate correlation); von Neumann: CCA >= own coordinates
    Z = rng.standard_normal((300, 4))
    Xs, Ys = Z + 0.5 * rng.standard_normal((300, 4)), Z @ rng.standard_normal((4, 4)) + rng.standard_normal((300, 4))
    d = cca.decomposition(Xs, Ys, reg=0)
    b = cov.covariance_blocks(Xs, Ys, reg=0)
    wa = (Xs - b.mean_x) @ cov.inverse_sqrt(b.xx)
    wb = (Ys - b.mean_y) @ cov.inverse_sqrt(b.yy)
    assert cca.distance_terms(wa, wb)["distance"] == pytest.approx(2 * 4 * (1 - d["coord_corr_mean"]))
    assert d["gap"] >= 0 and d["coord_share"] <= 1
    assert d["mi"] == pytest.approx(cca.gaussian_mutual_information(Xs, Ys, reg=0)["canonical"])


def test_gap_vanishes_when_cross_covariance_is_aligned() -> None:
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((5000, 4)) * [3, 2, 1, 0.5]
    X, Y = Z + 0.3 * rng.standard_normal(Z.shape), Z + 0.3 * rng.standard_normal(Z.shape)
    aligned = cca.decomposition(X, Y, reg=0)
    R = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    rotated = cca.decomposition(X, Y @ R, reg=0)
    assert aligned["gap"] < 1e-2 and aligned["diag_dominance_whitened"] > 0.95
    assert rotated["gap"] > 0.1 and rotated["cca_mean"] == pytest.approx(aligned["cca_mean"], rel=1e-9)
    assert cca.isotropy_logdet(np.eye(3) * 7) == pytest.approx(0.0, abs=1e-12)
    assert cca.off_diagonal_energy(np.eye(3) * 7) == 0.0


def test_shapes_and_torch_inputs() -> None:
    X, Y = latent_pairs(100, [0.7], p=7, q=3, seed=6)
    model = cca.fit_cca(torch.from_numpy(X).float(), torch.from_numpy(Y), k=2)
    assert model.A.shape == (7, 2) and model.B.shape == (3, 2) and model.rho.shape == (2,)
    assert cca.whitened_cross_covariance(X, Y).shape == (7, 3)
    assert cov.covariance_blocks(X, Y).joint().shape == (10, 10)
    assert cca.canonical_correlations(X, Y).dtype == np.float64
    R = cov.cross_correlation(X, np.hstack([Y, np.ones((100, 1))]))
    np.testing.assert_allclose(R[:, :3], np.corrcoef(X.T, Y.T)[:7, 7:], atol=1e-12)
    assert R.shape == (7, 4) and np.all(R[:, 3] == 0)
    w = cca.fit_domain_whitening(X, Y[:50], reg=0)  # pair-free: different row counts
    a, b = w.transform(X, X[:, :3])
    np.testing.assert_allclose(np.cov(a.T, bias=True), np.eye(7), atol=1e-8)
    assert b.shape == (100, 3) and w.rho.shape == (0,)


def test_fewer_samples_than_dims_and_constant_features() -> None:
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((10, 30)), rng.standard_normal((10, 30))
    with pytest.raises(ValueError, match="rank-deficient"):
        cca.canonical_correlations(X, Y, reg=0)
    rho = cca.canonical_correlations(X, Y)  # default shrinkage keeps it defined
    assert np.all(np.isfinite(rho)) and np.all(rho < 1)
    X[:, 3] = 5.0  # a constant feature
    assert np.all(np.isfinite(list(cca.decomposition(X, Y).values())))
    with pytest.raises(ValueError, match="rank-deficient"):
        cca.canonical_correlations(X[:, :5], Y[:, :5], reg=0)
    with pytest.raises(ValueError, match="zero variance"):
        cca.off_diagonal_energy(cov.covariance(X, reg=0))


def test_select_cca_reg_prefers_shrinkage_when_dims_rival_samples() -> None:
    X, Y = latent_pairs(120, [0.8, 0.6], p=40, q=40, seed=9)
    groups = np.repeat(np.arange(30), 4)
    best, scores = cca.select_cca_reg(X, Y, groups, regs=(0.0, 0.5, 0.9))
    assert set(scores) == {"0.0", "0.5", "0.9"} and best != 0.0
    assert scores["0.0"] < scores[str(best)]
    with pytest.raises(ValueError, match="at least 4 groups"):
        cca.select_cca_reg(X, Y, np.repeat(np.arange(3), 40))


# ---- cross-fitted (held-out) CCA ---------------------------------------------------------------------------

def test_crossfit_recovers_known_canonical_correlations() -> None:
    X, Y = latent_pairs(6000, [0.8, 0.5], p=6, q=5, seed=11)
    groups = np.repeat(np.arange(300), 20)
    got = cca.crossfit_canonical_correlations(X, Y, groups, reg=0, seed=0)
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got[:2], [0.8, 0.5], atol=0.03)  # held out, close to the population ρ
    assert np.all(np.abs(got[2:]) < 0.06)  # no signal: about 0 held out (in-sample they are all > 0)
    U, V = cca.crossfit_variates(X, Y, groups, k=2, reg=0, seed=0)
    assert U.shape == V.shape == (6000, 2)
    np.testing.assert_allclose(cca.column_correlations(U, V), got[:2], atol=1e-12)


def test_crossfit_is_about_zero_for_independent_grouped_features() -> None:
    """The reviewer's setting: 460 groups of 11 rows, each group's real vector repeated, d = 64, no signal at all.
    In-sample CCA finds correlation in the repeats; cross-fitting over groups does not."""
    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(460), 11)
    X = rng.standard_normal((len(groups), 64))
    Y = rng.standard_normal((460, 64))[groups]
    assert cca.canonical_correlations(X, Y)[:8].mean() > 0.15
    held = cca.crossfit_canonical_correlations(X, Y, groups, seed=0)
    assert abs(held[:8].mean()) < 0.03 and abs(held.mean()) < 0.02


def test_crossfit_split_is_seeded_stratified_and_checked() -> None:
    X, Y = latent_pairs(400, [0.7], p=3, q=3, seed=13)
    groups, strata = np.repeat(np.arange(20), 20), np.repeat(np.arange(20) < 10, 20)
    a = cca.crossfit_canonical_correlations(X, Y, groups, seed=1, strata=strata)
    np.testing.assert_array_equal(a, cca.crossfit_canonical_correlations(X, Y, groups, seed=1, strata=strata))
    assert not np.array_equal(a, cca.crossfit_canonical_correlations(X, Y, groups, seed=2, strata=strata))
    half = cca._half_of_groups(groups, seed=1, strata=strata)
    assert half.sum() == 200 and half[strata].sum() == 100  # half of each stratum's groups
    assert all(len(set(half[groups == g])) == 1 for g in range(20))  # a group is never split
    U, _ = cca.crossfit_variates(X, Y, groups, seed=1, strata=strata)
    np.testing.assert_allclose(U[half].mean(0), 0, atol=1e-12)  # each fold centred on itself
    with pytest.raises(ValueError, match="at least 4 groups"):
        cca.crossfit_canonical_correlations(X, Y, np.repeat(np.arange(2), 200))
    with pytest.raises(ValueError, match="same rows"):
        cca.crossfit_variates(X, Y, groups[:-1])
