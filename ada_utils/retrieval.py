"""AbC's official retrieval metrics: Recall@K and AP of each query's exemplars among ~1M distractors.

Protocol ([0] Wang et al., "Evaluating Data Attribution for
Text-to-Image Models", ICCV 2023, arXiv 2306.09345; [1] GenDataAttribution ``eval.py`` at ``ed044d0``):

* rows are samples; features are L2-normalised (after the optional real/synthetic maps) and scored by the dot
  product (cosine);
* the gallery of a query of model m is **all N distractors + the E_m exemplars of model m only**;
* with p_1 < ... < p_{E_m} the 1-based positions of those exemplars in the descending ranking,
  ``AP = (1/E_m) sum_i i / p_i`` and ``R@K = #{i: p_i <= K} / E_m`` (a fraction, not a hit rate).

Ties (the book's reproducibility page): a distractor whose score equals an exemplar's ranks ahead of it, and tied exemplars
are ordered by their index in ``exemplar_feats``. Both implementations below follow this rule, so they agree
exactly (ties are decided on the computed scores, in the chosen ``dtype``).

:func:`abc_metrics` never sorts the distractor scores. The rank of exemplar e of model m is

    p_e = 1 + #{d : s_d >= s_e} + #{e' in m : s_e' > s_e, or s_e' = s_e and e' < e},

and the distractor counts are accumulated block by block from matrix products (torch, CPU or GPU), with the
distractors streamed from a (memory-mapped) array, so a 1M x 768 gallery is never copied whole.
:func:`abc_metrics_bruteforce` is the plain reference: one full stable sort per query, as [1] ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch
from tqdm.auto import tqdm

Array = np.ndarray | torch.Tensor
FeatureMap = Callable[[np.ndarray], Array]


@dataclass
class _QueryBlock:
    """Queries ``rows`` (in input order) with their own exemplars' scores (Qb, W), padded to the widest model."""

    rows: np.ndarray
    feats: torch.Tensor  # (Qb, D) normalised
    scores: torch.Tensor  # (Qb, W) own exemplar scores, exemplars in index order
    valid: torch.Tensor  # (Qb, W) bool: column j < E_m
    thresholds: torch.Tensor  # scores with +inf padding (never reached by a distractor)
    n_dist: torch.Tensor  # (Qb, W) int64: #{distractors scoring >= the exemplar}


def abc_metrics(query_feats: Array, query_model: Array, exemplar_feats: Array, exemplar_model: Array,
                distractor_feats: Array | str | Path, ks: Sequence[int] = (5, 10, 100), *,
                real_map: FeatureMap | None = None, synth_map: FeatureMap | None = None, block: int = 16384,
                query_block: int = 2048, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                progress: bool = False) -> dict:
    """Official AbC Recall@K and AP, computed exactly by blocked rank counting.

    Args:
        query_feats: (Q, D) synthetic query features (numpy or torch).
        query_model: (Q,) int model id of each query.
        exemplar_feats: (E, D) real exemplar features of all models.
        exemplar_model: (E,) int model id of each exemplar.
        distractor_feats: (N, D) distractor features: an array, a ``np.memmap`` or the path of a ``.npy``
            file (opened memory-mapped). Read ``block`` rows at a time.
        ks: the K of Recall@K.
        real_map: applied to exemplars and distractors, ``(n, D) float32 numpy -> (n, D')``.
        synth_map: applied to queries, same signature.
        block: distractor rows per block (bounds memory: ``query_block x block`` scores at a time).
        query_block: query rows per matrix product.
        device: where the products run ("cpu", "cuda", ...).
        dtype: compute dtype of the scores (float32; float64 for reference-grade ties).
        progress: show a tqdm bar over distractor blocks.

    Returns:
        ``{"recall": {k: float}, "map": float, "ap": (Q,) float64, "recall_per_query": {k: (Q,) float64}}``,
        all fractions in [0, 1]; means are over queries.
    """
    ks = _check_ks(ks)
    q, ex, dist, q_model, ex_model = _prepare(query_feats, query_model, exemplar_feats, exemplar_model,
                                              distractor_feats, real_map, synth_map, dtype)
    device = torch.device(device)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    ex_sorted, starts, counts, q_group = _group_exemplars(ex_model, q_model)
    ex_t = ex[torch.from_numpy(ex_sorted)].to(device)
    # Queries sorted by their exemplar count, so that a block pads thresholds to few columns.
    q_order = np.argsort(counts[q_group], kind="stable")
    blocks = []
    for lo in range(0, len(q_order), query_block):
        rows = q_order[lo:lo + query_block]
        n_ex = counts[q_group[rows]]
        width = int(n_ex.max())
        col = np.arange(width)
        valid = col[None, :] < n_ex[:, None]
        idx = np.where(valid, starts[q_group[rows]][:, None] + col[None, :], 0)
        qb = q[torch.from_numpy(rows)].to(device)
        scores = torch.gather(qb @ ex_t.T, 1, torch.from_numpy(idx).to(device))
        valid_t = torch.from_numpy(valid).to(device)
        blocks.append(_QueryBlock(rows, qb, scores, valid_t, scores.masked_fill(~valid_t, float("inf")),
                                  torch.zeros_like(scores, dtype=torch.int64)))
    n = dist.shape[0]
    for lo in tqdm(range(0, n, block), desc="distractor blocks", disable=not progress):
        d = _load_block(dist, lo, min(lo + block, n), real_map, dtype).to(device)
        for b in blocks:
            _count_at_least(b.feats @ d.T, b.thresholds, b.n_dist)
    ap = np.zeros(len(q_order))
    rec = {k: np.zeros(len(q_order)) for k in ks}
    for b in blocks:
        ap_b, rec_b = _ap_recall(_positions(b.scores, b.valid, b.n_dist), b.valid, ks)
        ap[b.rows] = ap_b
        for k in ks:
            rec[k][b.rows] = rec_b[k]
    return _summary(ap, rec)


def abc_metrics_bruteforce(query_feats: Array, query_model: Array, exemplar_feats: Array, exemplar_model: Array,
                           distractor_feats: Array | str | Path, ks: Sequence[int] = (5, 10, 100), *,
                           real_map: FeatureMap | None = None, synth_map: FeatureMap | None = None,
                           dtype: torch.dtype = torch.float32) -> dict:
    """Reference implementation: per query, score the whole gallery and rank it with one stable sort.

    The gallery is laid out as [distractors, own exemplars in index order]; a stable descending sort then
    implements the tie rule of the module docstring. Same arguments and output as :func:`abc_metrics`; holds
    all N distractors in memory (use it on a subset of queries).
    """
    ks = _check_ks(ks)
    q, ex, dist, q_model, ex_model = _prepare(query_feats, query_model, exemplar_feats, exemplar_model,
                                              distractor_feats, real_map, synth_map, dtype)
    _group_exemplars(ex_model, q_model)  # same input errors as the fast path
    d = _load_block(dist, 0, dist.shape[0], real_map, dtype)
    ap = np.zeros(len(q))
    rec = {k: np.zeros(len(q)) for k in ks}
    for i in range(len(q)):
        own = torch.from_numpy(np.flatnonzero(ex_model == q_model[i]))
        order = rank_gallery((d @ q[i]).numpy(), (ex[own] @ q[i]).numpy())
        pos = np.flatnonzero(order >= len(d)) + 1  # 1-based, ascending
        ap[i] = np.mean(np.arange(1, len(pos) + 1) / pos)
        for k in ks:
            rec[k][i] = np.mean(pos <= k)
    return _summary(ap, rec)


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` ``(n, d)`` (or one vector ``(d,)``) scaled to unit L2 norm, as the metric scores them; zero
    rows stay zero.

    Returns:
        An array of ``X``'s shape and dtype (norms below ``1e-12`` are treated as ``1e-12``).
    """
    return X / np.linalg.norm(X, axis=-1, keepdims=True).clip(1e-12)


def rank_gallery(distractor_scores: np.ndarray, exemplar_scores: np.ndarray) -> np.ndarray:
    """The official ranking of one query's gallery, best first (the reference that both metrics agree with).

    Args:
        distractor_scores: (N,) scores of every distractor. exemplar_scores: (E_m,) scores of the query's own
            model's exemplars, in exemplar index order.

    Returns:
        (N + E_m,) int64 indices into ``[distractors, exemplars]``: one stable descending sort of that layout,
        which is the tie rule of the module docstring (distractors ahead of equal exemplars, exemplars by index).
    """
    return np.argsort(-np.concatenate([distractor_scores, exemplar_scores]), kind="stable")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks}: give at least one K >= 1")
    return ks


def _as_tensor(x: Array, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, D) array, got shape {tuple(t.shape)}")
    return t


def _finite(t: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name}: row {offset + int(bad.nonzero()[0, 0])} has NaN or infinite values")
    return t


def _mapped(t: torch.Tensor, fmap: FeatureMap | None, name: str, dtype: torch.dtype,
            offset: int = 0) -> torch.Tensor:
    """Apply the optional map (on float32 numpy, as AbC's eval does) and L2-normalise, rejecting NaN/inf.

    Without a map, finiteness is read off the row norms (a NaN or inf entry makes the norm non-finite), which
    avoids a separate pass over a 1M-row gallery.
    """
    if fmap is not None:
        out = fmap(_finite(t, name, offset).to(torch.float32).numpy())
        t = out.detach().cpu() if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
        name = f"{name} after its map"
    t = t.to(dtype)
    norm = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    if not bool(torch.isfinite(norm).all()):
        _finite(t, name, offset)
        raise ValueError(f"{name}: a row norm overflows {dtype}; rescale the features")
    return t / norm.clamp_min(1e-12)  # as F.normalize: zero rows stay zero


def _labels(x: Array, n: int, name: str) -> np.ndarray:
    lab = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name}: expected ({n},) integer model ids, got shape {lab.shape} dtype {lab.dtype}")
    return lab.astype(np.int64)


def _prepare(query_feats, query_model, exemplar_feats, exemplar_model, distractor_feats, real_map, synth_map,
             dtype):
    if isinstance(distractor_feats, (str, Path)):
        distractor_feats = np.load(distractor_feats, mmap_mode="r")
    q_raw = _as_tensor(query_feats, "query_feats")
    ex_raw = _as_tensor(exemplar_feats, "exemplar_feats")
    shape = tuple(distractor_feats.shape)
    if len(shape) != 2:
        raise ValueError(f"distractor_feats: expected an (N, D) array, got shape {shape}")
    dims = {"query_feats": q_raw.shape[1], "exemplar_feats": ex_raw.shape[1], "distractor_feats": shape[1]}
    if real_map is None and synth_map is None and len(set(dims.values())) > 1:
        raise ValueError(f"feature dimensions differ: {dims}")
    q = _mapped(q_raw, synth_map, "query_feats", dtype)
    ex = _mapped(ex_raw, real_map, "exemplar_feats", dtype)
    if q.shape[1] != ex.shape[1]:
        raise ValueError(f"after the maps, query_feats has D={q.shape[1]} but exemplar_feats has D={ex.shape[1]}")
    q_model = _labels(query_model, len(q), "query_model")
    ex_model = _labels(exemplar_model, len(ex), "exemplar_model")
    return q, ex, distractor_feats, q_model, ex_model


def _group_exemplars(ex_model: np.ndarray, q_model: np.ndarray):
    """Exemplar order grouped by model (index order within), group starts/sizes, each query's group."""
    models, inverse = np.unique(ex_model, return_inverse=True)
    ex_sorted = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(models))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    q_group = np.minimum(np.searchsorted(models, q_model), len(models) - 1)
    missing = np.unique(q_model[models[q_group] != q_model])
    if len(missing):
        raise ValueError(f"query_model: models {missing[:10].tolist()} have no exemplars in exemplar_model")
    return ex_sorted, starts, counts, q_group


def _load_block(dist, lo: int, hi: int, real_map: FeatureMap | None, dtype: torch.dtype) -> torch.Tensor:
    raw = dist[lo:hi]
    raw = raw.detach().cpu() if isinstance(raw, torch.Tensor) else torch.from_numpy(np.array(raw))
    if raw.shape[0] == 0:
        return raw.to(dtype)
    return _mapped(raw, real_map, "distractor_feats", dtype, lo)


def _count_at_least(s: torch.Tensor, thresholds: torch.Tensor, out: torch.Tensor) -> None:
    """``out[q, j] += #{n : s[q, n] >= thresholds[q, j]}`` for scores s (Qb, Nb), thresholds (Qb, W).

    On CPU a fused numba kernel (one compare-and-add sweep per threshold over a cache-resident row: ~2 % of
    the matrix product's time at W = 12, where torch's bool reductions cost more than the product); on other
    devices one torch comparison per threshold column.
    """
    if s.device.type == "cpu":
        _count_at_least_cpu(s.numpy(), thresholds.numpy(), out.numpy())
    else:
        _count_at_least_torch(s, thresholds, out)


def _count_at_least_torch(s: torch.Tensor, thresholds: torch.Tensor, out: torch.Tensor) -> None:
    for j in range(thresholds.shape[1]):
        out[:, j] += (s >= thresholds[:, j:j + 1]).sum(dim=1)


@numba.njit(parallel=True, cache=True)
def _count_at_least_cpu(s: np.ndarray, thresholds: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for q in numba.prange(s.shape[0]):
        for j in range(thresholds.shape[1]):
            t = thresholds[q, j]
            if t == np.inf:  # padding column: no score reaches it
                continue
            c = 0
            for n in range(s.shape[1]):
                c += s[q, n] >= t
            out[q, j] += c


def _positions(scores: torch.Tensor, valid: torch.Tensor, n_dist: torch.Tensor) -> torch.Tensor:
    """1-based rank of each own exemplar (Qb, W): 1 + distractors at or above + own exemplars ahead."""
    s_i, s_j = scores[:, :, None], scores[:, None, :]
    col = torch.arange(scores.shape[1], device=scores.device)
    earlier = col[None, :] < col[:, None]  # [i, j]: exemplar j has a smaller index than i
    ahead = ((s_j > s_i) | ((s_j == s_i) & earlier)) & valid[:, None, :]
    return 1 + n_dist + ahead.sum(dim=2)


def _ap_recall(pos: torch.Tensor, valid: torch.Tensor, ks: tuple[int, ...]):
    n_ex = valid.sum(dim=1).double()
    p = pos.masked_fill(~valid, torch.iinfo(torch.int64).max).sort(dim=1).values.double()
    i = torch.arange(1, p.shape[1] + 1, device=p.device, dtype=torch.float64)
    ap = ((i / p) * valid).sum(dim=1) / n_ex  # valid is a prefix after sorting: padded p sort last
    rec = {k: (((p <= k) & valid).sum(dim=1) / n_ex).cpu().numpy() for k in ks}
    return ap.cpu().numpy(), rec


def _summary(ap: np.ndarray, rec: dict[int, np.ndarray]) -> dict:
    return {"recall": {k: float(v.mean()) for k, v in rec.items()}, "map": float(ap.mean()), "ap": ap,
            "recall_per_query": rec}
