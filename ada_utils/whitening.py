"""Closed-form disentanglement controls: PCA/ZCA whitening and FastICA fitted on unlabelled features.

Conventions: rows are samples, ``X`` is ``(N, D)``. Every fitted map is affine, ``x ↦ x Wᵀ + b`` (the
``torch.nn.Linear`` convention), returned by ``as_linear()`` / :func:`fit_fastica` as float32 numpy arrays so it
can initialise a linear head or serve as a ``real_map``/``synth_map`` in the evaluation.

Fit on the *training* split's unlabelled features only (no class ids are used, but fitting on test features
would leak the test distribution): that is the caller's duty. Statistics are computed in float64 with the
project's one covariance estimator (:func:`ada_utils.covariance.covariance`: ``1/n`` moments, shrinkage ``reg``
with the same meanings everywhere), so a whitened training set has exactly unit covariance.

Why these are controls: for a linear head on fixed features, whitening is the analytic optimum of the pure
Gaussian Infomax loss (``ada_utils.losses.infomax_loss`` is minimal for an isotropic covariance; whitened
elliptical, e.g. Gaussian, features stay isotropic after its L2 normalisation), and FastICA is the
closed-form counterpart of Infomax ICA (Bell & Sejnowski 1995). See [0] arXiv 2601.22663 (abstract only; reconstruction,
the book's method page, ``book/method.md``) and Kessy, Lewin & Strimmer, Optimal Whitening and Decorrelation, 2018
(ZCA = the whitening closest to the identity map).
"""

from __future__ import annotations

import numpy as np
import torch

from ada_utils.covariance import Reg, as_matrix, covariance, shrinkage as shrinkage_weight

__all__ = ["Whitening", "fit_fastica"]


class Whitening:
    r"""PCA or ZCA whitening with optional shrinkage, fitted on ``(N, D)`` features.

    With :math:`\Sigma_s = (1-\alpha)\hat\Sigma + \alpha\,\tfrac{\mathrm{tr}\hat\Sigma}{D} I = U\Lambda U^\top`
    (:func:`ada_utils.covariance.covariance`, ``1/N`` moments):
    PCA :math:`W = (\Lambda+\varepsilon I)^{-1/2} U^\top` (rows by decreasing variance, optionally the top
    ``n_components``), ZCA :math:`W = U(\Lambda+\varepsilon I)^{-1/2} U^\top` (symmetric; the whitening
    closest to the identity, so coordinates keep their meaning); :math:`b = -W\mu`. On the training data the
    output covariance is ≈ I when ``shrinkage=0`` and the eigenvalues dominate ``eps``.

    Args:
        kind: ``"zca"`` or ``"pca"``.
        eps: ridge added to the eigenvalues (absolute, in feature units²).
        shrinkage: α in [0, 1], ``"ledoit_wolf"`` for the Ledoit–Wolf estimate (use it when N is not ≫ D) or
            ``"auto"`` for ``D / (N + D)``: the meanings of :func:`ada_utils.covariance.shrinkage`.
        n_components: PCA only: keep the top-k directions (default all D).

    Attributes (after ``fit``):
        mean_: ``(D,)``; weight_: ``(K, D)``; eigenvalues_: ``(D,)`` decreasing; shrinkage_: the α used.
    """

    def __init__(
        self,
        kind: str = "zca",
        *,
        eps: float = 1e-5,
        shrinkage: Reg = 0.0,
        n_components: int | None = None,
    ) -> None:
        if kind not in ("zca", "pca"):
            raise ValueError(f"Whitening: `kind` must be 'zca' or 'pca', got {kind!r}.")
        if not eps >= 0:
            raise ValueError(f"Whitening: `eps` must be >= 0, got {eps}.")
        if shrinkage not in ("auto", "ledoit_wolf") and not (isinstance(shrinkage, (int, float))
                                                             and 0.0 <= shrinkage <= 1.0):
            raise ValueError(f"Whitening: `shrinkage` must be in [0, 1], 'ledoit_wolf' or 'auto', got {shrinkage!r}.")
        if n_components is not None and kind != "pca":
            raise ValueError("Whitening: `n_components` only applies to kind='pca' (ZCA keeps all D dims).")
        self.kind, self.eps, self.shrinkage, self.n_components = kind, eps, shrinkage, n_components

    def __repr__(self) -> str:
        return (
            f"Whitening(kind={self.kind!r}, eps={self.eps}, shrinkage={self.shrinkage!r}, "
            f"n_components={self.n_components})"
        )

    def fit(self, X: np.ndarray | torch.Tensor) -> Whitening:
        """Estimate mean and whitening matrix from ``X`` ``(N, D)`` (train split, unlabelled)."""
        if np.ndim(X) != 2:
            raise ValueError(f"Whitening.fit: `X` must be an (N, D) array, got shape {np.shape(X)}.")
        arr = as_matrix(X, name="Whitening.fit: X")
        d = arr.shape[1]
        if self.n_components is not None and not 1 <= self.n_components <= d:
            raise ValueError(f"Whitening: `n_components` must be in [1, {d}], got {self.n_components}.")
        self.mean_ = arr.mean(axis=0)
        self.shrinkage_ = shrinkage_weight(arr, reg=self.shrinkage)
        cov = covariance(arr, reg=self.shrinkage_)
        evals, evecs = np.linalg.eigh(cov)
        evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
        if self.eps == 0 and evals[-1] <= 1e-10 * evals[0]:
            raise ValueError(f"Whitening: the covariance is rank-deficient (eigenvalues {evals[-1]:.3g} .. "
                             f"{evals[0]:.3g}): fewer samples than dimensions or constant/duplicate features; "
                             "use eps > 0 or shrinkage > 0 ('auto', 'ledoit_wolf')")
        # Deterministic signs: the largest-magnitude entry of each eigenvector is positive.
        evecs = evecs * np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(d)])
        scale = 1.0 / np.sqrt(evals + self.eps)
        if self.kind == "pca":
            k = self.n_components or d
            self.weight_ = scale[:k, None] * evecs[:, :k].T
        else:
            self.weight_ = (evecs * scale) @ evecs.T
        self.eigenvalues_ = evals
        return self

    def as_linear(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(W (K, D), b (K,))`` float32 with ``transform(x) = x @ W.T + b``."""
        if not hasattr(self, "weight_"):
            raise RuntimeError("Whitening: call fit(X) on the training features before as_linear/transform.")
        return self.weight_.astype(np.float32), (-self.weight_ @ self.mean_).astype(np.float32)

    def transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Whiten ``X`` ``(N, D)``; numpy in → float32 numpy out, tensor in → tensor (same device, dtype)."""
        W, b = self.as_linear()
        if X.shape[-1] != W.shape[1]:
            raise ValueError(f"Whitening.transform: `X` {tuple(X.shape)} must have D={W.shape[1]} columns.")
        if isinstance(X, torch.Tensor):
            Wt = torch.as_tensor(W, device=X.device, dtype=X.dtype)
            return X @ Wt.T + torch.as_tensor(b, device=X.device, dtype=X.dtype)
        return (np.asarray(X, dtype=np.float32) @ W.T + b).astype(np.float32)

    def fit_transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return self.fit(X).transform(X)


def fit_fastica(
    X: np.ndarray | torch.Tensor,
    *,
    n_components: int | None = None,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit scikit-learn FastICA (``whiten="unit-variance"``, logcosh) and return its affine unmixing map.

    Fit on the train split's unlabelled features only (the caller's duty). Sources come out with unit
    variance, in an arbitrary order and sign (ICA's inherent ambiguity).

    Args:
        X: ``(N, D)`` features.
        n_components: number of sources K (default D; use fewer when N is not ≫ D).
        seed: ``random_state`` of FastICA's initial rotation.
        max_iter: FastICA iterations (a ``ConvergenceWarning`` is raised by scikit-learn if not reached).
        tol: FastICA convergence tolerance.

    Returns:
        ``(W (K, D), b (K,))`` float32 with sources ``s = x @ W.T + b``.
    """
    from sklearn.decomposition import FastICA

    arr = as_matrix(X, name="fit_fastica: X")
    ica = FastICA(
        n_components=n_components, whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=tol
    )
    ica.fit(arr)
    W = ica.components_
    return W.astype(np.float32), (-W @ ica.mean_).astype(np.float32)
