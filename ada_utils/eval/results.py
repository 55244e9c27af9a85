"""The results chapter's tables and galleries, built from the ablation summary and cached features.

Conventions: a *cell* is ``"<test_case>/<prompt_type>"``; metric names are ``"R@5", "R@10", "R@100", "mAP"``;
feature rows are samples. Galleries follow the official protocol: a query's gallery is every distractor plus
the exemplars of its own model only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ada_utils.book.style import METHOD_COLORS
from ada_utils.encoders.features import BenchmarkFeatures
from ada_utils.eval.statistics import MARGIN, Comparison, verdict_tally
from ada_utils.retrieval import FeatureMap, rank_gallery, unit_rows

# The only two AbC numbers of the paper we have seen: from a third-party extraction of the paper's table, never
# checked against the paper itself (the book's results chapter says so). Shown apart, labelled unverified.
UNVERIFIED_PAPER_R5 = (
    {"test case": "ImageNet (seen classes)", "prompt type": "gpt", "R@5 (%)": 49.1},
    {"test case": "BAM-FG", "prompt type": "gpt", "R@5 (%)": 20.3},
)
# How the findings paragraph names methods.
LABELS = {"ada": "ada", "whiten_pd": "per-domain whitening", "supervised": "the supervised baseline (AbC init)",
          "supervised_whiten": "the supervised baseline initialised at whitening",
          "cca_ceiling": "the labelled CCA ceiling", "ada_true_pairs": "the closed-form head on true pairs (labelled)",
          "procrustes": "the labelled Procrustes rotation", "align": "alignment only",
          "disentangle": "disentanglement only", "pretrained": "the pretrained features"}
ORACLES = ("cca_ceiling", "ada_true_pairs", "procrustes")  # chapter 04's labelled ceilings
PAPER_SOURCE = ("arXiv 2601.22663 (Unsupervised Synthetic Image Attribution: Alignment and Disentanglement), "
                "as extracted by a third party")


def metric_table(summary: dict, metric: str = "R@5", *, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ± std over seeds of ``metric`` per method (rows) and cell (columns), with the chance level."""
    final = summary["final"]
    methods = [m for m in (methods or final) if m in final]
    cells = sorted(next(iter(final.values()))["mean"])
    rows = {}
    for m in methods:
        mean, std = final[m]["mean"], final[m].get("std") or {}
        rows[m] = [f"{mean[c][metric]:.3f} ± {std[c][metric]:.3f}" if c in std else f"{mean[c][metric]:.3f}"
                   for c in cells]
    rows["chance"] = [f"{summary['chance'][c][metric]:.4f}" for c in cells]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cells)


def comparison_table(summary: dict, *, metric: str = "R@5") -> pd.DataFrame:
    """The paired bootstrap comparisons (difference of means, 95 % interval over models, verdict)."""
    rows = [c for c in summary.get("comparisons", []) if c["metric"] == metric]
    df = pd.DataFrame(rows, columns=["a", "b", "cell", "metric", "diff", "ci_low", "ci_high", "verdict"])
    return df.round({"diff": 3, "ci_low": 3, "ci_high": 3})



def verdict_counts(comparisons: Sequence[Comparison], method: str, *, scale: str, seeds: Sequence[int],
                   data: str = "the embedded benchmark",
                   others: Sequence[str] = ("pretrained", "whiten", "whiten_pd", "align", "disentangle", "supervised",
                                            "supervised_whiten", "cca_ceiling")
                   ) -> str:
    """Markdown: per control, in how many cells each verdict of ``method`` vs that control occurred."""
    lines = []
    for other in others:
        counts = verdict_tally(comparisons, method, other)
        if sum(counts.values()):
            lines.append(f"- `{method}` vs `{other}` (R@5, {sum(counts.values())} cells): " +
                         ", ".join(f"`{method} {v} {other}` in {n} cell(s)" for v, n in sorted(counts.items()) if n))
    return (f"On {data} ({scale} scale, seeds {list(seeds)}):\n\n"
            + ("\n".join(lines) or "- no comparisons were recorded"))


def metric_bars(summary: dict, metric: str = "R@5", *, methods: Sequence[str] | None = None) -> plt.Figure:
    """Grouped bars of ``metric`` per cell and method, error bars = std over seeds, chance as a line."""
    final = summary["final"]
    methods = [m for m in (methods or final) if m in final]
    cells = sorted(next(iter(final.values()))["mean"])
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(cells)), 4.0))
    width = 0.8 / len(methods)
    x = np.arange(len(cells))
    for i, m in enumerate(methods):
        mean = [final[m]["mean"][c][metric] for c in cells]
        std = [(final[m].get("std") or {}).get(c, {}).get(metric, 0.0) for c in cells]
        ax.bar(x + i * width - 0.4 + width / 2, mean, width, yerr=std, label=m, capsize=2,
               color=METHOD_COLORS.get(m))
    ax.scatter(x, [summary["chance"][c][metric] for c in cells], marker="_", s=400, color="k", label="chance")
    ax.set_xticks(x, [c.removeprefix("test_").replace("/", "\n") for c in cells], fontsize=8)
    ax.set_ylabel(f"{metric} (fraction)")
    ax.set_title(f"{metric} per cell (official AbC metric; mean ± std over seeds {summary['seeds']})")
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


def stopping_curves(runs: dict[str, Path], *, title: str) -> plt.Figure:
    """Training loss (left) and validation R@5 (right) against steps for each run folder, the stop marked.

    Args:
        runs: label -> run folder with ``log.jsonl`` and ``validation.jsonl`` (:mod:`ada_utils.train.stopping`).
        title: the figure's title (data, scale, seed, hardware).
    """
    from ada_utils.files import read_json
    from ada_utils.train.run_folder import read_log
    from ada_utils.train.stopping import read_curve

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, run in runs.items():
        log, curve = read_log(run), read_curve(run)
        stop = read_json(Path(run) / "config.json").get("stopping", {})
        line = ax_loss.plot([r["step"] for r in log], [r["loss"] for r in log], label=label)[0]
        ax_val.plot([r["step"] for r in curve], [r["val_R@5"] for r in curve], "o-", ms=3, color=line.get_color(),
                    label=label)
        if stop.get("best_step") is not None:
            ax_val.axvline(stop["best_step"], color=line.get_color(), ls=":", lw=1)
            ax_loss.axvline(stop["best_step"], color=line.get_color(), ls=":", lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss (dotted: step kept)")
    ax_val.set(xlabel="step", ylabel="mean R@5, validation models", title="validation R@5 (the stopping rule)")
    ax_val.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Match:
    """One gallery item ranked for a query."""

    rank: int
    score: float
    is_exemplar: bool
    index: int  # row in the exemplar array (is_exemplar) or in the distractor array


def protocol_top_k(query: np.ndarray, exemplars: np.ndarray, distractors: np.ndarray, *, k: int = 5) -> list[Match]:
    """Top-``k`` of the official gallery (all distractors + the query model's exemplars) by cosine score.

    The order is the official metric's own (:func:`ada_utils.retrieval.rank_gallery`), ties included.

    Args:
        query: (D,) feature of one synthetic query.
        exemplars: (E_m, D) features of the query's own model's exemplars.
        distractors: (N, D) distractor features.
    """
    def unit(x: np.ndarray) -> np.ndarray:
        return unit_rows(np.asarray(x, dtype=np.float32))

    q = unit(query)
    d_scores, e_scores = unit(distractors) @ q, unit(exemplars) @ q
    n = len(d_scores)
    return [Match(r + 1, float(e_scores[i - n] if i >= n else d_scores[i]), bool(i >= n), int(i - n if i >= n else i))
            for r, i in enumerate(rank_gallery(d_scores, e_scores)[:k])]


def gallery_rows(bf: BenchmarkFeatures, case_name: str, prompt: str, *, real_map: FeatureMap,
                 synth_map: FeatureMap, distractors: np.ndarray, n_rows: int, k: int = 5
                 ) -> list[tuple[Path, Path, list[tuple[Path, float, bool]]]]:
    """Rows for :func:`gallery_figure`: the best-ranked queries of one cell first, then the worst.

    Args:
        bf: benchmark features (with ``root`` and the ids of every image).
        case_name, prompt: the cell. real_map, synth_map: the method's maps of exemplars / queries.
        distractors: (N, D) distractor features already through ``real_map`` (computed once by the caller).
        n_rows: queries shown: ``n_rows // 2 + 1`` whose first true exemplar ranks highest, ``n_rows // 2`` lowest.
        k: matches per row.

    Returns:
        ``(query image, the model's first exemplar image, [(match image, score, is_exemplar), ...])`` per row.
    """
    case, root = bf.cases[case_name], Path(bf.root)
    qf, ex = synth_map(case.queries[prompt]), real_map(case.exemplars)
    models = case.query_model[prompt]
    own_ids = {int(m): [i for i, e in zip(case.exemplar_ids, case.exemplar_model) if e == m] for m in set(models)}
    top = [protocol_top_k(qf[i], ex[case.exemplar_model == models[i]], distractors, k=k) for i in range(len(qf))]
    first_hit = np.array([next((m.rank for m in t if m.is_exemplar), k + 1) for t in top])
    picks = [*np.argsort(first_hit, kind="stable")[:n_rows // 2 + 1], *np.argsort(-first_hit, kind="stable")[:n_rows // 2]]
    rows = []
    for i in picks:
        own = own_ids[int(models[i])]
        matches = [(root / (own[m.index] if m.is_exemplar else bf.distractor_ids[m.index]), m.score, m.is_exemplar)
                   for m in top[i]]
        rows.append((root / case.query_ids[prompt][i], root / own[0], matches))
    return rows


def gallery_figure(rows: Sequence[tuple[Path, Path, list[tuple[Path, float, bool]]]], *, title: str) -> plt.Figure:
    """A grid: per row the query, its model's first exemplar, then the top matches (exemplars framed green).

    Args:
        rows: (query image, true exemplar image, [(match image, score, is_exemplar), ...]) per query.
        title: figure title (say which data, method and seed).
    """
    from ada_utils.data import load_image

    n_cols = 2 + max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.7 * len(rows)), squeeze=False)
    for ax_row, (query, exemplar, matches) in zip(axes, rows):
        tiles = [(query, "query", None), (exemplar, "exemplar", None)]
        tiles += [(p, f"{s:.2f}", ex) for p, s, ex in matches]
        for ax, (path, label, hit) in zip(ax_row, tiles + [(None, "", None)] * (n_cols - len(tiles))):
            ax.axis("off")
            if path is None:
                continue
            ax.imshow(load_image(path))
            ax.set_title(label, fontsize=8, color={True: "#009E73", False: "#D55E00"}.get(hit, "black"))
            if hit:
                ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4,
                                           edgecolor="#009E73"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def unverified_paper_table() -> pd.DataFrame:
    """The two paper numbers seen only on a third-party extraction of its table (unverified, real AbC)."""
    df = pd.DataFrame(UNVERIFIED_PAPER_R5)
    df["data"] = "real AbC benchmark (not the embedded one)"
    df["source"] = PAPER_SOURCE
    df["status"] = "UNVERIFIED: third-party extraction of the paper's table, not checked against the paper"
    return df


def findings(summary: dict, *, method: str = "ada", data: str = "embedded benchmark") -> str:
    """The book's opening paragraph (Markdown), generated from the final comparison of chapter 04.

    Every verdict is read from the Holm-corrected comparisons with the chapter's margin δ; an inconclusive
    comparison is reported as such and never counted as a win, and a loss is reported as a loss.

    Args:
        summary: ``runs/04_ablations/summary.json`` (``final``, ``chance``, ``comparisons``, ``seeds``, ...).
        method: the method the findings are about. data: which data produced the numbers.
    """
    cells = list(summary["chance"])
    final = summary["final"]

    def mean_r5(m: str) -> float:
        return float(np.mean([final[m]["mean"][c]["R@5"] for c in cells]))

    comps = [Comparison.from_record(r) for r in summary["comparisons"] if r["metric"] == "R@5"]

    def tally(b: str) -> str:
        n = verdict_tally(comps, method, b, cells)
        return (f"better in {n['>']}, non-inferior in {n['≥']}, inconclusive in {n['?']} and worse in {n['<']} "
                f"of {sum(n.values())} cells")

    shown = [m for m in (method, "whiten_pd", "supervised", "supervised_whiten", *ORACLES, "pretrained") if m in final]
    others = [(b, LABELS.get(b, f"`{b}`")) for b in dict.fromkeys(c.b for c in comps if c.a == method)]
    enc = summary["encoder"]
    chosen = summary.get("chosen", {})
    if summary.get("train_pool") == "transductive":
        data += ", TRANSDUCTIVE: fitted on the test cells' synthetic images without their labels"
    lines = [
        f"**What this book finds** ({data}, scale `{summary['scale']}`, {len(cells)} cells, seeds {summary['seeds']}, "
        f"`{enc['name']}` at {enc['image_size']} px, {summary['hardware']}; generated from the numbers of the "
        "results chapter):", "",
        f"- Mean R@5 over the cells (chance {np.mean([summary['chance'][c]['R@5'] for c in cells]):.4f}): "
        + ", ".join(f"{LABELS.get(m, m)} {mean_r5(m):.3f}" for m in shown) + "."]
    if "lam" in chosen:
        lines.append(f"- `{method}` runs at λ = {chosen['lam']:g}, chosen on the validation split of the training "
                     "models; every gradient-trained row, the supervised baseline included, is early-stopped there.")
    lines += [f"- `{method}` against {label}: {tally(b)}." for b, label in others]
    lines.append(f"- Verdicts: one-sided tests at 2.5 % from a paired bootstrap over models with the variance over "
                 f"seeds added, Holm-corrected over the comparisons of the table; non-inferiority margin δ = "
                 f"{summary.get('margin', MARGIN):g} R@5; a significant loss reads as a loss even within the margin.")
    return "\n".join(lines)
