"""Tests for ada_utils.analysis.figures: each figure has the panels, artists, labels and titles it promises, and
Spearman ρ of a perfectly ordered table is 1."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ada_utils.analysis import figures as ap  # noqa: E402
from ada_utils.book.style import METHOD_COLORS, PALETTE  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame({"x": [0.1, 0.2, 0.3], "x_lo": [0.0, 0.1, 0.2], "x_hi": [0.2, 0.3, 0.4],
                         "y": [0.3, 0.1, 0.2], "y_lo": [0.2, 0.0, 0.1], "y_hi": [0.4, 0.2, 0.3],
                         "R@5": [0.01, 0.05, 0.2]}, index=["random", "pretrained", "ada"])


def test_color_is_the_books_colour_and_stable() -> None:
    assert ap.color("ada") == METHOD_COLORS["ada"] and ap.color("random") == METHOD_COLORS["random"]
    assert ap.color("no-such-encoder") == PALETTE[sum(map(ord, "no-such-encoder")) % len(PALETTE)]


def test_heatmap_grid_panels_images_and_shared_scale() -> None:
    rng = np.random.default_rng(0)
    m = {e: {"matched": rng.standard_normal((4, 4)), "shuffled": 0.1 * rng.standard_normal((4, 4))}
         for e in ("a", "b", "c")}
    fig = ap.heatmap_grid(m, title="t", label="correlation (unitless)")
    assert fig._suptitle.get_text() == "t"
    panels, bar = fig.axes[:6], fig.axes[6:]
    assert len(panels) == 6 and len(bar) == 1 and bar[0].get_ylabel() == "correlation (unitless)"
    assert [ax.get_title() for ax in panels] == ["a: matched", "a: shuffled", "b: matched", "b: shuffled",
                                                 "c: matched", "c: shuffled"]
    assert all(len(ax.images) == 1 for ax in panels)
    vmax = max(np.abs(v).max() for r in m.values() for v in r.values())
    assert all(ax.images[0].get_clim() == pytest.approx((-vmax, vmax)) for ax in panels)  # one symmetric scale
    np.testing.assert_array_equal(panels[2].images[0].get_array(), m["b"]["matched"])
    assert [ax.get_xlabel() for ax in panels] == [""] * 4 + ["real coordinate"] * 2  # bottom row only
    assert [ax.get_ylabel() for ax in panels] == ["synthetic coordinate", ""] * 3  # left column only


def test_spectra_figure_lines_scales_and_labels() -> None:
    canon = {e: {"matched": np.array([0.9, 0.5, 0.1]), "null": np.array([0.03, -0.02, 0.01])} for e in ("a", "b")}
    eig = {e: {"real": np.array([3.0, 1.0, 0.5, 0.1]), "synthetic": np.array([2.0, 1.0, 0.6, 0.4])} for e in canon}
    fig = ap.spectra_figure({**canon, "control": canon["a"]}, eig, title="s")
    left, right = fig.axes
    assert fig._suptitle.get_text() == "s"
    assert len(left.lines) == 6 + 1 and len(right.lines) == 4  # matched + null per encoder, the zero line
    np.testing.assert_array_equal(left.lines[0].get_ydata(), canon["a"]["matched"])
    assert [ln.get_linestyle() for ln in left.lines[:6]] == ["-", "--"] * 3
    assert left.get_ylim() == pytest.approx((-0.07, 1)) and left.get_ylabel() == "held-out canonical correlation ρ"
    assert left.get_xlabel() == "component (training order)" and "grouped null" in left.get_title()
    assert right.get_yscale() == "log" and right.get_xlabel() == "eigenvalue index"
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["a matched", "b matched", "control matched"]
    assert len(right.get_legend().get_texts()) == 4


def test_map_2d_panels_markers_and_axis_labels() -> None:
    rng = np.random.default_rng(1)
    domain, concept = np.r_[np.zeros(5), np.ones(15)], np.r_[np.arange(5), np.repeat(np.arange(5), 3)]
    pts = {"random": rng.standard_normal((20, 2)), "ada": rng.standard_normal((20, 2))}
    fig = ap.map_2d(pts, domain, concept, method="pca", title="m")
    assert len(fig.axes) == 4 and fig._suptitle.get_text() == "m"
    assert [ax.get_title() for ax in fig.axes[::2]] == ["random: by domain", "ada: by domain"]
    assert all(len(ax.collections) == 2 for ax in fig.axes)  # one scatter per domain in every panel
    assert [len(c.get_offsets()) for c in fig.axes[0].collections] == [5, 15]
    assert all(ax.get_xlabel() == "pca 1 (a.u.)" and ax.get_ylabel() == "pca 2 (a.u.)" for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["real exemplar", "synthetic"]


def test_heldout_figure_null_bars_and_both_estimates() -> None:
    rows = pd.DataFrame({"held-out ρ": [0.02, 0.3, 0.0], "null low": [-0.05, -0.04, -0.03],
                         "null high": [0.05, 0.04, 0.03], "in-sample ρ": [0.3, 0.6, 0.35]},
                        index=["random", "ada", "control"])
    fig = ap.heldout_figure(rows, title="h")
    (ax,) = fig.axes
    assert fig._suptitle.get_text() == "h" and ax.get_ylabel() == "mean canonical correlation (unitless)"
    bars = ax.patches
    assert len(bars) == 3
    np.testing.assert_allclose([b.get_y() for b in bars], rows["null low"])
    np.testing.assert_allclose([b.get_y() + b.get_height() for b in bars], rows["null high"])
    held, insample = ax.collections
    np.testing.assert_allclose(held.get_offsets()[:, 1], rows["held-out ρ"])
    np.testing.assert_allclose(insample.get_offsets()[:, 1], rows["in-sample ρ"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(rows.index)
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "grouped null, 95 % range", "held-out (cross-fitted)", "in-sample (aside, biased)"]


def test_stat_vs_recall_points_names_and_spearman(table: pd.DataFrame) -> None:
    fig, rho = ap.stat_vs_recall(table, ["x", "y"], title="r")
    assert rho["x"] == pytest.approx(1.0) and rho["y"] == pytest.approx(-0.5)
    assert [ax.get_title() for ax in fig.axes] == ["x: Spearman 1.00", "y: Spearman -0.50"]
    ax = fig.axes[0]
    assert len(ax.collections) == 3 and [t.get_text() for t in ax.texts] == list(table.index)
    assert ax.get_xlabel() == "x (unitless)" and ax.get_ylabel() == "mean R@5 (fraction)"
    _, flat = ap.stat_vs_recall(table.assign(x=0.5), ["x"], title="flat")
    assert np.isnan(flat["x"])  # a constant statistic has no rank correlation
    _, two = ap.stat_vs_recall(table.iloc[:2], ["x"], title="two")
    assert np.isnan(two["x"])  # fewer than 3 encoders


def test_decomposition_figure_bars_and_labels(table: pd.DataFrame) -> None:
    dec = table.assign(heldout_coord_mean=[0.1, 0.2, 0.3], heldout_cca_mean=[0.4, 0.5, 0.6], isotropy_x=-0.1,
                       isotropy_y=-0.2)
    fig = ap.decomposition_figure(dec, title="d")
    left, right = fig.axes
    assert fig._suptitle.get_text() == "d"
    assert len(left.patches) == 3 * 2 and len(right.patches) == 3 * 2  # 2 terms x 3 encoders per panel
    np.testing.assert_allclose([p.get_height() for p in left.patches], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert left.get_title().startswith("alignment vs the CCA objective") and right.get_title().startswith(
        "disentanglement")
    assert [t.get_text() for t in left.get_legend().get_texts()] == [
        "coordinates, pooled whitening of the training pool (held out)", "CCA fitted on training pairs (held out)"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["synthetic", "real"]
    aside = ap.decomposition_figure(dec.assign(cca_mean=0.7), title="d")
    assert len(aside.axes[0].patches) == 3 * 3 and len(aside.axes[0].get_legend().get_texts()) == 3
    assert aside.axes[0].patches[-1].get_hatch() == "//"  # the in-sample bar is marked as an aside
