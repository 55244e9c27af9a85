"""The exact minimiser of L = L_A + λ L_D for a linear head on frozen features (``solver="closed_form"``).

Setting (a reconstruction from the abstract; derived on the book's method page, ``book/method.md``): features ``u`` are whitened per domain (the
Infomax optimum, ``whitening.Whitening``), and one square head ``W`` maps both domains, ``y = W u``.
Unlabelled positive pairs ``(u_i, u_j)`` (an image and its augmented view, or mutual nearest real/synthetic
neighbours) give the alignment scatter ``S = E[(u_i − u_j)(u_i − u_j)ᵀ]``, rescaled to mean eigenvalue 1 so
that λ does not depend on the feature scale. With

    L_A(W) = tr(W S Wᵀ)                 (mean squared distance of positive pairs; InfoNCE's alignment term)
    L_D(W) = −½ log det(W Σ_g Wᵀ)        (Gaussian Infomax of each domain; = −log|det W| + const)

and the head's scale fixed by ``‖W‖_F² = d`` (retrieval is by cosine, so scale is not a free direction;
the Infomax loss L_D acts on normalised embeddings for the same reason), the stationary point of the Lagrangian
``L_A + λ L_D + μ(‖W‖_F² − d)`` is

    W*² = (λ/2) (S + μ I)⁻¹,    μ the root of  (λ/2) · mean_i 1/(s_i + μ) = 1   (s_i the eigenvalues of S),

so W* keeps every direction but shrinks those along which positive pairs differ (nuisance) relative to those
they share (concept): CCA's "align the matched pairs subject to whitened outputs", with the pairs made without
labels. λ → ∞ gives μ → ∞ and W* → I (pure Infomax = whitening); λ → 0 collapses onto the best-aligned
direction (pure alignment). The gradient solver (``solver="gradient"``, ``ada_utils.train.step``) keeps L_D and reads L_A
as InfoNCE instead, for heads and encoders that have no closed form.
"""

from __future__ import annotations

import numpy as np


def pair_scatter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Second moment ``E[(a − b)(a − b)ᵀ]`` (D, D) float64 of the differences of row-paired features (N, D)."""
    if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"pair_scatter: need two (N, D) arrays of one shape with N >= 1, got {a.shape}, {b.shape}")
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return diff.T @ diff / len(diff)


def lagrange_multiplier(eigvals: np.ndarray, lam: float, *, tol: float = 1e-12) -> float:
    """μ with ``(λ/2) · mean(1/(s + μ)) = 1`` and ``s + μ > 0`` (bisection; the left side falls in μ)."""
    if not lam > 0:
        raise ValueError(f"lam={lam}: the closed form needs λ > 0 (λ = 0 is pure alignment, which collapses)")
    s = np.asarray(eigvals, np.float64)

    def excess(mu: float) -> float:
        return 0.5 * lam * float(np.mean(1.0 / (s + mu))) - 1.0

    lo = -s.min() + 1e-15 * max(1.0, abs(s.min()))
    hi = max(1.0, 0.5 * lam - s.min())  # mean(1/(s+μ)) <= 1/(s_min+μ) = 2/λ there, so excess(hi) <= 0
    while hi - lo > tol * max(1.0, abs(hi)):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _unit_mean(scatter: np.ndarray) -> np.ndarray:
    """The symmetric part of ``scatter`` rescaled to mean eigenvalue 1 (trace D), so λ ignores feature scale."""
    sym = 0.5 * (scatter + scatter.T)
    return sym * (len(sym) / max(float(np.trace(sym)), 1e-300))


def _squared_gains(eigvals: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
    """(μ, g²) of W*(λ) along each eigen-direction of the normalised scatter: g_i² = (λ/2)/(s_i + μ)."""
    mu = lagrange_multiplier(eigvals, lam)
    return mu, 0.5 * lam / (np.asarray(eigvals, np.float64) + mu)


def ada_head(scatter: np.ndarray, lam: float) -> tuple[np.ndarray, dict]:
    """W* (D, D) float64, symmetric, ``‖W*‖_F² = D``: the minimiser described in the module docstring.

    Args:
        scatter: (D, D) alignment scatter of positive-pair differences in whitened coordinates.
        lam: λ > 0, weight of the Infomax term (larger = closer to plain whitening).

    Returns:
        (W*, info) with info = {"lam", "mu", "eigvals": the normalised spectrum s (ascending), "gains": the
        per-direction scale sqrt(λ/2/(s+μ)) of W*} (plotted by ``03_train``).
    """
    return head_from_spectrum(*scatter_spectrum(scatter), lam)


def scatter_spectrum(scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s ascending, eigenvectors) of the normalised scatter: the λ-free part of :func:`ada_head`, computed once
    when many λ are tried on one scatter."""
    d = scatter.shape[0]
    if scatter.shape != (d, d) or not np.all(np.isfinite(scatter)):
        raise ValueError(f"ada_head: scatter must be a finite (D, D) matrix, got shape {scatter.shape}")
    s, vecs = np.linalg.eigh(_unit_mean(scatter))
    return np.clip(s, 0.0, None), vecs  # round-off below 0 in a positive semi-definite scatter


def head_from_spectrum(s: np.ndarray, vecs: np.ndarray, lam: float) -> tuple[np.ndarray, dict]:
    """:func:`ada_head` of the scatter whose :func:`scatter_spectrum` is ``(s, vecs)``."""
    mu, g2 = _squared_gains(s, lam)
    gains = np.sqrt(g2)
    return (vecs * gains) @ vecs.T, {"lam": float(lam), "mu": float(mu), "eigvals": s.tolist(), "gains": gains.tolist()}


def lambda_path(eigvals: np.ndarray, lams: np.ndarray) -> dict[str, np.ndarray]:
    """L_A and L_D (without its constant) of W*(λ) for each λ, from the normalised spectrum alone.

    With gains g_i² = (λ/2)/(s_i + μ): L_A = Σ s_i g_i², L_D = −Σ log g_i; whitening (g = 1) has L_A = D, L_D = 0.
    """
    s = np.asarray(eigvals, np.float64)
    out = {"lam": np.asarray(lams, np.float64), "align": [], "infomax": []}
    for lam in out["lam"]:
        g2 = _squared_gains(s, lam)[1]
        out["align"].append(float(np.sum(s * g2)))
        out["infomax"].append(float(-0.5 * np.sum(np.log(g2))))
    return {k: np.asarray(v) for k, v in out.items()}


def objective(w: np.ndarray, scatter: np.ndarray, lam: float) -> float:
    """L_A + λ L_D of a head ``w`` (up to the constant of L_D), with ``scatter`` normalised as in ``ada_head``."""
    return float(np.trace(w @ _unit_mean(scatter) @ w.T) - lam * np.linalg.slogdet(w)[1])


def subspace_procrustes(a: np.ndarray, b: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(D, D) map ``I + Qᵀ(R − I)Q``: the rotation R of the k-dim subspace ``basis`` Q (k, D, orthonormal rows)
    that best maps rows of ``a`` onto rows of ``b`` (orthogonal Procrustes, R = UVᵀ from the SVD of
    (bQᵀ)ᵀ(aQᵀ)), identity outside the subspace. Used with *labelled* training pairs as an oracle: how much a
    rotation could align the two whitened domains at all."""
    pa, pb = np.asarray(a, np.float64) @ basis.T, np.asarray(b, np.float64) @ basis.T
    u, _, vt = np.linalg.svd(pb.T @ pa)
    k = len(basis)
    return np.eye(basis.shape[1]) + basis.T @ (u @ vt - np.eye(k)) @ basis
