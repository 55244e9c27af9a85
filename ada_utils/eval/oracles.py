"""Labelled ceilings of chapter 04: linear heads fitted with the *true* training pairs, evaluated like every method.

They answer "is the linear family exhausted?" with numbers instead of a sentence. Each reads the labelled pairs
of the training models (never a test cell) and has its one free knob chosen on the validation split:

- ``cca_ceiling``: CCA of (synthetic, exemplar) training pairs in full dimension with shrunk covariances
  (:func:`ada_utils.cca.fit_cca`), each canonical direction weighted by ρ_i^power; shrinkage and power chosen on
  validation. CCA's two halves together: the rotation *and* the weighting by canonical correlation.
- ``ada_true_pairs``: the closed-form ada head (:func:`ada_utils.closed_form.ada_head`) with its alignment scatter
  taken from the true pairs instead of pseudo-pairs, on per-domain whitening; λ chosen on validation.
- ``procrustes``: per-domain whitening, then the rotation of the synthetic domain onto the real one in the top-k
  principal subspace (orthogonal Procrustes on the true pairs); k chosen on validation.

Every oracle returns an :class:`Oracle`: its maps, the knob chosen and the validation curve that chose it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ada_utils.retrieval import FeatureMap

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData


@dataclass
class Oracle:
    """A labelled linear head: ``real_map``/``synth_map`` (numpy (N, D) -> (N, k)), the knob chosen on validation
    (``choice``) and the validation curve (``curve``: one row per candidate, its mean validation R@5)."""

    name: str
    real_map: FeatureMap
    synth_map: FeatureMap
    choice: dict
    curve: list[dict]


def _pair_rows(data: TrainData) -> tuple[np.ndarray, np.ndarray]:
    if data.pairs is None:
        raise ValueError("a labelled ceiling needs TrainData.pairs (training_data(..., with_pairs=True))")
    return data.feats[data.pairs[:, 1]].astype(np.float64), data.feats[data.pairs[:, 0]].astype(np.float64)


def _pick(name: str, candidates: Sequence[dict], make: Callable[[dict], tuple[FeatureMap, FeatureMap]],
          val_bf: BenchmarkFeatures) -> Oracle:
    """Evaluate every candidate knob on the validation benchmark; keep the best (first of equals)."""
    from ada_utils.eval.ablation import mean_r5

    curve, best = [], None
    for knob in candidates:
        maps = make(knob)
        score = mean_r5(val_bf, *maps)
        curve.append({**knob, "val_R@5": score})
        if best is None or score > best[0]:
            best = (score, knob, maps)
    return Oracle(name, best[2][0], best[2][1], best[1], curve)


def _affine(w: np.ndarray, mean: np.ndarray) -> FeatureMap:
    w32, m32 = w.astype(np.float32), mean.astype(np.float32)
    return lambda x: (np.asarray(x, np.float32) - m32) @ w32


def cca_ceiling(data: TrainData, val_bf: BenchmarkFeatures, *, regs: Sequence = ("auto", 0.3, 0.6),
                powers: Sequence[float] = (0.0, 1.0, 2.0)) -> Oracle:
    """CCA on the true training pairs, full dimension, ρ-weighted; ``reg`` and ``power`` chosen on validation."""
    from ada_utils import cca

    xs, xr = _pair_rows(data)
    fits = {}

    def make(knob: dict) -> tuple[FeatureMap, FeatureMap]:
        if knob["reg"] not in fits:
            fits[knob["reg"]] = cca.fit_cca(xs, xr, reg=knob["reg"])
        m = fits[knob["reg"]]
        weight = np.clip(m.rho, 0, None) ** knob["power"]
        return _affine(m.B * weight, m.mean_y), _affine(m.A * weight, m.mean_x)

    return _pick("cca_ceiling", [{"reg": r, "power": p} for r in regs for p in powers], make, val_bf)


def whitening_maps(cfg: TrainConfig, data: TrainData) -> tuple[FeatureMap, FeatureMap]:
    """(real_map, synth_map) of per-domain whitening fitted on the unlabelled pool ``data`` (as the ``whiten_pd`` row)."""
    from ada_utils.eval.ablation import fitted_maps

    with tempfile.TemporaryDirectory() as tmp:
        return fitted_maps(dataclasses.replace(cfg, method="whiten", cov_mode="per_domain"), data, Path(tmp))


def ada_on_pairs(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, pairs: np.ndarray, *,
                 lams: Sequence[float], name: str, whitening: tuple[FeatureMap, FeatureMap] | None = None) -> Oracle:
    """The closed-form ada head with the alignment scatter of ``pairs`` ((P, 2) pool rows (real, synthetic)), on
    per-domain whitening of the pool (``whitening``: :func:`whitening_maps` of ``cfg`` and ``data``, fitted here when
    None); λ chosen on validation. With the true pairs it is a labelled ceiling; with pseudo-pairs
    (:mod:`ada_utils.eval.mechanism`) an unsupervised head."""
    from ada_utils.closed_form import head_from_spectrum, pair_scatter, scatter_spectrum

    real_w, synth_w = whitening or whitening_maps(cfg, data)
    spectrum = scatter_spectrum(pair_scatter(synth_w(data.feats[pairs[:, 1]]), real_w(data.feats[pairs[:, 0]])))

    def make(knob: dict) -> tuple[FeatureMap, FeatureMap]:
        head = head_from_spectrum(*spectrum, knob["lam"])[0].astype(np.float32)
        return (lambda x: real_w(x) @ head.T), (lambda x: synth_w(x) @ head.T)

    return _pick(name, [{"lam": float(v)} for v in lams], make, val_bf)


def ada_true_pairs(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, *,
                   lams: Sequence[float]) -> Oracle:
    """The closed-form ada head with the scatter of the true pairs (per-domain whitening first); λ on validation."""
    if data.pairs is None:
        raise ValueError("a labelled ceiling needs TrainData.pairs (training_data(..., with_pairs=True))")
    return ada_on_pairs(cfg, data, val_bf, data.pairs, lams=lams, name="ada_true_pairs")


def procrustes(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, *, ks: Sequence[int]) -> Oracle:
    """Per-domain whitening, then the Procrustes rotation of the true pairs in the top-k subspace; k on validation."""
    from ada_utils.closed_form import subspace_procrustes

    real_w, synth_w = whitening_maps(cfg, data)
    xs, xr = _pair_rows(data)
    u_s, u_r = synth_w(xs).astype(np.float64), real_w(xr).astype(np.float64)
    pooled = np.vstack([u_r, u_s])
    basis = np.linalg.svd(pooled - pooled.mean(0), full_matrices=False)[2]

    def make(knob: dict) -> tuple[FeatureMap, FeatureMap]:
        rot = subspace_procrustes(u_s, u_r, basis[: knob["k"]]).astype(np.float32)
        return real_w, (lambda x: synth_w(x) @ rot.T)

    return _pick("procrustes", [{"k": int(k)} for k in ks if k <= basis.shape[0]], make, val_bf)
