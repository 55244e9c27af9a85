"""Closed-form fits of a training configuration: the exact ada head on whitened training features.

:func:`fit_ada` builds the unlabelled positive pairs that ``cfg.alignment`` names (an image and its cached
augmented views, and/or mutual nearest real/synthetic neighbours) and solves
:func:`ada_utils.closed_form.ada_head` on them; the mathematics lives in :mod:`ada_utils.closed_form`.
"""

from __future__ import annotations

import numpy as np

from ada_utils.closed_form import ada_head, mutual_nn_pairs, pair_scatter
from ada_utils.train.config import TrainConfig
from ada_utils.train.data import TrainData


def fit_ada(cfg: TrainConfig, data: TrainData, rows: np.ndarray, masks: list[np.ndarray],
            maps: list[tuple[np.ndarray, np.ndarray]], centers: tuple[np.ndarray, np.ndarray]
            ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """``ada_head`` on top of per-group whitening ``maps`` (``(W, b)`` per head, rows ``masks``), fitted on ``rows``.

    Positive pairs (``cfg.alignment``): each training row with its cached augmented views, and/or mutual nearest
    real/synthetic neighbours in the whitened space. Returns the new ``(W* W, W* b)`` maps and ``ada_head``'s info.
    """
    dom = data.domain[rows]

    def whiten(x: np.ndarray) -> np.ndarray:  # training rows (row order of ``rows``) -> whitened coordinates
        xc = x.astype(np.float64) - np.where(dom[:, None] == 1, centers[1], centers[0])
        out = np.empty_like(xc)
        for mask, (w, b) in zip(masks, maps):
            out[mask] = xc[mask] @ w.T + b
        return out

    u = whiten(data.feats[rows])
    scatters = []
    if cfg.alignment in ("views", "both"):
        if data.views is None or len(data.views) == 0:
            raise ValueError(f"alignment={cfg.alignment!r} pairs each image with its augmented views: build "
                             "TrainData with n_views >= 1")
        scatters.append(np.mean([pair_scatter(u, whiten(v[rows])) for v in data.views], axis=0))
    if cfg.alignment in ("xdomain_nn", "both"):
        synth, real = np.flatnonzero(dom == 1), np.flatnonzero(dom == 0)
        pairs = mutual_nn_pairs(u[synth], u[real])
        if len(pairs) == 0:
            raise ValueError("alignment='xdomain_nn': no mutual nearest real/synthetic neighbours in the training rows")
        scatters.append(pair_scatter(u[synth[pairs[:, 0]]], u[real[pairs[:, 1]]]))
    head, info = ada_head(np.mean(scatters, axis=0), cfg.lam)
    return [(head @ w, head @ b) for w, b in maps], info
