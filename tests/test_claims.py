"""Tests for ada_utils.analysis.claims: checks carry verdicts as data, claim summaries are computed from
verdicts, chapter 01's checks use the right intervals, chapter 02's checks (i)-(iii) read their numbers right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ada_utils import cca
from ada_utils.analysis import claims
from ada_utils.analysis.claims import Check
from ada_utils.analysis.features import Pairs
from ada_utils.analysis.measures import matched_distance_terms, mean_correlation
from ada_utils.eval.statistics import Verdict, paired_bootstrap

N_MODELS, PER_MODEL = 20, 10


def toy_pairs(noise: float, *, seed: int = 0) -> Pairs:
    """Matched pairs correlated along their own 4 coordinates (``noise`` on the real side), 20 models of 10 rows."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((N_MODELS * PER_MODEL, 4)) * [3.0, 2.0, 1.5, 1.0]
    X = s + 0.3 * rng.standard_normal(s.shape)
    Y = s + noise * np.random.default_rng(seed + 1).standard_normal(s.shape)
    model = np.repeat(np.arange(N_MODELS), PER_MODEL)
    return Pairs(X, Y, model, np.full(len(model), "case"), model.copy())


@pytest.mark.parametrize("low, high, verdict, word", [
    (0.1, 0.9, Verdict.ABOVE, "supported"),
    (0.0, 0.9, Verdict.NOT_BELOW, "inconclusive (interval includes 0)"),  # 0 inside: not supported
    (-0.2, 0.0, Verdict.NOT_BELOW, "inconclusive (interval includes 0)"),
    (-0.5, -0.1, Verdict.BELOW, "contradicted"),
])
def test_check_verdict_record_and_text(low: float, high: float, verdict: Verdict, word: str) -> None:
    c = Check("x", (low + high) / 2, low, high)
    assert c.verdict is verdict
    assert c.record() == {"estimate": (low + high) / 2, "low": low, "high": high, "verdict": word}
    assert c.text() == f"{(low + high) / 2:+.3f} [{low:+.3f}, {high:+.3f}]: {word}"


def test_check_text_and_record_types() -> None:
    c = Check("(ii) a − b", np.float64(0.0123), np.float64(-0.0031), np.float64(0.02))
    assert c.text() == "+0.012 [-0.003, +0.020]: inconclusive (interval includes 0)"
    assert all(type(c.record()[k]) is float for k in ("estimate", "low", "high"))


def test_checks_table_rows_and_dtypes() -> None:
    table = claims.checks_table([Check("up", 0.5, 0.1, 0.9), Check("down", -0.5, -0.9, -0.1)])
    assert list(table.index) == ["up", "down"] and list(table.columns) == ["estimate", "low", "high", "verdict"]
    assert table.loc["up", "verdict"] == "supported" and table.loc["down", "verdict"] == "contradicted"
    assert all(table[c].dtype == np.float64 for c in ("estimate", "low", "high"))
    empty = claims.checks_table([])
    assert len(empty) == 0 and list(empty.columns) == ["estimate", "low", "high", "verdict"]


@pytest.mark.parametrize("verdicts, expected, lenient", [
    ([], "cannot judge", "cannot judge"),
    ([Verdict.ABOVE, Verdict.ABOVE], "support", "support"),
    ([Verdict.ABOVE, Verdict.NOT_BELOW], "do not clearly support", "do not clearly support"),
    ([Verdict.ABOVE, Verdict.BELOW, Verdict.NOT_BELOW], "contradict", "do not clearly support"),
    ([Verdict.ABOVE, None], "do not clearly support", "do not clearly support"),  # None: not measurable
])
def test_claim_support_from_verdicts(verdicts: list, expected: str, lenient: str) -> None:
    assert claims.claim_support(verdicts) == expected
    assert claims.claim_support(iter(verdicts)) == expected  # a generator is read once, correctly
    assert claims.claim_support(verdicts, can_contradict=False) == lenient


def test_rank_correlation_and_its_reading() -> None:
    assert claims.rank_correlation([0.1, 0.2, 0.3], [1, 5, 20]) == pytest.approx(1.0)
    assert claims.rank_correlation(pd.Series([0.1, 0.2, 0.3]), [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(claims.rank_correlation([0.1, 0.2], [1, 2]))  # two encoders: no rank correlation
    with pytest.raises(ValueError, match="3 and 2"):
        claims.rank_correlation([1, 2, 3], [1, 2])
    assert claims.spearman_reading(0.8) == "predicts the ranking"
    assert claims.spearman_reading(0.79) == "does not predict the ranking"
    assert claims.spearman_reading(-0.8) == "orders the encoders opposite to retrieval"
    assert claims.spearman_reading(float("nan")) == "does not predict the ranking"


def test_decomposition_difference_is_the_paired_bootstrap_of_the_decomposition() -> None:
    clean, noisy = toy_pairs(0.0), toy_pairs(3.0)
    dims = np.arange(4)
    got = claims.decomposition_difference(clean, dims, noisy, dims, "coord_corr_mean", n_boot=30, seed=2)
    want = paired_bootstrap((clean.synth[:, dims], clean.real[:, dims]), (noisy.synth[:, dims], noisy.real[:, dims]),
                            clean.model,
                            stat=cca.decomposition, key="coord_corr_mean", n_boot=30, seed=2, method="normal")
    assert got == pytest.approx(want, rel=0, abs=0)
    assert got[0] == pytest.approx(cca.decomposition(clean.synth, clean.real)["coord_corr_mean"]
                                   - cca.decomposition(noisy.synth, noisy.real)["coord_corr_mean"])
    assert got[1] > 0  # noise on the real side lowers the correlation: the interval lies above 0
    same = claims.decomposition_difference(clean, dims, clean, dims, "gap", n_boot=10, seed=0)
    assert same == (0.0, 0.0, 0.0) and Check("s", *same).verdict is Verdict.NOT_BELOW
    other = Pairs(clean.synth, clean.real, clean.model[::-1], clean.case, clean.exemplar)
    with pytest.raises(ValueError, match="same test pairs"):
        claims.decomposition_difference(clean, dims, other, dims, "gap", n_boot=10, seed=0)


def _chapter01_table(names: list[str]) -> pd.DataFrame:
    rows = {n: {"diag_dominance_whitened_lo": 0.3 + i / 10, "diag_dominance_whitened_hi": 0.5 + i / 10,
                "shuffled_diag_dominance_whitened": 0.35} for i, n in enumerate(names)}
    return pd.DataFrame(rows).T


def test_cross_covariance_checks_labels_order_and_values() -> None:
    names = ["random", "pretrained", "align", "ada"]
    pairs = {"random": toy_pairs(3.0), "pretrained": toy_pairs(1.0), "align": toy_pairs(0.5), "ada": toy_pairs(0.2)}
    dims = {n: np.arange(4) if n != "pretrained" else np.array([0, 2]) for n in names}
    checks = claims.cross_covariance_checks(_chapter01_table(names), pairs, dims, n_boot=20, seed=0)
    assert [c.label for c in checks] == [
        "(a) pretrained: whitened diagonal, matched − shuffled", "(a) align: whitened diagonal, matched − shuffled",
        "(a) ada: whitened diagonal, matched − shuffled", "(b) align − random: whitened diagonal",
        "(b) ada − random: whitened diagonal", "(c) ada − pretrained: coord_share"]
    assert [c.claim for c in checks] == [1, 1, 1, 1, 1, 2]
    a_pre, a_align = checks[0], checks[1]
    assert (a_pre.low, a_pre.high) == pytest.approx((0.4 - 0.35, 0.6 - 0.35))  # interval minus the null value
    assert a_pre.estimate == pytest.approx(0.15) and a_pre.verdict is Verdict.ABOVE
    assert (a_align.low, a_align.high) == pytest.approx((0.15, 0.35))
    c = checks[-1]
    assert (c.estimate, c.low, c.high) == claims.decomposition_difference(
        pairs["ada"], dims["ada"], pairs["pretrained"], dims["pretrained"], "coord_share", n_boot=20, seed=0)
    assert (checks[3].estimate, checks[3].low, checks[3].high) == claims.decomposition_difference(
        pairs["align"], dims["align"], pairs["random"], dims["random"], "diag_dominance_whitened", n_boot=20, seed=0)


def test_cross_covariance_checks_skip_what_is_missing() -> None:
    pairs = {"pretrained": toy_pairs(1.0), "ada": toy_pairs(0.2)}
    dims = {n: np.arange(4) for n in pairs}
    labels = [c.label for c in claims.cross_covariance_checks(_chapter01_table(list(pairs)), pairs, dims,
                                                              n_boot=5, seed=0)]
    assert labels == ["(a) pretrained: whitened diagonal, matched − shuffled",
                      "(a) ada: whitened diagonal, matched − shuffled", "(c) ada − pretrained: coord_share"]
    only_random = {"random": toy_pairs(1.0)}
    assert claims.cross_covariance_checks(_chapter01_table(["random"]), only_random, {"random": np.arange(4)},
                                          n_boot=5, seed=0) == []


def test_identities_hold_on_measured_terms_and_fail_on_a_residual() -> None:
    p = toy_pairs(0.5)
    terms = {"e": matched_distance_terms(p.synth, p.real)[0]}
    assert claims.identities_hold(terms)
    assert not claims.identities_hold({"e": {**terms["e"], "residual": 1e-6}})
    assert not claims.identities_hold({"e": {**terms["e"], "MI via log det (nats)": terms["e"]["MI via ρ (nats)"]
                                             + 1e-3}})


def test_heldout_coordinate_check_is_a_percentile_paired_bootstrap() -> None:
    good, bad = toy_pairs(0.2), toy_pairs(3.0)
    identity = cca.CCAModel(np.eye(4), np.eye(4), np.zeros(4), np.zeros(4), np.empty(0))
    shift = cca.CCAModel(np.eye(4), 2 * np.eye(4), np.ones(4), np.zeros(4), np.empty(0))
    pairs, dims = {"ada": good, "pretrained": bad}, {"ada": np.arange(4), "pretrained": np.arange(4)}
    c = claims.heldout_coordinate_check({"ada": identity, "pretrained": shift}, pairs, dims, n_boot=40, seed=1)
    want = paired_bootstrap((good.synth, good.real), (bad.synth - 1, 2 * bad.real), good.model,
                            stat=mean_correlation, key="r", n_boot=40, seed=1)
    assert (c.estimate, c.low, c.high) == pytest.approx(want)
    assert c.label == "(ii) ada − pretrained, held-out coordinate correlation"
    assert c.estimate == pytest.approx(mean_correlation(good.synth, good.real)["r"]
                                       - mean_correlation(bad.synth, bad.real)["r"])  # correlations: scale-free
    assert c.verdict is Verdict.ABOVE


@pytest.mark.parametrize("got, verdict, ends", [
    (0.4, Verdict.ABOVE, "same coordinates): supported"),
    (0.2, Verdict.NOT_BELOW, "same coordinates): not supported on our data"),
    (0.1, Verdict.BELOW, "same coordinates): not supported on our data"),
])
def test_supervised_gain_share(got: float, verdict: Verdict, ends: str) -> None:
    text, v = claims.supervised_gain_share(0.2, 0.6, got)
    share = (got - 0.2) / 0.4
    assert v is verdict and text.startswith(f"{share:.2f} (backbone 0.200, ada {got:.3f}, CCA on training pairs "
                                            "0.600") and text.endswith(ends)


def test_supervised_gain_share_without_a_supervised_gain() -> None:
    text, v = claims.supervised_gain_share(0.5, 0.5, 0.7)
    assert v is None and text.startswith("not measurable: CCA fitted on the training pairs (0.500)")
    assert claims.claim_support([Verdict.ABOVE, v], can_contradict=False) == "do not clearly support"
