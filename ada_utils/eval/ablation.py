"""The ablation study (chapter 04): many variants of one configuration on one set of cached features.

Every variant is trained once (:class:`Ablations` caches it by its full configuration), evaluated with the
official metric per query, and compared with the others by the paired bootstrap over models
(:mod:`ada_utils.eval.statistics`). The validation-split measurements ("why the alignment term adds little")
live here too, so that the chapter holds only parameters, calls and figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ada_utils.data.cells import object_cells, seen_object_cells, style_cells, unseen_cells
from ada_utils.eval.benchmark import cell_means, evaluate, per_query_metrics
from ada_utils.eval.statistics import Comparison, count_satisfied, paired_bootstrap
from ada_utils.files import write_json
from ada_utils.retrieval import FeatureMap
from ada_utils.train.loop import feature_maps, train

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData

METRICS = ("R@5", "R@10", "R@100", "mAP")
# (name in tables, name in per_query_metrics) of the metrics the comparisons bootstrap.
COMPARED = (("R@5", "R@5"), ("mAP", "AP"))


def run_variant(cfg: TrainConfig, data: TrainData, bf: BenchmarkFeatures, out_dir: str | Path, *,
                progress: bool = False) -> dict:
    """Train one variant (replacing any run in ``out_dir``), evaluate it, write ``metrics.json``.

    Returns:
        ``{"cells": evaluate-format metrics, "per_query": per_query_metrics, "seconds": training time,
        "steps": int, "run": the run folder's name}``.
    """
    res = train(cfg, data, out_dir, overwrite=True, progress=progress)
    real_map, synth_map = feature_maps(res.model)
    pq = per_query_metrics(bf, real_map=real_map, synth_map=synth_map)
    cells = cell_means(pq)
    write_json(Path(out_dir) / "metrics.json", {"cells": cells, "config": dataclasses.asdict(cfg),
                                                "train_seconds": res.seconds, "steps": res.steps})
    return {"cells": cells, "per_query": pq, "seconds": res.seconds, "steps": res.steps, "run": Path(out_dir).name}


def summary_row(res: dict) -> dict[str, float]:
    """One ablation-table row: mean R@5 over object cells and over style cells, mean mAP, training seconds."""
    cells = res["cells"]
    return {"R@5 objects": float(np.mean([cells[c]["R@5"] for c in object_cells(cells)])),
            "R@5 styles": float(np.mean([cells[c]["R@5"] for c in style_cells(cells)])),
            "mAP all": float(np.mean([v["mAP"] for v in cells.values()])), "train s": res["seconds"]}


@dataclass
class Ablations:
    """Variants of ``base`` on one training pool and one benchmark; each configuration is trained once.

    Runs go to ``out_root/<name>-seed<k>/`` (config, weights, ``metrics.json``).
    """

    base: TrainConfig
    data: TrainData
    bench: BenchmarkFeatures
    out_root: Path
    done: dict[tuple, dict] = field(default_factory=dict, repr=False)

    def run(self, name: str, *, seed: int | None = None, **overrides: Any) -> dict:
        """Train + evaluate ``base`` with ``overrides`` (cached by the full configuration: a configuration met
        again under another name keeps its first run folder, named in the result's ``run``); see run_variant."""
        cfg = dataclasses.replace(self.base, seed=self.base.seed if seed is None else seed, **overrides)
        key = tuple(sorted(dataclasses.asdict(cfg).items()))
        if key not in self.done:
            self.done[key] = run_variant(cfg, self.data, self.bench, self.out_root / f"{name}-seed{cfg.seed}")
        return self.done[key]

    def table(self, axes: dict[str, dict[str, dict[str, Any]]]) -> pd.DataFrame:
        """One row per (axis, variant): each variant's overrides run once, summarised by :func:`summary_row`."""
        rows = []
        for axis, variants in axes.items():
            for label, overrides in variants.items():
                res = self.run(f"{axis.replace(' ', '_')}-{label.replace('/', '_')}", **overrides)
                rows.append({"axis": axis, "variant": label, **summary_row(res)})
        return pd.DataFrame(rows).set_index(["axis", "variant"])

    def final(self, methods: Sequence[str], seeds: Sequence[int], controls: dict[str, dict]) -> dict[str, list]:
        """Every method at every seed (``controls`` give a method's overrides; default ``{"method": m}``)."""
        return {m: [self.run(f"final-{m}", seed=s, **controls.get(m, {"method": m})) for s in seeds]
                for m in methods}


def seed_summary(runs: list[dict], cells: Sequence[str]) -> dict[str, dict]:
    """``{"mean": {cell: {metric: ...}}, "std": {...}}`` over seeds of one method's runs."""
    return {stat: {c: {k: float(fn([r["cells"][c][k] for r in runs])) for k in METRICS} for c in cells}
            for stat, fn in (("mean", np.mean), ("std", np.std))}


def seed_mean(runs: list[dict], cell: str, metric: str) -> np.ndarray:
    """(Q,) per-query ``metric`` on ``cell``, averaged over the runs (seeds)."""
    return np.mean([r["per_query"][cell][metric] for r in runs], axis=0)


def compare(final: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], cells: Sequence[str], *,
            n_boot: int = 2000) -> list[Comparison]:
    """Paired bootstrap over models of A − B for every pair, cell and compared metric (seed means per query)."""
    out = []
    for a, b in pairs:
        for c in cells:
            for metric, key in COMPARED:
                diff, lo, hi = paired_bootstrap(seed_mean(final[a], c, key), seed_mean(final[b], c, key),
                                                final[a][0]["per_query"][c]["model"], n_boot=n_boot, seed=0)
                out.append(Comparison(a, b, c, metric, diff, lo, hi))
    return out


def fitted_maps(cfg: TrainConfig, train_on: TrainData, out_dir: Path) -> tuple[FeatureMap, FeatureMap]:
    """(real_map, synth_map) of a head fitted on ``train_on`` (training images only), run in ``out_dir``."""
    return feature_maps(train(cfg, train_on, out_dir, overwrite=True, progress=False).model)


def mean_r5(bf: BenchmarkFeatures, real_map: FeatureMap, synth_map: FeatureMap) -> float:
    """Mean R@5 over the cells of ``bf`` under the given maps."""
    return float(np.mean([v["R@5"] for v in evaluate(bf, real_map=real_map, synth_map=synth_map).values()]))


@dataclass
class Validation:
    """The validation-split measurements of chapter 04, as tables (see :func:`validation_study`)."""

    lam_path: pd.DataFrame  # columns lam, transductive, held out (mean R@5 of the λ path)
    whitening: dict[str, float]  # per-domain whitening, fitted transductively / held out
    oracle: pd.DataFrame  # columns k, "oracle rotation, held out"

    def record(self) -> dict:
        """The JSON form written to the chapter's summary."""
        return {"lam_path": self.lam_path.to_dict(orient="list"), "whitening": self.whitening,
                "oracle_rotation": self.oracle.to_dict(orient="list")}


def validation_study(base: TrainConfig, data: TrainData, held_out: TrainData, val_bf: BenchmarkFeatures,
                     out_dir: Path, *, lams: Sequence[float], ks: Sequence[int]) -> Validation:
    """λ path and per-domain whitening fitted transductively vs held out, and oracle rotations (labelled pairs).

    Args:
        base: the closed-form ada configuration. data: the whole training pool (transductive fits);
        held_out: the pool without the validation models' images; val_bf: the validation benchmark
        (:func:`ada_utils.train.data.validation_split`). out_dir: scratch run folder.
        lams: λ values of the path. ks: dimensions of the oracle rotation's subspace.
    """
    from ada_utils.closed_form import subspace_procrustes

    fit = {"transductive": data, "held out": held_out}
    path = pd.DataFrame([{"lam": lam, **{name: mean_r5(val_bf, *fitted_maps(dataclasses.replace(base, lam=lam),
                                                                              pool, out_dir))
                                         for name, pool in fit.items()}} for lam in lams])
    white_cfg = dataclasses.replace(base, method="whiten", cov_mode="per_domain")
    real_w, synth_w = fitted_maps(white_cfg, held_out, out_dir)  # fitted once, reused by the oracle rotations
    whitening = {"transductive": mean_r5(val_bf, *fitted_maps(white_cfg, data, out_dir)),
                 "held out": mean_r5(val_bf, real_w, synth_w)}
    u_real = real_w(held_out.feats[held_out.pairs[:, 0]])
    u_synth = synth_w(held_out.feats[held_out.pairs[:, 1]])
    pooled = np.vstack([u_real, u_synth]).astype(np.float64)
    basis = np.linalg.svd(pooled - pooled.mean(0), full_matrices=False)[2]
    oracle = []
    for k in ks:
        rot = subspace_procrustes(u_synth, u_real, basis[:k]).astype(np.float32)
        oracle.append({"k": k, "oracle rotation, held out": mean_r5(val_bf, real_w,
                                                                    lambda x, r=rot: synth_w(x) @ r.T)})
    return Validation(path, whitening, pd.DataFrame(oracle))


def _fraction(comparisons: list[Comparison], a: str, b: str, cells: list[str], metric: str, claim: str) -> str:
    good, total = count_satisfied(comparisons, a, b, cells, metric, claim)
    return f"{good}/{total}"


def target_lines(comparisons: list[Comparison], cells: list[str], why: Validation) -> list[str]:
    """The chapter's generated summary: how many cells meet each target of the method, and the validation split."""
    def f(a: str, b: str, cells_: list[str], claim: str, metric: str = "R@5") -> str:
        return _fraction(comparisons, a, b, cells_, metric, claim)

    lam, white = why.lam_path, why.whitening
    best_t = lam["transductive"].idxmax()
    oracle = ", ".join(f"{v:.3f} (k = {k})" for k, v in zip(why.oracle["k"], why.oracle.iloc[:, 1]))
    return [
        f"- ada > pretrained (R@5): {f('ada', 'pretrained', cells, '>')} cells; "
        f"mAP: {f('ada', 'pretrained', cells, '>', 'mAP')}.",
        f"- ada ≥ whitening (R@5): {f('ada', 'whiten', cells, '≥')} cells; "
        f"ada > whitening on object cells: {f('ada', 'whiten', object_cells(cells), '>')}; "
        f"ada ≥ per-domain whitening: {f('ada', 'whiten_pd', cells, '≥')} cells, "
        f"ada > per-domain whitening: {f('ada', 'whiten_pd', cells, '>')}.",
        f"- ada > alignment only: {f('ada', 'align', cells, '>')}; "
        f"ada > disentanglement only: {f('ada', 'disentangle', cells, '>')} cells (R@5).",
        f"- ada ≥ supervised on unseen-object and style cells (R@5): "
        f"{f('ada', 'supervised', unseen_cells(cells), '≥')}; supervised > pretrained on seen-object "
        f"cells: {f('supervised', 'pretrained', seen_object_cells(cells), '>')}.",
        f"- Validation split (mean R@5): at λ = {lam.loc[best_t, 'lam']:g}, the best λ when fitting transductively, "
        f"the head scores {lam.loc[best_t, 'transductive']:.3f} vs whitening's {white['transductive']:.3f}; "
        f"fitted held out it scores {lam.loc[best_t, 'held out']:.3f} vs {white['held out']:.3f}; best held-out λ: "
        f"{lam.loc[lam['held out'].idxmax(), 'lam']:g} ({lam['held out'].max():.3f}). The oracle rotation fitted "
        f"with labelled pairs scores {oracle} vs whitening's {white['held out']:.3f}.",
    ]
