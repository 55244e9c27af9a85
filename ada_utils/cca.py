"""Canonical correlation analysis and the alignment/disentanglement split of its objective.

Conventions are those of :mod:`ada_utils.covariance`: rows are samples, ``X`` ``(n, p)`` (synthetic) and
``Y`` ``(n, q)`` (real) are matched row by row, inputs are numpy or torch and results float64 numpy or Python
floats, covariances use ``1/n`` and the shrinkage ``reg`` (``"auto"``, ``"ledoit_wolf"`` or a float in
``[0, 1)``; ``0`` is classical CCA).

The decomposition (a reconstruction from the paper's abstract [0]; the book's method page, ``book/method.md``): for outputs ``a, b``
    ``E‖a − b‖² = tr Cov(a) + tr Cov(b) − 2 tr Cov(a, b) + ‖E a − E b‖²``;
after per-domain whitening the first two terms are constant, leaving the *alignment* term
``tr Cov(a, b)``; the whitening itself is the *disentanglement* (Infomax) part. In Gaussian form
    ``I(a; b) = ½ log det Σaa + ½ log det Σbb − ½ log det Σ(a,b) = −½ Σᵢ log(1 − ρᵢ²)``.

In-sample canonical correlations (:func:`canonical_correlations`, CCA fitted on the pairs it is measured on) are
biased upward, the more so when rows repeat within groups (one exemplar paired with many queries);
:func:`crossfit_canonical_correlations` measures them held out, fitting on half of the groups (models) and
correlating the canonical variates on the other half.

[0] "Unsupervised Synthetic Image Attribution: Alignment and Disentanglement", arXiv 2601.22663.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ada_utils.covariance import CovBlocks, Reg, as_matrix, covariance_blocks, inverse_sqrt, logdet


def whitened_cross_covariance(X: Any, Y: Any, *, reg: Reg = "auto") -> np.ndarray:
    """``M = Σxx^{-1/2} Σxy Σyy^{-1/2}``: cross-covariance after per-domain ZCA whitening.

    Its singular values are the canonical correlations; its diagonal holds the correlations along the
    encoder's own coordinates after whitening (ZCA keeps coordinates as close as possible to the original).

    Returns:
        ``(p, q)`` float64.
    """
    return _whitened(covariance_blocks(X, Y, reg=reg))


def _whitened(b: CovBlocks) -> np.ndarray:
    return inverse_sqrt(b.xx) @ b.xy @ inverse_sqrt(b.yy)


def canonical_correlations(X: Any, Y: Any, *, reg: Reg = "auto") -> np.ndarray:
    """Canonical correlations ``ρ₁ >= ρ₂ >= ... >= 0``: the singular values of ``Σxx^{-1/2} Σxy Σyy^{-1/2}``.

    Equivalently ``ρᵢ = max corr(Aᵢᵀx, Bᵢᵀy)`` s.t. ``AᵀΣxxA = BᵀΣyyB = I`` (Hotelling 1936).

    Args:
        X: ``(n, p)``; Y: ``(n, q)``, matched rows.
        reg: shrinkage (:mod:`ada_utils.covariance`); ``0`` gives classical CCA (needs full-rank covariances).

    Returns:
        ``(min(p, q),)`` float64, descending, each in ``[0, 1)``.
    """
    return np.linalg.svd(whitened_cross_covariance(X, Y, reg=reg), compute_uv=False)


@dataclass(frozen=True)
class CCAModel:
    """A fitted linear CCA: ``u = (x − mean_x) A``, ``v = (y − mean_y) B`` (each ``(n, k)``).

    Attributes:
        A: ``(p, k)``; B: ``(q, k)``; mean_x ``(p,)``; mean_y ``(q,)``; rho ``(k,)`` training correlations.
    """

    A: np.ndarray
    B: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    rho: np.ndarray

    def transform(self, X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Project ``(n, p)`` and ``(n, q)`` onto the canonical directions: two ``(n, k)`` arrays."""
        X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
        return (X - self.mean_x) @ self.A, (Y - self.mean_y) @ self.B


def fit_cca(X: Any, Y: Any, *, k: int | None = None, reg: Reg = "auto") -> CCAModel:
    """Fit regularised linear CCA by whitening and SVD: ``M = UDVᵀ``, ``A = Σxx^{-1/2}U``, ``B = Σyy^{-1/2}V``.

    Args:
        X: ``(n, p)``; Y: ``(n, q)``, matched rows (training pairs only; evaluate on held-out pairs).
        k: number of components (default ``min(p, q)``).
        reg: shrinkage (:mod:`ada_utils.covariance`).
    """
    b = covariance_blocks(X, Y, reg=reg)
    k = min(b.xx.shape[0], b.yy.shape[0]) if k is None else k
    wx, wy = inverse_sqrt(b.xx), inverse_sqrt(b.yy)
    U, s, Vt = np.linalg.svd(wx @ b.xy @ wy, full_matrices=False)
    return CCAModel(wx @ U[:, :k], wy @ Vt[:k].T, b.mean_x, b.mean_y, s[:k])


def fit_domain_whitening(X: Any, Y: Any, *, reg: Reg = "auto") -> CCAModel:
    """Per-domain ZCA whitening as a :class:`CCAModel`: ``A = Σxx^{-1/2}``, ``B = Σyy^{-1/2}`` (pair-free).

    The rows of ``X`` ``(n, p)`` and ``Y`` ``(m, q)`` need not be matched (``n != m`` is fine): this is the
    disentanglement constraint alone, fitted on unlabelled training features; ``rho`` is empty. It is
    :class:`ada_utils.whitening.Whitening` (ZCA, no ridge) of each domain, in float64.
    """
    from ada_utils.whitening import Whitening

    wx, wy = (Whitening("zca", eps=0.0, shrinkage=reg).fit(as_matrix(Z, name=name)) for Z, name in ((X, "X"), (Y, "Y")))
    return CCAModel(wx.weight_.T, wy.weight_.T, wx.mean_, wy.mean_, np.empty(0))


def column_correlations(U: Any, V: Any) -> np.ndarray:
    """Pearson correlation of column i of ``U`` with column i of ``V``: ``(k,)`` (0 for a constant column)."""
    U, V = as_matrix(U, name="U"), as_matrix(V, name="V")
    U, V = U - U.mean(0), V - V.mean(0)
    den = np.sqrt((U**2).sum(0) * (V**2).sum(0))
    return np.divide((U * V).sum(0), den, out=np.zeros(U.shape[1]), where=den > 0)


# ---- the decomposition -------------------------------------------------------------------------------

def distance_terms(a: Any, b: Any) -> dict[str, float]:
    """Terms of ``E‖a − b‖² = tr Cov(a) + tr Cov(b) − 2 tr Cov(a, b) + ‖E a − E b‖²`` (1/n moments).

    Args:
        a: ``(n, d)``; b: ``(n, d)``, matched rows (e.g. ``a = z_s A``, ``b = z_r B``).

    Returns:
        ``{"distance", "trace_a", "trace_b", "cross_trace", "mean_gap"}``.
    """
    a, b = as_matrix(a, name="a"), as_matrix(b, name="b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape; got {a.shape} and {b.shape}")
    ac, bc = a - a.mean(0), b - b.mean(0)
    n = a.shape[0]
    return {"distance": float(np.mean(np.sum((a - b) ** 2, 1))), "trace_a": float(np.sum(ac**2) / n),
            "trace_b": float(np.sum(bc**2) / n), "cross_trace": float(np.sum(ac * bc) / n),
            "mean_gap": float(np.sum((a.mean(0) - b.mean(0)) ** 2))}


def gaussian_mutual_information(X: Any, Y: Any, *, reg: Reg = "auto") -> dict[str, float]:
    """Gaussian ``I(x; y)``: ``½ log det Σxx + ½ log det Σyy − ½ log det Σ(x,y)`` and ``−½ Σ log(1−ρᵢ²)``.

    Returns:
        ``{"logdet": ..., "canonical": ...}`` (equal up to round-off; nats).
    """
    b = covariance_blocks(X, Y, reg=reg)
    rho = np.linalg.svd(_whitened(b), compute_uv=False)
    return {"logdet": 0.5 * (logdet(b.xx) + logdet(b.yy) - logdet(b.joint())),
            "canonical": float(-0.5 * np.sum(np.log1p(-rho**2)))}


def isotropy_logdet(S: np.ndarray) -> float:
    """Infomax (disentanglement) term at fixed trace: ``(1/d) log det(S / (tr S / d))`` ``<= 0``, 0 iff isotropic."""
    d = S.shape[0]
    return logdet(S * (d / np.trace(S))) / d


def off_diagonal_energy(S: np.ndarray) -> float:
    """Mean squared off-diagonal correlation ``Σ_{i≠j} Rᵢⱼ² / (d(d−1))``, ``R = corr(S)``; 0 iff decorrelated."""
    d = S.shape[0]
    s = np.sqrt(np.diag(S))
    if not np.all(s > 0):
        raise ValueError("a dimension has zero variance (constant feature); use reg='auto' or reg > 0")
    R = S / np.outer(s, s)
    return float((np.sum(R**2) - np.sum(np.diag(R) ** 2)) / max(d * (d - 1), 1))


def diagonal_dominance(C: np.ndarray) -> float:
    """Share of a square matrix's energy on its diagonal: ``‖diag C‖² / ‖C‖²_F`` (≈ 1/d: no structure)."""
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"diagonal dominance needs a square matrix; got shape {C.shape}")
    total = np.sum(C**2)
    return float(np.sum(np.diag(C) ** 2) / total) if total > 0 else 0.0


def decomposition(X: Any, Y: Any, *, reg: Reg = "auto", top: int = 8) -> dict[str, float]:
    """Every term of the alignment/disentanglement split of CCA for one encoder's matched pairs.

    For ``X`` (synthetic) and ``Y`` (real) in the encoder's own coordinates, ``M = Σxx^{-1/2}ΣxyΣyy^{-1/2}``:
      * ``diag_dominance_cross``: :func:`diagonal_dominance` of Σxy; ``diag_dominance_whitened``: of M.
      * disentanglement (pair-free): ``isotropy_x/y`` (:func:`isotropy_logdet`), ``offdiag_x/y``
        (:func:`off_diagonal_energy`).
      * alignment: ``coord_corr_mean = tr M / d`` (mean correlation along own coordinates after whitening;
        the whitened matched distance is ``2d(1 − coord_corr_mean)``).
      * full CCA objective: ``cca_mean = Σρᵢ / d``; ``cca_top_mean`` over the top ``top``; ``gap =
        cca_mean − coord_corr_mean >= 0`` (von Neumann: ``tr M <= Σ σᵢ(M)``, equal iff M is symmetric PSD,
        the cross-covariance assumption); ``coord_share = tr M / Σρᵢ <= 1`` (the share of the CCA objective
        reached along the own coordinates; comparable across encoders of different total correlation);
        ``mi = −½ Σ log(1 − ρᵢ²)`` nats.

    Args:
        X: ``(n, d)``; Y: ``(n, d)``, matched rows, same encoder (same coordinates).
        reg: shrinkage (:mod:`ada_utils.covariance`). top: components for ``cca_top_mean``.

    Returns:
        dict of floats (keys above).
    """
    b = covariance_blocks(X, Y, reg=reg)
    if b.xx.shape != b.yy.shape:
        raise ValueError(f"X and Y must share coordinates (same dims); got {b.xx.shape[0]} and {b.yy.shape[0]}")
    M = _whitened(b)
    rho = np.linalg.svd(M, compute_uv=False)
    coord = float(np.mean(np.diag(M)))
    return {"diag_dominance_cross": diagonal_dominance(b.xy), "diag_dominance_whitened": diagonal_dominance(M),
            "isotropy_x": isotropy_logdet(b.xx), "isotropy_y": isotropy_logdet(b.yy),
            "offdiag_x": off_diagonal_energy(b.xx), "offdiag_y": off_diagonal_energy(b.yy),
            "coord_corr_mean": coord, "cca_mean": float(rho.mean()), "cca_top_mean": float(rho[:top].mean()),
            "gap": float(rho.mean()) - coord, "coord_share": coord / float(rho.mean()) if rho.mean() > 0 else 0.0,
            "mi": float(-0.5 * np.sum(np.log1p(-rho**2)))}


def _half_of_groups(groups: np.ndarray, *, seed: int, strata: Any = None) -> np.ndarray:
    """``(n,)`` bool: the rows of a seeded half of the groups (within each stratum, when ``strata`` is given).

    Raises:
        ValueError: fewer than 4 groups, or a half without a group.
    """
    labels = np.unique(groups)
    if len(labels) < 4:
        raise ValueError(f"cross-fitting needs at least 4 groups (models); got {len(labels)}")
    rng = np.random.default_rng(seed)
    if strata is None:
        chosen = rng.permutation(labels)[: len(labels) // 2]
    else:
        strata = np.asarray(strata)
        per = [rng.permutation(np.unique(groups[strata == s])) for s in np.unique(strata)]
        chosen = np.concatenate([g[: len(g) // 2] for g in per])
    half = np.isin(groups, chosen)
    if half.all() or not half.any():
        raise ValueError("cross-fitting: one half holds no group; give more groups per stratum")
    return half


def crossfit_variates(X: Any, Y: Any, groups: Any, *, k: int | None = None, reg: Reg = "auto", seed: int = 0,
                      strata: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out canonical variates by 2-fold cross-fitting over whole groups (models).

    The groups are split in two halves (seeded; within each stratum, e.g. test case, when ``strata`` is given);
    CCA (:func:`fit_cca`) is fitted on the pairs of one half and applied to the pairs of the other, then the
    halves swap. Every row thus gets the variates of a CCA that never saw its group, so rows that repeat within
    a group (an exemplar paired with many queries) cannot inflate the correlation as they do in-sample. Each
    half's variates are centred on that half (correlations are computed within folds and pooled).

    Args:
        X: ``(n, p)``; Y: ``(n, q)``, matched rows. groups: ``(n,)`` group (model) of each row.
        k: components (default ``min(p, q)``), in the order of the training canonical correlations.
        reg: shrinkage (:mod:`ada_utils.covariance`). seed: the split. strata: ``(n,)`` optional stratum of each
            row (constant within a group); each half holds half of every stratum's groups.

    Returns:
        ``(U, V)``: two ``(n, k)`` float64 arrays, row i from the CCA fitted on the other half.
    """
    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    groups = np.asarray(groups)
    if not len(groups) == len(X) == len(Y):
        raise ValueError(f"X, Y and groups must have the same rows; got {len(X)}, {len(Y)} and {len(groups)}")
    half = _half_of_groups(groups, seed=seed, strata=strata)
    k = min(X.shape[1], Y.shape[1]) if k is None else k
    U, V = np.empty((len(X), k)), np.empty((len(X), k))
    for fit, test in ((half, ~half), (~half, half)):
        u, v = fit_cca(X[fit], Y[fit], k=k, reg=reg).transform(X[test], Y[test])
        U[test], V[test] = u - u.mean(0), v - v.mean(0)
    return U, V


def crossfit_canonical_correlations(X: Any, Y: Any, groups: Any, *, k: int | None = None, reg: Reg = "auto",
                                    seed: int = 0, strata: Any = None) -> np.ndarray:
    """Held-out canonical correlations: correlations of the cross-fitted variates (:func:`crossfit_variates`).

    Unlike :func:`canonical_correlations` (in-sample, ``>= 0`` and biased upward when ``n`` is small against the
    dimension or rows repeat), each value is measured on groups its CCA was not fitted on: about 0 for
    independent features, close to the population ρ for a real signal; it can be negative.

    Args:
        X: ``(n, p)``; Y: ``(n, q)``, matched rows. groups: ``(n,)`` model of each row. k, reg, seed, strata:
            as :func:`crossfit_variates`.

    Returns:
        ``(k,)`` float64 in ``(-1, 1)``, in the order of the training canonical correlations (not re-sorted:
        sorting held-out values would select noise upward).
    """
    return column_correlations(*crossfit_variates(X, Y, groups, k=k, reg=reg, seed=seed, strata=strata))


def select_cca_reg(X: Any, Y: Any, groups: Any, *, regs: Sequence[Reg] = ("auto", 0.3, 0.5, 0.7, 0.9),
                   seed: int = 0) -> tuple[Reg, dict[str, float]]:
    """Pick the CCA shrinkage by 2-fold cross-validation over groups (models): the mean held-out correlation of
    all canonical variates (:func:`crossfit_canonical_correlations`).

    Args:
        X: ``(n, p)``; Y: ``(n, q)`` matched training pairs; groups: ``(n,)`` model of each pair.
        regs: candidate ``reg`` values (:mod:`ada_utils.covariance`). seed: the split of the models.

    Returns:
        The best ``reg`` and ``{str(reg): mean held-out correlation}``.
    """
    scores = {str(reg): float(crossfit_canonical_correlations(X, Y, groups, reg=reg, seed=seed).mean())
              for reg in regs}
    best = max(regs, key=lambda r: scores[str(r)])
    return best, scores
