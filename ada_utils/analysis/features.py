"""The features the analysis chapters (01 cross-covariance, 02 CCA decomposition) compute their statistics on.

For each encoder (``random``, ``pretrained`` or a ``03_train`` method) a :class:`FeatureSet` holds the raw
backbone features of the test cells and of the unlabelled training pool, embedded once per backbone, plus the
trained head as numpy maps; :func:`matched_pairs` turns it into the matched (synthetic query, real exemplar of
its model) test pairs. Every encoder is read in one coordinate basis per backbone: the top-k
principal directions of the backbone's features on the training pool, applied to the backbone and to every head
on it (:mod:`.basis`). :meth:`Pairs.model_permuted` is the grouped null and :func:`control_pairs` the no-signal
control of the cross-fitted statistics (:mod:`.measures`). Conventions: rows are samples; model ids are made unique across test
cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from ada_utils.encoders.backbones import Encoder
    from ada_utils.train.config import TrainConfig
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.train.data import TrainData

FeatureMap = Callable[[np.ndarray], np.ndarray]


@dataclass
class FeatureSet:
    """One encoder of the analysis chapters: raw backbone features plus the (optional) trained maps.

    Attributes:
        name: encoder label (``random``, ``pretrained``, ``whiten``, ``align``, ``ada``, ...).
        bench: ``BenchmarkFeatures`` of the test cells (raw backbone features).
        pool: ``TrainData`` of the unlabelled training pool (raw features ``(N, D)`` float32, ``domain`` ``(N,)``
            0 real / 1 synthetic, ``paths``) with its matched training pairs (``pairs`` ``(P, 2)`` rows
            (real, synthetic), ``pair_model`` ``(P,)``).
        real_map, synth_map: numpy ``(n, D) -> (n, D')`` maps of real / synthetic features (None = identity).
        source: where the maps come from (a run folder, "closed form" or "none").
    """

    name: str
    bench: BenchmarkFeatures
    pool: TrainData
    real_map: FeatureMap | None = None
    synth_map: FeatureMap | None = None
    source: str = "none"

    def real(self, X: np.ndarray) -> np.ndarray:
        """``(n, D')`` float64: real-domain features ``X`` ``(n, D)`` through ``real_map``."""
        return np.asarray(X if self.real_map is None else self.real_map(np.asarray(X, np.float32)), np.float64)

    def synth(self, X: np.ndarray) -> np.ndarray:
        """``(n, D')`` float64: synthetic-domain features ``X`` ``(n, D)`` through ``synth_map``."""
        return np.asarray(X if self.synth_map is None else self.synth_map(np.asarray(X, np.float32)), np.float64)

    def mapped_pool(self) -> np.ndarray:
        """``(N, D')`` pool features through the map of each row's domain."""
        feats, domain = self.pool.feats, self.pool.domain
        out = np.empty((len(feats), self.real(feats[:1]).shape[1]))
        for dom, fn in ((0, self.real), (1, self.synth)):
            rows = domain == dom
            if rows.any():
                out[rows] = fn(feats[rows])
        return out


def _find_run(name: str, *, seed: int, train_params: dict, root: Path, runs: Path) -> tuple[Path | None, str]:
    """The newest finished, frozen-encoder 03_train run of method ``name`` and ``seed`` with ``train_params``,
    evaluated on this benchmark (:func:`ada_utils.train.run_folder.find_run`), or None and why not.

    Runs that fine-tuned their encoder are passed over: these chapters apply a head to the frozen backbone's
    features.
    """
    from ada_utils.train.run_folder import find_run

    run = find_run(runs, root=root, method=name, seed=seed, finetune="frozen", **train_params)
    if run is None:
        return None, "no 03_train run of this configuration"
    return run, str(run.relative_to(runs.parent))


def _default_config(name: str, *, seed: int, train_params: dict, epochs: int | None) -> TrainConfig:
    """The ``TrainConfig`` of a head this chapter would fit itself: the defaults with ``train_params``."""
    from ada_utils.train.config import TrainConfig

    extra = {"epochs": epochs} if epochs else {}
    return TrainConfig.from_dict({**train_params, "method": name, "seed": seed, **extra})


def _ablation_run(name: str, *, seed: int, train_params: dict, epochs: int | None, root: Path,
                  folder: Path) -> Path | None:
    """A finished ``04_ablations`` run of exactly the configuration this chapter would fit, on this benchmark.

    Chapter 04 trains every method (its final comparison) with the defaults; reading its run instead of fitting
    the same head again is what its ``needs`` entry is for.
    """
    from ada_utils.files import read_json
    from ada_utils.train.config import TrainConfig

    summary = folder / "summary.json"
    if not summary.is_file() or read_json(summary).get("data_root") != root.name:
        return None
    want = _default_config(name, seed=seed, train_params=train_params, epochs=epochs)
    for run in sorted(p for p in folder.iterdir() if (p / "head.safetensors").is_file()):
        saved = read_json(run / "config.json") if (run / "config.json").is_file() else {}
        if saved.get("status") == "finished" and TrainConfig.from_dict(saved.get("config", {})) == want:
            return run
    return None


def _fallback_maps(name: str, pool: TrainData, *, seed: int, train_params: dict, out: Path, epochs: int | None,
                   encoder: Encoder, root: Path) -> tuple[FeatureMap, FeatureMap]:
    """Train the head of ``name`` here (TrainConfig defaults) when neither 03_train nor 04_ablations has it.

    ``pool`` has no augmented views; the closed-form ``ada`` fit pairs each image with its views, so for it the
    pool is embedded again with ``TrainConfig``'s views (``encoder``, ``root``; cached by ``embed_images``).
    """
    from ada_utils.train.data import training_data
    from ada_utils.train.loop import feature_maps, train

    cfg = _default_config(name, seed=seed, train_params=train_params, epochs=epochs)
    if cfg.fitted_in_closed_form and cfg.uses_alignment and cfg.alignment in ("views", "both") and pool.views is None:
        pool = training_data(encoder, root, n_views=max(cfg.n_views, 1), augment=cfg.augment, with_pairs=True)
    result = train(cfg, pool, out / f"{name}-seed{seed}", overwrite=True, progress=False)
    return feature_maps(result.model)


def load_feature_sets(names: Sequence[str], *, root: Path, backbone: str, weights: str, image_size: int, seed: int,
                      device: str, distractors: int | None, fallback: Path, fallback_epochs: int | None = None,
                      random_image_size: int | None = None) -> dict[str, FeatureSet]:
    """Embed the test cells and the unlabelled training pool once per backbone and attach each encoder's maps.

    ``random``: random-init backbone (at ``random_image_size`` px if given: smoke runs use a small size, the
    CPU forward pass being the cost); ``pretrained``: the backbone as is; any other name is a ``03_train``
    method whose head is read from its ``03_train`` run of this configuration, else from the ``04_ablations`` run of the
    same configuration, else trained into ``fallback``.
    """
    from ada_utils.project import runs_dir, set_seed
    from ada_utils.encoders.backbones import load_encoder
    from ada_utils.encoders.features import embed_benchmark
    from ada_utils.train.loop import feature_maps
    from ada_utils.train.data import training_data

    params = {"backbone": backbone, "weights": weights, "image_size": image_size}
    runs = {n: _find_run(n, seed=seed, train_params=params, root=root, runs=runs_dir() / "03_train")
            for n in names if n not in ("random", "pretrained")}  # checked before any embedding
    raw: dict[bool, tuple[Encoder, BenchmarkFeatures, TrainData]] = {}
    out = {}
    for name in names:
        pretrained = name != "random"
        if pretrained not in raw:
            set_seed(seed)
            size = image_size if pretrained else (random_image_size or image_size)
            enc = load_encoder(backbone, (weights or None) if pretrained else None, device, image_size=size,
                               pretrained=pretrained)
            raw[pretrained] = (enc, embed_benchmark(enc, root, distractors=distractors),
                               training_data(enc, root, n_views=0, with_pairs=True))
        enc, bench, pool = raw[pretrained]
        maps, source = (None, None), "none"
        if name in runs:
            run, source = runs[name]
            if run is None:
                run = _ablation_run(name, seed=seed, train_params=params, epochs=fallback_epochs, root=root,
                                    folder=runs_dir() / "04_ablations")
                source = f"{source}, no 04_ablations run" if run is None else str(run.relative_to(runs_dir()))
            if run is not None:
                maps = feature_maps(run)
            else:
                maps = _fallback_maps(name, pool, seed=seed, train_params=params, out=fallback, epochs=fallback_epochs,
                                      encoder=enc, root=root)
                source = f"trained here with default settings ({source})"
        out[name] = FeatureSet(name, bench, pool, *maps, source=source)
    return out


@dataclass
class Pairs:
    """Matched (synthetic query, real exemplar of its model) test pairs in an encoder's output coordinates.

    Attributes:
        synth: ``(n, D)`` float64; real: ``(n, D)`` float64 (row i matches row i).
        model: ``(n,)`` int64 concept id, unique across test cases; case: ``(n,)`` test-case name.
        exemplar: ``(n,)`` int64 id of the real exemplar, unique across test cases.
    """

    synth: np.ndarray
    real: np.ndarray
    model: np.ndarray
    case: np.ndarray
    exemplar: np.ndarray

    def in_basis(self, basis: np.ndarray) -> Pairs:
        """The same pairs in the coordinates ``basis`` ``(D, k)`` (:mod:`ada_utils.analysis.basis`): ``(n, k)`` a side."""
        return Pairs(self.synth @ basis, self.real @ basis, self.model, self.case, self.exemplar)

    def model_permuted(self, seed: int) -> Pairs:
        """The grouped null: within each test case, model identities permuted (a random cycle over its models).

        The synthetic rows of model m keep their order and their model id; their real rows become those of
        another model m' of the same test case (row j of m gets row ``j mod n_m'`` of m'). Each model's rows stay
        together and each exemplar keeps its repeats, so the null has the grouping of the matched pairs and only
        the concept link is broken (shuffling single rows across models would break the grouping too).

        Raises:
            ValueError: a test case with a single model (nothing to permute).
        """
        rng = np.random.default_rng(seed)
        src = np.arange(len(self.model))
        for case in np.unique(self.case):
            models = rng.permutation(np.unique(self.model[self.case == case]))
            if len(models) < 2:
                raise ValueError(f"grouped null: test case {case!r} has a single model; nothing to permute")
            for m, other in zip(models, np.roll(models, -1)):
                rows, donor = np.flatnonzero(self.model == m), np.flatnonzero(self.model == other)
                src[rows] = donor[np.arange(len(rows)) % len(donor)]
        return Pairs(self.synth, self.real[src], self.model, self.case, self.exemplar[src])


def control_pairs(pairs: Pairs, *, dim: int, seed: int) -> Pairs:
    """Independent Gaussian features with exactly the grouping of ``pairs``: the no-signal control.

    Each synthetic row gets its own ``N(0, I_dim)`` vector; each real exemplar gets one, repeated on every row
    where that exemplar repeats; model, case and exemplar ids are those of ``pairs``. Any correlation a statistic
    finds between the two sides is bias.

    Returns:
        ``Pairs`` with ``(n, dim)`` float64 features.
    """
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(pairs.exemplar, return_inverse=True)
    real = rng.standard_normal((len(ids), dim))[inverse]
    return Pairs(rng.standard_normal((len(pairs.model), dim)), real, pairs.model, pairs.case, pairs.exemplar)


def pair_indices(query_model: np.ndarray, exemplar_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matched pairs (query, exemplar of the same model): query j of model m gets that model's exemplar j mod E_m.

    Args:
        query_model: ``(Q,)`` int model index per synthetic query. exemplar_model: ``(E,)`` per real exemplar.

    Returns:
        ``(qi, ei)``: ``(P,)`` int64 index arrays (queries whose model has no exemplar are dropped).
    """
    by_model: dict[int, np.ndarray] = {}
    for m in np.unique(exemplar_model):
        by_model[int(m)] = np.flatnonzero(exemplar_model == m)
    seen: dict[int, int] = {}
    qi, ei = [], []
    for j, m in enumerate(np.asarray(query_model).tolist()):
        if m in by_model:
            ex = by_model[m]
            qi.append(j)
            ei.append(ex[seen.get(m, 0) % len(ex)])
            seen[m] = seen.get(m, 0) + 1
    return np.asarray(qi, dtype=np.int64), np.asarray(ei, dtype=np.int64)


def matched_pairs(fs: FeatureSet) -> Pairs:
    """All test pairs: query j of model m (prompt types concatenated) with exemplar ``j mod E_m`` (as
    ``data.training_pairs``), mapped by the encoder's real/synthetic maps."""
    synth, real, model, case, exemplar, offset, ex_offset = [], [], [], [], [], 0, 0
    for name, cf in fs.bench.cases.items():
        q = np.concatenate([np.asarray(cf.queries[p]) for p in cf.queries])
        qm = np.concatenate([np.asarray(cf.query_model[p]) for p in cf.queries])
        qi, ei = pair_indices(qm, np.asarray(cf.exemplar_model))
        synth.append(fs.synth(q[qi]))
        real.append(fs.real(np.asarray(cf.exemplars)[ei]))
        model.append(offset + qm[qi])
        case.append(np.full(len(qi), name))
        exemplar.append(ex_offset + ei)
        offset += int(max(qm.max(), np.asarray(cf.exemplar_model).max())) + 1
        ex_offset += len(cf.exemplar_model)
    return Pairs(np.vstack(synth), np.vstack(real), np.concatenate(model), np.concatenate(case),
                 np.concatenate(exemplar))


def training_pair_features(fs: FeatureSet, basis: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched *training* pairs (``data.training_pairs``; training split only) from the pool features.

    Args:
        fs: the encoder. basis: optional ``(D', k)`` coordinates (:mod:`.basis`) to read them in.

    Returns:
        ``synth (P, D')``, ``real (P, D')`` float64 (mapped; ``(P, k)`` in ``basis``) and ``model (P,)`` int64.
    """
    real_rows, synth_rows = fs.pool.pairs[:, 0], fs.pool.pairs[:, 1]
    synth, real = fs.synth(fs.pool.feats[synth_rows]), fs.real(fs.pool.feats[real_rows])
    if basis is not None:
        synth, real = synth @ basis, real @ basis
    return synth, real, fs.pool.pair_model


def project_2d(X: np.ndarray, *, method: str, seed: int) -> np.ndarray:
    """``(n, 2)`` coordinates of ``X`` ``(n, D)`` for a picture only: UMAP (cosine) or the top-2 PCA scores."""
    if method == "umap":
        import umap

        return umap.UMAP(n_neighbors=15, metric="cosine", random_state=seed).fit_transform(X)
    if method != "pca":
        raise ValueError(f"projection={method!r}: choose 'umap' or 'pca'")
    Xc = X - X.mean(0)
    return Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T
