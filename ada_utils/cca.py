"""Cross-covariance, canonical correlation analysis and the alignment/disentanglement split.

Conventions (all functions):
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
      optimal λ; a float in ``[0, 1)``: that λ; ``0``: no shrinkage (then a rank-deficient covariance
      raises). The cross-covariance is scaled by ``sqrt((1-λx)(1-λy))`` so that the shrunk joint
      covariance ``[[Σxx, Σxy], [Σyx, Σyy]]`` stays positive definite and every canonical correlation
      is ``< 1``; no quantity is ever NaN.
    * Non-finite inputs, fewer than two samples and all-constant inputs raise ``ValueError``.

The decomposition (design §6, a reconstruction from the paper's abstract [0]): for outputs ``a, b``
    ``E‖a − b‖² = tr Cov(a) + tr Cov(b) − 2 tr Cov(a, b) + ‖E a − E b‖²``;
after per-domain whitening the first two terms are constant, leaving the *alignment* term
``tr Cov(a, b)``; the whitening itself is the *disentanglement* (Infomax) part. In Gaussian form
    ``I(a; b) = ½ log det Σaa + ½ log det Σbb − ½ log det Σ(a,b) = −½ Σᵢ log(1 − ρᵢ²)``.

[0] "Unsupervised Synthetic Image Attribution: Alignment and Disentanglement", arXiv 2601.22663.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    ``"auto"``: ``λ = d / (n + d)``. ``"ledoit_wolf"``: with ``S`` the 1/n covariance, ``μ = tr S / d``,
    ``δ² = ‖S − μI‖²_F``, ``β² = min(δ², (Σₖ ‖xₖ‖⁴ − n‖S‖²_F) / n²)``, ``λ = β² / δ²``
    (Ledoit & Wolf 2004, as scikit-learn's ``ledoit_wolf_shrinkage``).

    Args:
        X: ``(n, d)`` float64, rows = samples.
        reg: ``"auto"``, ``"ledoit_wolf"`` or a float in ``[0, 1)``.

    Returns:
        λ in ``[0, 1]``.
    """
    n, d = X.shape
    if reg == "auto":
        return d / (n + d)
    if reg == "ledoit_wolf":
        Xc = X - X.mean(0)
        S = Xc.T @ Xc / n
        mu = np.trace(S) / d
        delta2 = np.sum(S**2) - 2 * mu * np.trace(S) + d * mu**2
        if delta2 <= 0:  # already a multiple of the identity
            return 0.0
        beta2 = min(delta2, (np.sum(np.sum(Xc**2, 1) ** 2) - n * np.sum(S**2)) / n**2)
        return float(max(beta2, 0.0) / delta2)
    if isinstance(reg, (int, float)) and 0 <= reg < 1:
        return float(reg)
    raise ValueError(f"reg must be 'auto', 'ledoit_wolf' or a float in [0, 1); got {reg!r}")


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
        reg: shrinkage (module docstring); ``0`` gives classical CCA (needs full-rank covariances).

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
        reg: shrinkage (module docstring).
    """
    b = covariance_blocks(X, Y, reg=reg)
    k = min(b.xx.shape[0], b.yy.shape[0]) if k is None else k
    wx, wy = inverse_sqrt(b.xx), inverse_sqrt(b.yy)
    U, s, Vt = np.linalg.svd(wx @ b.xy @ wy, full_matrices=False)
    return CCAModel(wx @ U[:, :k], wy @ Vt[:k].T, b.mean_x, b.mean_y, s[:k])


def fit_domain_whitening(X: Any, Y: Any, *, reg: Reg = "auto") -> CCAModel:
    """Per-domain ZCA whitening as a :class:`CCAModel`: ``A = Σxx^{-1/2}``, ``B = Σyy^{-1/2}`` (pair-free).

    The rows of ``X`` ``(n, p)`` and ``Y`` ``(m, q)`` need not be matched (``n != m`` is fine): this is the
    disentanglement constraint alone, fitted on unlabelled training features; ``rho`` is empty.
    """
    X, Y = as_matrix(X, name="X"), as_matrix(Y, name="Y")
    return CCAModel(inverse_sqrt(covariance(X, reg=reg)), inverse_sqrt(covariance(Y, reg=reg)), X.mean(0),
                    Y.mean(0), np.empty(0))


def select_cca_reg(X: Any, Y: Any, groups: Any, *, regs: Sequence[Reg] = ("auto", 0.3, 0.5, 0.7, 0.9),
                   seed: int = 0) -> tuple[Reg, dict[str, float]]:
    """Pick the CCA shrinkage by 2-fold cross-validation over groups (models): fit on half of the models,
    score the mean held-out correlation of all canonical variates on the other half, both ways.

    Args:
        X: ``(n, p)``; Y: ``(n, q)`` matched training pairs; groups: ``(n,)`` model of each pair.
        regs: candidate ``reg`` values (module docstring). seed: the split of the models.

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


def logdet(S: np.ndarray) -> float:
    """``log det S`` of a symmetric positive-definite matrix (Cholesky; raises if not PD)."""
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError as err:
        raise ValueError("matrix is not positive definite; use reg='auto' or reg > 0") from err
    return float(2 * np.sum(np.log(np.diag(L))))


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
        reg: shrinkage (module docstring). top: components for ``cca_top_mean``.

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


# ---- helpers for the notebooks -------------------------------------------------------------------------

def pair_indices(query_model: np.ndarray, exemplar_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matched pairs (query, exemplar of the same model): query j of model m gets that model's exemplar j mod E_m.

    Args:
        query_model: ``(Q,)`` int model index per synthetic query. exemplar_model: ``(E,)`` per real exemplar.

    Returns:
        ``(qi, ei)``: ``(P,)`` int64 index arrays (queries whose model has no exemplar are dropped).
    """
    by_model: dict[int, np.ndarray] = {}
    for m in np.unique(exemplar_model):
        by_model[int(m)] = np.flatnonzero(exemplar_model == m)
    seen: dict[int, int] = {}
    qi, ei = [], []
    for j, m in enumerate(np.asarray(query_model).tolist()):
        if m in by_model:
            ex = by_model[m]
            qi.append(j)
            ei.append(ex[seen.get(m, 0) % len(ex)])
            seen[m] = seen.get(m, 0) + 1
    return np.asarray(qi, dtype=np.int64), np.asarray(ei, dtype=np.int64)


def bootstrap_ci(stat: Callable[[np.ndarray, np.ndarray], dict[str, float]], X: Any, Y: Any, groups: Any, *,
                 n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 method: Literal["percentile", "normal"] = "percentile") -> dict[str, tuple[float, float, float]]:
    """Bootstrap interval over groups (models): resample groups with replacement, keep all their rows.

    ``"percentile"``: the (1−level)/2 and (1+level)/2 quantiles of the resampled statistic. ``"normal"``:
    ``estimate ± z·SE`` with SE the resamples' standard deviation; use it for statistics that whiten in-sample,
    whose resamples (which repeat models) are biased low so that percentile intervals can exclude the estimate.

    Args:
        stat: ``(X, Y) -> {name: float}``, e.g. :func:`decomposition`.
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


def paired_bootstrap_ci(stat: Callable[[np.ndarray, np.ndarray], dict[str, float]], key: str,
                        a: tuple[Any, Any], b: tuple[Any, Any], groups: Any,
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
