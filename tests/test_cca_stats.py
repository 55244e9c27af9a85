"""Tests for ada_utils.cca_stats: bootstrap interval widths against the asymptotic SE, paired differences,
verdict wording, cross-validated shrinkage."""

from __future__ import annotations

import numpy as np
import pytest
from test_cca import latent_pairs

from ada_utils import cca, cca_stats


def first_rho(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {"rho1": float(cca.canonical_correlations(a, b, reg=0)[0])}


def test_bootstrap_percentile_and_normal() -> None:
    X, Y = latent_pairs(400, [0.8], p=3, q=3, seed=8)
    groups = np.repeat(np.arange(40), 10)
    est, lo, hi = cca_stats.bootstrap_ci(first_rho, X, Y, groups, n_boot=200)["rho1"]
    # asymptotic standard error of ρ is (1 − ρ²)/√n ≈ 0.018, so a 95 % interval is ≈ 0.07 wide
    assert lo < est < hi and 0.04 < hi - lo < 0.11
    est2, lo2, hi2 = cca_stats.bootstrap_ci(first_rho, X, Y, groups, n_boot=200, method="normal")["rho1"]
    assert est2 == est and est - lo2 == pytest.approx(hi2 - est) and 0.04 < hi2 - lo2 < 0.11
    row = cca_stats.flatten_ci({"rho1": (est, lo, hi)}, extra={"n": 400.0})
    assert row == {"rho1": est, "rho1_lo": lo, "rho1_hi": hi, "n": 400.0}


def test_select_cca_reg_prefers_shrinkage_when_dims_rival_samples() -> None:
    X, Y = latent_pairs(120, [0.8, 0.6], p=40, q=40, seed=9)
    groups = np.repeat(np.arange(30), 4)
    best, scores = cca_stats.select_cca_reg(X, Y, groups, regs=(0.0, 0.5, 0.9))
    assert set(scores) == {"0.0", "0.5", "0.9"} and best != 0.0
    assert scores["0.0"] < scores[str(best)]
    with pytest.raises(ValueError, match="at least 4 groups"):
        cca_stats.select_cca_reg(X, Y, np.repeat(np.arange(3), 40))


def test_paired_bootstrap_and_verdict() -> None:
    X, Y = latent_pairs(400, [0.8], p=3, q=3, seed=10)
    rng = np.random.default_rng(11)
    noisy = (X, Y + 2 * rng.standard_normal(Y.shape))
    groups = np.repeat(np.arange(40), 10)
    est, lo, hi = cca_stats.paired_bootstrap_ci(first_rho, "rho1", (X, Y), noisy, groups, n_boot=100)
    assert est == pytest.approx(first_rho(X, Y)["rho1"] - first_rho(*noisy)["rho1"]) and 0 < lo < est < hi
    assert cca_stats.verdict(lo, hi) == "supported" and cca_stats.verdict(-hi, -lo) == "contradicted"
    assert cca_stats.verdict(-0.1, 0.1).startswith("inconclusive")
