"""Tests for ada_utils.analysis.claims: checks carry verdicts as data (zero margin), claim summaries are computed
from verdicts, chapter 01's checks read held-out numbers with the right intervals, chapter 02's checks (i)-(iii) read
their numbers right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ada_utils import cca
from ada_utils.analysis import claims, measures
from ada_utils.analysis.claims import Check
from ada_utils.analysis.features import Pairs
from ada_utils.analysis.measures import heldout_gap, matched_distance_terms, mean_correlation
from ada_utils.eval.statistics import Verdict, paired_bootstrap

N_MODELS, PER_MODEL = 20, 10


def toy_pairs(noise: float, *, seed: int = 0) -> Pairs:
    """Matched pairs correlated along their own 4 coordinates (``noise`` on the real side), 20 models of 10 rows in
    two test cases."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((N_MODELS * PER_MODEL, 4)) * [3.0, 2.0, 1.5, 1.0]
    X = s + 0.3 * rng.standard_normal(s.shape)
    Y = s + noise * np.random.default_rng(seed + 1).standard_normal(s.shape)
    model = np.repeat(np.arange(N_MODELS), PER_MODEL)
    return Pairs(X, Y, model, np.where(model < N_MODELS // 2, "a", "b"), np.arange(len(model)))


@pytest.mark.parametrize("low, high, verdict, word", [
    (0.1, 0.9, Verdict.ABOVE, "supported"),
    (0.0, 0.9, Verdict.INCONCLUSIVE, "inconclusive"),  # 0 inside: not supported
    (-0.005, 0.9, Verdict.INCONCLUSIVE, "inconclusive"),  # zero margin: no "non-inferior" reading
    (-0.2, 0.0, Verdict.INCONCLUSIVE, "inconclusive"),
    (-0.5, -0.1, Verdict.BELOW, "contradicted"),
])
def test_check_verdict_record_and_text(low: float, high: float, verdict: Verdict, word: str) -> None:
    c = Check("x", (low + high) / 2, low, high)
    assert c.verdict is verdict
    assert c.record() == {"estimate": (low + high) / 2, "low": low, "high": high, "verdict": word}
    assert c.text() == f"{(low + high) / 2:+.3f} [{low:+.3f}, {high:+.3f}]: {word}"


def test_check_text_and_record_types() -> None:
    c = Check("(ii) a − b", np.float64(0.0123), np.float64(-0.0031), np.float64(0.02))
    assert c.text() == "+0.012 [-0.003, +0.020]: inconclusive"
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
    ([Verdict.ABOVE, Verdict.INCONCLUSIVE], "do not clearly support", "do not clearly support"),
    ([Verdict.ABOVE, Verdict.NONINFERIOR], "do not clearly support", "do not clearly support"),
    ([Verdict.ABOVE, Verdict.BELOW, Verdict.INCONCLUSIVE], "contradict", "do not clearly support"),
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


def test_null_check_is_the_matched_value_minus_the_nulls_range() -> None:
    row = {"held-out ρ": 0.30, "null low": -0.02, "null high": 0.04, "null mean": 0.01}
    c = claims.null_check("(a) x", row, claim=1)
    assert (c.estimate, c.low, c.high) == pytest.approx((0.29, 0.26, 0.32)) and c.claim == 1
    assert c.verdict is Verdict.ABOVE
    inside = claims.null_check("(a) y", {**row, "held-out ρ": 0.0})
    assert inside.verdict is Verdict.INCONCLUSIVE  # inside the null: the interval holds 0
    assert claims.null_check("(a) z", {**row, "held-out ρ": -0.05}).verdict is Verdict.BELOW


def _chapter01_inputs(names: list[str], noise: dict[str, float]) -> tuple[dict, dict, dict, np.ndarray]:
    pairs = {n: toy_pairs(noise[n]) for n in names}
    white = {n: measures.pooled_whitening(np.vstack([p.synth, p.real])) for n, p in pairs.items()}
    rows = {n: {"held-out ρ": 0.3 + i / 10, "null low": -0.05, "null high": 0.05, "null mean": 0.0}
            for i, n in enumerate(names)}
    coords = {n: measures.heldout_coordinates(p, white[n]) for n, p in pairs.items()}
    gaps = {n: measures.coordinates_and_canonical(p, white[n], seed=0) for n, p in pairs.items()}
    return rows, coords, gaps, pairs[names[0]].model


def test_cross_covariance_checks_labels_order_and_values() -> None:
    names = ["random", "pretrained", "align", "ada"]
    rows, coords, gaps, groups = _chapter01_inputs(names, {"random": 3.0, "pretrained": 1.0, "align": 0.5, "ada": 0.2})
    checks = claims.cross_covariance_checks(rows, coords, gaps, groups, n_boot=20, seed=0)
    assert [c.label for c in checks] == [
        "(a) pretrained: held-out canonical correlation, matched − grouped null",
        "(a) align: held-out canonical correlation, matched − grouped null",
        "(a) ada: held-out canonical correlation, matched − grouped null",
        "(b) align − random: held-out coordinate correlation", "(b) ada − random: held-out coordinate correlation",
        "(c) pretrained − ada: held-out gap (canonical − coordinates)"]
    assert [c.claim for c in checks] == [1, 1, 1, 1, 1, 2]
    assert (checks[0].low, checks[0].high) == pytest.approx((0.4 - 0.05, 0.4 + 0.05))
    b = checks[3]
    want = paired_bootstrap(coords["align"], coords["random"], groups, stat=mean_correlation, key="r", n_boot=20,
                            seed=0)
    assert (b.estimate, b.low, b.high) == pytest.approx(want) and b.verdict is Verdict.ABOVE  # less noise: higher r
    c = checks[-1]
    want = paired_bootstrap(gaps["pretrained"], gaps["ada"], groups, stat=heldout_gap, key="gap", n_boot=20, seed=0)
    assert (c.estimate, c.low, c.high) == pytest.approx(want)


def test_cross_covariance_checks_skip_what_is_missing() -> None:
    rows, coords, gaps, groups = _chapter01_inputs(["pretrained", "ada"], {"pretrained": 1.0, "ada": 0.2})
    labels = [c.label for c in claims.cross_covariance_checks(rows, coords, gaps, groups, n_boot=5, seed=0)]
    assert labels == ["(a) pretrained: held-out canonical correlation, matched − grouped null",
                      "(a) ada: held-out canonical correlation, matched − grouped null",
                      "(c) pretrained − ada: held-out gap (canonical − coordinates)"]
    rows, coords, gaps, groups = _chapter01_inputs(["random"], {"random": 1.0})
    assert claims.cross_covariance_checks(rows, coords, gaps, groups, n_boot=5, seed=0) == []


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
    coords = {"ada": measures.heldout_coordinates(good, identity),
              "pretrained": measures.heldout_coordinates(bad, shift)}
    c = claims.heldout_coordinate_check(coords, good.model, n_boot=40, seed=1)
    want = paired_bootstrap((good.synth, good.real), (bad.synth - 1, 2 * bad.real), good.model,
                            stat=mean_correlation, key="r", n_boot=40, seed=1)
    assert (c.estimate, c.low, c.high) == pytest.approx(want)
    assert c.label == "(ii) ada − pretrained, held-out coordinate correlation" and c.claim == 0
    assert c.estimate == pytest.approx(mean_correlation(good.synth, good.real)["r"]
                                       - mean_correlation(bad.synth, bad.real)["r"])  # correlations: scale-free
    assert c.verdict is Verdict.ABOVE
    named = claims.heldout_coordinate_check(coords, good.model, a="pretrained", b="ada", label="x", claim=1,
                                            n_boot=40, seed=1)
    assert named.label == "x" and named.claim == 1 and named.verdict is Verdict.BELOW


@pytest.mark.parametrize("got, verdict, ends", [
    (0.4, Verdict.ABOVE, "same basis): supported"),
    (0.2, Verdict.INCONCLUSIVE, "same basis): not supported on our data"),  # share 0 at zero margin
    (0.1, Verdict.BELOW, "same basis): not supported on our data"),
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
