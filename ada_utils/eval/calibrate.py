"""Calibrated soft attribution on a benchmark: what calibrators are fitted on, how they are measured per cell,
and their files. The mathematics (AbC's truncated softmax, its loss, the measures) is :mod:`ada_utils.calibration`.

Three fits, all on the training split (never on test queries, exemplars or distractors):

- ``supervised``: AbC's loss on labelled training pairs: each synthetic training image against every real training
  image, its model's exemplars the positives (the only fit that reads ``TrainData.pairs``);
- ``label_free``: the same loss on pseudo-queries whose source is known by construction, with no pair read:
  synthetic training images with their mutual nearest real neighbour as the positive (``mutual``, the default;
  the pairs are found on augmented views and scored on the plain images), and/or the augmented views (``gap``
  recipe) of every real training image, its own plain image the positive (``views``);
- ``fixed``: a plain softmax at a fixed temperature (the uncalibrated control).

Test cells are measured with AbC's gallery: every distractor plus the query's own model's exemplars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ada_utils.calibration import (Calibrator, auroc, expected_calibration_error, fit_calibrator, fixed_temperature,
                                   query_measures, reliability)
from ada_utils.pseudo_pairs import mutual_nn
from ada_utils.data.cells import object_cells, unseen_cells
from ada_utils.encoders.features import BenchmarkFeatures
from ada_utils.eval.statistics import Comparison, paired_bootstrap
from ada_utils.retrieval import unit_rows

if TYPE_CHECKING:
    from ada_utils.train.data import TrainData

FeatureMap = Callable[[np.ndarray], np.ndarray]
FITS = ("supervised", "label_free", "fixed")
PSEUDO_QUERIES = ("views", "mutual", "both")
CALIBRATOR_FILE = "calibrator.pth"


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@dataclass
class ScoreSet:
    """Cosine scores of queries over one gallery (Q, N) and which items are each query's positives."""

    scores: np.ndarray
    positive: np.ndarray

    def capped(self, most: int, seed: int) -> ScoreSet:
        """At most ``most`` queries (a seeded sample, order kept), so the fit's memory stays bounded."""
        if len(self.scores) <= most:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.scores), most, replace=False))
        return ScoreSet(self.scores[keep], self.positive[keep])

    def fit(self, *, init_tau: float) -> Calibrator:
        """:func:`~ada_utils.calibration.fit_calibrator` on this set."""
        return fit_calibrator(torch.from_numpy(self.scores), torch.from_numpy(self.positive), init_tau=init_tau)


def _cosine(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (unit_rows(np.asarray(q, dtype=np.float32)) @ unit_rows(np.asarray(g, dtype=np.float32)).T)


def supervised_set(data: TrainData, real_map: FeatureMap = _identity, synth_map: FeatureMap = _identity
                   ) -> ScoreSet:
    """Each synthetic training image of a labelled pair against every real training image (its model's positive)."""
    if data.pairs is None or data.pair_model is None:
        raise ValueError("the supervised calibrator needs labelled training pairs: "
                         "training_data(..., with_pairs=True) on a root with a training JSON")
    real = np.flatnonzero(data.domain == 0)
    model = np.full(len(data.feats), -1, dtype=np.int64)
    model[data.pairs[:, 0]] = data.pair_model
    model[data.pairs[:, 1]] = data.pair_model
    synth = np.unique(data.pairs[:, 1])
    return ScoreSet(_cosine(synth_map(data.feats[synth]), real_map(data.feats[real])),
                    model[synth][:, None] == model[real][None, :])


def label_free_set(data: TrainData, real_map: FeatureMap = _identity, synth_map: FeatureMap = _identity, *,
                   pseudo: str = "mutual") -> ScoreSet:
    """Pseudo-queries with a source known by construction; reads features, views and domains, never pairs.

    ``views``: each augmented view of a real training image, its plain image the positive. ``mutual``: each
    synthetic training image whose augmented view and a real image's view are mutual nearest neighbours, that
    real image the positive, scored on the plain images. Pairs chosen on the plain images themselves would all
    rank first by construction, and a fit on them learns certainty (a temperature that grows without bound).
    """
    if pseudo not in PSEUDO_QUERIES:
        raise ValueError(f"pseudo={pseudo!r}: choose one of {', '.join(PSEUDO_QUERIES)}")
    real, synth = np.flatnonzero(data.domain == 0), np.flatnonzero(data.domain == 1)
    gallery = real_map(data.feats[real])
    sets = []
    if pseudo in ("views", "both"):
        sets += [ScoreSet(_cosine(real_map(v[real]), gallery), np.eye(len(real), dtype=bool))
                 for v in _views(data, "views")]
    if pseudo in ("mutual", "both") and len(synth):
        queries = synth_map(data.feats[synth])
        for v in _views(data, "mutual"):  # pairs found on the views, scored on the plain images: see the docstring
            pairs = mutual_nn(unit_rows(synth_map(v[synth])), unit_rows(real_map(v[real])))
            positive = np.zeros((len(pairs), len(real)), dtype=bool)
            positive[np.arange(len(pairs)), pairs[:, 1]] = True
            sets.append(ScoreSet(_cosine(queries[pairs[:, 0]], gallery), positive))
    if not sets or not sum(len(s.scores) for s in sets):
        raise ValueError(f"pseudo={pseudo!r} gives no pseudo-query on this training pool")
    return ScoreSet(np.concatenate([s.scores for s in sets]), np.concatenate([s.positive for s in sets]))


def _views(data: TrainData, pseudo: str) -> np.ndarray:
    if data.views is None or len(data.views) == 0:
        raise ValueError(f"pseudo-queries {pseudo!r} need augmented views: TrainData with n_views >= 1")
    return data.views


def fit_three(data: TrainData, real_map: FeatureMap = _identity, synth_map: FeatureMap = _identity, *,
              tau: float = 0.1, pseudo: str = "mutual", most: int = 4096, seed: int = 0) -> dict[str, Calibrator]:
    """The supervised, label-free and fixed-temperature calibrators of one feature space (``tau``: the control's
    temperature and the fits' starting point; ``most`` queries per fit, a seeded sample)."""
    return {"supervised": supervised_set(data, real_map, synth_map).capped(most, seed).fit(init_tau=tau),
            "label_free": label_free_set(data, real_map, synth_map, pseudo=pseudo).capped(most, seed)
            .fit(init_tau=tau),
            "fixed": fixed_temperature(tau)}


def cell_measures(cal: Calibrator, bf: BenchmarkFeatures, real_map: FeatureMap = _identity,
                  synth_map: FeatureMap = _identity, *, chunk: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """Per cell, per query: ``mass``, ``nll``, ``top1``, ``hit`` (:func:`ada_utils.calibration.query_measures`)
    and ``model``, over AbC's gallery (all distractors + the query's own model's exemplars)."""
    dist = unit_rows(real_map(bf.distractors))
    out = {}
    for name, case in bf.cases.items():
        ex, em = unit_rows(real_map(case.exemplars)), case.exemplar_model
        for prompt, q in case.queries.items():
            zq, qm = unit_rows(synth_map(q)), case.query_model[prompt]
            parts = []
            for lo in range(0, len(zq), chunk):
                own = torch.from_numpy(em[None, :] == qm[lo:lo + chunk, None])
                scores = torch.from_numpy(np.concatenate([zq[lo:lo + chunk] @ dist.T, zq[lo:lo + chunk] @ ex.T], 1))
                pad = torch.zeros(len(own), len(dist), dtype=torch.bool)
                parts.append(query_measures(cal, scores, torch.cat([pad, own], 1), torch.cat([~pad, own], 1)))
            out[f"{name}/{prompt}"] = {**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, "model": qm}
    return out


def cell_summary(per_seed: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """Per cell: mean ``mass``, ``nll``, ``top1``, ``accuracy`` (top-1 hit rate), ``ece``, ``auroc`` over seeds."""
    out = {}
    for cell in per_seed[0]:
        rows = [{"mass": m[cell]["mass"].mean(), "nll": m[cell]["nll"].mean(), "top1": m[cell]["top1"].mean(),
                 "accuracy": m[cell]["hit"].mean(), "ece": expected_calibration_error(m[cell]["top1"], m[cell]["hit"]),
                 "auroc": auroc(m[cell]["top1"], m[cell]["hit"])} for m in per_seed]
        out[cell] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return out


def calibration_study(data: TrainData, bf: BenchmarkFeatures, maps: Sequence[tuple[FeatureMap, FeatureMap]], *,
                      tau: float = 0.1, pseudo: str = "mutual", n_boot: int = 2000, seed: int = 0) -> dict:
    """The three fits on every seed's feature maps, measured on every cell, with paired comparisons.

    Returns a JSON-able dict: ``params`` (per seed and fit: ``inv_tau``, ``bias``), ``cells`` (cell -> fit ->
    :func:`cell_summary`), ``reliability`` (cell -> fit -> bins, seeds pooled), ``comparisons`` (NLL of the
    other fits minus label-free's, :class:`~ada_utils.eval.statistics.Comparison` records: ``>`` means
    label-free is better) and ``targets`` (:func:`target_lines`).
    """
    measures: dict[str, list] = {f: [] for f in FITS}
    params = []
    for real_map, synth_map in maps:
        cals = fit_three(data, real_map, synth_map, tau=tau, pseudo=pseudo, seed=seed)
        params.append({f: {"inv_tau": c.inv_tau.item(), "bias": c.bias.item()} for f, c in cals.items()})
        for f, c in cals.items():
            measures[f].append(cell_measures(c, bf, real_map, synth_map))
    cells = list(measures["fixed"][0])
    comparisons = []
    for other in ("fixed", "supervised"):
        for c in cells:
            nll = {f: np.mean([m[c]["nll"] for m in measures[f]], axis=0) for f in (other, "label_free")}
            diff, lo, hi = paired_bootstrap(nll[other], nll["label_free"], measures["fixed"][0][c]["model"],
                                            n_boot=n_boot, seed=seed)
            comparisons.append(Comparison(other, "label_free", c, "NLL", diff, lo, hi))
    summary = {f: cell_summary(measures[f]) for f in FITS}
    study = {"params": params, "cells": {c: {f: summary[f][c] for f in FITS} for c in cells},
             "reliability": {c: {f: reliability(np.concatenate([m[c]["top1"] for m in measures[f]]),
                                                np.concatenate([m[c]["hit"] for m in measures[f]])) for f in FITS}
                             for c in cells},
             "comparisons": [r.record() for r in comparisons], "tau": tau, "pseudo": pseudo, "seeds": len(maps)}
    study["targets"] = target_lines(study)
    return study


def target_lines(study: dict) -> list[str]:
    """The issue's three targets, each stated as met or not with the numbers behind it."""
    cells = study["cells"]
    nll = {c: {f: v["nll"] for f, v in fits.items()} for c, fits in cells.items()}
    beats = [r["cell"] for r in study["comparisons"] if r["b"] == "label_free" and r["a"] == "fixed"
             and Comparison.from_record(r).verdict.value == ">"]
    near = unseen_cells(cells)
    ratio = {c: nll[c]["label_free"] / nll[c]["supervised"] for c in near}
    ece = {c: cells[c]["label_free"]["ece"] for c in object_cells(cells)}
    word = {True: "met", False: "not met"}
    return [
        f"Label-free beats the fixed temperature in NLL (paired bootstrap interval above zero) on {len(beats)} of "
        f"{len(cells)} cells: {word[len(beats) == len(cells)]}.",
        "Label-free NLL within 10 % of the supervised calibrator's on the unseen-object and style cells: "
        f"{word[all(r <= 1.10 for r in ratio.values())]} (ratios "
        + ", ".join(f"`{c}` {r:.2f}" for c, r in ratio.items()) + ").",
        "ECE of the label-free calibrator at most 0.05 on the object cells: "
        f"{word[all(e <= 0.05 for e in ece.values())]} (" + ", ".join(f"`{c}` {e:.3f}" for c, e in ece.items()) + ").",
    ]


def save_calibrator(path: str | Path, cal: Calibrator, meta: dict) -> Path:
    """AbC's file (a state dict with exactly ``inv_tau`` and ``bias``) plus a JSON beside it (``meta``: the
    encoder spec, feature dimension, fit and data it was fitted for, and the record of the file written)."""
    from ada_utils.files import file_record, write_atomic, write_json

    path = Path(path)
    state = {k: v.detach().float().clone() for k, v in cal.state_dict().items()}
    write_atomic(path, lambda fh: torch.save(state, fh))
    write_json(path.with_suffix(".json"), {**meta, "inv_tau": cal.inv_tau.item(), "bias": cal.bias.item(),
                                           "file": file_record(path)})
    return path


def load_calibrator(path: str | Path, *, encoder: dict | None = None, dim: int | None = None
                    ) -> tuple[Calibrator, dict | None]:
    """A calibrator file (ours, or AbC's ``weights/calibrator/<model>_tuned.pth``) and its JSON when there is one.

    ``encoder`` (a spec) and ``dim`` are checked against the JSON; AbC's files have none, so nothing can be checked.
    """
    from ada_utils.eval.released import read_torch_file
    from ada_utils.files import DamagedFileError, check_record, read_json

    path = Path(path)
    side = path.with_suffix(".json")
    meta = read_json(side) if side.is_file() else None
    damage = check_record(path, (meta or {}).get("file"))
    if damage:
        raise DamagedFileError(f"{damage}: fit the calibrator again (--calibrate-on) or delete it")
    obj = read_torch_file(path, "calibrator {'inv_tau': tensor, 'bias': tensor}")
    if not isinstance(obj, dict) or set(map(str, obj)) != {"inv_tau", "bias"}:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not a calibrator: expected exactly the keys ['bias', 'inv_tau'] "
                         f"(weights/calibrator/<model>_tuned.pth), found {found}")
    if not all(isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v).all() for v in obj.values()):
        raise ValueError(f"{path}: inv_tau and bias must be finite scalar tensors")
    cal = Calibrator(float(obj["inv_tau"]), float(obj["bias"]))
    if meta is not None and encoder is not None and meta.get("encoder") != encoder:
        raise ValueError(f"{path}: fitted for encoder {meta.get('encoder', {}).get('name')!r} ({side.name}), not "
                         f"{encoder.get('name')!r} with this spec; fit one for this encoder (--calibrate-on)")
    if meta is not None and dim is not None and meta.get("dim") != dim:
        raise ValueError(f"{path}: fitted on {meta.get('dim')}-dimensional features ({side.name}), but these are "
                         f"{dim}-dimensional; fit one for this encoder (--calibrate-on)")
    return cal, meta
