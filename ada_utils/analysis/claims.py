"""The claims of the analysis chapters, judged as data: checks with intervals, verdicts, claim summaries.

A :class:`Check` is one testable consequence of a paper claim: an estimate of a difference A − B with its 95 %
interval. Its verdict is a :class:`ada_utils.eval.statistics.Verdict` (interval above 0, containing 0, below 0),
the rule of the book's introduction ("How to read the numbers") that every chapter uses; text ("supported",
...) is made from it, and a claim's overall reading (:func:`claim_support`) is computed from verdicts, never
from text.

Chapter 01 (the cross-covariance) judges its checks with :func:`cross_covariance_checks`; chapter 02 (the CCA
objective) with :func:`identities_hold`, :func:`heldout_coordinate_check` and :func:`supervised_gain_share`.
The statistics are :func:`ada_utils.cca.decomposition` on the matched test pairs of
:mod:`ada_utils.analysis.features`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ada_utils import cca
from ada_utils.analysis.features import Pairs
from ada_utils.analysis.measures import mean_correlation
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
        """Where the interval lies with respect to zero (:meth:`Verdict.of`)."""
        return Verdict.of(self.low, self.high)

    def record(self) -> dict[str, float | str]:
        """A JSON / table row: ``estimate``, ``low``, ``high`` as floats and the verdict's word."""
        return {"estimate": float(self.estimate), "low": float(self.low), "high": float(self.high),
                "verdict": self.verdict.word}

    def text(self) -> str:
        """``"+0.012 [-0.003, +0.020]: inconclusive (interval includes 0)"``: three decimals and the word."""
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


def decomposition_difference(a: Pairs, dims_a: np.ndarray, b: Pairs, dims_b: np.ndarray, key: str, *,
                             n_boot: int, seed: int, method: str = "normal") -> tuple[float, float, float]:
    """``decomposition(a)[key] − decomposition(b)[key]`` on the same test pairs, models resampled jointly.

    Args:
        a, b: matched test pairs of two encoders (same rows, same models). dims_a, dims_b: their analysed
            coordinates. key: a value of :func:`ada_utils.cca.decomposition` (e.g. ``"coord_share"``).
        n_boot: bootstrap resamples. seed: resampling seed. method: ``"normal"`` (statistics that whiten
            in-sample) or ``"percentile"``.

    Returns:
        ``(difference, low, high)`` (:func:`ada_utils.eval.statistics.paired_bootstrap`).
    """
    if len(a.model) != len(b.model) or not np.array_equal(a.model, b.model):
        raise ValueError("decomposition_difference: both encoders must be measured on the same test pairs")
    return paired_bootstrap((a.synth[:, dims_a], a.real[:, dims_a]), (b.synth[:, dims_b], b.real[:, dims_b]),
                            a.model, stat=cca.decomposition, key=key, n_boot=n_boot, seed=seed, method=method)


def cross_covariance_checks(table: pd.DataFrame, pairs: Mapping[str, Pairs], dims: Mapping[str, np.ndarray], *,
                            n_boot: int, seed: int) -> list[Check]:
    """The checks of chapter 01, in the order of the book.

    (a) claim 1, each encoder but ``random``: its whitened diagonal dominance interval minus the shuffled-pair
    value (the null); (b) claim 1, ``align`` and ``ada`` minus ``random`` (paired); (c) claim 2, ``ada`` minus
    ``pretrained`` in ``coord_share`` (paired). Paired checks use normal intervals (statistics that whiten
    in-sample) and run only when both encoders are in ``pairs``.

    Args:
        table: rows = encoders (in ``pairs`` order); columns ``diag_dominance_whitened_lo``/``_hi`` and
            ``shuffled_diag_dominance_whitened`` (:func:`ada_utils.eval.statistics.flatten_ci`).
        pairs: ``{encoder: matched test pairs}``. dims: ``{encoder: analysed coordinates}``.
        n_boot: resamples of each paired interval. seed: their seed.
    """
    checks = []
    for n in pairs:
        if n != "random":
            null = table.loc[n, "shuffled_diag_dominance_whitened"]
            lo = table.loc[n, "diag_dominance_whitened_lo"] - null
            hi = table.loc[n, "diag_dominance_whitened_hi"] - null
            checks.append(Check(f"(a) {n}: whitened diagonal, matched − shuffled", (lo + hi) / 2, lo, hi, 1))

    def paired(x: str, y: str, key: str) -> tuple[float, float, float]:
        return decomposition_difference(pairs[x], dims[x], pairs[y], dims[y], key, n_boot=n_boot, seed=seed)

    if "random" in pairs:
        for n in (c for c in CONTRASTIVE if c in pairs):
            checks.append(Check(f"(b) {n} − random: whitened diagonal", *paired(n, "random",
                                                                               "diag_dominance_whitened"), 1))
    if "ada" in pairs and "pretrained" in pairs:
        checks.append(Check("(c) ada − pretrained: coord_share", *paired("ada", "pretrained", "coord_share"), 2))
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


def heldout_coordinate_check(whiten: Mapping[str, cca.CCAModel], pairs: Mapping[str, Pairs],
                             dims: Mapping[str, np.ndarray], *, a: str = "ada", b: str = "pretrained",
                             n_boot: int, seed: int) -> Check:
    """Check (ii) of chapter 02: ``a`` − ``b`` in the mean held-out correlation of the own whitened coordinates.

    The whitening maps were fitted on the training pool (nothing is whitened in-sample), so the paired
    bootstrap over models uses percentile intervals.

    Args:
        whiten: ``{encoder: per-domain whitening}`` (:func:`ada_utils.analysis.measures.heldout_alignment`).
        pairs: ``{encoder: matched test pairs}``. dims: ``{encoder: analysed coordinates}``.
        a, b: the encoders compared. n_boot: resamples. seed: their seed.
    """
    arms = [whiten[n].transform(pairs[n].synth[:, dims[n]], pairs[n].real[:, dims[n]]) for n in (a, b)]
    est, lo, hi = paired_bootstrap(*arms, pairs[a].model, stat=mean_correlation, key="r", n_boot=n_boot,
                                   seed=seed)
    return Check(f"(ii) {a} − {b}, held-out coordinate correlation", est, lo, hi)


def supervised_gain_share(base: float, top: float, got: float, *, name: str = "ada"
                          ) -> tuple[str, Verdict | None]:
    """Check (iii) of chapter 02: the share of the supervised-CCA R@5 gain that ``name`` reaches without pairs.

    ``share = (got − base) / (top − base)``, a point estimate (no interval): its verdict is that of the
    degenerate interval ``[share, share]``, so only ``Verdict.ABOVE`` (share > 0) reads "supported".

    Args:
        base: R@5 of the backbone's own analysed coordinates. top: R@5 of CCA fitted on the training pairs, same
            coordinates. got: R@5 of ``name`` on its analysed coordinates.

    Returns:
        ``(text, verdict)``; verdict None when there is no supervised gain to approach (``top <= base``).
    """
    if top <= base:
        return (f"not measurable: CCA fitted on the training pairs ({top:.3f}) does not beat the backbone's own "
                f"coordinates ({base:.3f}) on these test models, so there is no supervised gain to approach "
                f"({name}: {got:.3f})"), None
    share = (got - base) / (top - base)
    verdict = Verdict.of(share, share)
    word = "supported" if verdict is Verdict.ABOVE else "not supported on our data"
    return (f"{share:.2f} (backbone {base:.3f}, {name} {got:.3f}, CCA on training pairs {top:.3f}, same "
            f"coordinates): {word}"), verdict
