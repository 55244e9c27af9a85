"""Where the alignment signal comes from (chapter 07): pseudo-pair sources audited against the true pairs, the head
fitted on each, and learning curves over the number of training models.

The closed-form ada head (:func:`ada_utils.closed_form.ada_head`) turns any set of (synthetic, real) positive pairs
into a head on per-domain whitening. Fitting it on each pseudo-pair source of :mod:`ada_utils.pseudo_pairs`, and on
the true training pairs (the labelled ceiling of the same family), separates the two possible limits of the
unsupervised method: the *signal* (how many pseudo-pairs are right) and the *head* (what a linear head makes even of
right pairs). λ is chosen on the validation models for every source, as for every row of chapter 04.

Precision and coverage read the training pairs' model ids: an evaluation-only diagnostic; no fit reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ada_utils import pseudo_pairs as pp
from ada_utils.eval.oracles import Oracle, ada_on_pairs, whitening_maps
from ada_utils.eval.statistics import Comparison, verdict_tally

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.eval.ablation import Ablations
    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData


@dataclass(frozen=True)
class Source:
    """A pseudo-pair source: ``fn`` (:data:`ada_utils.pseudo_pairs.SOURCES`) with its keyword arguments, applied in
    ``space`` ("raw": the encoder's features; "whitened": per-domain whitening of the training pool), then refitted
    ``rounds`` times in the space of the head fitted on the previous round's pairs. ``name`` names its run folder,
    ``label`` its row."""

    name: str
    label: str
    fn: str
    space: str = "whitened"
    rounds: int = 0
    kwargs: tuple = ()

    def make(self, zs: np.ndarray, zr: np.ndarray, seed: int) -> np.ndarray:
        kw = dict(self.kwargs)
        if self.fn == "cluster_match":
            kw.setdefault("seed", seed)
        return pp.SOURCES[self.fn](zs, zr, **kw)


def default_sources(refits: int = 3) -> tuple[Source, ...]:
    """The sources chapter 07 audits (``refits``: rounds of the iterated mutual-NN source)."""
    return (Source("nearest", "nearest neighbour (whitened)", "nearest"),
            Source("mutual_raw", "mutual NN (raw features)", "mutual_nn", space="raw"),
            Source("mutual", "mutual NN (whitened)", "mutual_nn"),
            Source("mutual_refit", f"mutual NN, {refits} refits", "mutual_nn", rounds=refits),
            Source("margin", "margin-filtered, top 30 %", "margin", kwargs=(("keep", 0.3),)),
            Source("k_reciprocal", "k-reciprocal, k = 3", "k_reciprocal", kwargs=(("k", 3),)),
            Source("cluster", "cluster, then match", "cluster_match"),
            Source("sinkhorn", "optimal transport (Sinkhorn)", "sinkhorn"))


@dataclass
class PairFit:
    """One source's pairs, their audit and the head fitted on them (an :class:`Oracle` whose knob is λ)."""

    name: str
    label: str
    audit: dict
    rounds: list[dict]
    head: Oracle

    def record(self) -> dict:
        """One row of the audit table (validation R@5 of the chosen λ; no test cell)."""
        return {"source": self.label, **self.audit, "λ chosen": self.head.choice["lam"],
                "validation R@5": max(r["val_R@5"] for r in self.head.curve),
                "precision by round": [round(r["precision"], 3) for r in self.rounds]}


def row_models(data: TrainData) -> np.ndarray:
    """(N,) model id of every pool row, from the training pairs (-1: in no pair): evaluation only."""
    if data.pairs is None or data.pair_model is None:
        raise ValueError("the pseudo-pair audit scores pairs against the training pairs: build the pool with "
                         "training_data(..., with_pairs=True) from a root with a training JSON")
    model = np.full(len(data.feats), -1, dtype=np.int64)
    model[data.pairs[:, 0]] = data.pair_model
    model[data.pairs[:, 1]] = data.pair_model
    return model


def pool_models(data: TrainData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(synthetic rows, real rows, model of each synthetic row, model of each real row): evaluation only."""
    model = row_models(data)
    synth, real = np.flatnonzero(data.domain == 1), np.flatnonzero(data.domain == 0)
    return synth, real, model[synth], model[real]


def fit_sources(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, *, lams: Sequence[float],
                sources: Sequence[Source], seed: int = 0) -> list[PairFit]:
    """Every source's pairs on the training pool, audited, and the closed-form head fitted on them (λ on validation).

    Iterated sources refit with the λ chosen for their first round and choose λ again at the end.
    """
    from ada_utils.closed_form import ada_head, pair_scatter

    synth, real, synth_model, real_model = pool_models(data)
    real_w, synth_w = whitening_maps(cfg, data)
    white = synth_w(data.feats[synth]).astype(np.float64), real_w(data.feats[real]).astype(np.float64)
    raw = data.feats[synth].astype(np.float64), data.feats[real].astype(np.float64)
    out = []
    for src in sources:
        pairs = src.make(*(raw if src.space == "raw" else white), seed)
        rounds = [pp.audit(pairs, synth_model, real_model)]
        head = _head(cfg, data, val_bf, synth, real, pairs, lams, f"pairs-{src.name}")
        for _ in range(src.rounds):
            w = ada_head(pair_scatter(white[0][pairs[:, 0]], white[1][pairs[:, 1]]), head.choice["lam"])[0]
            pairs = src.make(white[0] @ w.T, white[1] @ w.T, seed)
            rounds.append(pp.audit(pairs, synth_model, real_model))
            head = _head(cfg, data, val_bf, synth, real, pairs, lams, f"pairs-{src.name}")
        out.append(PairFit(src.name, src.label, rounds[-1], rounds, head))
    return out


def _head(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, synth: np.ndarray, real: np.ndarray,
          pairs: np.ndarray, lams: Sequence[float], name: str) -> Oracle:
    if len(pairs) == 0:
        raise ValueError(f"pseudo-pair source {name!r} made no pairs on this training pool")
    rows = np.stack([real[pairs[:, 1]], synth[pairs[:, 0]]], axis=1)  # TrainData.pairs order: (real, synthetic)
    return ada_on_pairs(cfg, data, val_bf, rows, lams=lams, name=name)


def true_pair_fit(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, *, lams: Sequence[float],
                  precision: float = 1.0, seed: int = 0) -> PairFit:
    """The same head on the true training pairs: the ceiling of this head family. With ``precision < 1`` a share
    ``1 − precision`` of them, drawn with ``seed``, get the exemplar of another model instead: pairs of a known
    precision, for the precision sweep (is the head limited by the pairs' precision, or by itself?)."""
    synth, _, _, _ = pool_models(data)
    pairs = data.pairs.copy()
    if precision < 1:
        rng = np.random.default_rng([seed, int(round(precision * 1000))])
        wrong = np.flatnonzero(rng.random(len(pairs)) >= precision)
        reals, owner = np.unique(data.pairs[:, 0], return_index=True)
        models = data.pair_model[owner]
        for i in wrong:  # an exemplar of another model
            others = reals[models != data.pair_model[i]]
            pairs[i, 0] = others[rng.integers(len(others))]
    name = "true_pairs" if precision == 1 else f"true_pairs_p{precision:g}"
    label = "true pairs" if precision == 1 else f"true pairs at precision {precision:g}"
    hit = data.pair_model == row_models(data)[pairs[:, 0]]
    audit = {"pairs": int(len(pairs)), "precision": float(hit.mean()),
             "coverage": float(np.isin(synth, pairs[:, 1]).mean()), "real_used": float(np.isin(
                 np.flatnonzero(data.domain == 0), pairs[:, 0]).mean())}
    head = ada_on_pairs(cfg, data, val_bf, pairs, lams=lams, name=name)
    return PairFit(name, label, audit, [audit], head)


def model_subset(data: TrainData, fraction: float, seed: int) -> TrainData:
    """The pool restricted to the images of a random ``fraction`` of the training models (drawn with ``seed``; all of
    them at 1): a smaller unlabelled training set of the same kind. Unpaired images are kept in the same share."""
    from ada_utils.train.data import subset

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if fraction == 1:
        return data
    models = np.unique(data.pair_model)
    rng = np.random.default_rng([seed, int(round(fraction * 1000))])
    keep = rng.choice(models, size=max(2, int(round(fraction * len(models)))), replace=False)
    model = row_models(data)
    unpaired = np.flatnonzero(model < 0)
    rows = np.union1d(np.flatnonzero(np.isin(model, keep)),
                      rng.choice(unpaired, size=int(round(fraction * len(unpaired))), replace=False))
    return subset(data, rows)


def test_runs(study: Ablations, fits: Sequence[PairFit], seeds: Sequence[int]) -> dict[str, list[dict]]:
    """Each fitted head on the test cells (:meth:`Ablations.oracle_runs`: no random choice, the seeds are equal)."""
    return {f.name: study.oracle_runs(f.head, seeds) for f in fits}


def mean_cells(run: dict, metric: str = "R@5") -> float:
    """Mean of ``metric`` over the cells of one run."""
    return float(np.mean([v[metric] for v in run["cells"].values()]))


@dataclass
class Curve:
    """Learning curve: ``runs[fraction][row]`` = one test run per seed, ``sizes[fraction]`` = (models, images) per
    seed, ``labels[row]`` = the row's label."""

    runs: dict[float, dict[str, list[dict]]]
    sizes: dict[float, list[tuple[int, int]]]
    labels: dict[str, str]

    def table(self) -> pd.DataFrame:
        """Mean R@5 over cells: mean and std over seeds, per fraction and row."""
        rows = []
        for f, by_row in self.runs.items():
            for name, runs in by_row.items():
                v = [mean_cells(r) for r in runs]
                rows.append({"fraction of training models": f, "row": self.labels[name],
                             "models": int(np.mean([m for m, _ in self.sizes[f]])),
                             "images": int(np.mean([n for _, n in self.sizes[f]])), "mean R@5": float(np.mean(v)),
                             "std over seeds": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0})
        return pd.DataFrame(rows).set_index(["fraction of training models", "row"])

    def compared(self) -> dict[str, list[dict]]:
        """The runs keyed ``row@fraction``, for :func:`ada_utils.eval.ablation.compare`."""
        return {f"{name}@{f:g}": runs for f, by_row in self.runs.items() for name, runs in by_row.items()}


def learning_curve(cfg: TrainConfig, study: Ablations, val_bf: BenchmarkFeatures, *, source: Source,
                   fractions: Sequence[float], seeds: Sequence[int], lams: Sequence[float]) -> Curve:
    """Per-domain whitening, the head on ``source``'s pseudo-pairs and the head on the true pairs, each fitted on a
    random share of the training models (a new draw per seed) and evaluated on the test cells.

    At fraction 1 no draw is made and the unlabelled fits read no view, so every seed gets the seed-0 fit.
    """
    from ada_utils.eval.ablation import record_maps

    runs: dict[float, dict[str, list[dict]]] = {}
    sizes: dict[float, list[tuple[int, int]]] = {}
    done: dict[tuple, tuple[dict, tuple[int, int]]] = {}
    for f in fractions:
        runs[f], sizes[f] = {"whiten_pd": [], "pseudo": [], "true_pairs": []}, []
        for s in seeds:
            key = (f, s if f < 1 else 0)
            if key not in done:
                sub = model_subset(study.data_of(key[1]), f, key[1])
                folder = study.out_root / f"curve-{f:g}-seed{key[1]}"
                fits = {"whiten_pd": whitening_maps(cfg, sub),
                        "pseudo": _maps(fit_sources(cfg, sub, val_bf, lams=lams, sources=[source], seed=key[1])[0]),
                        "true_pairs": _maps(true_pair_fit(cfg, sub, val_bf, lams=lams))}
                done[key] = ({k: record_maps(*m, study.bench, folder / k) for k, m in fits.items()},
                             (len(np.unique(sub.pair_model)), len(sub.feats)))
            for k, r in done[key][0].items():
                runs[f][k].append(r)
            sizes[f].append(done[key][1])
    labels = {"whiten_pd": "per-domain whitening", "pseudo": f"head on {source.label}", "true_pairs": "head on true pairs"}
    return Curve(runs, sizes, labels)


def _maps(fit: PairFit) -> tuple:
    return fit.head.real_map, fit.head.synth_map


def precision_figure(fits: Sequence[PairFit], sweep: Sequence[PairFit], test: dict[str, list[dict]],
                     whitening: list[dict], *, title: str) -> plt.Figure:
    """Mean test R@5 of the head fitted on each pair source against the precision of its pairs: the pseudo-pair
    sources as points, the true pairs at known precisions as a line, per-domain whitening as a level."""
    from ada_utils.book.style import METHOD_COLORS

    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    line = sorted(sweep, key=lambda f: f.audit["precision"])
    ax.plot([f.audit["precision"] for f in line], [mean_cells(test[f.name][0]) for f in line], "o-",
            color=METHOD_COLORS.get("ada_true_pairs", "0.3"), label="true pairs mixed with wrong ones (known precision)")
    for f in fits:
        x, y = f.audit["precision"], mean_cells(test[f.name][0])
        ax.plot(x, y, "D", color=METHOD_COLORS.get("ada", "C1"))
        ax.annotate(f.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(np.mean([mean_cells(r) for r in whitening]), color=METHOD_COLORS.get("whiten_pd", "C2"), ls="--",
               label="per-domain whitening (no pairs)")
    ax.plot([], [], "D", color=METHOD_COLORS.get("ada", "C1"), label="pseudo-pair sources (no labels)")
    ax.set(xlabel="precision of the pairs (share joining images of one model; evaluation only)",
           ylabel="mean R@5 over the test cells", title=title)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def curve_figure(curve: Curve, *, title: str) -> plt.Figure:
    """Mean test R@5 (mean ± std over seeds) of each row against the share of the training models it was fitted on."""
    from ada_utils.book.style import METHOD_COLORS

    table = curve.table().reset_index()
    colours = {"whiten_pd": METHOD_COLORS.get("whiten_pd", "C2"), "pseudo": METHOD_COLORS.get("ada", "C1"),
               "true_pairs": METHOD_COLORS.get("ada_true_pairs", "0.3")}
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for name, label in curve.labels.items():
        rows = table[table["row"] == label]
        ax.errorbar(rows["fraction of training models"], rows["mean R@5"], yerr=rows["std over seeds"], marker="o",
                    capsize=3, color=colours[name], label=label)
    ax.set(xlabel="share of the training models fitted on", ylabel="mean R@5 over the test cells")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def needed_precision(sweep: Sequence[PairFit], whitening_val: float, *, margin: float) -> float | None:
    """The lowest swept precision whose head beats per-domain whitening on the *validation* models by ``margin``
    (None when none does): how right the pairs must be for this head to help."""
    for f in sorted(sweep, key=lambda f: f.audit["precision"]):
        if max(r["val_R@5"] for r in f.head.curve) > whitening_val + margin:
            return float(f.audit["precision"])
    return None


def _tally_text(t: dict[str, int]) -> str:
    n = sum(t.values())
    return (f"above in {t['>']} of {n} cells, non-inferior in {t['≥']}, inconclusive in {t['?']}, "
            f"below in {t['<']}")


def findings(best: PairFit, test: dict[str, list[dict]], whitening: list[dict], comparisons: Sequence[Comparison],
             curve: Curve, *, need: float | None, margin: float) -> list[str]:
    """The chapter's conclusion, every number from this build: does the best pseudo-pair head (chosen on validation)
    beat whitening, how far is it from the true-pairs head, and which limit the numbers point to."""
    t_best = verdict_tally(comparisons, best.name, "whiten_pd")
    t_true = verdict_tally(comparisons, "true_pairs", "whiten_pd")
    r_best, r_true = mean_cells(test[best.name][0]), mean_cells(test["true_pairs"][0])
    r_white = float(np.mean([mean_cells(r) for r in whitening]))
    verb = "does not beat" if t_best[">"] == 0 else f"beats, in {t_best['>']} of {sum(t_best.values())} cells,"
    out = [f"Unsupervised alignment {verb} per-domain whitening on this benchmark: the best pseudo-pair source on the "
           f"validation models, {best.label} (precision {best.audit['precision']:.2f}, coverage "
           f"{best.audit['coverage']:.0%} of the synthetic training images), gives a mean R@5 of {r_best:.3f} against "
           f"{r_white:.3f} ({_tally_text(t_best)}; Holm-corrected, margin δ = {margin:g}).",
           f"The same head on the true training pairs gives {r_true:.3f} ({_tally_text(t_true)})."]
    if t_true[">"] == 0:
        out.append("What limits it is the head, not the pairs: even right pairs do not lift this linear head on frozen "
                   "features above whitening in any cell.")
    elif need is not None and best.audit["precision"] < need:
        out.append(f"What limits it is the signal: {best.audit['precision']:.0%} of the best source's pseudo-pairs are "
                   f"right, and on the validation models the head needs pairs about {need:.0%} right before it beats "
                   "whitening.")
    else:
        out.append("Neither the precision of the pairs nor the head alone explains the gap at this scale.")
    gains = {f: mean_cells_gain(by_row) for f, by_row in curve.runs.items()}
    out.append("Fitted on " + ", ".join(f"{f:.0%}" for f in gains) + " of the training models, the true-pairs head "
               "gains " + ", ".join(f"{g['true_pairs']:+.3f}" for g in gains.values()) + " R@5 over whitening and the "
               "pseudo-pair head " + ", ".join(f"{g['pseudo']:+.3f}" for g in gains.values()) + " (means over seeds).")
    return out


def mean_cells_gain(by_row: dict[str, list[dict]]) -> dict[str, float]:
    """Mean over seeds of each row's mean R@5 minus per-domain whitening's."""
    white = np.mean([mean_cells(r) for r in by_row["whiten_pd"]])
    return {k: float(np.mean([mean_cells(r) for r in runs]) - white) for k, runs in by_row.items()}
