"""Inference over *models*: one paired bootstrap, one verdict, for every comparison the book makes.

Queries (or matched pairs) of one model (concept) are not independent, so every resampling here draws whole
models with replacement and keeps all their rows. :func:`paired_bootstrap` has two paths:

- a **fast path** for the difference of two per-row metrics' means (per-query R@5 of two methods on the same
  queries): per-model sums and counts, resampled with one integer matrix;
- a **general path** for any statistic ``(X, Y) -> {name: float}`` (e.g. :func:`ada_utils.cca.decomposition`)
  evaluated on both arms' rows, through :func:`bootstrap_ci`.

The rule that turns an interval into words (the book's reproducibility page, "comparisons under noise"), with a
stated margin δ (``MARGIN``, in the metric's units): A − B is **>** when its 95 % interval lies above zero, **≥**
(non-inferior) when it contains zero and its low end lies above −δ, **<** when it lies below zero (a significant
loss is a loss even within the margin), and **inconclusive** otherwise; an
inconclusive comparison is never counted as a win. Over the comparisons of one table, :func:`holm` replaces the
interval rule by Holm's step-down correction of the three one-sided tests (superiority, non-inferiority,
inferiority), each at level α/2 = 0.025 so that a single comparison reads as its 95 % interval.
:class:`Verdict` holds the result as data; text is made from it, never parsed back.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from ada_utils.covariance import as_matrix

Statistic = Callable[[np.ndarray, np.ndarray], dict[str, float]]


MARGIN = 0.01  # δ: the non-inferiority margin of "A ≥ B" (0.01 R@5 by default; design section 8)
ALPHA = 0.05  # two-sided level of an interval; each one-sided test runs at ALPHA / 2


class Verdict(enum.Enum):
    """Where the interval of a difference A − B lies with respect to zero and to the margin −δ."""

    ABOVE = ">"  # entirely above zero: A > B
    NONINFERIOR = "≥"  # across zero with its low end above −δ: A is at most δ worse than B
    INCONCLUSIVE = "?"  # across −δ and 0: neither a win nor a loss
    BELOW = "<"  # entirely below zero: A < B (even when within the margin)

    @classmethod
    def of(cls, low: float, high: float, *, margin: float = MARGIN) -> Verdict:
        """The verdict of an interval ``[low, high]`` of A − B with non-inferiority margin ``margin``."""
        if low > 0:
            return cls.ABOVE
        if high < 0:  # a significant loss is a loss, even within the margin
            return cls.BELOW
        return cls.NONINFERIOR if low > -margin else cls.INCONCLUSIVE

    @property
    def word(self) -> str:
        """The claim "A > B" read against this verdict."""
        return {Verdict.ABOVE: "supported", Verdict.NONINFERIOR: "non-inferior only (within the margin)",
                Verdict.INCONCLUSIVE: "inconclusive", Verdict.BELOW: "contradicted"}[self]

    def satisfies(self, claim: str) -> bool:
        """Whether this verdict meets ``claim``: ``">"`` (superior) or ``"≥"`` (superior or non-inferior)."""
        if claim not in (">", "≥"):
            raise ValueError(f"claim={claim!r}: use '>' or '≥'")
        return self is Verdict.ABOVE if claim == ">" else self in (Verdict.ABOVE, Verdict.NONINFERIOR)


@dataclass(frozen=True)
class Comparison:
    """One paired comparison A − B of a metric on one cell, with its 95 % interval over models.

    ``se`` is the bootstrap standard error (for :func:`holm`); ``holm_verdict`` the verdict after Holm's correction
    over the comparisons of its table ("" when the comparison stands alone: the interval rule applies).
    """

    a: str
    b: str
    cell: str
    metric: str
    diff: float
    ci_low: float
    ci_high: float
    margin: float = MARGIN
    se: float = float("nan")
    holm_verdict: str = ""

    @property
    def verdict(self) -> Verdict:
        """Holm's verdict when the comparison was corrected with its table, else its interval's."""
        if self.holm_verdict:
            return Verdict(self.holm_verdict)
        return Verdict.of(self.ci_low, self.ci_high, margin=self.margin)

    def record(self) -> dict[str, Any]:
        """A JSON row: the fields plus the readable verdict (``"ada > pretrained"``), made from the numbers."""
        return {**asdict(self), "verdict": f"{self.a} {self.verdict.value} {self.b}"}

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> Comparison:
        """Rebuild from a :meth:`record` row (the verdict is recomputed from the numbers, never read)."""
        names = [f.name for f in fields(cls)]
        return cls(**{k: row[k] for k in names if k in row})


def holm(comparisons: Sequence[Comparison], *, alpha: float = ALPHA) -> list[Comparison]:
    """The comparisons of one table with Holm-corrected verdicts (the family is the whole table).

    Each comparison tests three one-sided hypotheses, with normal p-values from its bootstrap standard error:
    superiority (H0: A − B ≤ 0), non-inferiority (H0: A − B ≤ −δ) and inferiority (H0: A − B ≥ 0). Holm's
    step-down procedure runs over the m comparisons of each kind at level ``alpha / 2``; the verdict is the first
    rejected one of ">", "<", "≥" (in that order: a significant loss within the margin reads "<"), else
    inconclusive. The family-wise error rate is ``alpha / 2`` per kind (at most ``1.5 · alpha`` over the three).
    """
    from scipy.stats import norm

    if not comparisons:
        return []

    bad = [f"{c.a} vs {c.b} on {c.cell} ({c.metric})" for c in comparisons if not np.isfinite(c.se)]
    if bad:
        raise ValueError(f"holm: comparisons without a finite standard error: {bad[:3]}: build them with "
                         "compare_means (a bootstrap over models), not by hand")

    def p_value(c: Comparison, threshold: float, upper: bool) -> float:
        z = (c.diff - threshold) / c.se if c.se > 0 else (np.inf if c.diff > threshold else -np.inf)
        if c.se == 0 and c.diff == threshold:
            z = 0.0
        return float(norm.sf(z) if upper else norm.cdf(z))

    kinds = {">": [p_value(c, 0.0, True) for c in comparisons],
             "≥": [p_value(c, -c.margin, True) for c in comparisons],
             "<": [p_value(c, 0.0, False) for c in comparisons]}
    rejected = {k: holm_rejections(np.asarray(p), alpha / 2) for k, p in kinds.items()}
    out = []
    for i, c in enumerate(comparisons):
        sign = next((k for k in (">", "<", "≥") if rejected[k][i]), "?")
        out.append(dataclasses.replace(c, holm_verdict=sign))
    return out


def holm_rejections(p: np.ndarray, alpha: float) -> np.ndarray:
    """(m,) bool: Holm's step-down rejections of m hypotheses with p-values ``p`` at family-wise level ``alpha``."""
    order = np.argsort(p, kind="stable")
    reject = np.zeros(len(p), dtype=bool)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


def verdict_tally(comparisons: Sequence[Comparison], a: str, b: str, cells: Sequence[str] | None = None,
                  metric: str = "R@5") -> dict[str, int]:
    """``{">": n, "≥": n, "?": n, "<": n}``: how many comparisons of ``a`` vs ``b`` (on ``cells``, all when None)
    reached each verdict; the one counter every generated sentence reads."""
    got = [c for c in comparisons if c.a == a and c.b == b and c.metric == metric and (cells is None or c.cell in cells)]
    return {v.value: sum(c.verdict is v for c in got) for v in (Verdict.ABOVE, Verdict.NONINFERIOR,
                                                                 Verdict.INCONCLUSIVE, Verdict.BELOW)}


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates at coverage ``level``."""
    tail = round((1 - level) / 2, 12)
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return float(lo), float(hi)


def _mean_difference(a: Any, b: Any, groups: Any, *, n_boot: int, level: float, seed: int
                     ) -> tuple[float, float, float, float]:
    """Fast path of :func:`paired_bootstrap`: mean of ``a − b`` over rows, resampling groups; (diff, low, high, se)."""
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(a, np.float64) - np.asarray(b, np.float64), minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    boot = sums[draw].sum(1) / counts[draw].sum(1)
    return (float(sums.sum() / counts.sum()), *_interval(boot, level), float(boot.std(ddof=1)))


def bootstrap_ci(stat: Statistic, X: Any, Y: Any, groups: Any, *, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0, method: Literal["percentile", "normal"] = "percentile"
                 ) -> dict[str, tuple[float, float, float]]:
    """Bootstrap interval over groups (models) of every value of ``stat``: resample groups, keep their rows.

    ``"percentile"``: the (1−level)/2 and (1+level)/2 quantiles of the resampled statistic. ``"normal"``:
    ``estimate ± z·SE`` with SE the resamples' standard deviation; use it for statistics that whiten in-sample,
    whose resamples (which repeat models) are biased low so that percentile intervals can exclude the estimate.

    Args:
        stat: ``(X, Y) -> {name: float}``, e.g. :func:`ada_utils.cca.decomposition`.
        X: ``(n, p)``; Y: ``(n, q)``; groups: ``(n,)`` group label (model) of each row.
        n_boot: resamples. level: coverage of the interval. seed: resampling seed. method: see above.

    Returns:
        ``{name: (estimate on all rows, low, high)}``.
    """
    from scipy.stats import norm

    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    groups = np.asarray(groups)
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError("bootstrap over groups needs at least 2 groups (models)")
    if method not in ("percentile", "normal"):
        raise ValueError(f"method={method!r}: choose 'percentile' or 'normal'")
    rows = [np.flatnonzero(groups == g) for g in labels]
    rng = np.random.default_rng(seed)
    draws: list[dict[str, float]] = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        draws.append(stat(X[idx], Y[idx]))
    out = {}
    for name, value in stat(X, Y).items():
        boot = np.asarray([d[name] for d in draws])
        if method == "normal":
            half = norm.ppf((1 + level) / 2) * boot.std(ddof=1)
            lo, hi = value - half, value + half
        else:
            lo, hi = _interval(boot, level)
        out[name] = (float(value), float(lo), float(hi))
    return out


def paired_bootstrap(a: Any, b: Any, groups: Any, *, stat: Statistic | None = None, key: str | None = None,
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                     method: Literal["percentile", "normal"] = "percentile") -> tuple[float, float, float]:
    """Estimate and interval of a difference A − B on the same rows, resampling whole models.

    Args:
        a, b: without ``stat``: ``(n,)`` per-row values of the two arms (e.g. per-query R@5, means over seeds);
            the difference of their means is bootstrapped (fast path). With ``stat``: ``(X, Y)`` pairs of each
            arm, ``(n, p_a)``/``(n, q_a)`` and ``(n, p_b)``/``(n, q_b)``, matched rows.
        groups: ``(n,)`` model of each row (resampled jointly for both arms).
        stat, key: a statistic ``(X, Y) -> {name: float}`` and the name compared: ``stat(*a)[key] −
            stat(*b)[key]`` (general path, :func:`bootstrap_ci`).
        n_boot: replicates. level: coverage. seed: RNG seed. method: interval of the general path.

    Returns:
        (difference, low, high).
    """
    if stat is None:
        return _mean_difference(a, b, groups, n_boot=n_boot, level=level, seed=seed)[:3]
    if key is None:
        raise ValueError("paired_bootstrap: a statistic needs the `key` of the value it compares")
    (xa, ya), (xb, yb) = (tuple(as_matrix(m, name=n) for m, n in ((x, "X"), (y, "Y"))) for x, y in (a, b))
    px, py = xa.shape[1], ya.shape[1]

    def diff(X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
        return {key: stat(X[:, :px], Y[:, :py])[key] - stat(X[:, px:], Y[:, py:])[key]}

    return bootstrap_ci(diff, np.hstack([xa, xb]), np.hstack([ya, yb]), groups, n_boot=n_boot, level=level,
                        seed=seed, method=method)[key]


def compare_means(a_name: str, b_name: str, cell: str, metric: str, a: Any, b: Any, groups: Any, *,
                  n_boot: int = 2000, seed: int = 0, margin: float = MARGIN,
                  seed_diffs: Sequence[float] = ()) -> Comparison:
    """The :class:`Comparison` of per-row values ``a`` and ``b`` (``(n,)``, same rows) resampling whole models.

    ``seed_diffs``: the mean difference A − B of each training seed (``a``/``b`` being their per-row means over
    the seeds). Their variance over seeds divided by their number is added to the bootstrap variance, and the
    interval is widened by the same factor about the estimate: the interval carries seed variance as well as the
    sampling of models.
    """
    diff, lo, hi, se = _mean_difference(a, b, groups, n_boot=n_boot, level=1 - ALPHA, seed=seed)
    if len(seed_diffs) >= 2:
        total = float(np.sqrt(se ** 2 + np.var(seed_diffs, ddof=1) / len(seed_diffs)))
        k = total / se if se > 0 else 1.0
        lo, hi, se_models, se = diff - k * (diff - lo), diff + k * (hi - diff), se, total
        if se_models == 0 and total > 0:  # no model-level spread at all: a normal interval from the seeds alone
            half = 1.959963984540054 * total
            lo, hi = diff - half, diff + half
    return Comparison(a_name, b_name, cell, metric, diff, lo, hi, margin=margin, se=se)


def flatten_ci(ci: Mapping[str, tuple[float, float, float]], *, extra: Mapping[str, float] | None = None
               ) -> dict[str, float]:
    """``{name: (est, lo, hi)}`` (:func:`bootstrap_ci`) -> ``{name: est, name_lo: lo, name_hi: hi}`` plus
    ``extra``: one table row."""
    row = {k: v[0] for k, v in ci.items()}
    row.update({f"{k}_lo": v[1] for k, v in ci.items()})
    row.update({f"{k}_hi": v[2] for k, v in ci.items()})
    return {**row, **(extra or {})}
