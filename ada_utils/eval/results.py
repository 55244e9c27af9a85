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

# The only two AbC numbers of the paper we have seen: from a third-party extraction of the paper's table, never
# checked against the paper itself (design section 8). Shown apart, labelled unverified.
UNVERIFIED_PAPER_R5 = (
    {"test case": "ImageNet (seen classes)", "prompt type": "gpt", "R@5 (%)": 49.1},
    {"test case": "BAM-FG", "prompt type": "gpt", "R@5 (%)": 20.3},
)


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


@dataclass(frozen=True)
class Match:
    """One gallery item ranked for a query."""

    rank: int
    score: float
    is_exemplar: bool
    index: int  # row in the exemplar array (is_exemplar) or in the distractor array


def protocol_top_k(query: np.ndarray, exemplars: np.ndarray, distractors: np.ndarray, *, k: int = 5) -> list[Match]:
    """Top-``k`` of the official gallery (all distractors + the query model's exemplars) by cosine score.

    Args:
        query: (D,) feature of one synthetic query.
        exemplars: (E_m, D) features of the query's own model's exemplars.
        distractors: (N, D) distractor features.
    """
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    q = unit(np.asarray(query, dtype=np.float32))
    scores = np.concatenate([unit(exemplars) @ q, unit(distractors) @ q])
    is_ex = np.r_[np.ones(len(exemplars), bool), np.zeros(len(distractors), bool)]
    # Official tie rule: a distractor ranks ahead of an exemplar with the same score (lexsort: last key first).
    order = np.lexsort((is_ex, -scores))[:k]
    return [Match(r + 1, float(scores[i]), bool(is_ex[i]), int(i if is_ex[i] else i - len(exemplars)))
            for r, i in enumerate(order)]


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
    df["status"] = "UNVERIFIED: third-party extraction of the paper's table, not checked against the paper"
    return df
