"""The common coordinate basis of the analysis chapters (01 cross-covariance, 02 CCA decomposition).

Statistics that read coordinates (diagonal dominance, the correlation along each coordinate, retrieval on k
dimensions) depend on the basis. Reading each encoder on its own top-variance columns would compare arbitrary
axes of whitened heads with the informative ones of raw features; here every encoder of a backbone is read in
the same basis: the top-k principal directions of that backbone's features on the unlabelled *training* pool
(no pairs, no test data). Conventions: rows are samples; a basis is ``(D, k)`` with orthonormal columns, applied
as ``X @ basis`` (no centring: statistics centre each domain themselves, retrieval sees the encoder as is).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ada_utils.analysis.features import FeatureMap, FeatureSet
from ada_utils.cca import CCAModel


def principal_directions(X: np.ndarray, domain: np.ndarray, k: int) -> np.ndarray:
    """``(D, k)`` orthonormal: the top-k eigenvectors of the within-domain covariance of ``X``, averaged over domains.

    Each domain is centred on its own mean first, so the real-vs-synthetic mean shift (which every statistic of
    the chapters removes by centring each domain) takes no direction. Signs are fixed (largest entry positive) so
    that the basis is reproducible.

    Args:
        X: ``(N, D)`` unlabelled training features. domain: ``(N,)`` 0 real / 1 synthetic. k: directions kept
            (0 or ``>= D``: all D, a rotation).
    """
    X = np.asarray(X, np.float64)
    covs = []
    for dom in np.unique(domain):
        Xd = X[domain == dom] - X[domain == dom].mean(0)
        covs.append(Xd.T @ Xd / len(Xd))
    vals, vecs = np.linalg.eigh(np.mean(covs, axis=0))
    k = X.shape[1] if not 0 < k < X.shape[1] else k
    top = vecs[:, np.argsort(-vals, kind="stable")[:k]]
    return top * np.sign(top[np.abs(top).argmax(0), np.arange(k)])


def common_bases(sets: Mapping[str, FeatureSet], k: int) -> dict[str, np.ndarray]:
    """One coordinate basis per backbone: ``{encoder: (D, k)}`` (:func:`principal_directions` of the raw backbone
    features of the training pool, both domains), shared by the backbone and every head on it.

    A head here is a square map initialised at the identity or at ZCA whitening (which keeps coordinates as
    close as possible to its input), so its outputs share the backbone's axes, and reading them in the backbone's
    principal directions puts every encoder in the same coordinates. ``random`` (another network) gets the
    principal directions of its own features.
    """
    by_pool: dict[int, np.ndarray] = {}
    for fs in sets.values():
        if id(fs.pool) not in by_pool:
            by_pool[id(fs.pool)] = principal_directions(fs.pool.feats, fs.pool.domain, k)
    return {name: by_pool[id(fs.pool)] for name, fs in sets.items()}


def cca_maps(fs: FeatureSet, model: CCAModel, basis: np.ndarray) -> tuple[FeatureMap, FeatureMap]:
    """``(real_map, synth_map)`` for ``evaluate``: the encoder's maps, its ``basis`` ``(D', k)``, then the canonical
    projection (``synth ↦ (x − mean_x) A``, ``real ↦ (y − mean_y) B``), each component scaled by its ρ."""
    w = model.rho if len(model.rho) else np.ones(model.A.shape[1])

    def real_map(x: np.ndarray) -> np.ndarray:
        return ((fs.real(x) @ basis - model.mean_y) @ model.B * w).astype(np.float32)

    def synth_map(x: np.ndarray) -> np.ndarray:
        return ((fs.synth(x) @ basis - model.mean_x) @ model.A * w).astype(np.float32)

    return real_map, synth_map
