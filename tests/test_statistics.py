"""Tests for ada_utils.eval.statistics: bootstrap interval widths against the asymptotic SE, the two paths of the
paired bootstrap (mean difference and any statistic), verdicts as data."""

from __future__ import annotations

import numpy as np
import pytest
from test_cca import latent_pairs

from ada_utils import cca
from ada_utils.eval import statistics as st
from ada_utils.eval.statistics import Comparison, Verdict


def first_rho(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {"rho1": float(cca.canonical_correlations(a, b, reg=0)[0])}


def test_bootstrap_percentile_and_normal() -> None:
    X, Y = latent_pairs(400, [0.8], p=3, q=3, seed=8)
    groups = np.repeat(np.arange(40), 10)
    est, lo, hi = st.bootstrap_ci(first_rho, X, Y, groups, n_boot=200)["rho1"]
    # asymptotic standard error of ρ is (1 − ρ²)/√n ≈ 0.018, so a 95 % interval is ≈ 0.07 wide
    assert lo < est < hi and 0.04 < hi - lo < 0.11
    est2, lo2, hi2 = st.bootstrap_ci(first_rho, X, Y, groups, n_boot=200, method="normal")["rho1"]
    assert est2 == est and est - lo2 == pytest.approx(hi2 - est) and 0.04 < hi2 - lo2 < 0.11
    row = st.flatten_ci({"rho1": (est, lo, hi)}, extra={"n": 400.0})
    assert row == {"rho1": est, "rho1_lo": lo, "rho1_hi": hi, "n": 400.0}


def test_paired_bootstrap_of_a_statistic() -> None:
    X, Y = latent_pairs(400, [0.8], p=3, q=3, seed=10)
    rng = np.random.default_rng(11)
    noisy = (X, Y + 2 * rng.standard_normal(Y.shape))
    groups = np.repeat(np.arange(40), 10)
    est, lo, hi = st.paired_bootstrap((X, Y), noisy, groups, stat=first_rho, key="rho1", n_boot=100)
    assert est == pytest.approx(first_rho(X, Y)["rho1"] - first_rho(*noisy)["rho1"]) and 0 < lo < est < hi
    assert Verdict.of(lo, hi) is Verdict.ABOVE and Verdict.of(-hi, -lo) is Verdict.BELOW
    with pytest.raises(ValueError, match="key"):
        st.paired_bootstrap((X, Y), noisy, groups, stat=first_rho)


def test_paired_bootstrap_of_a_mean_difference_resamples_models() -> None:
    rng = np.random.default_rng(0)
    model = np.repeat(np.arange(40), 5)
    a = rng.random(200)
    diff, lo, hi = st.paired_bootstrap(a + 0.05, a, model)
    assert np.isclose(diff, 0.05) and np.isclose(lo, 0.05) and np.isclose(hi, 0.05)
    noisy = a + rng.normal(0, 0.5, 200)
    diff, lo, hi = st.paired_bootstrap(noisy, a, model)
    assert lo < diff < hi and np.isclose(diff, (noisy - a).mean())
    # Same interval as the general path on the same data (different draws: agree to Monte Carlo error).
    def mean(x: np.ndarray, _: np.ndarray) -> dict[str, float]:
        return {"m": float(x.mean())}
    _, glo, ghi = st.paired_bootstrap((noisy[:, None], noisy[:, None]), (a[:, None], a[:, None]), model,
                                      stat=mean, key="m", n_boot=2000)
    assert abs(glo - lo) < 0.03 and abs(ghi - hi) < 0.03
    # Models, not queries, are resampled: queries of a model sharing one offset widen the interval.
    clustered = a + np.repeat(rng.normal(0, 0.5, 40), 5)
    _, clo, chi = st.paired_bootstrap(clustered, a, model)
    assert chi - clo > 1.5 * (hi - lo)


def test_verdicts_are_data() -> None:
    intervals = ((0.1, 0.2), (-0.005, 0.1), (-0.1, 0.1), (-0.005, -0.001), (-0.3, -0.1), (-0.01, 0.2))
    assert [Verdict.of(lo, hi) for lo, hi in intervals] == [Verdict.ABOVE, Verdict.NONINFERIOR, Verdict.INCONCLUSIVE,
                                                            Verdict.BELOW, Verdict.BELOW, Verdict.INCONCLUSIVE]
    assert Verdict.of(-0.005, 0.1, margin=0.0) is Verdict.INCONCLUSIVE  # no margin: an interval across 0 wins nothing
    assert Verdict.ABOVE.word == "supported" and Verdict.BELOW.word == "contradicted"
    assert Verdict.INCONCLUSIVE.word == "inconclusive" and Verdict.NONINFERIOR.word.startswith("non-inferior")
    assert Verdict.ABOVE.satisfies(">") and Verdict.NONINFERIOR.satisfies("≥") and not Verdict.NONINFERIOR.satisfies(">")
    assert not Verdict.INCONCLUSIVE.satisfies("≥") and not Verdict.BELOW.satisfies("≥")
    with pytest.raises(ValueError, match="claim"):
        Verdict.ABOVE.satisfies(">=")
    c = Comparison("ada", "pretrained", "test_x/scene", "R@5", 0.1, 0.02, 0.2)
    row = c.record()
    assert row["verdict"] == "ada > pretrained" and Comparison.from_record(row) == c
    # The verdict is recomputed from the interval, never read back from the text.
    assert Comparison.from_record({**row, "verdict": "ada < pretrained"}).verdict is Verdict.ABOVE
    others = [Comparison("ada", "pretrained", "test_y/scene", "R@5", 0.0, -0.005, 0.1),
              Comparison("ada", "pretrained", "test_z/scene", "R@5", 0.0, -0.1, 0.1),
              Comparison("ada", "pretrained", "test_x/scene", "mAP", -0.2, -0.3, -0.1)]
    cells = ["test_x/scene", "test_y/scene", "test_z/scene"]
    assert st.verdict_tally([c, *others], "ada", "pretrained", cells) == {">": 1, "≥": 1, "?": 1, "<": 0}
    assert st.verdict_tally([c, *others], "ada", "pretrained", cells, "mAP") == {">": 0, "≥": 0, "?": 0, "<": 1}


def test_holm_rejections_match_the_step_down_rule() -> None:
    # Holm at 0.05 over 4: thresholds 0.0125, 0.0167, 0.025, 0.05 in p order; stops at the first failure
    p = np.array([0.01, 0.04, 0.012, 0.03])
    assert st.holm_rejections(p, 0.05).tolist() == [True, False, True, False]
    assert st.holm_rejections(np.array([0.2, 0.001]), 0.05).tolist() == [False, True]
    rng = np.random.default_rng(0)
    for _ in range(20):  # reference: Holm-adjusted p-values, running max of (m − j) p_(j), rejected at <= α
        q = rng.random(12) ** 3
        order = np.argsort(q)
        adjusted = np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order])
        expected = np.zeros(len(q), dtype=bool)
        expected[order] = adjusted <= 0.05
        assert st.holm_rejections(q, 0.05).tolist() == expected.tolist()


def test_holm_verdicts_are_stricter_than_single_intervals() -> None:
    rng = np.random.default_rng(1)
    model = np.repeat(np.arange(50), 4)
    base = rng.random(200)
    # many comparisons whose single 95 % interval sits just above zero; Holm over the table demotes them
    comps = [st.compare_means("a", "b", f"c{i}", "R@5", base + 0.008 + rng.normal(0, 0.05, 200), base, model, n_boot=500)
             for i in range(40)]
    single = sum(c.verdict is Verdict.ABOVE for c in comps)
    corrected = st.holm(comps)
    assert all(c.holm_verdict in (">", "≥", "?", "<") for c in corrected)
    assert sum(c.verdict is Verdict.ABOVE for c in corrected) < single
    # A clear effect survives the correction; a null effect is never a win (no margin counts it as one either).
    clear = st.compare_means("a", "b", "x", "R@5", base + 0.2, base + rng.normal(0, 0.01, 200), model)
    null = st.compare_means("a", "b", "y", "R@5", base + rng.normal(0, 0.05, 200), base, model, margin=0.0)
    out = st.holm([clear, null, *comps])
    assert out[0].verdict is Verdict.ABOVE and not out[1].verdict.satisfies("≥")
    assert Comparison.from_record(out[0].record()) == out[0]


def test_seed_variance_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    model = np.repeat(np.arange(40), 5)
    a, b = rng.random(200) + 0.02, rng.random(200)
    plain = st.compare_means("a", "b", "x", "R@5", a, b, model)
    spread = st.compare_means("a", "b", "x", "R@5", a, b, model, seed_diffs=[plain.diff - 0.03, plain.diff + 0.03])
    assert spread.diff == plain.diff and spread.se == pytest.approx(np.sqrt(plain.se ** 2 + 0.06 ** 2 / 2 / 2))
    assert spread.ci_low < plain.ci_low and spread.ci_high > plain.ci_high
    same = st.compare_means("a", "b", "x", "R@5", a, b, model, seed_diffs=[plain.diff] * 3)
    assert (same.ci_low, same.ci_high, same.se) == pytest.approx((plain.ci_low, plain.ci_high, plain.se))  # as before
    with pytest.raises(ValueError, match="finite standard error"):
        st.holm([Comparison("a", "b", "x", "R@5", 0.1, 0.0, 0.2)])
