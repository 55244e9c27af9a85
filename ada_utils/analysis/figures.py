"""Figures of the analysis chapters (01 cross-covariance, 02 CCA decomposition).

Figure functions take plain arrays / DataFrames and return a matplotlib ``Figure`` with a title, labelled axes
and the book's colour-blind-safe colours (``ada_utils.book.style``). The statistics they draw come from
``ada_utils.cca`` and ``ada_utils.eval.statistics``, the features from ``ada_utils.analysis.features``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ada_utils.book.style import METHOD_COLORS, PALETTE


def color(name: str) -> str:
    """The book's colour of an encoder / method name (falls back to the palette order)."""
    return METHOD_COLORS.get(name, PALETTE[sum(map(ord, name)) % len(PALETTE)])  # stable across runs


def heatmap_grid(mats: Mapping[str, Mapping[str, np.ndarray]], *, title: str, label: str) -> plt.Figure:
    """Rows = encoders, columns = conditions (e.g. matched / shuffled pairs); one shared symmetric colour scale.

    Args:
        mats: ``{encoder: {condition: (k, k) matrix}}``.
        title: figure title. label: colour-bar label (quantity and unit).
    """
    rows, cols = list(mats), list(next(iter(mats.values())))
    vmax = max(float(np.abs(m).max()) for r in mats.values() for m in r.values()) or 1.0
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols) + 1, 2.4 * len(rows)), squeeze=False,
                             layout="constrained")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            im = ax.imshow(mats[r][c], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"{r}: {c}", fontsize=10)
            ax.set_xlabel("real coordinate" if i == len(rows) - 1 else "")
            ax.set_ylabel("synthetic coordinate" if j == 0 else "")
    fig.colorbar(im, ax=axes, shrink=0.8, label=label)
    fig.suptitle(title)
    return fig


def spectra_figure(canon: Mapping[str, Mapping[str, np.ndarray]], eig: Mapping[str, Mapping[str, np.ndarray]], *,
                   title: str) -> plt.Figure:
    """Left: held-out canonical correlations per component (solid matched, dashed grouped null). Right: spectra.

    Args:
        canon: ``{encoder: {"matched": (k,), "null": (k,)}}`` cross-fitted correlations in training order (can be
            negative).
        eig: ``{encoder: {"real": (d,), "synthetic": (d,)}}`` eigenvalues divided by their mean (a subset of the
            encoders is fine).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    low = min(0.0, *(float(np.min(v)) for c in canon.values() for v in c.values()))
    for name, c in canon.items():
        a.plot(np.arange(1, len(c["matched"]) + 1), c["matched"], color=color(name), label=f"{name} matched")
        a.plot(np.arange(1, len(c["null"]) + 1), c["null"], color=color(name), ls="--", alpha=0.7)
    a.axhline(0, color="k", lw=0.6)
    a.set(xlabel="component (training order)", ylabel="held-out canonical correlation ρ", ylim=(low - 0.05, 1),
          title="held-out canonical correlations (dashed: grouped null)")
    a.legend(fontsize=8)
    for name, e in eig.items():
        for dom, ls in (("real", "-"), ("synthetic", ":")):
            b.semilogy(np.arange(1, len(e[dom]) + 1), e[dom], color=color(name), ls=ls,
                       label=f"{name} {dom}")
    b.set(xlabel="eigenvalue index", ylabel="eigenvalue / mean eigenvalue (log)",
          title="within-domain covariance spectra (1 = isotropic)")
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return fig


def map_2d(points: Mapping[str, np.ndarray], domain: np.ndarray, concept: np.ndarray, *, method: str,
           title: str) -> plt.Figure:
    """2-D maps of real and synthetic test features: row = encoder, left coloured by domain, right by concept.

    Args:
        points: ``{encoder: (n, 2)}`` coordinates. domain: ``(n,)`` 0 real / 1 synthetic.
        concept: ``(n,)`` int model index (colours cycle through the palette; marker = domain).
        method: "umap" or "pca" (axis labels).
    """
    fig, axes = plt.subplots(len(points), 2, figsize=(10, 4 * len(points)), squeeze=False, layout="constrained")
    for i, (name, p) in enumerate(points.items()):
        for dom, marker, lab in ((0, "o", "real exemplar"), (1, "^", "synthetic")):
            m = domain == dom
            axes[i, 0].scatter(p[m, 0], p[m, 1], s=12, marker=marker, color=PALETTE[dom * 3], label=lab, alpha=0.7)
            cols = [PALETTE[int(c) % 7] for c in concept[m]]
            axes[i, 1].scatter(p[m, 0], p[m, 1], s=12 if dom else 40, marker=marker, c=cols, alpha=0.8,
                               edgecolors="k" if dom == 0 else "none", linewidths=0.5)
        axes[i, 0].legend(fontsize=8)
        axes[i, 0].set_title(f"{name}: by domain")
        axes[i, 1].set_title(f"{name}: by concept (colour = model, ○ real, △ synthetic)")
        for ax in axes[i]:
            ax.set(xlabel=f"{method} 1 (a.u.)", ylabel=f"{method} 2 (a.u.)")
    fig.suptitle(title)
    return fig


def heldout_figure(rows: pd.DataFrame, *, title: str) -> plt.Figure:
    """Per encoder (and control): the grouped null's range (bar), the held-out ρ (dot), the in-sample ρ (hollow).

    Args:
        rows: index = encoders; columns ``held-out ρ``, ``null low``, ``null high``, ``in-sample ρ``
            (:func:`ada_utils.analysis.measures.crossfit_row`).
    """
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 3, 3.8), layout="constrained")
    x = np.arange(len(rows))
    lo, hi = rows["null low"].to_numpy(float), rows["null high"].to_numpy(float)
    ax.bar(x, hi - lo, 0.5, bottom=lo, color="0.8", label="grouped null, 95 % range")
    ax.scatter(x, rows["held-out ρ"], color=[color(n) for n in rows.index], zorder=3, label="held-out (cross-fitted)")
    ax.scatter(x, rows["in-sample ρ"], facecolors="none", edgecolors="k", zorder=3, label="in-sample (aside, biased)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, rows.index, rotation=30, ha="right")
    ax.set(ylabel="mean canonical correlation (unitless)", title="matched pairs vs the grouped null")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def stat_vs_recall(table: pd.DataFrame, stats: Sequence[str], *, recall: str = "R@5",
                   title: str) -> tuple[plt.Figure, dict[str, float]]:
    """Scatter of each statistic against retrieval recall across encoders, with Spearman's ρ in the panel title.

    Returns:
        The figure and ``{stat: Spearman ρ}`` (NaN when a column is constant or has < 3 encoders).
    """
    fig, axes = plt.subplots(1, len(stats), figsize=(3.4 * len(stats), 3.6), squeeze=False, layout="constrained")
    rhos: dict[str, float] = {}
    for ax, s in zip(axes[0], stats):
        x, y = table[s].to_numpy(float), table[recall].to_numpy(float)
        ok = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        rhos[s] = float(spearmanr(x, y).statistic) if ok else float("nan")
        for name, xi, yi in zip(table.index, x, y):
            ax.scatter(xi, yi, color=color(name), s=40, zorder=3)
            ax.annotate(name, (xi, yi), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=f"{s} (unitless)", ylabel=f"mean {recall} (fraction)", title=f"{s}: Spearman {rhos[s]:.2f}")
    fig.suptitle(title)
    return fig, rhos


def decomposition_figure(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Grouped bars: per encoder, the held-out alignment term and CCA, the in-sample CCA, the Infomax terms.

    Args:
        table: rows = encoders; columns ``isotropy_x``, ``isotropy_y`` and any of ``heldout_coord_mean`` (pair-free
            coordinates), ``heldout_cca_mean`` (CCA fitted on training pairs; both measured on test pairs) and
            ``cca_mean`` (in-sample, shown hatched as an aside).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    cols = [c for c in ("heldout_coord_mean", "heldout_cca_mean", "cca_mean") if c in table]
    labels = {"heldout_coord_mean": "coordinates, pooled whitening of the training pool (held out)",
              "heldout_cca_mean": "CCA fitted on training pairs (held out)",
              "cca_mean": "in-sample CCA on test pairs (aside, biased)"}
    x, w = np.arange(len(table)), 0.8 / len(cols)
    for i, c in enumerate(cols):
        a.bar(x + i * w, table[c], w, color=PALETTE[i], label=labels[c], hatch="//" if c == "cca_mean" else None)
    a.set_xticks(x + w * (len(cols) - 1) / 2, table.index, rotation=30, ha="right")
    a.set(ylabel="mean correlation per dimension", title="alignment vs the CCA objective (test pairs)")
    a.legend(fontsize=8)
    for i, (c, lab) in enumerate((("isotropy_x", "synthetic"), ("isotropy_y", "real"))):
        b.bar(x + i * 0.4, table[c], 0.4, color=PALETTE[i + 3], label=lab)
    b.set_xticks(x + 0.2, table.index, rotation=30, ha="right")
    b.set(ylabel="(1/d) log det(Σ / mean eigenvalue) (nats)", title="disentanglement terms (0 = isotropic)")
    b.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def tradeoff_figure(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Recall@10 against query time, one line per index (its search parameter growing along it), and recall
    against bytes per vector: what an approximate index gives up for speed and memory."""
    fig, (speed, size) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    from matplotlib.ticker import NullFormatter

    for i, (name, rows) in enumerate(table.groupby("index", sort=False)):
        c, marker = PALETTE[i % len(PALETTE)], "osD^v"[i % 5]
        speed.plot(rows["ms_per_query"], rows["recall@10"], "-", marker=marker, color=c, label=name)
        best = rows.iloc[-1]
        size.scatter(best["bytes_per_vector"], best["recall@10"], color=c, marker=marker, s=70 - 12 * i,
                     zorder=3 + i, edgecolor="white", label=name)
    speed.set(xscale="log", xlabel="search time per query (ms, log scale)", ylabel="10-recall@10 vs exact (fraction)",
              title="recall vs speed (parameter grows along a line)")
    size.set(xscale="log", xlabel="index size per vector (bytes, log scale)", ylabel="10-recall@10 vs exact (fraction)",
             title="recall vs memory (at the largest parameter tried)")
    for ax in (speed, size):  # after set(): setting the scale resets the formatters
        ax.xaxis.set_minor_formatter(NullFormatter())
    speed.legend(fontsize=8)
    size.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig
