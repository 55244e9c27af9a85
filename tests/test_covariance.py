"""Tests for ada_utils.covariance: Ledoit-Wolf agreement with scikit-learn, shrinkage limits, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage

from ada_utils import covariance as cov


def test_ledoit_wolf_matches_sklearn_and_auto_vanishes() -> None:
    X = np.random.default_rng(3).standard_normal((50, 20)) @ np.diag(np.linspace(0.2, 3, 20))
    assert cov.shrinkage(X, reg="ledoit_wolf") == pytest.approx(ledoit_wolf_shrinkage(X), rel=1e-10)
    assert cov.shrinkage(np.zeros((10, 4)), reg="auto") == pytest.approx(4 / 14)
    assert cov.shrinkage(np.zeros((10**6, 4)), reg="auto") < 1e-5


@pytest.mark.parametrize(("X", "match"), [
    (np.full((5, 3), np.nan), "NaN"), (np.ones((5, 3)), "constant"), (np.ones((1, 3)), "at least 2"),
    (np.ones(5), "2-D")])
def test_bad_inputs_raise(X: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cov.covariance(X)


def test_mismatched_rows_and_bad_reg() -> None:
    with pytest.raises(ValueError, match="same rows"):
        cov.covariance_blocks(np.eye(4), np.eye(3))
    with pytest.raises(ValueError, match="reg must be"):
        cov.covariance(np.eye(4), reg=1.5)
