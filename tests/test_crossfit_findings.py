"""Tests for ada_utils.analysis.findings: the analysis chapters' result sentences are made from the numbers (a
change in a number changes the text), and the held-out gap statistic reads its two halves."""

from __future__ import annotations

import numpy as np
import pytest

from ada_utils.analysis import findings
from ada_utils.analysis.claims import Check
from ada_utils.analysis.measures import heldout_gap

ROW = {"held-out ρ": 0.21, "null low": -0.03, "null high": 0.04, "null mean": 0.0, "in-sample ρ": 0.55,
       "in-sample null": 0.40}
CONTROL = {**ROW, "held-out ρ": 0.001, "in-sample ρ": 0.39, "draws": 5.0}


def test_null_position() -> None:
    assert findings.null_position(ROW) == "above the grouped null"
    assert findings.null_position({**ROW, "held-out ρ": 0.04}) == "inside the grouped null"  # ends included
    assert findings.null_position({**ROW, "held-out ρ": -0.1}) == "below the grouped null"


def test_crossfit_lines_state_every_number() -> None:
    text = findings.crossfit_lines({"pretrained": ROW, "random": {**ROW, "held-out ρ": 0.0}}, CONTROL, top=8,
                                   n_perm=30)
    assert "first 8 held-out" in text and "30 permutations" in text
    assert "* `pretrained`: **+0.210**, null [-0.030, +0.040]: above the grouped null" in text
    assert "* `random`: **+0.000**, null [-0.030, +0.040]: inside the grouped null" in text
    assert "mean of 5 draws): **+0.001**" in text and "the control 0.390 (null 0.400)" in text
    assert "*Aside, in-sample" in text


def test_cross_covariance_findings_follow_the_numbers() -> None:
    checks = [Check("(a) pretrained: x", 0.2, 0.17, 0.24, 1), Check("(c) pretrained − ada: y", 0.0, -0.1, 0.1, 2)]
    kw = {"claim1": "support", "claim2": "do not clearly support", "spearman": 0.9, "scale": "small",
          "n_pairs": 5200, "n_models": 260}
    text = findings.cross_covariance_findings({"pretrained": ROW, "random": {**ROW, "held-out ρ": 0.0}}, CONTROL,
                                              checks, **kw)
    assert "lie above the grouped null for `pretrained` and not for `random`" in text
    assert "+0.001 held out (inside the grouped null) and 0.390 in-sample: in-sample" in text
    assert "**support** claim (1)" in text and "5200 test pairs over 260 models" in text
    assert ("(d) Across the 2 encoders, held-out coordinate correlation predicts the ranking of R@5 "
            "(Spearman 0.90)") in text
    assert "Check by check: (a) pretrained: supported; (c) pretrained − ada: inconclusive." in text
    unbiased = findings.cross_covariance_findings({"pretrained": ROW}, {**CONTROL, "in-sample ρ": 0.01}, [], **kw)
    assert "high without any signal" not in unbiased and "Check by check" not in unbiased
    assert "above the grouped null for every encoder (`pretrained`)" in unbiased
    none = findings.cross_covariance_findings({"random": {**ROW, "held-out ρ": 0.0}}, CONTROL, [], **kw)
    assert "above the grouped null for none of the encoders (`random`)" in none


def test_decomposition_findings_follow_the_numbers() -> None:
    terms = {"pretrained": {"residual": 1e-16}, "ada": {"residual": -3e-15}}
    held = {"pretrained": {"heldout_coord_mean": 0.1, "heldout_cca_mean": 0.3},
            "ada": {"heldout_coord_mean": 0.25, "heldout_cca_mean": 0.3}}
    text = findings.decomposition_findings(terms, held, {"heldout_coord_mean": 0.9, "gap": -1.0}, identities=True,
                                           summary="do not clearly support", scale="tiny")
    assert "hold on all 2 encoders (largest |residual| of the distance identity 3.0e-15)" in text
    assert "`pretrained` +0.200, `ada` +0.050 (highest for `pretrained`)" in text
    assert "**do not clearly support**" in text and "scale `tiny`" in text
    assert "ordered as R@5: `heldout_coord_mean`; ordered opposite to R@5: `gap`" in text
    assert "are violated" in findings.decomposition_findings(terms, held, {}, identities=False, summary="x",
                                                             scale="tiny")


def test_heldout_gap_reads_coordinates_then_canonical_variates() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 1))
    X = np.hstack([z, z])  # [coordinates | canonical]
    Y = np.hstack([rng.standard_normal((500, 1)), z + 0.1 * rng.standard_normal((500, 1))])
    g = heldout_gap(X, Y)
    assert g["canonical"] == pytest.approx(float(np.corrcoef(X[:, 1], Y[:, 1])[0, 1])) and g["canonical"] > 0.9
    assert g["gap"] == pytest.approx(g["canonical"] - g["coordinates"]) and abs(g["coordinates"]) < 0.1
    with pytest.raises(ValueError, match="two equal halves"):
        heldout_gap(np.hstack([X, z]), np.hstack([Y, z]))
