"""Tests of ada_utils.whitening: whitened covariance, ZCA symmetry, FastICA source recovery, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ada_utils.losses import infomax_loss
from ada_utils.whitening import Whitening, fit_fastica


def _correlated(n: int = 2000, d: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.eye(d) + 0.7 * rng.standard_normal((d, d))
    return rng.standard_normal((n, d)) @ mix.T + rng.standard_normal(d) * 3


@pytest.mark.parametrize("kind", ["zca", "pca"])
def test_whitened_train_covariance_is_identity(kind):
    X = _correlated()
    Y = Whitening(kind, eps=0.0).fit_transform(X)
    assert Y.dtype == np.float32 and Y.shape == X.shape
    np.testing.assert_allclose(np.cov(Y.T, bias=True), np.eye(6), atol=1e-4)  # 1/N moments, as covariance.covariance
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-4)


def test_whitening_reaches_the_infomax_optimum():
    X = _correlated(20000, 6, seed=5)
    raw = infomax_loss(torch.as_tensor(X), eps=1e-3).item()
    white = infomax_loss(torch.as_tensor(Whitening("zca").fit_transform(X), dtype=torch.float64), eps=1e-3).item()
    optimum = -0.5 * 6 * np.log(1 / 6 + 1e-3)  # unit rows with isotropic covariance I/d
    assert white < raw
    assert abs(white - optimum) < 1e-3 * abs(optimum), (white, optimum)  # raw: 10.3


def test_zca_is_symmetric_and_closest_to_identity_pca_is_ordered():
    X = _correlated()
    zca = Whitening("zca").fit(X)
    W, b = zca.as_linear()
    np.testing.assert_allclose(W, W.T, atol=1e-5)
    pca = Whitening("pca").fit(X)
    assert np.all(np.diff(pca.eigenvalues_) <= 0)
    Wp, _ = pca.as_linear()
    # among whitenings (Q @ W_zca, Q orthogonal) ZCA's is the one closest to the identity map
    assert np.linalg.norm(W - np.eye(6)) < np.linalg.norm(Wp - np.eye(6))
    # already-white data: ZCA is (almost) the identity, PCA only a rotation
    white = np.random.default_rng(1).standard_normal((20000, 6))
    np.testing.assert_allclose(Whitening("zca").fit(white).as_linear()[0], np.eye(6), atol=0.05)


def test_as_linear_matches_transform_numpy_and_torch():
    X = _correlated(300, 5, seed=2)
    w = Whitening("pca", n_components=3).fit(X)
    W, b = w.as_linear()
    assert W.shape == (3, 5) and b.shape == (3,) and W.dtype == np.float32
    np.testing.assert_allclose(w.transform(X), X.astype(np.float32) @ W.T + b, rtol=1e-5, atol=1e-5)
    xt = torch.as_tensor(X, dtype=torch.float32)
    out = w.transform(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), w.transform(X), rtol=1e-5, atol=1e-5)
    # torch input to fit gives the same map as numpy input
    np.testing.assert_allclose(Whitening("pca", n_components=3).fit(xt).as_linear()[0], W, rtol=1e-4)


def test_shrinkage():
    X = _correlated(30, 20, seed=3)  # N close to D: the sample covariance is ill-conditioned
    full = Whitening("zca", shrinkage=1.0).fit(X)
    W, _ = full.as_linear()
    np.testing.assert_allclose(W, W[0, 0] * np.eye(20), atol=1e-6)  # pure isotropic target: a scalar map
    auto = Whitening("zca", shrinkage="ledoit_wolf").fit(X)
    assert 0.0 < auto.shrinkage_ < 1.0
    raw = Whitening("zca").fit(X)
    assert np.linalg.norm(auto.as_linear()[0], 2) < np.linalg.norm(raw.as_linear()[0], 2)


def test_whitening_errors():
    with pytest.raises(ValueError, match="kind"):
        Whitening("svd")
    with pytest.raises(ValueError, match="shrinkage"):
        Whitening(shrinkage=2.0)
    with pytest.raises(ValueError, match="n_components"):
        Whitening("zca", n_components=2)
    with pytest.raises(RuntimeError, match="call fit"):
        Whitening().transform(np.zeros((2, 3)))
    w = Whitening().fit(_correlated(50, 4))
    with pytest.raises(ValueError, match="D=4"):
        w.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        Whitening().fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        Whitening().fit(np.zeros(5))


def test_fastica_recovers_mixed_laplace_sources():
    rng = np.random.default_rng(4)
    S = rng.laplace(size=(3000, 3))
    A = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.6, 0.1, 1.0]])
    X = S @ A.T + np.array([1.0, -2.0, 0.5])
    W, b = fit_fastica(X, seed=0)
    assert W.shape == (3, 3) and b.shape == (3,) and W.dtype == np.float32
    est = X @ W.T + b
    np.testing.assert_allclose(est.std(0), 1.0, atol=0.01)  # unit-variance sources
    corr = np.abs(np.corrcoef(est.T, S.T)[:3, 3:])
    # each estimate matches one distinct source, up to sign: a permutation with |corr| > 0.95
    assert sorted(corr.argmax(1).tolist()) == [0, 1, 2]
    assert corr.max(1).min() > 0.95, corr
    mixed_corr = np.abs(np.corrcoef(X.T, S.T)[:3, 3:]).max(1).min()
    assert mixed_corr < 0.95  # the test is not trivially passed by the mixtures themselves
