"""The ablation study (chapter 04): many variants of one configuration on one set of cached features.

Every variant is trained once (:class:`Ablations` caches it by its full configuration), evaluated with the
official metric per query, and compared with the others by the paired bootstrap over models
(:mod:`ada_utils.eval.statistics`). The validation-split measurements ("why the alignment term adds little")
live here too, so that the chapter holds only parameters, calls and figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ada_utils.data.cells import object_cells, seen_object_cells, style_cells, unseen_cells
from ada_utils.eval.benchmark import cell_means, evaluate, per_query_metrics
from ada_utils.eval.oracles import Oracle
from ada_utils.eval.statistics import MARGIN, Comparison, compare_means, holm, verdict_tally
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
                validation: BenchmarkFeatures | None = None, progress: bool = False) -> dict:
    """Train one variant (replacing any run in ``out_dir``), evaluate it, write ``metrics.json``.

    A gradient-trained variant stops early on ``validation`` (the validation models of the training split).

    Returns:
        ``{"cells": evaluate-format metrics, "per_query": per_query_metrics, "seconds": training time,
        "steps": steps run, "run": the run folder's name, "stopping": the stopping record}``.
    """
    from ada_utils.files import read_json

    res = train(cfg, data, out_dir, overwrite=True, progress=progress, validation=validation)
    header = read_json(Path(out_dir) / "config.json")
    out = record_maps(*feature_maps(res.model), bf, out_dir, seconds=res.seconds, steps=res.steps,
                      extra={"config": dataclasses.asdict(cfg), "stopping": header.get("stopping", {})})
    return {**out, "fit": header.get("fit", {})}


def record_maps(real_map: FeatureMap, synth_map: FeatureMap, bf: BenchmarkFeatures, out_dir: str | Path, *,
                seconds: float = 0.0, steps: int = 0, extra: dict | None = None) -> dict:
    """Evaluate fixed maps per query, write ``out_dir/metrics.json``; the result format of :func:`run_variant`."""
    pq = per_query_metrics(bf, real_map=real_map, synth_map=synth_map)
    cells = cell_means(pq)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "metrics.json", {"cells": cells, "train_seconds": seconds, "steps": steps,
                                                **(extra or {})})
    return {"cells": cells, "per_query": pq, "seconds": seconds, "steps": steps, "run": Path(out_dir).name,
            "stopping": (extra or {}).get("stopping", {})}


def summary_row(res: dict) -> dict[str, float]:
    """One ablation-table row: mean R@5 over object cells and over style cells, mean mAP, training seconds."""
    cells = res["cells"]
    return {"R@5 objects": float(np.mean([cells[c]["R@5"] for c in object_cells(cells)])),
            "R@5 styles": float(np.mean([cells[c]["R@5"] for c in style_cells(cells)])),
            "mAP all": float(np.mean([v["mAP"] for v in cells.values()])), "steps": res["steps"],
            "step kept": (res.get("stopping") or {}).get("best_step"),
            "train s": res["seconds"]}


@dataclass
class SplitPools:
    """The training pool of each data seed, without the validation models' images, and the validation benchmark.

    Seeds vary every random choice: a seed's pool carries augmented views drawn with that data seed (each view set
    is embedded once and cached). The validation benchmark reads plain images only, so it is the same for every
    seed; ``full`` is the seed-0 pool *with* the validation models (for the transductive comparison only).
    """

    encoder: Any
    root: Path
    n_views: int
    augment: str
    pool: str = "auto"
    pools: dict[int, TrainData] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from ada_utils.train.data import validation_split

        self.full = self._embed(0)
        self.validation, self.pools[0] = validation_split(self.root, self.full)

    def _embed(self, seed: int) -> TrainData:
        from ada_utils.train.data import training_data

        return training_data(self.encoder, self.root, n_views=self.n_views, augment=self.augment, seed=seed,
                             with_pairs=True, pool=self.pool)

    def __call__(self, seed: int) -> TrainData:
        if seed not in self.pools:
            from ada_utils.train.data import validation_split

            self.pools[seed] = validation_split(self.root, self._embed(seed))[1]
        return self.pools[seed]


@dataclass
class Ablations:
    """Variants of ``base`` on one benchmark; each configuration is trained once.

    ``data_of(seed)`` gives the training pool of a seed (its augmented views drawn with that data seed, the
    validation models removed), ``validation`` the validation benchmark every gradient run stops on. Runs go to
    ``out_root/<name>-seed<k>/`` (config, weights, validation curve, ``metrics.json``).
    """

    base: TrainConfig
    data_of: Callable[[int], TrainData]
    bench: BenchmarkFeatures
    out_root: Path
    validation: BenchmarkFeatures | None = None
    done: dict[tuple, dict] = field(default_factory=dict, repr=False)

    def run(self, name: str, *, seed: int | None = None, **overrides: Any) -> dict:
        """Train + evaluate ``base`` with ``overrides`` (cached by the full configuration: a configuration met
        again under another name keeps its first run folder, named in the result's ``run``); see run_variant."""
        cfg = dataclasses.replace(self.base, seed=self.base.seed if seed is None else seed, **overrides)
        key = tuple(sorted(dataclasses.asdict(cfg).items()))
        if key not in self.done:
            self.done[key] = run_variant(cfg, self.data_of(cfg.seed), self.bench,
                                         self.out_root / f"{name}-seed{cfg.seed}", validation=self.validation)
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

    def oracle_runs(self, oracle: Oracle, seeds: Sequence[int]) -> list[dict]:
        """A labelled ceiling's test-cell result, once per seed (it has no random choice: the seeds are equal)."""
        res = record_maps(oracle.real_map, oracle.synth_map, self.bench, self.out_root / f"final-{oracle.name}",
                          extra={"choice": oracle.choice, "validation_curve": oracle.curve})
        return [res for _ in seeds]


def seed_summary(runs: list[dict], cells: Sequence[str]) -> dict[str, dict]:
    """``{"mean": {cell: {metric: ...}}, "std": {...}}`` over seeds of one method's runs."""
    return {stat: {c: {k: float(fn([r["cells"][c][k] for r in runs])) for k in METRICS} for c in cells}
            for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0))}


def seed_mean(runs: list[dict], cell: str, metric: str) -> np.ndarray:
    """(Q,) per-query ``metric`` on ``cell``, averaged over the runs (seeds)."""
    return np.mean([r["per_query"][cell][metric] for r in runs], axis=0)


def compare(final: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], cells: Sequence[str], *,
            n_boot: int = 2000, margin: float = MARGIN) -> list[Comparison]:
    """Paired bootstrap over models of A − B for every pair, cell and compared metric (seed means per query, the
    variance over seeds added: :func:`ada_utils.eval.statistics.compare_means`), Holm-corrected over the whole
    table (:func:`ada_utils.eval.statistics.holm`), margin δ = ``margin``."""
    out = []
    for a, b in pairs:
        if len(final[a]) != len(final[b]):
            raise ValueError(f"compare: {a!r} has {len(final[a])} seeds and {b!r} {len(final[b])}; compare runs of "
                             "the same seeds (the variance over seeds pairs them)")
        for c in cells:
            for metric, key in COMPARED:
                per_seed = [float(np.mean(ra["per_query"][c][key]) - np.mean(rb["per_query"][c][key]))
                            for ra, rb in zip(final[a], final[b])]
                out.append(compare_means(a, b, c, metric, seed_mean(final[a], c, key), seed_mean(final[b], c, key),
                                         final[a][0]["per_query"][c]["model"], n_boot=n_boot, seed=0,
                                         margin=margin, seed_diffs=per_seed))
    return holm(out)


def fitted_maps(cfg: TrainConfig, train_on: TrainData, out_dir: Path) -> tuple[FeatureMap, FeatureMap]:
    """(real_map, synth_map) of a head fitted on ``train_on`` (training images only), run in ``out_dir``."""
    return feature_maps(train(cfg, train_on, out_dir, overwrite=True, progress=False).model)


def mean_r5(bf: BenchmarkFeatures, real_map: FeatureMap, synth_map: FeatureMap) -> float:
    """Mean R@5 over the cells of ``bf`` under the given maps."""
    return float(np.mean([v["R@5"] for v in evaluate(bf, real_map=real_map, synth_map=synth_map).values()]))


@dataclass
class Validation:
    """The validation-split measurements of chapter 04 (see :func:`validation_study`)."""

    lam_path: pd.DataFrame  # columns lam, transductive, held out (mean validation R@5 of the closed-form head)
    whitening: dict[str, float]  # per-domain whitening, fitted transductively / held out
    lam: float  # λ chosen: the argmax of the held-out column (first of equals)

    def record(self) -> dict:
        """The JSON form written to the chapter's summary."""
        return {"lam_path": self.lam_path.to_dict(orient="list"), "whitening": self.whitening, "lam": self.lam}


def validation_study(base: TrainConfig, data: TrainData, held_out: TrainData, val_bf: BenchmarkFeatures,
                     out_dir: Path, *, lams: Sequence[float]) -> Validation:
    """The λ search of the closed-form head on the validation split, fitted transductively and held out.

    Args:
        base: the closed-form ada configuration. data: the whole training pool (transductive fits: the
            validation images are among the fitted ones); held_out: the pool without the validation models'
            images (what every method of the chapter is fitted on); val_bf: the validation benchmark
            (:func:`ada_utils.train.data.validation_split`). out_dir: scratch run folder. lams: λ values searched.

    Returns:
        The path, per-domain whitening's scores, and the chosen λ = argmax of the held-out path.
    """
    fit = {"transductive": data, "held out": held_out}
    path = pd.DataFrame([{"lam": lam, **{name: mean_r5(val_bf, *fitted_maps(dataclasses.replace(base, lam=lam),
                                                                              pool, out_dir))
                                         for name, pool in fit.items()}} for lam in lams])
    white_cfg = dataclasses.replace(base, method="whiten", cov_mode="per_domain")
    whitening = {name: mean_r5(val_bf, *fitted_maps(white_cfg, pool, out_dir)) for name, pool in fit.items()}
    return Validation(path, whitening, float(path.loc[path["held out"].idxmax(), "lam"]))


def _tally(comparisons: list[Comparison], a: str, b: str, cells: list[str], metric: str = "R@5") -> str:
    """"A > B in n, A ≥ B in n, inconclusive in n, A < B in n (of m cells)" for the comparisons of A vs B."""
    counts = verdict_tally(comparisons, a, b, cells, metric)
    words = {">": f"{a} > {b}", "≥": f"{a} ≥ {b}", "?": "inconclusive", "<": f"{a} < {b}"}
    return ", ".join(f"{words[k]} in {n}" for k, n in counts.items() if n) + f" (of {sum(counts.values())} cells)"


def target_lines(comparisons: list[Comparison], cells: list[str], why: Validation, *, margin: float = MARGIN,
                 stopping: dict[str, list[dict]] | None = None) -> list[str]:
    """The chapter's generated summary: each comparison's verdicts per group of cells, the stopping of the
    gradient rows (which kept their starting weights) and the validation split."""
    present = {(c.a, c.b) for c in comparisons}
    groups = {"all cells": cells, "object cells": object_cells(cells), "style cells": style_cells(cells)}
    lines = [f"Verdicts on R@5 (Holm-corrected over the {len(comparisons)} comparisons of the table, non-inferiority "
             f"margin δ = {margin:g}; an inconclusive cell is never counted as a win):"]
    for a, b in dict.fromkeys((c.a, c.b) for c in comparisons):
        parts = "; ".join(f"{g}: {_tally(comparisons, a, b, cs)}" for g, cs in groups.items() if cs)
        lines.append(f"- `{a}` vs `{b}`: {parts}.")
    if ("supervised", "pretrained") in present:
        lines.append(f"- The supervised baseline against the pretrained features on the seen-object cells (where it "
                     f"must win): {_tally(comparisons, 'supervised', 'pretrained', seen_object_cells(cells))}.")
    for m, records in (stopping or {}).items():
        kept = [r.get("best_step") for r in records if r.get("best_step") is not None]
        if kept:
            at_start = sum(k == 0 for k in kept)
            lines.append(f"- `{m}` kept the step with the best validation R@5: steps {kept} of budgets "
                         f"{[r.get('budget_steps') for r in records]}"
                         + (f"; {at_start} of {len(kept)} seeds kept the starting weights (no step improved on "
                            "validation)" if at_start else "") + ".")
    lam, white = why.lam_path, why.whitening
    at = lam.loc[lam["lam"] == why.lam].iloc[0]
    lines.append(f"- Validation split (mean R@5, one split, no interval): λ = {why.lam:g} is chosen, the argmax of "
                 f"the held-out search over {', '.join(f'{v:g}' for v in lam['lam'])}; there the head scores "
                 f"{at['held out']:.3f} against per-domain whitening's {white['held out']:.3f} held out (a difference "
                 f"of {at['held out'] - white['held out']:+.3f}), and {at['transductive']:.3f} vs "
                 f"{white['transductive']:.3f} when the validation images are among the fitted ones.")
    return lines
