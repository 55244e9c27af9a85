"""Soft attribution: AbC's truncated softmax, its loss and fit, the measures, files, and the label-free builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ada_utils.calibration import (BIAS_GAIN, Calibrator, auroc, expected_calibration_error, fit_calibrator,
                                   fixed_temperature, query_measures, reliability)
from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures
from ada_utils.eval.attribute import attribute
from ada_utils.eval.calibrate import (cell_measures, fit_three, label_free_set, load_calibrator, save_calibrator,
                                      supervised_set)
from ada_utils.train.data import TrainData


def test_output_is_a_distribution_with_exact_zeros_below_the_cut():
    scores = torch.tensor([[0.9, 0.85, 0.5, -0.2], [0.1, 0.3, 0.2, 0.29]])
    cal = Calibrator(inv_tau=20.0, bias=-100.0)  # cut 0.1: items with exp(20 (s - max)) < 0.1 get nothing
    p = cal(scores)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(2))
    z = torch.exp(20.0 * (scores - scores.max(1, keepdim=True).values)) - 0.1
    assert torch.equal(p == 0, z <= 0) and (p[0, 2:] == 0).all() and (p[1, 1:] > 0).all()
    expected = z.clamp(min=0) / z.clamp(min=0).sum(1, keepdim=True)
    torch.testing.assert_close(p, expected)


def test_valid_mask_gives_masked_items_nothing():
    scores = torch.tensor([[0.9, 0.2, 0.8]])
    valid = torch.tensor([[False, True, True]])
    p = Calibrator(10.0, 0.0)(scores, valid)
    assert p[0, 0] == 0
    torch.testing.assert_close(p[0, 1:], torch.softmax(10.0 * torch.tensor([0.2, 0.8]), 0))


def test_loss_matches_a_hand_computed_case():
    scores = torch.tensor([[0.5, 0.3, 0.1]], dtype=torch.float64)
    positive = torch.tensor([[False, True, True]])
    cal = Calibrator(inv_tau=2.0, bias=0.0).double()
    sp = lambda z: np.log1p(np.exp(100 * z)) / 100  # noqa: E731  softplus, beta 100
    t = [sp(np.exp(2 * (s - 0.5))) for s in (0.5, 0.3, 0.1)]
    expected = np.log(sum(t)) - (np.log(t[1]) + np.log(t[2])) / 2
    assert float(cal.loss(scores, positive)[0].detach()) == pytest.approx(expected, rel=1e-10)
    loss = cal.loss(scores, positive).sum()
    loss.backward()
    assert cal.inv_tau.grad is not None and torch.isfinite(cal.inv_tau.grad)


def test_fit_recovers_a_known_temperature():
    """True exemplars drawn from the smooth (softplus) form the fit maximises, with known parameters."""
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.uniform(-1, 1, size=(4000, 40)))
    truth_cal = Calibrator(inv_tau=8.0, bias=-30.0).double()
    with torch.no_grad():
        t = truth_cal.terms(scores, smooth=True).numpy()
    truth = np.array([rng.choice(40, p=row / row.sum()) for row in t])
    positive = torch.zeros(scores.shape, dtype=torch.bool)
    positive[np.arange(len(truth)), truth] = True
    cal = fit_calibrator(scores, positive, init_tau=0.5)
    assert float(cal.inv_tau.detach()) == pytest.approx(8.0, rel=0.1)
    assert float(cal.bias.detach()) == pytest.approx(-30.0, rel=0.25)


def test_measures_known_values():
    conf = np.array([0.1, 0.15, 0.91, 0.95, 0.92, 0.5])  # bins are right-closed: (0.9, 1]
    hit = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    r = reliability(conf, hit, bins=10)
    assert r["count"].sum() == 6 and r["count"][9] == 3 and np.isnan(r["accuracy"][3])
    # bins: [0.1] acc 0; [0.15] acc 0; [0.5] acc 1; [0.91, 0.95, 0.92] acc 2/3
    expected = (0.1 + 0.15 + 0.5 + 3 * abs(2 / 3 - (0.91 + 0.95 + 0.92) / 3)) / 6
    assert expected_calibration_error(conf, hit) == pytest.approx(expected)
    assert auroc(conf, hit) == pytest.approx(roc_auc_score(hit, conf))
    assert np.isnan(auroc(conf, np.ones(6, dtype=bool)))
    m = query_measures(Calibrator(10.0, 0.0), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
                       torch.tensor([[True, False], [True, False]]))
    assert m["hit"].tolist() == [True, False] and m["mass"][0] == pytest.approx(m["top1"][0])


def test_bad_scores_and_parameters_are_refused():
    cal = Calibrator(10.0, 0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        cal(torch.tensor([[0.1, float("nan")]]))
    with pytest.raises(ValueError, match="non-empty gallery"):
        cal(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="cuts every item"):
        Calibrator(10.0, -1000.0)(torch.tensor([[0.1, 0.2]]))
    with pytest.raises(ValueError, match="no true exemplar"):
        cal.loss(torch.tensor([[0.1, 0.2]]), torch.tensor([[False, False]]))
    with pytest.raises(ValueError, match="temperature must be positive"):
        fixed_temperature(0.0)


def test_released_format_round_trip_and_encoder_check(tmp_path):
    abc = tmp_path / "dino_tuned.pth"  # AbC's weights/calibrator/<model>_tuned.pth: torch.save(state_dict())
    torch.save({"inv_tau": torch.tensor(25.5), "bias": torch.tensor(-3.25)}, abc)
    cal, meta = load_calibrator(abc, encoder={"name": "dino_vits16"}, dim=384)
    assert meta is None and cal.inv_tau.item() == 25.5 and cal.bias.item() == -3.25
    ours = save_calibrator(tmp_path / "ours.pth", cal, {"encoder": {"name": "a"}, "dim": 8})
    assert set(torch.load(ours, weights_only=True)) == {"inv_tau", "bias"}  # loadable by AbC's Calibrator too
    back, meta = load_calibrator(ours, encoder={"name": "a"}, dim=8)
    assert back.inv_tau.item() == 25.5 and meta["dim"] == 8
    with pytest.raises(ValueError, match=r"ours\.pth: fitted for encoder 'a'"):
        load_calibrator(ours, encoder={"name": "b"})
    with pytest.raises(ValueError, match="8-dimensional"):
        load_calibrator(ours, dim=16)
    torch.save({"real_mapper": {}}, tmp_path / "mapper.pth")
    with pytest.raises(ValueError, match=r"mapper\.pth: not a calibrator"):
        load_calibrator(tmp_path / "mapper.pth")


def _train_data(seed: int = 0) -> TrainData:
    """Two domains of 40 images of 20 'models', views = noisy copies; pairs (real, synth) of the same model."""
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(20, 16))
    real = concept + 0.3 * rng.normal(size=(20, 16))
    synth = np.repeat(concept, 2, axis=0) + 0.5 * rng.normal(size=(40, 16)) + 0.4
    feats = np.concatenate([real, synth]).astype(np.float32)
    views = (feats + 0.3 * rng.normal(size=feats.shape)).astype(np.float32)[None]
    domain = np.r_[np.zeros(20), np.ones(40)].astype(np.int64)
    pairs = np.stack([np.repeat(np.arange(20), 2), 20 + np.arange(40)], 1)
    return TrainData(feats, domain, views, pairs=pairs, pair_model=np.repeat(np.arange(20), 2))


def test_label_free_fit_reads_no_pair_labels():
    data = _train_data()
    perm = np.random.default_rng(1).permutation(len(data.pairs))
    pairs = np.stack([data.pairs[perm, 0], data.pairs[:, 1]], 1)  # every synthetic image re-paired at random
    shuffled = TrainData(data.feats, data.domain, data.views, pairs=pairs, pair_model=data.pair_model[perm])
    a, b = fit_three(data, pseudo="both"), fit_three(shuffled, pseudo="both")
    assert a["label_free"].state_dict() == b["label_free"].state_dict()
    assert supervised_set(data).positive.tolist() != supervised_set(shuffled).positive.tolist()


def test_mutual_pseudo_queries_are_chosen_on_views_not_on_the_scores():
    data = _train_data()
    s = label_free_set(data, pseudo="mutual")
    assert len(s.scores) > 0 and (s.positive.sum(1) == 1).all()
    top1_is_positive = s.positive[np.arange(len(s.scores)), s.scores.argmax(1)]
    assert not top1_is_positive.all()  # pairs chosen on the plain scores would all rank first


def test_cell_measures_use_the_query_models_own_gallery():
    rng = np.random.default_rng(0)
    ex, dist, q = rng.normal(size=(4, 8)), rng.normal(size=(30, 8)), rng.normal(size=(6, 8))
    em, qm = np.array([0, 0, 1, 2]), np.array([0, 1, 2, 0, 1, 2])
    bf = BenchmarkFeatures({"test_styles": CaseFeatures({"scene": q}, {"scene": qm}, ex, em)}, dist, {})
    cal = Calibrator(12.0, -50.0)
    got = cell_measures(cal, bf, chunk=4)["test_styles/scene"]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for i in range(6):
        own = ex[em == qm[i]]
        s = torch.from_numpy(unit(q[i:i + 1]) @ unit(np.concatenate([dist, own])).T)
        pos = torch.zeros_like(s, dtype=torch.bool)
        pos[0, len(dist):] = True
        ref = query_measures(cal, s, pos)
        assert got["mass"][i] == pytest.approx(ref["mass"][0], rel=1e-5)
        assert got["nll"][i] == pytest.approx(ref["nll"][0], rel=1e-5)
    assert got["model"].tolist() == qm.tolist()


def test_attribute_reports_influence_over_the_whole_gallery():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(50, 8)), rng.normal(size=(3, 8))
    cal = Calibrator(15.0, -20.0)
    out = attribute(q, g, query_ids=list("abc"), gallery_ids=[str(i) for i in range(50)], top=4, calibrator=cal)
    p = cal(torch.from_numpy((q / np.linalg.norm(q, axis=1, keepdims=True)) @
                             (g / np.linalg.norm(g, axis=1, keepdims=True)).T)).detach().numpy()
    np.testing.assert_allclose(out.influence, np.take_along_axis(p, out.indices, 1), atol=1e-6)
    np.testing.assert_allclose(out.rest, 1 - out.influence.sum(1), atol=1e-6)  # float32 probabilities
    assert "not in the top 4" in out.table() and "influence" in out.rows()[0]
    with pytest.raises(ValueError, match=r"top=51 \(--top\)"):
        attribute(q, g, query_ids=list("abc"), gallery_ids=[str(i) for i in range(50)], top=51)
    with pytest.raises(ValueError, match="gallery is empty"):
        attribute(q, g[:0], query_ids=list("abc"), gallery_ids=[], top=1)
