"""One figure style for the whole book: colour-blind-safe palette, readable sizes, titled and labelled axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

# Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

# One fixed colour per method, so every chapter draws a method in the same colour.
METHOD_COLORS = {
    "random": "#999999", "pretrained": PALETTE[0], "whiten": PALETTE[1], "whiten_pd": PALETTE[6], "ica": PALETTE[5],
    "align": PALETTE[2], "disentangle": PALETTE[4], "ada": PALETTE[3], "supervised": PALETTE[7],
}


def set_style() -> None:
    """Apply the book's matplotlib style (explicitly called by ``book.notebook.setup``; no import side effects)."""
    mpl.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (7.0, 4.0),
        "axes.prop_cycle": mpl.cycler(color=PALETTE), "axes.spines.top": False, "axes.spines.right": False,
        "axes.titlesize": 12, "axes.labelsize": 11, "legend.frameon": False, "image.cmap": "cividis",
    })


def save_fig(fig: plt.Figure, path: str | Path) -> Path:
    """Save a figure (PNG) next to a run's metrics, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
