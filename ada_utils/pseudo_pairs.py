"""Pseudo-pairs: unlabelled (synthetic, real) positives that stand in for the true pairs, and their audit.

The unsupervised method aligns a synthetic image with a real image it *believes* shows the same concept. Without
labels that belief comes from the features themselves. Every source here maps synthetic features ``zs`` (n_s, D) and
real features ``zr`` (n_r, D), given in the space where the pairs are made (raw, whitened, or a head's output), to
``(P, 2)`` int64 index pairs (synthetic row, real row); no source reads a label. Similarities are cosines.

- :func:`nearest`: every synthetic image with its nearest real image (full coverage, lowest precision);
- :func:`mutual_nn`: pairs that are each other's nearest neighbour (at most one synthetic image per real image);
- :func:`margin_filtered`: nearest neighbours whose similarity beats the runner-up by the largest margins
  (Lowe's ratio test read as a difference), the top ``keep`` fraction;
- :func:`k_reciprocal`: the real image is among the synthetic image's ``k`` nearest and the synthetic image among
  the real image's ``k_back`` nearest (re-ranking's k-reciprocal sets, Zhong et al. 2017);
- :func:`cluster_match`: k-means of the synthetic images, each cluster's mean matched to its mutual nearest real
  image, and every member paired with it (a concept is a cluster of generated images);
- :func:`sinkhorn_match`: entropic optimal transport between the two sets with uniform marginals (Cuturi 2013),
  each synthetic image paired with the real image that receives most of its mass, kept when that share is high.

:func:`audit` scores pairs against the true pairs: an evaluation-only diagnostic that no fit may read.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _unit(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"pseudo-pairs need a non-empty (n, D) feature array, got shape {z.shape}")
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def cosine(zs: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """(n_s, n_r) float32 cosine similarities (float32 bounds the memory of the full table)."""
    zs, zr = _unit(zs), _unit(zr)
    if zs.shape[1] != zr.shape[1]:
        raise ValueError(f"synthetic and real features differ in width: {zs.shape[1]} vs {zr.shape[1]}")
    return zs @ zr.T


def _pairs(synth: np.ndarray, real: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(synth, np.int64), np.asarray(real, np.int64)], axis=1).reshape(-1, 2)


def nearest(zs: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Every synthetic image with its nearest real image."""
    return _pairs(np.arange(len(zs)), cosine(zs, zr).argmax(1))


def mutual_nn(zs: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Pairs that are each other's nearest cross-domain neighbour (the high-precision subset of :func:`nearest`)."""
    sim = cosine(zs, zr)
    s_to_r, r_to_s = sim.argmax(1), sim.argmax(0)
    synth = np.flatnonzero(r_to_s[s_to_r] == np.arange(len(zs)))
    return _pairs(synth, s_to_r[synth])


def margin_filtered(zs: np.ndarray, zr: np.ndarray, *, keep: float = 0.3) -> np.ndarray:
    """Nearest neighbours ranked by their margin over the second-nearest real image; the top ``keep`` fraction."""
    if not 0 < keep <= 1:
        raise ValueError(f"margin_filtered: keep={keep} must be in (0, 1]")
    sim = cosine(zs, zr)
    if sim.shape[1] < 2:
        return nearest(zs, zr)
    top2 = np.sort(sim, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    chosen = np.sort(np.argsort(-margin, kind="stable")[: max(1, int(round(keep * len(zs))))])
    return _pairs(chosen, sim[chosen].argmax(1))


def k_reciprocal(zs: np.ndarray, zr: np.ndarray, *, k: int = 3, k_back: int | None = None) -> np.ndarray:
    """Each synthetic image with its most similar real image among the k-reciprocal ones: the real image is within
    its ``k`` nearest and it is within the real image's ``k_back`` nearest synthetic images (default
    ``k · n_s / n_r``: a real image stands for several generated ones)."""
    sim = cosine(zs, zr)
    n_s, n_r = sim.shape
    k, k_back = min(k, n_r), min(n_s, k_back or max(1, int(round(k * n_s / n_r))))
    fwd = np.zeros_like(sim, dtype=bool)
    np.put_along_axis(fwd, np.argpartition(-sim, k - 1, axis=1)[:, :k], True, axis=1)
    back = np.zeros_like(sim, dtype=bool)
    np.put_along_axis(back, np.argpartition(-sim, k_back - 1, axis=0)[:k_back], True, axis=0)
    ok = np.where(fwd & back, sim, -np.inf)
    synth = np.flatnonzero(np.isfinite(ok).any(1))
    return _pairs(synth, ok[synth].argmax(1))


def cluster_match(zs: np.ndarray, zr: np.ndarray, *, n_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """k-means (on the unit sphere) of the synthetic images into ``n_clusters`` (default: one per real image), each
    cluster's mean matched to a real image by mutual nearest neighbour, every member paired with that image."""
    from sklearn.cluster import KMeans

    us = _unit(zs)
    k = min(len(us), n_clusters or len(zr))
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(us)
    matched = mutual_nn(km.cluster_centers_, zr)  # (cluster, real)
    real_of = np.full(k, -1, dtype=np.int64)
    real_of[matched[:, 0]] = matched[:, 1]
    synth = np.flatnonzero(real_of[km.labels_] >= 0)
    return _pairs(synth, real_of[km.labels_[synth]])


def sinkhorn_plan(sim: np.ndarray, *, eps: float = 0.05, iters: int = 300) -> np.ndarray:
    """Entropic transport plan (n_s, n_r) for cost ``1 − sim`` with uniform marginals, rows rescaled to sum to 1
    (log-domain Sinkhorn iterations, stable for small ``eps``)."""
    from scipy.special import logsumexp

    n_s, n_r = sim.shape
    log_k = (sim.astype(np.float64) - 1.0) / eps
    log_a, log_b = -np.log(n_s) * np.ones(n_s), -np.log(n_r) * np.ones(n_r)
    f, g = np.zeros(n_s), np.zeros(n_r)
    for _ in range(iters):
        f = log_a - logsumexp(log_k + g[None], axis=1)
        g = log_b - logsumexp(log_k + f[:, None], axis=0)
    log_p = log_k + f[:, None] + g[None]
    return np.exp(log_p - logsumexp(log_p, axis=1, keepdims=True))


def sinkhorn_match(zs: np.ndarray, zr: np.ndarray, *, eps: float = 0.05, share: float = 0.5,
                   iters: int = 300) -> np.ndarray:
    """Optimal-transport matching: each synthetic image with the real image that takes the largest share of its
    mass, kept when that share is at least ``share`` (a confident, balanced assignment: no real image absorbs all
    synthetic ones, unlike :func:`nearest`)."""
    plan = sinkhorn_plan(cosine(zs, zr), eps=eps, iters=iters)
    best = plan.argmax(1)
    synth = np.flatnonzero(plan[np.arange(len(plan)), best] >= share)
    return _pairs(synth, best[synth])


SOURCES: dict[str, PairFn] = {"nearest": nearest, "mutual_nn": mutual_nn, "margin": margin_filtered,
                              "k_reciprocal": k_reciprocal, "cluster_match": cluster_match,
                              "sinkhorn": sinkhorn_match}


def iterate(make: PairFn, fit: Callable[[np.ndarray], Callable[[np.ndarray, np.ndarray], tuple]], zs: np.ndarray,
            zr: np.ndarray, *, rounds: int) -> list[np.ndarray]:
    """Iterated refits: pairs in the start space, a head fitted on them, pairs again in the head's space, ...

    Args:
        make: a pair source.
        fit: pairs -> ``head`` with ``head(zs, zr) -> (zs', zr')`` (the new space of the start features).
        zs, zr: the start space (e.g. whitened features).
        rounds: refits after the first pairs.

    Returns:
        The pairs of every round, first to last (``rounds + 1`` arrays).
    """
    out = [make(zs, zr)]
    for _ in range(rounds):
        out.append(make(*fit(out[-1])(zs, zr)))
    return out


def audit(pairs: np.ndarray, synth_model: np.ndarray, real_model: np.ndarray) -> dict[str, float]:
    """Evaluation-only: how many pseudo-pairs join images of the same model (the true pairs), and how many synthetic
    images get one.

    Args:
        pairs: (P, 2) (synthetic row, real row).
        synth_model: (n_s,) model id of each synthetic row; real_model: (n_r,) model id of each real row (-1: none,
            which never matches).

    Returns:
        ``{"pairs": P, "precision": share of pairs of one model (NaN when P = 0), "coverage": share of synthetic
        rows in a pair, "real_used": share of real rows in a pair}``.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    synth_model, real_model = np.asarray(synth_model), np.asarray(real_model)
    hit = (synth_model[pairs[:, 0]] == real_model[pairs[:, 1]]) & (real_model[pairs[:, 1]] >= 0)
    return {"pairs": int(len(pairs)), "precision": float(hit.mean()) if len(pairs) else float("nan"),
            "coverage": float(len(np.unique(pairs[:, 0])) / max(1, len(synth_model))),
            "real_used": float(len(np.unique(pairs[:, 1])) / max(1, len(real_model)))}
