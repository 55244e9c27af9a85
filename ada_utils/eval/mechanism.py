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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

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
    pool_rows: np.ndarray  # (P, 2) pool rows (real, synthetic) of the pairs, the order of TrainData.pairs

    @property
    def val_r5(self) -> float:
        """Validation R@5 of the head at the λ it chose."""
        return max(r["val_R@5"] for r in self.head.curve)

    def record(self) -> dict:
        """One row of the audit table (validation R@5 of the chosen λ; no test cell)."""
        return {"source": self.label, **self.audit, "λ chosen": self.head.choice["lam"],
                "validation R@5": self.val_r5,
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
                sources: Sequence[Source], seed: int = 0, whitening: tuple | None = None) -> list[PairFit]:
    """Every source's pairs on the training pool, audited, and the closed-form head fitted on them (λ on validation).

    Iterated sources refit with the λ chosen for their first round and choose λ again at the end. ``whitening``:
    the pool's :func:`whitening_maps` (fitted here when None).
    """
    from ada_utils.closed_form import ada_head, pair_scatter

    synth, real, synth_model, real_model = pool_models(data)
    real_w, synth_w = whitening or whitening_maps(cfg, data)
    white = synth_w(data.feats[synth]).astype(np.float64), real_w(data.feats[real]).astype(np.float64)
    raw = data.feats[synth].astype(np.float64), data.feats[real].astype(np.float64)
    out = []
    for src in sources:
        pairs = src.make(*(raw if src.space == "raw" else white), seed)
        rounds = [pp.audit(pairs, synth_model, real_model)]
        rows = _pool_rows(synth, real, pairs, src.name)
        head = ada_on_pairs(cfg, data, val_bf, rows, lams=lams, name=f"pairs-{src.name}",
                            whitening=(real_w, synth_w))
        for _ in range(src.rounds):
            w = ada_head(pair_scatter(white[0][pairs[:, 0]], white[1][pairs[:, 1]]), head.choice["lam"])[0]
            pairs = src.make(white[0] @ w.T, white[1] @ w.T, seed)
            rounds.append(pp.audit(pairs, synth_model, real_model))
            rows = _pool_rows(synth, real, pairs, src.name)
            head = ada_on_pairs(cfg, data, val_bf, rows, lams=lams, name=f"pairs-{src.name}",
                                whitening=(real_w, synth_w))
        out.append(PairFit(src.name, src.label, rounds[-1], rounds, head, rows))
    return out


def _pool_rows(synth: np.ndarray, real: np.ndarray, pairs: np.ndarray, name: str) -> np.ndarray:
    """(P, 2) pool rows (real, synthetic), the order of ``TrainData.pairs``, of a source's (synthetic, real) pairs."""
    if len(pairs) == 0:
        raise ValueError(f"pseudo-pair source {name!r} made no pairs on this training pool")
    return np.stack([real[pairs[:, 1]], synth[pairs[:, 0]]], axis=1)


def true_pair_fit(cfg: TrainConfig, data: TrainData, val_bf: BenchmarkFeatures, *, lams: Sequence[float],
                  precision: float = 1.0, seed: int = 0, whitening: tuple | None = None) -> PairFit:
    """The same head on the true training pairs: the ceiling of this head family. With ``precision < 1`` a share
    ``1 − precision`` of them, drawn with ``seed``, get the exemplar of another model instead: pairs of a known
    precision, for the precision sweep (is the head limited by the pairs' precision, or by itself?)."""
    synth, real, synth_model, real_model = pool_models(data)
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
    # pool rows (real, synthetic) -> positions (synthetic, real) among the pool's synthetic and real rows
    positions = np.stack([np.searchsorted(synth, pairs[:, 1]), np.searchsorted(real, pairs[:, 0])], axis=1)
    audit = pp.audit(positions, synth_model, real_model)
    head = ada_on_pairs(cfg, data, val_bf, pairs, lams=lams, name=name, whitening=whitening)
    return PairFit(name, label, audit, [audit], head, pairs)


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
                white = whitening_maps(cfg, sub)
                fits = {"whiten_pd": white, "pseudo": _maps(fit_sources(cfg, sub, val_bf, lams=lams, sources=[source],
                                                                        seed=key[1], whitening=white)[0]),
                        "true_pairs": _maps(true_pair_fit(cfg, sub, val_bf, lams=lams, whitening=white))}
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
        if f.val_r5 > whitening_val + margin:
            return float(f.audit["precision"])
    return None


def _tally_text(t: dict[str, int]) -> str:
    n = sum(t.values())
    return (f"above in {t['>']} of {n} cells, non-inferior in {t['≥']}, inconclusive in {t['?']}, "
            f"below in {t['<']}")


def findings(best: PairFit, test: dict[str, list[dict]], whitening: list[dict], comparisons: Sequence[Comparison],
             curve: Curve, *, need: float | None, margin: float, gradient: dict[str, str] | None = None) -> list[str]:
    """The chapter's conclusion, every number from this build: does the head on ``best``'s pseudo-pairs (a source
    fixed in advance) beat whitening, how far is it from the true-pairs head, what gradient-trained heads (``gradient``: run name ->
    label, their runs in ``test``) make of the same pairs, and which limit the numbers point to."""
    t_best = verdict_tally(comparisons, best.name, "whiten_pd")
    t_true = verdict_tally(comparisons, "true_pairs", "whiten_pd")
    r_best, r_true = mean_cells(test[best.name][0]), mean_cells(test["true_pairs"][0])
    r_white = float(np.mean([mean_cells(r) for r in whitening]))
    verb = "does not beat" if t_best[">"] == 0 else f"beats, in {t_best['>']} of {sum(t_best.values())} cells,"
    out = [f"Unsupervised alignment {verb} per-domain whitening on this benchmark: the closed-form head on the "
           f"pseudo-pairs of {best.label}, the source fixed in advance (precision {best.audit['precision']:.2f}, coverage "
           f"{best.audit['coverage']:.0%} of the synthetic training images), gives a mean R@5 of {r_best:.3f} against "
           f"{r_white:.3f} ({_tally_text(t_best)}; Holm-corrected, margin δ = {margin:g}).",
           f"The same head on the true training pairs gives {r_true:.3f} ({_tally_text(t_true)})."]
    for name, label in (gradient or {}).items():
        out.append(f"Trained by gradient on the same pseudo-pairs (InfoNCE plus the Infomax term, early-stopped on "
                   f"validation), {label} gives {np.mean([mean_cells(r) for r in test[name]]):.3f} "
                   f"({_tally_text(_against_whitening(comparisons, name))} against whitening"
                   f"{_kept(test[name])}).")
    out.append(_limit(comparisons, best, test, need=need, margin=margin))
    gains = {f: mean_cells_gain(by_row) for f, by_row in curve.runs.items()}
    out.append("Fitted on " + ", ".join(f"{f:.0%}" for f in gains) + " of the training models, the true-pairs head "
               "gains " + ", ".join(f"{g['true_pairs']:+.3f}" for g in gains.values()) + " R@5 over whitening and the "
               "pseudo-pair head " + ", ".join(f"{g['pseudo']:+.3f}" for g in gains.values()) + " (means over seeds).")
    return out


def _limit(comparisons: Sequence[Comparison], best: PairFit, test: dict[str, list[dict]], *, need: float | None,
           margin: float) -> str:
    """Which limit the verdicts point to. The value of right pairs is measured with the head and the pair count held
    fixed (true pairs against the same pairs at precision 0); a missing win is never read as a proof of no effect."""
    value = verdict_tally(comparisons, "true_pairs", "true_pairs_p0")
    head = verdict_tally(comparisons, "true_pairs", "whiten_pd")
    gap = verdict_tally(comparisons, best.name, "true_pairs")
    right = mean_cells(test["true_pairs"][0]) - mean_cells(test["true_pairs_p0"][0]) if "true_pairs_p0" in test else None
    said = "" if right is None else (f"Right pairs against as many wrong ones, same head: {right:+.3f} mean R@5 "
                                     f"({_tally_text(value)}). ")
    if value[">"] and gap["<"]:
        return said + (f"The numbers point to the signal: right pairs help in {value['>']} cells, and the best "
                       f"pseudo-pairs ({best.audit['precision']:.0%} right) fall below right ones in {gap['<']}.")
    if head[">"] == 0 and value[">"] == 0:
        size = ("" if right is None else f"; their mean difference, {right:+.3f}, is within δ = {margin:g}"
                if abs(right) < margin else f"; their mean difference, {right:+.3f}, is larger than δ = {margin:g} but "
                "not resolved cell by cell with this many models")
        need_text = "" if need is None else (f". On the validation models even pairs {need:.0%} right score above "
                                             "whitening, so the validation split cannot tell precision apart either")
        return said + (f"At this scale the measurements cannot separate signal from head: with this head, right pairs "
                       f"beat neither wrong pairs nor whitening in any cell after Holm{size}{need_text}.")
    if head[">"] == 0:
        return said + "The numbers point to the head: right pairs do not lift it above whitening in any cell."
    return said + "Neither the precision of the pairs nor the head alone explains the gap at this scale."


def _against_whitening(comparisons: Sequence[Comparison], name: str) -> dict[str, int]:
    """The verdict tally of ``name`` against per-domain whitening (on the same seeds: ``whiten_pd`` or, for rows run
    on fewer seeds, ``whiten_pd_ft``)."""
    for baseline in ("whiten_pd", "whiten_pd_ft"):
        tally = verdict_tally(comparisons, name, baseline)
        if sum(tally.values()):
            return tally
    return tally


def _kept(runs: list[dict]) -> str:
    """What early stopping kept, in words: a run whose validation R@5 never rose kept its start."""
    kept = [(r.get("stopping") or {}).get("best_step") for r in runs]
    if all(k == 0 for k in kept):
        return ("; its validation R@5 never rose above the start, so early stopping kept step 0 of every seed, the "
                "per-domain whitening it starts from")
    return "; steps kept per seed: " + ", ".join(str(k) for k in kept)


def mean_cells_gain(by_row: dict[str, list[dict]]) -> dict[str, float]:
    """Mean over seeds of each row's mean R@5 minus per-domain whitening's."""
    white = np.mean([mean_cells(r) for r in by_row["whiten_pd"]])
    return {k: float(np.mean([mean_cells(r) for r in runs]) - white) for k, runs in by_row.items()}


def with_positives(data: TrainData, pairs: np.ndarray) -> TrainData:
    """``data`` with fixed positives from ``pairs`` ((P, 2) pool rows (real, synthetic), as ``TrainData.pairs``):
    each synthetic image's real partner, and each paired real image's first synthetic partner (the NNCLR-style
    positive of ``alignment="pairs"``)."""
    pos = np.full(len(data.feats), -1, dtype=np.int64)
    pos[pairs[:, 1]] = pairs[:, 0]
    first = np.unique(pairs[:, 0], return_index=True)[1]
    pos[pairs[first, 0]] = pairs[first, 1]
    return dataclasses.replace(data, positives=pos)


@dataclass
class PairedPools:
    """``pools(seed)`` (a seed's training pool, e.g. :class:`ada_utils.eval.ablation.SplitPools`) with the fixed
    positives of ``pairs`` ((P, 2) pool rows (real, synthetic)); every seed's pool has the same rows, only its views
    differ."""

    pools: Callable[[int], TrainData]
    pairs: np.ndarray

    def __call__(self, seed: int) -> TrainData:
        return with_positives(self.pools(seed), self.pairs)


@dataclass
class Activations:
    """The cached inputs of the encoder's last ``k`` blocks: the training pool without the validation models
    (``fit``), the validation benchmark (``validation``) and the test cells (``bench``), for the fine-tuned-block rows.
    ``megabytes`` is what the cache holds (float32)."""

    k: int
    fit: TrainData
    validation: BenchmarkFeatures
    bench: BenchmarkFeatures
    megabytes: float


def cache_activations(encoder: torch.nn.Module, root: Path, *, k: int, n_views: int, augment: str, seed: int,
                      pool: str, distractors: int | None = None) -> Activations:
    """Embed (once; cached like features) the prefix activations of the pool, its views, and the test cells."""
    from ada_utils.encoders import embed_benchmark
    from ada_utils.encoders.split import PrefixEncoder
    from ada_utils.train.data import prefix_training_data, validation_split

    acts = prefix_training_data(encoder, root, k=k, n_views=n_views, augment=augment, seed=seed, pool=pool,
                                progress=False)
    validation, fit = validation_split(root, acts)
    bench = embed_benchmark(PrefixEncoder(encoder, k), root, distractors=distractors, progress=False)
    size = acts.feats.nbytes * (1 + (0 if acts.views is None else len(acts.views))) + bench.distractors.nbytes + sum(
        c.exemplars.nbytes + sum(q.nbytes for q in c.queries.values()) for c in bench.cases.values())
    return Activations(k, fit, validation, bench, size / 2**20)


def finetune_run(cfg: TrainConfig, data: TrainData, acts: Activations, out_dir: Path, *,
                 encoder: torch.nn.Module) -> dict:
    """Fine-tune ``encoder``'s last ``acts.k`` blocks and the heads from the cached activations (early-stopped on the
    validation images' activations; ``encoder`` is changed in place: pass a fresh one), then evaluate on the test
    cells' activations. The result format of :func:`ada_utils.eval.ablation.run_variant`, with its cost."""
    from ada_utils.encoders.split import PrefixEncoder, Tail
    from ada_utils.eval.ablation import record_maps
    from ada_utils.files import read_json
    from ada_utils.heads import EncoderWithHeads
    from ada_utils.train.loop import feature_maps, train

    cfg = dataclasses.replace(cfg, finetune="last_k", finetune_from="activations", k_blocks=acts.k)
    res = train(cfg, data, out_dir, encoder=encoder, validation=acts.validation, activations=acts.fit, overwrite=True,
                progress=False)
    header = read_json(out_dir / "config.json")
    model = EncoderWithHeads(res.model, Tail(encoder, acts.k, PrefixEncoder(encoder, acts.k).shape)).eval()
    cost = {"trainable_encoder_params": header.get("trainable_encoder_params"), "cache_megabytes": acts.megabytes}
    out = record_maps(*feature_maps(model), acts.bench, out_dir, seconds=res.seconds, steps=res.steps,
                      extra={"config": dataclasses.asdict(cfg), "stopping": header.get("stopping", {}), **cost})
    return {**out, **cost}
