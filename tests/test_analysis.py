"""Tests for ada_utils.analysis: features (pairing rule, grouped null, no-signal control, pool maps, training pairs),
the common basis, measures (distance terms, cross-fitted rows against the null, held-out alignment, maps in the
basis) and paths (relative, never absolute)."""

from __future__ import annotations

import numpy as np
import pytest

from ada_utils.analysis.basis import common_bases, principal_directions
from ada_utils.analysis.features import FeatureSet, Pairs, control_pairs, pair_indices, training_pair_features
from ada_utils.train import TrainData


def test_pair_indices_cycle_through_each_models_exemplars() -> None:
    qi, ei = pair_indices(np.array([0, 0, 1, 1, 1, 2]), np.array([1, 0, 1]))
    np.testing.assert_array_equal(qi, [0, 1, 2, 3, 4])  # model 2 has no exemplar: query 5 dropped
    np.testing.assert_array_equal(ei, [1, 1, 0, 2, 0])


def grouped_pairs() -> Pairs:
    """Two test cases: 4 one-exemplar models of 3 rows, and 3 style models of 4 rows cycling over 2 exemplars."""
    model = np.r_[np.repeat(np.arange(4), 3), np.repeat(np.arange(4, 7), 4)]
    case = np.where(model < 4, "objects", "styles")
    exemplar = np.r_[np.repeat(np.arange(4), 3), 4 + 2 * np.repeat(np.arange(3), 4) + np.tile([0, 1], 6)]
    rows = np.arange(len(model), dtype=float)[:, None]
    return Pairs(rows.copy(), rows.copy(), model, case, exemplar)


def test_model_permuted_keeps_the_grouping_and_breaks_the_match() -> None:
    p = grouped_pairs()
    q = p.model_permuted(0)
    np.testing.assert_array_equal(q.synth, p.synth)
    np.testing.assert_array_equal(q.model, p.model)
    donor = p.model[q.real[:, 0].astype(int)]  # the model each real row now comes from
    assert np.all(donor != p.model)  # no model keeps its own exemplars
    assert np.all(p.case[q.real[:, 0].astype(int)] == p.case)  # permuted within a test case only
    for m in np.unique(p.model):  # each model's rows come from one other model, in order, exemplars together
        rows = p.model == m
        assert len(set(donor[rows])) == 1
        np.testing.assert_array_equal(q.exemplar[rows], p.exemplar[p.model == donor[rows][0]])
    assert sorted(np.unique(donor[p.case == "styles"])) == [4, 5, 6]  # a permutation: every model donates once
    assert not np.array_equal(p.model_permuted(1).real, q.real) or not np.array_equal(p.model_permuted(2).real, q.real)
    single = Pairs(p.synth[:3], p.real[:3], p.model[:3], p.case[:3], p.exemplar[:3])
    with pytest.raises(ValueError, match="single model"):
        single.model_permuted(0)


def test_control_pairs_repeat_each_exemplars_vector_only() -> None:
    p = grouped_pairs()
    c = control_pairs(p, dim=5, seed=3)
    assert c.synth.shape == c.real.shape == (len(p.model), 5)
    for e in np.unique(p.exemplar):  # one vector per exemplar, wherever it repeats
        assert len(np.unique(c.real[p.exemplar == e], axis=0)) == 1
    assert len(np.unique(c.real, axis=0)) == len(np.unique(p.exemplar))
    assert len(np.unique(c.synth, axis=0)) == len(p.model)  # every query its own vector
    np.testing.assert_array_equal(c.model, p.model)
    np.testing.assert_array_equal(c.exemplar, p.exemplar)
    np.testing.assert_array_equal(control_pairs(p, dim=5, seed=3).real, c.real)


def test_principal_directions_ignore_the_domain_shift_and_bases_are_shared_per_backbone() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4)) * [1, 5, 0.1, 3]
    domain = np.repeat([0, 1], 200)
    X[domain == 1, 0] += 100.0  # a huge mean shift along axis 0: not a direction of within-domain variance
    B = principal_directions(X, domain, 2)
    assert B.shape == (4, 2)
    np.testing.assert_allclose(np.abs(B), np.eye(4)[:, [1, 3]], atol=0.05)
    np.testing.assert_allclose(B.T @ B, np.eye(2), atol=1e-12)
    assert np.all(B[np.abs(B).argmax(0), [0, 1]] > 0)  # signs fixed
    assert principal_directions(X, domain, 0).shape == (4, 4)
    pool = TrainData(X.astype(np.float32), domain)
    other = TrainData(rng.standard_normal((50, 4)).astype(np.float32), np.repeat([0, 1], 25))
    sets = {"pretrained": FeatureSet("pretrained", None, pool), "ada": FeatureSet("ada", None, pool, lambda x: 2 * x),
            "random": FeatureSet("random", None, other)}
    bases = common_bases(sets, 2)
    assert bases["pretrained"] is bases["ada"]  # one basis per backbone: a head is read in its backbone's basis
    np.testing.assert_allclose(bases["ada"], principal_directions(X, domain, 2), atol=1e-5)  # pool is float32
    assert not np.allclose(np.abs(bases["random"]), np.abs(bases["ada"]))
    p = Pairs(X[:5], X[5:10], np.arange(5), np.full(5, "c"), np.arange(5)).in_basis(bases["ada"])
    np.testing.assert_allclose(p.synth, X[:5] @ bases["ada"])
    np.testing.assert_allclose(p.real, X[5:10] @ bases["ada"])


def test_pool_goes_through_each_domains_map() -> None:
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    pool = TrainData(feats, np.array([0, 1, 1, 0, 1, 0]), pairs=np.array([[0, 2], [5, 4]]),
                     pair_model=np.array([3, 7]))
    fs = FeatureSet("toy", None, pool, real_map=lambda x: 2 * x, synth_map=lambda x: -x)
    np.testing.assert_array_equal(fs.mapped_pool(), [[0, 2], [-2, -3], [-4, -5], [12, 14], [-8, -9], [20, 22]])
    synth, real, model = training_pair_features(fs)
    np.testing.assert_array_equal(synth, [[-4, -5], [-8, -9]])  # rows 2 and 4, synthetic map
    np.testing.assert_array_equal(real, [[0, 2], [20, 22]])  # rows 0 and 5, real map
    np.testing.assert_array_equal(model, [3, 7])


# ---- ada_utils.analysis.measures ---------------------------------------------------------------------------

def test_unit_rows_and_projected() -> None:
    from ada_utils.analysis.measures import projected, unit_rows

    np.testing.assert_allclose(unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])),
                               [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])  # a zero row stays zero, no NaN
    fn = projected(lambda x: 2.0 * x, np.eye(3)[:, [2, 0]])
    out = fn(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[4, 0], [10, 6]])


def test_mean_over_cells() -> None:
    from ada_utils.analysis.measures import mean_over_cells

    cells = {"a/scene": {"R@5": 0.2, "mAP": 0.5}, "b/media": {"R@5": 0.4, "mAP": 0.1}}
    assert mean_over_cells(cells) == pytest.approx(0.3) and mean_over_cells(cells, "mAP") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no test cells"):
        mean_over_cells({})


def test_matched_distance_terms_identities() -> None:
    from ada_utils.analysis.measures import matched_distance_terms, unit_rows
    from ada_utils.cca import decomposition

    rng = np.random.default_rng(3)
    s = rng.standard_normal((300, 5))
    synth, real = s + 0.3 * rng.standard_normal(s.shape), 2 * s + 1 + rng.standard_normal(s.shape)
    terms, dec = matched_distance_terms(synth, real)
    assert abs(terms["residual"]) < 1e-12
    assert terms["distance"] == pytest.approx(np.mean(np.sum((unit_rows(synth) - unit_rows(real)) ** 2, 1)))
    assert dec == decomposition(synth, real)
    assert terms["whitened distance / 2d"] == pytest.approx(1 - dec["coord_corr_mean"])
    assert terms["CCA optimum / 2d"] == pytest.approx(1 - dec["cca_mean"])
    assert terms["MI via log det (nats)"] == pytest.approx(terms["MI via ρ (nats)"], rel=1e-6)
    same, _ = matched_distance_terms(synth, synth)
    assert same["distance"] == pytest.approx(0, abs=1e-12) and same["mean_gap"] == pytest.approx(0, abs=1e-12)


def test_heldout_alignment_cca_finds_what_own_coordinates_miss() -> None:
    """Real features are a rotation of the synthetic ones: CCA on training pairs undoes it, coordinates (one pooled
    whitening, no pairs) cannot."""
    from ada_utils.analysis.measures import heldout_alignment

    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.standard_normal((4, 4)))[0]

    def domain_pair(n: int) -> tuple[np.ndarray, np.ndarray]:
        s = rng.standard_normal((n, 4)) * [3.0, 2.0, 1.5, 1.0]
        return s + 0.1 * rng.standard_normal(s.shape), s @ rot + 0.1 * rng.standard_normal(s.shape)

    ts, tr = domain_pair(200)
    qs, qr = domain_pair(100)
    test = Pairs(qs, qr, np.repeat(np.arange(10), 10), np.full(100, "c"), np.arange(100))
    models, held = heldout_alignment(np.vstack([tr, ts]), test, (ts, tr, np.repeat(np.arange(20), 10)),
                                     regs=(0.0, 0.5), seed=0)
    assert set(models) == {"whiten", "cca"} and held["cca_reg"] in ("0.0", "0.5")
    assert held["heldout_cca_mean"] > 0.95 and held["heldout_coord_mean"] < held["heldout_cca_mean"] - 0.2
    w = models["whiten"]  # one map for both domains, fitted on the pooled pool
    np.testing.assert_array_equal(w.A, w.B)
    u, v = w.transform(np.vstack([tr, ts]), np.vstack([tr, ts]))
    np.testing.assert_allclose(np.cov(u.T, bias=True), np.eye(4), atol=0.05)


def test_pooled_whitening_keeps_a_per_domain_head() -> None:
    """The `whiten` head (per-domain whitening of the backbone): whitening each domain again gives back exactly the
    backbone whitened per domain, so head and backbone would read the same; one pooled whitening keeps them apart."""
    from ada_utils.analysis.measures import heldout_coordinates, pooled_whitening
    from ada_utils.cca import column_correlations, fit_domain_whitening

    rng = np.random.default_rng(1)
    s = rng.standard_normal((2000, 2)) * [2.0, 1.0]
    mix = np.array([[1.0, 0.9], [0.9, 1.0]])  # the real side mixes its coordinates
    raw = Pairs(s + 0.3 * rng.standard_normal(s.shape), s @ mix + 0.3 * rng.standard_normal(s.shape),
                np.repeat(np.arange(200), 10), np.full(2000, "c"), np.arange(2000))
    head = fit_domain_whitening(raw.synth, raw.real, reg=0)
    out = Pairs(*head.transform(raw.synth, raw.real), raw.model, raw.case, raw.exemplar)

    def per_domain(p: Pairs) -> np.ndarray:
        return column_correlations(*fit_domain_whitening(p.synth, p.real, reg=0).transform(p.synth, p.real))

    def pooled(p: Pairs) -> np.ndarray:
        return column_correlations(*heldout_coordinates(p, pooled_whitening(np.vstack([p.synth, p.real]), reg=0)))

    np.testing.assert_allclose(per_domain(out), per_domain(raw), atol=1e-9)  # the head is erased
    assert abs(pooled(out).mean() - pooled(raw).mean()) > 0.1  # the shared map keeps what the head did
    np.testing.assert_allclose(pooled(out), per_domain(raw), atol=1e-6)  # a whitened head's pooled map: ~identity


def test_crossfit_row_null_and_control() -> None:
    """A real per-model signal lies above its grouped null held out; Gaussian features with the same grouping lie
    inside it held out, while their in-sample value is far above 0."""
    from ada_utils.analysis.measures import control_row, crossfit_row, inside

    rng = np.random.default_rng(2)
    model = np.repeat(np.arange(60), 10)
    case = np.where(model < 30, "a", "b")
    exemplar = model.copy()
    concept = rng.standard_normal((60, 8))[model]
    p = Pairs(concept + rng.standard_normal((600, 8)), concept + 0.5 * rng.standard_normal((60, 8))[exemplar],
              model, case, exemplar)
    row = crossfit_row(p, top=2, n_perm=10, seed=0)
    assert set(row) == {"held-out ρ", "null low", "null high", "null mean", "in-sample ρ", "in-sample null"}
    assert row["held-out ρ"] > row["null high"] > row["null low"] and not inside(row)
    assert row["in-sample ρ"] > row["held-out ρ"] and abs(row["null mean"]) < 0.1
    ctrl = control_row(p, dim=8, n_draws=3, top=2, n_perm=10, seed=0)
    assert inside(ctrl) and ctrl["draws"] == 3 and ctrl["in-sample ρ"] > 0.15 > abs(ctrl["held-out ρ"])
    assert crossfit_row(p, top=2, n_perm=10, seed=0) == row  # deterministic by seed


def test_mean_correlation_statistic() -> None:
    from ada_utils.analysis.measures import mean_correlation

    x = np.arange(10.0)[:, None] * [1.0, 1.0]
    assert mean_correlation(x, np.c_[2 * x[:, 0] + 1, -x[:, 1]]) == {"r": pytest.approx(0.0)}  # (1 + −1) / 2
    assert mean_correlation(x, x)["r"] == pytest.approx(1.0)


# ---- ada_utils.book.paths ------------------------------------------------------------------------------

def test_shown_path_is_relative_to_the_work_folder_or_the_repository(tmp_path, monkeypatch) -> None:
    from ada_utils.book.paths import shown_path
    from ada_utils.project import repo_root

    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    assert shown_path(tmp_path / "work" / "runs" / "03_train" / "ada-seed0") == "runs/03_train/ada-seed0"
    assert shown_path(tmp_path / "work") == "."
    assert shown_path(repo_root() / "notebooks" / "03_train.ipynb") == "notebooks/03_train.ipynb"
    assert shown_path(tmp_path / "elsewhere" / "dino.pth") == "…/dino.pth"  # outside both: the name only
    assert shown_path("runs/x") == "runs/x"


def test_relative_paths_in_text_and_relative_ids(tmp_path, monkeypatch) -> None:
    from ada_utils.book.paths import relative_ids, relative_paths

    work = tmp_path / "work"
    monkeypatch.setenv("ADA_WORK", str(work))
    text = f"--gallery {work}/cache/features/ab --sheet {work}/runs/x.png --root {work} --other {work}2/y"
    assert relative_paths(text) == f"--gallery cache/features/ab --sheet runs/x.png --root . --other {work}2/y"
    assert relative_paths("no paths here") == "no paths here"
    root = work / "data" / "bench"
    assert relative_ids([root / "dataset" / "a.jpg", str(root / "b.jpg")], root) == ["dataset/a.jpg", "b.jpg"]
    with pytest.raises(ValueError):
        relative_ids([tmp_path / "c.jpg"], root)


def test_analysis_chapters_find_the_frozen_run_of_their_configuration(tmp_path) -> None:
    """01/02 apply a run's head to the frozen backbone's features: they find the finished frozen-encoder run of
    their method, seed, settings and benchmark, and pass over fine-tuned runs, other benchmarks and other settings."""
    import json
    import os
    import time

    from ada_utils.analysis.features import _find_run

    runs = tmp_path / "runs" / "03_train"

    def make(name: str, config: dict, root: str = "bench", status: str = "finished") -> Path:
        run = runs / name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"data_root": root}))
        (run / "config.json").write_text(json.dumps({"status": status, "config": {"method": "ada", "seed": 0,
                                                                                   "finetune": "frozen", **config}}))
        return run

    make("ada-seed0-tuned", {"finetune": "last_k", "backbone": "lite"})
    make("ada-seed0-other", {"backbone": "lite"}, root="elsewhere")
    make("ada-seed0-dino", {"backbone": "dino"})
    make("ada-seed0-running", {"backbone": "lite"}, status="running")
    kw = {"seed": 0, "root": tmp_path / "bench", "runs": runs}
    assert _find_run("ada", train_params={"backbone": "lite"}, **kw)[0] is None
    old, new = make("ada-seed0-a", {"backbone": "lite"}), make("ada-seed0-b", {"backbone": "lite"})
    stamp = time.time()
    os.utime(old / "config.json", (stamp - 60, stamp - 60))
    assert _find_run("ada", train_params={"backbone": "lite"}, **kw)[0] == new  # the newest of the matching runs
    assert _find_run("ada", train_params={"backbone": "dino"}, **kw)[0] == runs / "ada-seed0-dino"


def test_a_shared_cache_takes_data_and_features_but_not_runs(tmp_path, monkeypatch) -> None:
    """ADA_CACHE (asked for by the user) moves the benchmarks and feature caches; runs stay in the work folder."""
    from ada_utils.project import cache_dir, data_dir, runs_dir

    monkeypatch.setenv("ADA_WORK", str(tmp_path / "clone"))
    assert data_dir() == tmp_path / "clone" / "data" and cache_dir() == tmp_path / "clone" / "cache"
    monkeypatch.setenv("ADA_CACHE", str(tmp_path / "shared"))
    assert data_dir() == tmp_path / "shared" / "data" and cache_dir() == tmp_path / "shared" / "cache"
    assert runs_dir() == tmp_path / "clone" / "runs"


def test_analysis_chapters_read_the_04_run_of_exactly_their_configuration(tmp_path) -> None:
    """01/02 read 04's head instead of fitting their own only when 04 trained the same configuration on the same
    benchmark: per-domain whitening is 04's ``whiten_pd`` control, not its pooled ``whiten``."""
    import dataclasses
    import json

    from ada_utils.analysis.features import _ablation_run
    from ada_utils.train import TrainConfig

    folder = tmp_path / "04_ablations"
    params = {"backbone": "efficientnet_lite0", "weights": "", "image_size": 128}
    for name, cfg in {"method-whiten-seed0": TrainConfig(method="whiten", cov_mode="pooled"),
                      "method-whiten_pd-seed0": TrainConfig(method="whiten"),
                      "final-align-seed1": TrainConfig(method="align", seed=1)}.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "head.safetensors").write_bytes(b"")
        (folder / name / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg),
                                                               "status": "finished"}))
    kw = {"train_params": params, "epochs": None, "root": tmp_path / "bench", "folder": folder}
    assert _ablation_run("whiten", seed=0, **kw) is None  # no summary.json: 04 did not finish on this benchmark
    (folder / "summary.json").write_text(json.dumps({"data_root": "bench"}))
    assert _ablation_run("whiten", seed=0, **kw) == folder / "method-whiten_pd-seed0"
    assert _ablation_run("align", seed=1, **kw) == folder / "final-align-seed1"
    assert _ablation_run("align", seed=0, **kw) is None and _ablation_run("align", seed=1, **{**kw, "epochs": 1}) is None
    assert _ablation_run("whiten", seed=0, **{**kw, "root": tmp_path / "other"}) is None
