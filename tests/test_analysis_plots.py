"""Tests for ada_utils.analysis.figures: every figure draws; Spearman ρ of a perfectly ordered table is 1."""

from __future__ import annotations

import numpy as np
import pytest


def test_analysis_figures_draw_and_spearman() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from ada_utils.analysis import figures as ap

    rng = np.random.default_rng(0)
    m = {e: {"matched": rng.standard_normal((4, 4)), "shuffled": rng.standard_normal((4, 4))} for e in ("a", "b")}
    assert ap.heatmap_grid(m, title="t", label="l")._suptitle.get_text() == "t"
    ap.spectra_figure({"a": {"matched": np.ones(3), "shuffled": np.ones(3)}},
                      {"a": {"real": np.ones(3), "synthetic": np.ones(3)}}, title="s")
    table = pd.DataFrame({"x": [0.1, 0.2, 0.3], "x_lo": [0.0, 0.1, 0.2], "x_hi": [0.2, 0.3, 0.4],
                          "R@5": [0.01, 0.05, 0.2]}, index=["random", "pretrained", "ada"])
    ap.ci_figure(table, ["x"], title="c")
    _, rho = ap.stat_vs_recall(table, ["x"], title="r")
    assert rho["x"] == pytest.approx(1.0)
    dec = table.assign(coord_corr_mean=0.1, cca_mean=0.2, isotropy_x=-0.1, isotropy_y=-0.2)
    ap.decomposition_figure(dec, title="d")
