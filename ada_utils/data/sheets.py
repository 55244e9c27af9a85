"""Contact sheets: each model's real exemplars beside its synthetic images (one row per model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ada_utils.data.abc import TestCase
from ada_utils.data.images import load_image


def _show(ax: plt.Axes, path: Path | None, label: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if path is not None:
        ax.imshow(np.asarray(load_image(path)))
    if label:
        ax.set_title(label, fontsize=7)


def contact_sheet(case: TestCase, prompt_type: str, *, n_models: int = 5, n_exemplars: int = 2,
                  n_queries: int = 6, size: float = 1.1) -> plt.Figure:
    """Rows = the first ``n_models`` models; columns = up to ``n_exemplars`` exemplars, then queries.

    Args:
        case: a loaded test case (:func:`ada_utils.data.load_test_case`).
        prompt_type: which synthetic images to show (e.g. ``"scene"``, ``"media"``, ``"object"``).
        size: inches per thumbnail.

    Returns:
        A matplotlib Figure titled with the test case and prompt type.
    """
    if prompt_type not in case.queries:
        raise ValueError(f"{case.name}: no prompt type {prompt_type!r}; it has {case.prompt_types}")
    models = list(range(min(n_models, len(case.models))))
    n_exemplars = min(n_exemplars, max(len(case.models[m].exemplars) for m in models))
    cols = n_exemplars + n_queries
    fig, axes = plt.subplots(len(models), cols, figsize=(cols * size, len(models) * size * 1.1), squeeze=False)
    owner = case.query_model[prompt_type]
    for row, m in enumerate(models):
        ex = case.models[m].exemplars[:n_exemplars]
        synth = [case.queries[prompt_type][i] for i in np.flatnonzero(owner == m)[:n_queries]]
        for col in range(cols):
            path = ex[col] if col < len(ex) else (synth[col - n_exemplars] if n_exemplars <= col < n_exemplars
                                                   + len(synth) else None)
            label = "real exemplar" if col < len(ex) else ("synthetic" if path is not None else "")
            _show(axes[row, col], path, label if row == 0 else "")
        axes[row, 0].set_ylabel(case.models[m].class_id, fontsize=7)
    fig.suptitle(f"{case.name} / {prompt_type}: real exemplars (left) and synthetic images (right)", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(paths: Sequence[Path], *, ncols: int = 8, title: str = "", size: float = 1.1) -> plt.Figure:
    """A plain grid of images (e.g. a few distractors)."""
    nrows = max(1, -(-len(paths) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        _show(ax, paths[i] if i < len(paths) else None)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
