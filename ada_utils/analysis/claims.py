"""The claims of the analysis chapters, judged as data: checks with intervals, verdicts, claim summaries.

A :class:`Check` is one testable consequence of a paper claim: an estimate of a difference A − B with its 95 %
interval. Its verdict is a :class:`ada_utils.eval.statistics.Verdict` read with a zero margin (interval above 0:
supported; below 0: contradicted; containing 0: inconclusive), the rule of the book's introduction ("How to read
the numbers"); text is made from it, and a claim's overall reading (:func:`claim_support`) is computed from
verdicts, never from text. A non-inferiority margin has no meaning for these correlation statistics, so none is
used.

Chapter 01 (the cross-covariance) judges its checks with :func:`cross_covariance_checks`; chapter 02 (the CCA
objective) with :func:`identities_hold`, :func:`heldout_coordinate_check` and :func:`supervised_gain_share`.
Every check reads held-out numbers (:mod:`ada_utils.analysis.measures`) on the matched test pairs of
:mod:`ada_utils.analysis.features`, in the common basis of :mod:`ada_utils.analysis.basis`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ada_utils.analysis.measures import heldout_gap, mean_correlation
from ada_utils.eval.statistics import Verdict, paired_bootstrap

#: The contrastive encoders that check (b) of chapter 01 compares with random initialisation, in this order.
CONTRASTIVE = ("align", "ada")


@dataclass(frozen=True)
class Check:
    """One consequence of a claim: an estimate of a difference A − B and its 95 % interval.

    Attributes:
        label: the row name shown in the book (e.g. ``"(c) ada − pretrained: coord_share"``).
        estimate: the difference on all test pairs. low, high: its interval.
        claim: the number of the paper claim it tests (chapter 01: 1 or 2; 0 when not said).
    """

    label: str
    estimate: float
    low: float
    high: float
    claim: int = 0

    @property
    def verdict(self) -> Verdict:
        """Where the interval lies with respect to zero (:meth:`Verdict.of` with ``margin=0``)."""
        return Verdict.of(self.low, self.high, margin=0)

    def record(self) -> dict[str, float | str]:
        """A JSON / table row: ``estimate``, ``low``, ``high`` as floats and the verdict's word."""
        return {"estimate": float(self.estimate), "low": float(self.low), "high": float(self.high),
                "verdict": self.verdict.word}

    def text(self) -> str:
        """``"+0.012 [-0.003, +0.020]: inconclusive"``: three decimals and the word."""
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]: {self.verdict.word}"


def checks_table(checks: Iterable[Check]) -> pd.DataFrame:
    """One row per check (index = label): ``estimate``, ``low``, ``high`` (float) and ``verdict`` (its word)."""
    rows = {c.label: c.record() for c in checks}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "low", "high", "verdict"])
    return table.astype({"estimate": float, "low": float, "high": float})


def claim_support(verdicts: Iterable[Verdict | None], *, can_contradict: bool = True) -> str:
    """What a claim's checks say together, from their verdicts (None: a check that could not be measured).

    Args:
        verdicts: one per check of the claim.
        can_contradict: whether an interval below 0 reads as "contradict" (checks with bootstrap intervals);
            with False, anything short of all-supported reads "do not clearly support".

    Returns:
        ``"cannot judge"`` (no checks), ``"support"`` (every interval above 0), ``"contradict"`` (one below 0,
        when ``can_contradict``), otherwise ``"do not clearly support"``.
    """
    v = list(verdicts)
    if not v:
        return "cannot judge"
    if all(x is Verdict.ABOVE for x in v):
        return "support"
    if can_contradict and any(x is Verdict.BELOW for x in v):
        return "contradict"
    return "do not clearly support"


def rank_correlation(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's ρ between two columns (one value per encoder); NaN with fewer than 3 encoders."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    if len(x) != len(y):
        raise ValueError(f"rank_correlation: {len(x)} and {len(y)} values")
    return float(spearmanr(x, y).statistic) if len(x) >= 3 else float("nan")


def spearman_reading(rho: float, *, strong: float = 0.8) -> str:
    """Words for a rank correlation across few encoders: only a near-perfect order (``|ρ| >= strong``) counts.

    Returns:
        ``"predicts the ranking"``, ``"orders the encoders opposite to retrieval"`` or
        ``"does not predict the ranking"`` (also for NaN).
    """
    if rho >= strong:
        return "predicts the ranking"
    return "orders the encoders opposite to retrieval" if rho <= -strong else "does not predict the ranking"


def null_check(label: str, row: Mapping[str, float], *, claim: int = 0) -> Check:
    """Held-out ρ minus its grouped null (a :func:`ada_utils.analysis.measures.crossfit_row`) as a :class:`Check`.

    The estimate is ``held-out ρ − null mean``, the interval ``[held-out ρ − null high, held-out ρ − null low]``; it
    lies above 0 exactly when the matched value exceeds the null's range (a permutation test).
    """
    value = row["held-out ρ"]
    return Check(label, value - row["null mean"], value - row["null high"], value - row["null low"], claim)


def cross_covariance_checks(rows: Mapping[str, Mapping[str, float]],
                            coords: Mapping[str, tuple[np.ndarray, np.ndarray]],
                            gaps: Mapping[str, tuple[np.ndarray, np.ndarray]], groups: np.ndarray, *,
                            n_boot: int, seed: int) -> list[Check]:
    """The checks of chapter 01, in the order of the book; every one reads held-out numbers.

    (a) claim 1, each encoder but ``random``: its cross-fitted canonical correlation minus the grouped null
    (:func:`null_check`); (b) claim 1, ``align`` and ``ada`` minus ``random`` in the held-out correlation of the
    pair-free coordinates (:func:`heldout_coordinate_check`); (c) claim 2, ``pretrained`` minus ``ada`` in the
    held-out gap between canonical variates and coordinates (:func:`ada_utils.analysis.measures.heldout_gap`; >
    0 means ada's coordinates reach more of the held-out CCA). Paired checks resample models (percentile
    intervals: the maps are fixed, nothing is refitted) and run only when both encoders are present.

    Args:
        rows: ``{encoder: crossfit_row}``. coords: ``{encoder: (synth, real)}`` test pairs through the pooled
            training whitening. gaps: ``{encoder: (X, Y)}`` of
            :func:`ada_utils.analysis.measures.coordinates_and_canonical`. groups: ``(n,)`` model of each test
            row (the same rows for every encoder). n_boot: resamples. seed: their seed.
    """
    checks = [null_check(f"(a) {n}: held-out canonical correlation, matched − grouped null", rows[n], claim=1)
              for n in rows if n != "random"]
    if "random" in coords:
        checks += [heldout_coordinate_check(coords, groups, a=n, b="random", n_boot=n_boot, seed=seed,
                                            label=f"(b) {n} − random: held-out coordinate correlation", claim=1)
                   for n in CONTRASTIVE if n in coords]
    if "ada" in gaps and "pretrained" in gaps:
        est, lo, hi = paired_bootstrap(gaps["pretrained"], gaps["ada"], groups, stat=heldout_gap, key="gap",
                                       n_boot=n_boot, seed=seed)
        checks.append(Check("(c) pretrained − ada: held-out gap (canonical − coordinates)", est, lo, hi, 2))
    return checks


def identities_hold(terms: Mapping[str, Mapping[str, float]], *, atol: float = 1e-8, rtol: float = 1e-6) -> bool:
    """Check (i) of chapter 02: the decomposition identities hold on every encoder, up to round-off.

    Args:
        terms: ``{encoder: terms}`` of :func:`ada_utils.analysis.measures.matched_distance_terms`.
        atol: bound on ``|residual|`` of the distance identity. rtol: bound on the gap between the two Gaussian
            mutual informations, relative to ``max(1, MI via ρ)``.
    """
    return (all(abs(t["residual"]) < atol for t in terms.values())
            and all(abs(t["MI via log det (nats)"] - t["MI via ρ (nats)"]) < rtol * max(1, t["MI via ρ (nats)"])
                    for t in terms.values()))


def heldout_coordinate_check(coords: Mapping[str, tuple[np.ndarray, np.ndarray]], groups: np.ndarray, *,
                             a: str = "ada", b: str = "pretrained", label: str | None = None, claim: int = 0,
                             n_boot: int, seed: int) -> Check:
    """``a`` − ``b`` in the mean held-out correlation of the pair-free coordinates (check (ii) of chapter 02).

    The coordinates are the test pairs through each encoder's pooled whitening fitted on its training pool
    (:func:`ada_utils.analysis.measures.pooled_whitening`): fixed maps, so the paired bootstrap over models uses
    percentile intervals.

    Args:
        coords: ``{encoder: (synth (n, k), real (n, k))}`` (:func:`ada_utils.analysis.measures.heldout_coordinates`).
        groups: ``(n,)`` model of each row. a, b: the encoders compared. label: the row name (default: check
        (ii)'s). claim: the claim it tests. n_boot: resamples. seed: their seed.
    """
    est, lo, hi = paired_bootstrap(coords[a], coords[b], groups, stat=mean_correlation, key="r", n_boot=n_boot,
                                   seed=seed)
    return Check(label or f"(ii) {a} − {b}, held-out coordinate correlation", est, lo, hi, claim)


def supervised_gain_share(base: float, top: float, got: float, *, name: str = "ada"
                          ) -> tuple[str, Verdict | None]:
    """Check (iii) of chapter 02: the share of the supervised-CCA R@5 gain that ``name`` reaches without pairs.

    ``share = (got − base) / (top − base)``, a point estimate (no interval): its verdict is that of the
    degenerate interval ``[share, share]`` at zero margin, so only ``Verdict.ABOVE`` (share > 0) reads
    "supported".

    Args:
        base: R@5 of the backbone in the common basis. top: R@5 of CCA fitted on the training pairs, in the same
            basis. got: R@5 of ``name`` in the same basis (:mod:`ada_utils.analysis.basis`).

    Returns:
        ``(text, verdict)``; verdict None when there is no supervised gain to approach (``top <= base``).
    """
    if top <= base:
        return (f"not measurable: CCA fitted on the training pairs ({top:.3f}) does not beat the backbone "
                f"({base:.3f}, same basis) on these test models, so there is no supervised gain to approach "
                f"({name}: {got:.3f})"), None
    share = (got - base) / (top - base)
    verdict = Verdict.of(share, share, margin=0)
    word = "supported" if verdict is Verdict.ABOVE else "not supported on our data"
    return (f"{share:.2f} (backbone {base:.3f}, {name} {got:.3f}, CCA on training pairs {top:.3f}, same "
            f"basis): {word}"), verdict
