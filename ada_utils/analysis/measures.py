"""Per-encoder measurements of the analysis chapters, computed on :mod:`.features` objects.

Every number a chapter headlines is *held out*: fitted on one set of models, measured on others.
  * Cross-fitted CCA on the test pairs (chapter 01, :func:`crossfit_row`): CCA fitted on half of the test models,
    its canonical variates correlated on the other half, and swapped (:func:`ada_utils.cca.crossfit_variates`),
    against the grouped null (:meth:`Pairs.model_permuted`: model identities permuted within a test case) and
    the no-signal control (:func:`control_row`: Gaussian features with the test pairs' grouping).
  * Pair-free coordinates (:func:`pooled_whitening`): one whitening for both domains, fitted on the encoder's
    unlabelled *training* pool, read on the test pairs; one map for both domains keeps what a per-domain head did.
  * CCA fitted on the *training* pairs and read on the test pairs (chapter 02, :func:`heldout_alignment`).
In-sample canonical correlations (CCA fitted on the pairs it is measured on) are biased upward, most when rows
repeat (an exemplar paired with many queries): chapters show them only as a labelled aside.
Chapter 02 also splits the matched distance into its trace terms (:func:`matched_distance_terms`, an identity).
The mathematics is :mod:`ada_utils.cca`. Conventions: rows are samples, ``synth`` and ``real`` are matched row by
row, every array is in the common basis of :mod:`.basis`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ada_utils import cca
from ada_utils.analysis.features import FeatureMap, Pairs, control_pairs
from ada_utils.covariance import Reg
from ada_utils.retrieval import unit_rows


def matched_distance_terms(synth: np.ndarray, real: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Every term of the matched squared distance of one encoder's test pairs, with the identities' residuals.

    On L2-normalised rows, ``E‖a − b‖² = tr Cov(a) + tr Cov(b) − 2 tr Cov(a, b) + ‖E a − E b‖²``
    (:func:`ada_utils.cca.distance_terms`); ``residual`` is the left side minus the right side (0 up to
    round-off). After per-domain whitening the traces are ``d`` and ``distance / 2d = 1 − coord_corr_mean``; the
    CCA optimum is ``1 − cca_mean``. The Gaussian mutual information is given both ways (log det and ρ). These
    are identities, checked in-sample on the test pairs; they are not held-out measurements.

    Args:
        synth: ``(n, d)`` synthetic features; real: ``(n, d)`` real features, matched rows.

    Returns:
        ``(terms, decomposition)``: ``terms`` holds ``distance``, ``trace_a``, ``trace_b``, ``cross_trace``,
        ``mean_gap``, ``residual``, ``whitened distance / 2d``, ``CCA optimum / 2d``, ``MI via log det (nats)``
        and ``MI via ρ (nats)``; ``decomposition`` is :func:`ada_utils.cca.decomposition` of the raw rows.
    """
    t = cca.distance_terms(unit_rows(synth), unit_rows(real))
    t["residual"] = t["distance"] - (t["trace_a"] + t["trace_b"] - 2 * t["cross_trace"] + t["mean_gap"])
    dec = cca.decomposition(synth, real)
    mi = cca.gaussian_mutual_information(synth, real)
    terms = {**t, "whitened distance / 2d": 1 - dec["coord_corr_mean"], "CCA optimum / 2d": 1 - dec["cca_mean"],
             "MI via log det (nats)": mi["logdet"], "MI via ρ (nats)": mi["canonical"]}
    return terms, dec


def pooled_whitening(pool: np.ndarray, *, reg: Reg = "auto") -> cca.CCAModel:
    """One ZCA whitening for both domains, fitted on an encoder's unlabelled training pool ``(N, k)`` (pooled).

    The same map on both sides is a change of coordinates shared by the domains: it decorrelates the coordinates
    without undoing a per-domain head (whitening each domain again would turn any per-domain linear head into
    per-domain whitening up to a rotation).
    """
    return cca.fit_domain_whitening(pool, pool, reg=reg)


def _one_blas_thread() -> Any:
    """A context with BLAS on one thread: the nulls' many small (k <= 256) factorisations ran 7x faster than on
    two threads contending with other work on the 2-core machine (measured); results agree to round-off."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def heldout_spectrum(pairs: Pairs, *, seed: int, reg: Reg = "auto") -> np.ndarray:
    """``(k,)`` cross-fitted canonical correlations of ``pairs``: 2 folds over models, stratified by test case, split
    by ``seed`` (:func:`ada_utils.cca.crossfit_canonical_correlations`), in the training order."""
    with _one_blas_thread():
        return cca.crossfit_canonical_correlations(pairs.synth, pairs.real, pairs.model, reg=reg, seed=seed,
                                                   strata=pairs.case)


def heldout_rho(pairs: Pairs, *, top: int, seed: int, reg: Reg = "auto") -> float:
    """Mean of the first ``top`` values of :func:`heldout_spectrum`: the chapters' headline statistic."""
    return float(heldout_spectrum(pairs, seed=seed, reg=reg)[:top].mean())


def insample_rho(pairs: Pairs, *, top: int, reg: Reg = "auto") -> float:
    """Mean of the top ``top`` in-sample canonical correlations (biased upward: an aside, never a headline)."""
    return float(cca.canonical_correlations(pairs.synth, pairs.real, reg=reg)[:top].mean())


def crossfit_row(pairs: Pairs, *, top: int, n_perm: int, seed: int, level: float = 0.95) -> dict[str, float]:
    """Held-out canonical correlation of one encoder's test pairs against its grouped null, and the in-sample aside.

    Args:
        pairs: matched test pairs (common basis). top: canonical correlations averaged. n_perm: permutations of
            the grouped null (:meth:`Pairs.model_permuted`, seeds ``seed + 1 …``). seed: the fold split (the same
            for the matched pairs and every permutation). level: coverage of the null's range.

    Returns:
        ``{"held-out ρ", "null low", "null high", "null mean", "in-sample ρ", "in-sample null"}``: the null's
        central ``level`` range of the same statistic over permutations; the in-sample values (aside) of the
        matched pairs and the mean over the permutations.
    """
    nulls = [pairs.model_permuted(seed + 1 + i) for i in range(n_perm)]
    with _one_blas_thread():
        held = np.array([heldout_rho(p, top=top, seed=seed) for p in nulls])
        row = {"held-out ρ": heldout_rho(pairs, top=top, seed=seed), "in-sample ρ": insample_rho(pairs, top=top),
               "in-sample null": float(np.mean([insample_rho(p, top=top) for p in nulls]))}
    lo, hi = np.quantile(held, [(1 - level) / 2, (1 + level) / 2])
    return {**row, "null low": float(lo), "null high": float(hi), "null mean": float(held.mean())}


def control_row(pairs: Pairs, *, dim: int, n_draws: int, top: int, n_perm: int, seed: int) -> dict[str, float]:
    """:func:`crossfit_row` of the no-signal control: independent Gaussian features with the grouping of ``pairs``.

    The held-out and in-sample values are means over ``n_draws`` independent draws (:func:`control_pairs`, seeds
    ``seed …``), the null range that of the first draw: a single draw would leave the null's range with the
    probability ``1 − level`` by construction, so the mean makes "inside the null" a test of bias.

    Returns:
        The keys of :func:`crossfit_row` plus ``"draws"``.
    """
    draws = [control_pairs(pairs, dim=dim, seed=seed + i) for i in range(n_draws)]
    row = crossfit_row(draws[0], top=top, n_perm=n_perm, seed=seed)
    with _one_blas_thread():
        row["held-out ρ"] = float(np.mean([heldout_rho(p, top=top, seed=seed) for p in draws]))
        row["in-sample ρ"] = float(np.mean([insample_rho(p, top=top) for p in draws]))
    return {**row, "draws": float(n_draws)}


def inside(row: Mapping[str, float]) -> bool:
    """Whether a :func:`crossfit_row`'s held-out ρ lies within its null's range (ends included)."""
    return bool(row["null low"] <= row["held-out ρ"] <= row["null high"])


def heldout_coordinates(pairs: Pairs, white: cca.CCAModel) -> tuple[np.ndarray, np.ndarray]:
    """The test pairs through a fixed (training-fitted) whitening: ``(synth (n, k), real (n, k))``."""
    return white.transform(pairs.synth, pairs.real)


def coordinates_and_canonical(pairs: Pairs, white: cca.CCAModel, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[coordinates | cross-fitted canonical variates]`` of each side: ``(n, 2k)`` twice, for :func:`heldout_gap`.

    Coordinates: :func:`heldout_coordinates`; canonical variates: :func:`ada_utils.cca.crossfit_variates` (folds
    over models, stratified by test case, split by ``seed``). Both are fixed maps of each row, so a bootstrap over
    models of their correlations resamples no fit.
    """
    u, v = heldout_coordinates(pairs, white)
    with _one_blas_thread():
        U, V = cca.crossfit_variates(pairs.synth, pairs.real, pairs.model, seed=seed, strata=pairs.case)
    return np.hstack([u, U]), np.hstack([v, V])


def heldout_gap(X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """``{"gap", "coordinates", "canonical"}`` of :func:`coordinates_and_canonical` columns: mean held-out
    correlation of the canonical variates (second half) minus that of the coordinates (first half)."""
    r = cca.column_correlations(X, Y)
    if len(r) == 0 or len(r) % 2:
        raise ValueError(f"heldout_gap: columns must be [coordinates | canonical], two equal halves; got {len(r)}")
    k = len(r) // 2
    return {"gap": float(r[k:].mean() - r[:k].mean()), "coordinates": float(r[:k].mean()),
            "canonical": float(r[k:].mean())}


def heldout_alignment(pool: np.ndarray, test: Pairs, train: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                      regs: Sequence[Reg] = ("auto", 0.5, 0.9), seed: int = 0
                      ) -> tuple[dict[str, cca.CCAModel], dict[str, Any]]:
    """Fit on the training split, measure on the test pairs: pair-free coordinates vs supervised CCA.

    The coordinates are whitened by :func:`pooled_whitening` of the unlabelled training pool (no pairs: what an
    unsupervised method can do); CCA is fitted on the matched training pairs, its shrinkage chosen among ``regs``
    by 2-fold cross-validation over training models (:func:`ada_utils.cca.select_cca_reg`, split by ``seed``).
    Both are applied to the test pairs (new models).

    Args:
        pool: ``(N, k)`` the encoder's training pool (both domains). test: matched test pairs.
        train: ``(synth (P, k), real (P, k), model (P,))`` matched training pairs, all in the common basis.
        regs: candidate CCA shrinkages. seed: the cross-validation split of the training models.

    Returns:
        ``(models, held)``: ``models`` = ``{"whiten": CCAModel, "cca": CCAModel}``; ``held`` =
        ``{"heldout_coord_mean": mean test correlation of the whitened coordinates, "heldout_cca_mean": mean
        test correlation of the canonical variates, "cca_reg": the chosen shrinkage as text}``.
    """
    ts, tr, model = train
    white = pooled_whitening(pool)
    reg, _ = cca.select_cca_reg(ts, tr, model, regs=regs, seed=seed)
    fitted = cca.fit_cca(ts, tr, reg=reg)
    cw = cca.column_correlations(*heldout_coordinates(test, white))
    cc = cca.column_correlations(*fitted.transform(test.synth, test.real))
    return {"whiten": white, "cca": fitted}, {"heldout_coord_mean": float(cw.mean()),
                                              "heldout_cca_mean": float(cc.mean()), "cca_reg": str(reg)}


def mean_correlation(U: np.ndarray, V: np.ndarray) -> dict[str, float]:
    """Mean Pearson correlation of matching columns of ``U`` and ``V`` (both ``(n, k)``): ``{"r": value}``.

    A statistic for :func:`ada_utils.eval.statistics.paired_bootstrap` (key ``"r"``).
    """
    return {"r": float(cca.column_correlations(U, V).mean())}


def projected(fn: FeatureMap, basis: np.ndarray) -> FeatureMap:
    """The map ``x ↦ fn(x) @ basis`` as float32: an encoder's features in the common basis only.

    Args:
        fn: ``(n, D) -> (n, D')`` map (e.g. :meth:`FeatureSet.real`). basis: ``(D', k)`` (:mod:`.basis`).

    Returns:
        An ``(n, D) -> (n, k)`` float32 map, usable as ``real_map``/``synth_map`` of
        :func:`ada_utils.eval.evaluate`.
    """
    def mapped(x: np.ndarray) -> np.ndarray:
        return (fn(x) @ basis).astype(np.float32)

    return mapped


def mean_over_cells(results: Mapping[str, Mapping[str, float]], metric: str = "R@5") -> float:
    """Mean of ``metric`` over the test cells of one evaluation (``{cell: {metric: value}}``).

    Raises:
        ValueError: no cells.
    """
    if not results:
        raise ValueError("mean_over_cells: no test cells")
    return float(np.mean([cell[metric] for cell in results.values()]))
