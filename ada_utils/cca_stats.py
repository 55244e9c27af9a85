"""Inference over *models* for the CCA analyses: cross-validated shrinkage, bootstrap intervals, verdicts.

Pairs of one model (concept) are not independent, so every resampling here draws whole groups: ``groups``
``(n,)`` holds the model of each matched row of ``X`` ``(n, p)`` / ``Y`` ``(n, q)`` (conventions of
:mod:`ada_utils.covariance`). Statistics are callables ``(X, Y) -> {name: float}`` such as
:func:`ada_utils.cca.decomposition`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ada_utils.cca import column_correlations, fit_cca
from ada_utils.covariance import Reg, as_matrix

Statistic = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def select_cca_reg(X: Any, Y: Any, groups: Any, *, regs: Sequence[Reg] = ("auto", 0.3, 0.5, 0.7, 0.9),
                   seed: int = 0) -> tuple[Reg, dict[str, float]]:
    """Pick the CCA shrinkage by 2-fold cross-validation over groups (models): fit on half of the models,
    score the mean held-out correlation of all canonical variates on the other half, both ways.

    Args:
        X: ``(n, p)``; Y: ``(n, q)`` matched training pairs; groups: ``(n,)`` model of each pair.
        regs: candidate ``reg`` values (:mod:`ada_utils.covariance`). seed: the split of the models.

    Returns:
        The best ``reg`` and ``{str(reg): mean held-out correlation}``.
    """
    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    labels = np.unique(np.asarray(groups))
    if len(labels) < 4:
        raise ValueError(f"select_cca_reg needs at least 4 groups (models) to cross-validate; got {len(labels)}")
    half = np.isin(np.asarray(groups), np.random.default_rng(seed).permutation(labels)[: len(labels) // 2])
    scores: dict[str, float] = {}
    for reg in regs:
        folds = []
        for fit, test in ((half, ~half), (~half, half)):
            u, v = fit_cca(X[fit], Y[fit], reg=reg).transform(X[test], Y[test])
            folds.append(float(column_correlations(u, v).mean()))
        scores[str(reg)] = float(np.mean(folds))
    best = max(regs, key=lambda r: scores[str(r)])
    return best, scores


def bootstrap_ci(stat: Statistic, X: Any, Y: Any, groups: Any, *, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0, method: Literal["percentile", "normal"] = "percentile"
                 ) -> dict[str, tuple[float, float, float]]:
    """Bootstrap interval over groups (models): resample groups with replacement, keep all their rows.

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
            lo, hi = np.percentile(boot, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
        out[name] = (float(value), float(lo), float(hi))
    return out


def paired_bootstrap_ci(stat: Statistic, key: str, a: tuple[Any, Any], b: tuple[Any, Any], groups: Any,
                        **kwargs: Any) -> tuple[float, float, float]:
    """Interval for ``stat(*a)[key] − stat(*b)[key]`` on the same rows (two encoders, same pairs, same models).

    Args:
        stat: as in :func:`bootstrap_ci`. key: the statistic compared.
        a, b: ``(X, Y)`` of each encoder, ``(n, p_a)``/``(n, q_a)`` and ``(n, p_b)``/``(n, q_b)``, matched rows.
        groups: ``(n,)`` model of each row (resampled jointly for both encoders). kwargs: :func:`bootstrap_ci`'s.
    """
    (xa, ya), (xb, yb) = (tuple(as_matrix(m, name=n) for m, n in ((x, "X"), (y, "Y"))) for x, y in (a, b))
    px, py = xa.shape[1], ya.shape[1]

    def diff(X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
        return {key: stat(X[:, :px], Y[:, :py])[key] - stat(X[:, px:], Y[:, py:])[key]}

    return bootstrap_ci(diff, np.hstack([xa, xb]), np.hstack([ya, yb]), groups, **kwargs)[key]


def verdict(low: float, high: float) -> str:
    """Design §8 wording for an interval of a difference A − B: above 0, below 0, or containing 0."""
    return "supported" if low > 0 else ("contradicted" if high < 0 else "inconclusive (interval includes 0)")


def flatten_ci(ci: Mapping[str, tuple[float, float, float]], *, extra: Mapping[str, float] | None = None
               ) -> dict[str, float]:
    """``{name: (est, lo, hi)}`` (:func:`bootstrap_ci`) -> ``{name: est, name_lo: lo, name_hi: hi}`` plus
    ``extra``: one table row."""
    row = {k: v[0] for k, v in ci.items()}
    row.update({f"{k}_lo": v[1] for k, v in ci.items()})
    row.update({f"{k}_hi": v[2] for k, v in ci.items()})
    return {**row, **(extra or {})}
