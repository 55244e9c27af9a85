"""Shrunk covariance estimates of features: within one domain and across matched pairs of two domains.

Conventions (all functions; ``ada_utils.cca`` builds on them):
    * Rows are samples, columns are feature dimensions. ``X`` is ``(n, p)``, ``Y`` is ``(n, q)``.
    * Row ``i`` of ``X`` and row ``i`` of ``Y`` form a *matched pair* (in the book: the features of a
      synthetic image and of a real exemplar of the same model). Within-domain statistics need no pairs.
    * Inputs are numpy arrays or torch tensors (converted); every computation runs in float64 numpy and
      returns numpy arrays or Python floats.
    * Covariances use the maximum-likelihood normalisation ``1/n`` so that sample identities hold
      exactly (correlations and canonical correlations do not depend on it).
    * Regularisation ``reg`` (shrinkage towards a scaled identity, the Ledoit-Wolf target):
      ``Σ̂ = (1-λ) S + λ (tr S / d) I``. ``reg="auto"``: ``λ = d / (n + d)``, which vanishes as the
      samples outnumber the dimensions; ``reg="ledoit_wolf"``: the Ledoit-Wolf (2004) estimate of the
      optimal λ; a float in ``[0, 1]``: that λ; ``0``: no shrinkage (then a rank-deficient covariance
      raises). The cross-covariance is scaled by ``sqrt((1-λx)(1-λy))`` so that the shrunk joint
      covariance ``[[Σxx, Σxy], [Σyx, Σyy]]`` stays positive definite and every canonical correlation
      is ``< 1``; no quantity is ever NaN.
    * Non-finite inputs, fewer than two samples and all-constant inputs raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Reg = float | Literal["auto", "ledoit_wolf"]


def as_matrix(X: Any, *, name: str = "X") -> np.ndarray:
    """Validate a sample matrix and return it as float64 numpy.

    Args:
        X: ``(n, d)`` array or torch tensor, rows = samples.
        name: the argument's name, used in error messages.

    Returns:
        ``(n, d)`` float64 array.

    Raises:
        ValueError: not 2-D, fewer than 2 rows, or a NaN/inf entry.
    """
    if hasattr(X, "detach"):  # torch tensor
        X = X.detach().cpu().double().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, dims); got shape {X.shape}")
    if X.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples (rows); got shape {X.shape}")
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(f"{name} has {bad.sum()} NaN/inf entries (rows {rows[:5].tolist()}...); "
                         "drop or impute those samples before computing covariances")
    return X


def shrinkage(X: np.ndarray, *, reg: Reg = "auto") -> float:
    """Shrinkage weight λ for the covariance of ``X`` (see module docstring).

    ``"auto"``: ``λ = d / (n + d)``. ``"ledoit_wolf"``: the Ledoit & Wolf (2004) estimate of the optimal λ for
    the 1/n covariance, computed by scikit-learn's ``ledoit_wolf_shrinkage`` (the project's one Ledoit–Wolf).

    Args:
        X: ``(n, d)`` float64, rows = samples.
        reg: ``"auto"``, ``"ledoit_wolf"`` or a float in ``[0, 1]`` (1: the scaled identity alone).

    Returns:
        λ in ``[0, 1]``.
    """
    n, d = X.shape
    if reg == "auto":
        return d / (n + d)
    if reg == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf_shrinkage

        return float(ledoit_wolf_shrinkage(X - X.mean(0), assume_centered=True))
    if isinstance(reg, (int, float)) and 0 <= reg <= 1:
        return float(reg)
    raise ValueError(f"reg must be 'auto', 'ledoit_wolf' or a float in [0, 1]; got {reg!r}")


def covariance(X: Any, *, reg: Reg = "auto") -> np.ndarray:
    """Shrunk within-domain covariance ``Σ̂ = (1-λ) S + λ (tr S / d) I``, ``S = (1/n) Xcᵀ Xc``.

    Args:
        X: ``(n, d)``, rows = samples.
        reg: shrinkage (module docstring).

    Returns:
        ``(d, d)`` float64 symmetric matrix.
    """
    X = as_matrix(X)
    Xc = X - X.mean(0)
    S = Xc.T @ Xc / X.shape[0]
    mu = np.trace(S) / S.shape[0]
    if mu <= 0:
        raise ValueError("every column is constant (zero variance); covariance analysis is undefined")
    lam = shrinkage(X, reg=reg)
    return (1 - lam) * S + lam * mu * np.eye(S.shape[0])


@dataclass(frozen=True)
class CovBlocks:
    """Shrunk blocks of the joint covariance of matched pairs.

    Attributes:
        xx: ``(p, p)`` Σxx. yy: ``(q, q)`` Σyy. xy: ``(p, q)`` Σxy (scaled by ``sqrt((1-λx)(1-λy))``).
        lam_x, lam_y: shrinkage weights. mean_x ``(p,)``, mean_y ``(q,)``: column means. n: sample count.
    """

    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    lam_x: float
    lam_y: float
    mean_x: np.ndarray
    mean_y: np.ndarray
    n: int

    def joint(self) -> np.ndarray:
        """``(p+q, p+q)`` joint covariance ``[[Σxx, Σxy], [Σyx, Σyy]]``."""
        return np.block([[self.xx, self.xy], [self.xy.T, self.yy]])


def covariance_blocks(X: Any, Y: Any, *, reg: Reg = "auto") -> CovBlocks:
    """Within-domain covariances and the cross-covariance ``Σxy = (1/n) Xcᵀ Yc`` of matched pairs.

    Args:
        X: ``(n, p)``; Y: ``(n, q)``; row i of X matches row i of Y.
        reg: shrinkage (module docstring), applied to each domain with its own λ.

    Returns:
        :class:`CovBlocks`.
    """
    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same rows (matched pairs); got {X.shape} and {Y.shape}")
    lx, ly = shrinkage(X, reg=reg), shrinkage(Y, reg=reg)
    mx, my = X.mean(0), Y.mean(0)
    cross = (X - mx).T @ (Y - my) / X.shape[0]
    return CovBlocks(covariance(X, reg=reg), covariance(Y, reg=reg), np.sqrt((1 - lx) * (1 - ly)) * cross,
                     lx, ly, mx, my, X.shape[0])


def cross_correlation(X: Any, Y: Any) -> np.ndarray:
    """``Rxy = diag(Sxx)^{-1/2} Sxy diag(Syy)^{-1/2}``: correlation of every X column with every Y column.

    Returns:
        ``(p, q)`` float64 in ``[-1, 1]``; a constant column gives a row/column of zeros (not NaN).
    """
    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same rows (matched pairs); got {X.shape} and {Y.shape}")
    Xc, Y_c = X - X.mean(0), Y - Y.mean(0)
    sx, sy = np.sqrt((Xc**2).sum(0)), np.sqrt((Y_c**2).sum(0))
    den = np.outer(sx, sy)
    return np.divide(Xc.T @ Y_c, den, out=np.zeros_like(den), where=den > 0)


def inverse_sqrt(S: np.ndarray, *, rtol: float = 1e-10) -> np.ndarray:
    """Symmetric (ZCA) inverse square root ``S^{-1/2} = V diag(λ^{-1/2}) Vᵀ``.

    Raises:
        ValueError: ``S`` is rank-deficient (smallest eigenvalue ``<= rtol * largest``).
    """
    w, V = np.linalg.eigh(S)
    if w[0] <= rtol * max(w[-1], 0.0) or w[-1] <= 0:
        raise ValueError(f"covariance is rank-deficient (eigenvalues {w[0]:.3g} .. {w[-1]:.3g}): fewer samples "
                         "than dimensions or constant/duplicate features; use reg='auto' or reg > 0")
    return (V / np.sqrt(w)) @ V.T


def logdet(S: np.ndarray) -> float:
    """``log det S`` of a symmetric positive-definite matrix (Cholesky; raises if not PD)."""
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError as err:
        raise ValueError("matrix is not positive definite; use reg='auto' or reg > 0") from err
    return float(2 * np.sum(np.log(np.diag(L))))
