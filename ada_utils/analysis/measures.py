"""Per-encoder measurements of the analysis chapters, computed on :mod:`.features` objects.

Chapter 02 (the CCA objective, term by term) measures, for each encoder, the matched distance split into its
trace terms (:func:`matched_distance_terms`), the correlation along its own whitened coordinates and along the
canonical directions fitted on training pairs, both on held-out test pairs (:func:`heldout_alignment`), and its
retrieval restricted to the analysed coordinates (:func:`restrict`, :func:`mean_over_cells`). The equations are
the book's method page; the mathematics is :mod:`ada_utils.cca`. Conventions: rows are samples, ``synth`` and
``real`` are matched row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ada_utils import cca
from ada_utils.analysis.features import FeatureMap, FeatureSet, Pairs
from ada_utils.covariance import Reg
from ada_utils.retrieval import unit_rows


def matched_distance_terms(synth: np.ndarray, real: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Every term of the matched squared distance of one encoder's test pairs, with the identities' residuals.

    On L2-normalised rows, ``E‖a − b‖² = tr Cov(a) + tr Cov(b) − 2 tr Cov(a, b) + ‖E a − E b‖²``
    (:func:`ada_utils.cca.distance_terms`); ``residual`` is the left side minus the right side (0 up to
    round-off). After per-domain whitening the traces are ``d`` and ``distance / 2d = 1 − coord_corr_mean``; the
    CCA optimum is ``1 − cca_mean``. The Gaussian mutual information is given both ways (log det and ρ).

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


def heldout_alignment(fs: FeatureSet, test: Pairs, train: tuple[np.ndarray, np.ndarray, np.ndarray],
                      dims: np.ndarray, *, regs: Sequence[Reg] = ("auto", 0.5, 0.9), seed: int = 0
                      ) -> tuple[dict[str, cca.CCAModel], dict[str, Any]]:
    """Fit on the training split, measure on the test pairs: per-domain whitening vs supervised CCA.

    The whitening is fitted per domain on the unlabelled training pool (no pairs); CCA on the matched training
    pairs, its shrinkage chosen among ``regs`` by 2-fold cross-validation over training models
    (:func:`ada_utils.cca.select_cca_reg`, split by ``seed``). Both are applied to the test pairs.

    Args:
        fs: the encoder (its pool, mapped by :meth:`FeatureSet.mapped_pool`, gives the whitening).
        test: matched test pairs in the encoder's output coordinates.
        train: ``(synth (P, D'), real (P, D'), model (P,))`` matched training pairs
            (:func:`ada_utils.analysis.features.training_pair_features`).
        dims: ``(k,)`` analysed coordinates.
        regs: candidate CCA shrinkages. seed: the cross-validation split of the training models.

    Returns:
        ``(models, held)``: ``models`` = ``{"whiten": CCAModel, "cca": CCAModel}``; ``held`` =
        ``{"heldout_coord_mean": mean test correlation of the whitened own coordinates, "heldout_cca_mean":
        mean test correlation of the canonical variates, "cca_reg": the chosen shrinkage as text}``.
    """
    ts, tr, model = train
    pool = fs.mapped_pool()[:, dims]
    white = cca.fit_domain_whitening(pool[fs.pool.domain == 1], pool[fs.pool.domain == 0])
    reg, _ = cca.select_cca_reg(ts[:, dims], tr[:, dims], model, regs=regs, seed=seed)
    fitted = cca.fit_cca(ts[:, dims], tr[:, dims], reg=reg)
    cw = cca.column_correlations(*white.transform(test.synth[:, dims], test.real[:, dims]))
    cc = cca.column_correlations(*fitted.transform(test.synth[:, dims], test.real[:, dims]))
    return {"whiten": white, "cca": fitted}, {"heldout_coord_mean": cw.mean(), "heldout_cca_mean": cc.mean(),
                                              "cca_reg": str(reg)}


def mean_correlation(U: np.ndarray, V: np.ndarray) -> dict[str, float]:
    """Mean Pearson correlation of matching columns of ``U`` and ``V`` (both ``(n, k)``): ``{"r": value}``.

    A statistic for :func:`ada_utils.eval.statistics.paired_bootstrap` (key ``"r"``).
    """
    return {"r": float(cca.column_correlations(U, V).mean())}


def restrict(fn: FeatureMap, dims: np.ndarray) -> FeatureMap:
    """The map ``x ↦ fn(x)[:, dims]`` as float32: an encoder's features on its analysed coordinates only.

    Args:
        fn: ``(n, D) -> (n, D')`` map (e.g. :meth:`FeatureSet.real`). dims: ``(k,)`` column indices into ``D'``.

    Returns:
        An ``(n, D) -> (n, k)`` float32 map, usable as ``real_map``/``synth_map`` of
        :func:`ada_utils.eval.evaluate`.
    """
    def restricted(x: np.ndarray) -> np.ndarray:
        return fn(x)[:, dims].astype(np.float32)

    return restricted


def mean_over_cells(results: Mapping[str, Mapping[str, float]], metric: str = "R@5") -> float:
    """Mean of ``metric`` over the test cells of one evaluation (``{cell: {metric: value}}``).

    Raises:
        ValueError: no cells.
    """
    if not results:
        raise ValueError("mean_over_cells: no test cells")
    return float(np.mean([cell[metric] for cell in results.values()]))
