"""Training loop: schedules, every method on random features, exact resumption, guards and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ada_utils.train.run_folder import load_head
from ada_utils.train import TrainingDivergedError, feature_maps, train
from ada_utils.train.config import TrainConfig, lambda_schedule, lr_schedule
from ada_utils.train import TrainData
from ada_utils.train.step import Step


def _data(n: int = 240, d: int = 12, seed: int = 0) -> TrainData:
    """Random features with a latent concept shared by a real image and a few synthetic ones."""
    rng = np.random.default_rng(seed)
    concepts = rng.normal(size=(n // 4, d))
    owner = np.arange(n) % (n // 4)
    domain = (np.arange(n) >= n // 4).astype(np.int64)
    shift = np.where(domain[:, None] == 1, 0.8 * rng.normal(size=d), 0.0)
    mix = np.eye(d) + 0.5 * rng.normal(size=(d, d))
    feats = ((concepts[owner] + 0.3 * rng.normal(size=(n, d)) + shift) @ mix).astype(np.float32)
    views = (feats[None] + 0.2 * rng.normal(size=(2, n, d))).astype(np.float32)
    real = np.flatnonzero(domain == 0)
    synth = np.flatnonzero(domain == 1)
    pairs = np.stack([real[owner[synth]], synth], axis=1)
    return TrainData(feats, domain, views, [f"id{i}" for i in range(n)], pairs, owner[synth])


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 64, "lr": 1e-2, "checkpoint_every": 3, "form": "logdet", "eps": 1e-3,
            "lam": 1.0, "init": "identity", "heads": "shared", "cov_mode": "pooled", "solver": "gradient"}
    return TrainConfig(**{**base, **kw})


def test_schedules_have_one_value_per_step() -> None:
    cfg = _cfg(lr=0.5, warmup_frac=0.2)
    lrs = lr_schedule(cfg, 50)
    assert lrs.shape == (50,) and np.isclose(lrs.max(), 0.5) and lrs[-1] < 0.01
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[10:]) <= 0)
    w = lambda_schedule(_cfg(method="ada", lam=2.0, schedule="two_stage", stage1_frac=0.5), 10)
    assert w[:5, 1].tolist() == [0] * 5 and w[5:, 1].tolist() == [2.0] * 5 and (w[:, 0] == 1).all()
    assert (lambda_schedule(_cfg(method="ada", schedule="joint"), 10)[:, 1] == 1).all()
    assert (lambda_schedule(_cfg(method="disentangle"), 10) == [0, 1]).all()


@pytest.mark.parametrize("method,extra", [
    ("align", {"alignment": "views"}), ("align", {"alignment": "xdomain_nn"}), ("align", {"alignment": "both"}),
    ("disentangle", {}), ("disentangle", {"infomax": "ica", "lr": 1e-3}),
    ("disentangle", {"cov_mode": "per_domain", "cov_kind": "corr", "form": "coding_rate"}),
    ("ada", {"schedule": "joint"}), ("ada", {"head": "mlp"}), ("supervised", {"lr": 5e-2, "epochs": 8}),
])
def test_loss_falls_for_every_trained_method(tmp_path: Path, method: str, extra: dict) -> None:
    torch.manual_seed(0)
    res = train(_cfg(method=method, **extra), _data(), tmp_path / "run", progress=False)
    assert len(res.log) == res.steps > 0 and all(np.isfinite([r["loss"] for r in res.log]))
    for term in ("loss_align", "loss_infomax", "loss_pairs"):  # each term falls while it is on
        values = [r[term] for r in res.log if term in r]
        assert not values or np.mean(values[-3:]) < np.mean(values[:3]), term


def test_gaussian_infomax_whitens_the_head_output(tmp_path: Path) -> None:
    data = _data()
    res = train(_cfg(method="disentangle", epochs=40, lr=3e-2, center="pooled"), data, tmp_path / "r",
                progress=False)
    real_map, _ = feature_maps(res.model)
    z = real_map(data.feats)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = data.feats / np.linalg.norm(data.feats, axis=1, keepdims=True)
    assert np.linalg.cond(np.cov(z.T)) < 0.5 * np.linalg.cond(np.cov(x.T))


@pytest.mark.parametrize("method", ["whiten", "ica"])
def test_closed_form_controls_whiten_training_features(tmp_path: Path, method: str) -> None:
    data = _data(n=600)
    res = train(_cfg(method=method, center="none", shrinkage=0.0), data, tmp_path / method, progress=False)
    assert res.steps == 0
    z = feature_maps(tmp_path / method)[0](data.feats)
    assert np.allclose(np.cov(z.T), np.eye(z.shape[1]), atol=0.1)


def test_per_domain_whitening_has_two_maps(tmp_path: Path) -> None:
    data = _data(n=800)
    train(_cfg(method="whiten", cov_mode="per_domain"), data, tmp_path / "w", progress=False)
    head = load_head(tmp_path / "w")
    assert not head.shared
    real_map, synth_map = feature_maps(head)
    for fmap, dom in ((real_map, 0), (synth_map, 1)):
        z = fmap(data.feats[data.domain == dom])
        assert np.abs(z.mean(0)).max() < 1e-3


@pytest.mark.parametrize("method,extra", [("ada", {"alignment": "both"}), ("supervised", {})])
def test_killed_run_resumes_to_identical_weights(tmp_path: Path, method: str, extra: dict) -> None:
    data, cfg = _data(), _cfg(method=method, nn_refresh=2, **extra)
    full = train(cfg, data, tmp_path / "full", progress=False)
    assert train(cfg, data, tmp_path / "killed", progress=False, stop_at=7) is None  # checkpoint at step 6
    ckpt_step = json.loads((tmp_path / "killed" / "config.json").read_text())["status"]
    assert ckpt_step == "running"
    resumed = train(cfg, data, tmp_path / "killed", resume=True, progress=False)
    for key, val in full.model.state_dict().items():
        assert torch.equal(val, resumed.model.state_dict()[key]), key
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    a, b = feature_maps(tmp_path / "full")[1](data.feats), feature_maps(tmp_path / "killed")[1](data.feats)
    assert np.array_equal(a, b)


def test_finished_runs_are_not_overwritten(tmp_path: Path) -> None:
    data, cfg = _data(), _cfg(method="disentangle", epochs=1)
    first = train(cfg, data, tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match=r"finished run: pass --overwrite \(overwrite=True\)"):
        train(cfg, data, tmp_path / "r", progress=False)
    again = train(cfg, data, tmp_path / "r", resume=True, progress=False)  # reuses the finished run
    assert again.steps == 0 and torch.equal(again.model.real.weight, first.model.real.weight)
    assert train(cfg, data, tmp_path / "r", overwrite=True, progress=False).steps == first.steps


def test_resume_with_other_parameters_names_them(tmp_path: Path) -> None:
    data = _data()
    train(_cfg(method="ada"), data, tmp_path / "r", progress=False, stop_at=4)
    with pytest.raises(ValueError, match=r"lam: checkpoint 1.0 vs now 2.0.*tau: checkpoint 0.1 vs now 0.2"):
        train(_cfg(method="ada", lam=2.0, tau=0.2), data, tmp_path / "r", resume=True, progress=False)
    other = dataclasses.replace(data, feats=data.feats + 1)
    with pytest.raises(ValueError, match="training features differ"):
        train(_cfg(method="ada"), other, tmp_path / "r", resume=True, progress=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = Step.loss, []

    def poisoned(self, *args, **kwargs):
        loss, parts = original(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 6 else loss), parts  # the 6th step (step 5) diverges

    monkeypatch.setattr(Step, "loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="diverged at step 5.*last good checkpoint"):
        train(_cfg(method="ada"), _data(), tmp_path / "r", progress=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r" / "checkpoint.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["json"])["step"] == 3
        assert all(torch.isfinite(fh.get_tensor(k)).all() for k in fh.keys() if k.startswith("model."))


@pytest.mark.parametrize("kw,match", [
    ({"method": "simclr"}, "method='simclr' is not allowed"),
    ({"backbone": "no_such_net"}, "backbone='no_such_net'"),
    ({"lam": -1.0}, "lam=-1.0 must be >= 0"),
    ({"method": "ada", "batch_size": 1}, "batch_size=1"),
    ({"method": "disentangle", "batch_size": 1}, "batch_size=1"),
    ({"alignment": "xdomain_nn", "train_domains": "synth"}, "train_domains='both'"),
    ({"infomax": "ica", "head": "mlp"}, "infomax='ica' needs head='linear'"),
    ({"solver": "closed_form", "head": "mlp"}, "use solver='gradient'"),
    ({"solver": "closed_form", "lam": 0.0}, r"lam.*use solver='gradient'"),
    ({"solver": "closed_form", "finetune": "last_k"}, "'finetune': 'last_k'"),
])
def test_bad_parameters_are_named(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_supervised_needs_pairs_and_ada_never_reads_them(tmp_path: Path) -> None:
    data = _data()
    with pytest.raises(ValueError, match="needs TrainData.pairs"):
        train(_cfg(method="supervised"), dataclasses.replace(data, pairs=None), tmp_path / "s", progress=False)
    shuffled = dataclasses.replace(data, pairs=data.pairs[::-1].copy(), pair_model=data.pair_model[::-1].copy())
    for solver in ("gradient", "closed_form"):
        a = train(_cfg(method="ada", solver=solver), data, tmp_path / f"a{solver}", progress=False)
        b = train(_cfg(method="ada", solver=solver), shuffled, tmp_path / f"b{solver}", progress=False)
        assert torch.equal(a.model.real.weight, b.model.real.weight)


def test_image_path_fine_tunes_only_the_last_block(tmp_path: Path) -> None:
    from PIL import Image

    from ada_utils.encoders import load_encoder

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"img{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    encoder = load_encoder("efficientnet_lite0", pretrained=False, image_size=32)
    with torch.no_grad():
        feats = torch.cat([encoder(encoder.preprocess(Image.open(p).convert("RGB"))[None]) for p in paths]).numpy()
    data = TrainData(feats, (np.arange(12) % 2).astype(np.int64), ids=[p.name for p in paths], paths=paths)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = _cfg(method="ada", alignment="both", finetune="last_k", k_blocks=1, batch_size=6, epochs=2,
               image_size=32, form="coding_rate", eps=0.5, schedule="joint")
    res = train(cfg, data, tmp_path / "run", encoder=encoder, progress=False)
    assert res.steps == 4 and all(np.isfinite(r["loss"]) for r in res.log)
    changed = {k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}
    last = len(encoder.backbone.blocks) - 1
    assert changed and all(not k.startswith("backbone.blocks.") or k.startswith(f"backbone.blocks.{last}.")
                           for k in changed)
    assert (tmp_path / "run" / "encoder.safetensors").is_file() and load_head(tmp_path / "run").shared


def _tiny_abc(root: Path, *, names: list[str], owner: list[int], seed: int = 0) -> Path:
    """A 3-model AbC-layout training split; ``names`` rename folders, ``owner`` re-pairs the synthetic sets."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(3 * 4)]
    entries = []
    for m in range(3):
        ex = f"dataset/exemplar/objects/images/{names[m]}/0.jpg"
        synth = [f"dataset/synth/objects/scene/{names[m]}/samples/{j:05d}.jpg" for j in range(3)]
        (root / ex).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[4 * m]).save(root / ex)
        for j, path in enumerate(synth):  # synthetic set owner[m] is filed under model m
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[4 * owner[m] + 1 + j]).save(root / path)
        entries.append({"exemplar": [ex], "synth": {"scene": synth}, "class_id": names[m], "category": None})
    (root / "dataset" / "json").mkdir(parents=True, exist_ok=True)
    (root / "dataset" / "json" / "train_all.json").write_text(json.dumps(entries))
    return root


@pytest.mark.parametrize("solver", ["gradient", "closed_form"])
def test_unsupervised_weights_ignore_folder_names_and_pairs(tmp_path: Path, solver: str) -> None:
    from ada_utils.encoders import load_encoder
    from ada_utils.train import training_data

    torch.manual_seed(0)
    encoder = load_encoder("efficientnet_lite0", pretrained=False, image_size=32)
    a = _tiny_abc(tmp_path / "a", names=["n01", "n02", "n03"], owner=[0, 1, 2])
    b = _tiny_abc(tmp_path / "b", names=["zebra", "apple", "m"], owner=[2, 0, 1])
    cfg = _cfg(method="ada", alignment="both", batch_size=8, epochs=3, form="coding_rate", eps=0.5, solver=solver)
    weights = []
    for root in (a, b):
        data = training_data(encoder, root, n_views=1, progress=False)
        weights.append(train(cfg, data, root / "run", progress=False).model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    sup = [training_data(encoder, r, n_views=0, with_pairs=True, progress=False).pairs for r in (a, b)]
    assert not np.array_equal(sup[0], sup[1])  # the pairs did change: only the supervised baseline sees them


def test_gradient_ada_starts_from_per_domain_whitening(tmp_path: Path) -> None:
    from ada_utils.train.methods import build_model
    from ada_utils.train.data import select_rows

    data, cfg = _data(n=800), TrainConfig(epochs=1, batch_size=256, solver="gradient")
    assert cfg.method == "ada" and cfg.heads == "per_domain" and cfg.head_init == "whiten"
    rows = select_rows(cfg, data)
    start = build_model(cfg, data, rows)
    control = build_model(TrainConfig(method="whiten", cov_mode="per_domain"), data, rows)
    for dom in (0, 1):
        x = torch.from_numpy(data.feats[:50])
        assert torch.allclose(start.forward_domain(x, dom), control.forward_domain(x, dom), atol=1e-4)
    res = train(cfg, data, tmp_path / "r", progress=False)
    assert not res.model.shared and res.steps == 3 and all(np.isfinite(r["loss"]) for r in res.log)
    sup = build_model(TrainConfig(method="supervised"), data, rows)  # AbC: identity maps whatever init says
    assert torch.equal(sup.real.weight, torch.eye(12)) and torch.equal(sup.synth.weight, torch.eye(12))


def test_validation_split_holds_out_every_image_of_validation_models(tmp_path: Path) -> None:
    from ada_utils.encoders import load_encoder
    from ada_utils.train import training_data, validation_split

    torch.manual_seed(0)
    encoder = load_encoder("efficientnet_lite0", pretrained=False, image_size=32)
    root = _tiny_abc(tmp_path / "a", names=["n01", "n02", "n03"], owner=[0, 1, 2])
    data = training_data(encoder, root, n_views=1, with_pairs=True, progress=False)
    bf, fit = validation_split(root, data, every=2)  # models 0 and 2 validate, model 1 trains
    case = bf.cases["val"]
    assert len(case.exemplars) == 2 and len(case.queries["scene"]) == 6 and len(bf.distractors) == 1
    assert sorted(str(p) for p in fit.paths) == sorted(str(p) for p in data.paths if "/n02/" in str(p))
    assert len(fit.feats) == fit.views.shape[1] == 4 and sorted(fit.domain.tolist()) == [0, 1, 1, 1]
    assert fit.pairs.shape == (3, 2) and (fit.domain[fit.pairs[:, 0]] == 0).all()
    assert np.array_equal(fit.feats[fit.pairs[:, 1]], data.feats[data.pairs[data.pair_model == 1][:, 1]])


def test_log_cut_by_a_kill_and_grad_scaler_state_survive_resumption(tmp_path: Path) -> None:
    from ada_utils.heads import EncoderWithHeads
    from ada_utils.train.data import select_rows
    from ada_utils.train.loop import _optimizer
    from ada_utils.train.methods import build_model
    from ada_utils.train.run_folder import load_checkpoint, read_log, save_checkpoint
    from ada_utils.train.step import FeatureSource

    (tmp_path / "log.jsonl").write_text('{"step": 0, "loss": 1.5}\n{"step": 1, "loss": 1.2}\n{"step": 2, "lo')
    assert read_log(tmp_path) == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 1.2}]  # kill -9 mid-line
    (tmp_path / "log.jsonl").write_text('{"step": 0, "lo\n{"step": 1, "loss": 1.2}\n')
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        read_log(tmp_path)
    data, cfg = _data(), _cfg(method="ada")
    rows = select_rows(cfg, data)
    model = EncoderWithHeads(build_model(cfg, data, rows))
    opt, stepper = _optimizer(cfg, model), Step(cfg, data, rows, FeatureSource(data))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # float16 autocast's scaler (CUDA in training)
    scaler.scale(torch.ones(()))  # starts the scale
    scaler.update(new_scale=64.0)
    save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, stepper, 5, scaler)
    fresh = torch.amp.GradScaler("cpu")
    assert load_checkpoint(tmp_path / "ckpt.safetensors", model, opt, stepper, fresh) == 5
    assert fresh.get_scale() == 64.0


def test_whitening_fits_are_remembered_and_equal_a_fresh_fit(tmp_path: Path, monkeypatch) -> None:
    """Runs on the same training rows fit each whitening map once per process; every head equals, bit for bit, the
    head of a process that fitted it afresh (ICA edits its copy in place without touching the remembered map)."""
    from ada_utils.train import methods
    from ada_utils.whitening import Whitening

    data = _data()
    fits = []
    original = Whitening.fit
    monkeypatch.setattr(Whitening, "fit", lambda self, x: fits.append(len(x)) or original(self, x))
    configs = [TrainConfig(method="whiten"), TrainConfig(method="ica"), TrainConfig(method="whiten"),
               TrainConfig(method="ada", lam=3.0), TrainConfig(method="ada", lam=3.0, center="pooled")]
    heads = {}
    for remember in (False, True):
        methods._WHITENING.clear()
        monkeypatch.setattr(methods, "_WHITENING_KEPT", 8 if remember else 0)
        fits.clear()
        heads[remember] = [{k: v.clone() for k, v in train(cfg, data, tmp_path / f"r{i}", overwrite=True,
                                                           progress=False).model.state_dict().items()}
                           for i, cfg in enumerate(configs)]
        assert len(fits) == (5 if remember else 9)  # whiten per domain: 2; ica, shared: 1; then ada x2 + pooled x2
    for fresh, kept in zip(heads[False], heads[True]):
        assert all(torch.equal(fresh[k], kept[k]) for k in fresh)


def test_each_method_unit_says_what_it_fits_and_where_its_heads_start() -> None:
    """The method table of ``train.methods``: one unit per method, asked by the loop instead of the method's name."""
    from ada_utils.train.config import METHODS
    from ada_utils.train.methods import UNITS

    assert set(METHODS) == set(UNITS) and all(UNITS[m].name == m for m in METHODS)
    table = {m: (c.fitted_in_closed_form, c.unit.reads_pairs, c.uses_alignment, c.uses_infomax, c.head_init,
                 c.unit.shared(c)) for m in METHODS for c in [TrainConfig(method=m)]}
    assert table == {"pretrained": (True, False, False, False, "identity", True),
                     "whiten": (True, False, False, False, "whiten", False),
                     "ica": (True, False, False, False, "whiten", True),
                     "align": (False, False, True, False, "whiten", False),
                     "disentangle": (False, False, False, True, "whiten", False),
                     "ada": (True, False, True, True, "whiten", False),
                     "supervised": (False, True, False, False, "identity", False)}
    # A closed-form fit starts from whitening whatever `init` says; a gradient run starts where `init` says.
    assert TrainConfig(method="ada", init="identity").head_init == "whiten"
    assert TrainConfig(method="ada", solver="gradient", init="identity").head_init == "identity"
    assert TrainConfig(method="supervised", init="whiten").head_init == "whiten"
    assert TrainConfig(method="whiten", cov_mode="pooled").unit.shared(TrainConfig(method="whiten", cov_mode="pooled"))
    w = lambda_schedule(TrainConfig(method="supervised"), 4)
    assert (w == [1, 0]).all()  # its pair InfoNCE takes the first weight


def test_fixed_pseudo_pairs_train_both_solvers_and_follow_the_rows(tmp_path: Path) -> None:
    """alignment="pairs": the pool's fixed positives replace the nearest-neighbour search; the closed form fits its
    scatter on them, the gradient run's InfoNCE falls on them, a subset remaps them and a missing table is named."""
    from ada_utils.eval.mechanism import with_positives
    from ada_utils.train.data import subset

    data = _data()
    paired = with_positives(data, data.pairs)
    assert (paired.positives[data.pairs[:, 1]] == data.pairs[:, 0]).all()
    assert paired.fingerprint(with_pairs=False) != data.fingerprint(with_pairs=False)
    closed = train(TrainConfig(method="ada", alignment="pairs", lam=3.0), paired, tmp_path / "c", progress=False)
    views = train(TrainConfig(method="ada", alignment="views", lam=3.0), paired, tmp_path / "v", progress=False)
    assert not torch.equal(closed.model.real.weight, views.model.real.weight)
    res = train(_cfg(method="align", alignment="pairs"), paired, tmp_path / "g", progress=False)
    values = [r["loss_align"] for r in res.log]
    assert np.mean(values[-3:]) < np.mean(values[:3])
    rows = np.arange(0, len(data.feats), 2)
    sub = subset(paired, rows)
    kept = sub.positives >= 0
    assert (paired.positives[rows[kept]] == rows[sub.positives[kept]]).all()
    dropped = paired.positives[rows[~kept]]  # their partner left with the odd rows
    assert ((dropped == -1) | (dropped % 2 == 1)).all()
    with pytest.raises(ValueError, match="positives"):
        train(_cfg(method="align", alignment="pairs"), data, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="positives"):
        train(TrainConfig(method="ada", alignment="pairs"), data, tmp_path / "y", overwrite=True, progress=False)


def test_infomax_ica_with_per_domain_heads_keeps_each_heads_scale(tmp_path: Path) -> None:
    """Each per-domain head carries its own −log|det W_g|: without it the synthetic head only shrinks (the bug of
    applying the real head's log-det alone)."""
    res = train(_cfg(method="disentangle", infomax="ica", heads="per_domain", lr=1e-2, epochs=30), _data(),
                tmp_path / "run", progress=False)
    logdets = [float(torch.linalg.slogdet(res.model.head_for(g).weight.detach())[1]) for g in (0, 1)]
    # measured: log|det| of (real, synthetic) 1.0 and 1.6 now; 4.9 and -15.4 with the real head's log-det alone
    assert logdets[1] > logdets[0] - 3.0, logdets


def test_per_domain_ica_loss_is_the_row_weighted_loss_of_each_head() -> None:
    from ada_utils import losses
    from ada_utils.heads import DomainHeads
    from ada_utils.train.step import ica_loss

    heads = DomainHeads("linear", 4, shared=False)
    with torch.no_grad():
        heads.synth.linear.weight.mul_(2.0)
    y = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    dom = torch.tensor([0] * 4 + [1] * 6)
    expected = (0.4 * losses.infomax_ica_loss(y[:4], heads.real.weight)
                + 0.6 * losses.infomax_ica_loss(y[4:], heads.synth.weight))
    assert torch.allclose(ica_loss(heads, y, dom, nonlinearity="logistic"), expected)
    shared = DomainHeads("linear", 4, shared=True)
    assert torch.allclose(ica_loss(shared, y, dom, nonlinearity="logistic"),
                          losses.infomax_ica_loss(y, shared.real.weight))


def _validation(seed: int = 5):
    """A validation benchmark drawn like ``_data`` (other concepts): synthetic rows query their real row."""
    from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures

    val = _data(seed=seed)
    real, synth = np.flatnonzero(val.domain == 0), np.flatnonzero(val.domain == 1)
    owner = np.arange(len(val.domain)) % len(real)
    case = CaseFeatures({"scene": val.feats[synth]}, {"scene": owner[synth]}, val.feats[real], owner[real])
    return BenchmarkFeatures({"val": case}, _data(seed=seed + 1).feats[:50], {})


def test_early_stopping_keeps_the_best_validation_heads_and_records_both_curves(tmp_path: Path) -> None:
    from ada_utils.train.stopping import read_curve, validation_score

    cfg = _cfg(method="supervised", lr=5e-2, epochs=60, eval_every=3, patience=2)
    val = _validation()
    res = train(cfg, _data(), tmp_path / "r", progress=False, validation=val)
    curve = read_curve(tmp_path / "r")
    header = json.loads((tmp_path / "r" / "config.json").read_text())
    stop = header["stopping"]
    assert [r["step"] for r in curve] == list(range(0, 3 * len(curve), 3))  # the state after 0, 3, 6, ... updates
    assert stop["early"] and stop["stopped_at"] == res.steps < stop["budget_steps"] == header["steps"]
    best = max(curve, key=lambda r: r["val_R@5"])
    warmup = round(cfg.warmup_frac * stop["budget_steps"])
    after = [r for r in curve[curve.index(best) + 1:] if r["step"] >= warmup]
    assert stop["best_step"] == best["step"] and len(after) == 2 and res.steps >= warmup  # patience 2, after warm-up
    assert f"after the {warmup}-step warm-up" in stop["rule"]
    assert validation_score(res.model, val)["val_R@5"] == best["val_R@5"]
    assert len(res.log) == res.steps and all(r["train_loss"] is not None for r in curve[1:])
    # without validation data the run takes its whole budget, and says so
    full = train(cfg, _data(), tmp_path / "f", progress=False)
    assert full.steps == stop["budget_steps"]
    assert json.loads((tmp_path / "f" / "config.json").read_text())["stopping"]["rule"] == "none: the whole budget"


def test_early_stopped_run_resumes_to_the_same_choice(tmp_path: Path) -> None:
    cfg = _cfg(method="supervised", lr=5e-2, epochs=60, eval_every=3, patience=2, checkpoint_every=4)
    val, data = _validation(), _data()
    full = train(cfg, data, tmp_path / "full", progress=False, validation=val)
    assert train(cfg, data, tmp_path / "killed", progress=False, stop_at=full.steps - 1, validation=val) is None
    resumed = train(cfg, data, tmp_path / "killed", resume=True, progress=False, validation=val)
    assert resumed.steps == full.steps
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert (tmp_path / "full" / "validation.jsonl").read_text() == (tmp_path / "killed" / "validation.jsonl").read_text()
