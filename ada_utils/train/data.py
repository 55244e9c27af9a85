"""The unlabelled training pool as cached features, the rows a run trains on, and a validation split.

Unsupervised methods see only ``TrainData.feats``/``views`` and the real/synthetic flag; only ``supervised``
reads ``TrainData.pairs``. ``validation_split`` carves held-out validation models from the *training* split,
so defaults are chosen without test cells.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ada_utils.train.config import TrainConfig


@dataclass
class TrainData:
    """Cached features of the unlabelled training pool.

    Attributes:
        feats: (N, D) float32 features of the plain images (pool order = ``data.pools.training_pool``).
        domain: (N,) int64, 0 = real, 1 = synthetic.
        views: (V, N, D) float32 features of V augmented views, or None.
        ids: N opaque ids (for the data hash).
        pairs: (P, 2) int64 rows (real, synthetic) of matched training pairs: supervised baseline only.
        pair_model: (P,) int64 model index of each pair: supervised baseline only.
        paths: N image files (image path, ``finetune != "frozen"``).
        source: where the pool's images come from (``train_json``, ``folders`` or ``transductive``;
            :mod:`ada_utils.data.pools`); recorded with every run trained on it.
        positives: (N,) int64 fixed cross-domain positive of each row (-1: none), made without labels by a pseudo-pair
            source (:mod:`ada_utils.pseudo_pairs`); read by ``alignment="pairs"``.
    """

    feats: np.ndarray
    domain: np.ndarray
    views: np.ndarray | None = None
    ids: list[str] | None = None
    pairs: np.ndarray | None = None
    pair_model: np.ndarray | None = None
    paths: list[Path] | None = None
    source: str = "train_json"
    positives: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.feats)
        if self.feats.ndim != 2 or self.domain.shape != (n,):
            raise ValueError(f"TrainData: feats must be (N, D) and domain (N,); got {self.feats.shape}, "
                             f"{self.domain.shape}")
        if self.positives is not None and (self.positives.shape != (n,) or not (
                (self.positives >= -1) & (self.positives < n)).all()):
            raise ValueError(f"TrainData: positives must be (N,) = ({n},) row indices or -1, got shape "
                             f"{self.positives.shape}")
        if self.views is not None and self.views.shape[1:] != self.feats.shape:
            raise ValueError(f"TrainData: views must be (V, N, D) = (V, {n}, {self.feats.shape[1]}), "
                             f"got {self.views.shape}")

    def fingerprint(self, *, with_pairs: bool) -> str:
        """SHA-256 over features, domains, views, fixed positives, ids (and pairs for the supervised baseline)."""
        h = hashlib.sha256()
        for arr in (self.feats, self.domain, self.views, self.positives):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.ids or []).encode())
        if with_pairs and self.pairs is not None:
            h.update(np.ascontiguousarray(self.pairs).tobytes())
            h.update(np.ascontiguousarray(self.pair_model).tobytes())
        return h.hexdigest()


def training_data(encoder, root: str | Path, *, n_views: int = 1, augment: str = "gap", seed: int = 0,
                  with_pairs: bool = False, pool: str = "auto", real_dirs: Sequence[str | Path] = (),
                  synth_dirs: Sequence[str | Path] = (), batch_size: int | None = None, num_workers: int = 0,
                  progress: bool = True) -> TrainData:
    """Cached features of a benchmark's unlabelled training pool (plain images + ``n_views`` augmented views).

    The pool comes from :func:`ada_utils.data.pools.training_pool` (content-hash order, opaque ids, real/synthetic flag only), so
    renaming folders or re-pairing images cannot change what the unsupervised methods see. Each image and view
    is embedded once and cached by ``ada_utils.encoders.embed_images`` (key: encoder spec + view recipe).

    Args:
        encoder: an ``Encoder`` (frozen).
        root: benchmark root (AbC layout).
        n_views: augmented views per image (``augment.SeededAugment`` views 0..n_views-1).
        augment: view recipe, ``"generic"`` or ``"gap"``.
        seed: seed of the views (data seed, not the training seed).
        with_pairs: also read ``data.training_pairs`` (supervised baseline only; needs the training JSON).
        pool, real_dirs, synth_dirs: where the unlabelled images come from (:mod:`ada_utils.data.pools`).
        batch_size, num_workers, progress: passed to ``embed_images``.
    """
    from ada_utils.augment import SeededAugment, ViewTransform
    from ada_utils.data import training_pairs
    from ada_utils.data.pools import training_pool
    from ada_utils.encoders.embed import embed_images

    pool = training_pool(root, source=pool, real_dirs=real_dirs, synth_dirs=synth_dirs)
    if with_pairs and pool.source != "train_json":
        raise ValueError(f"the supervised baseline needs the labelled pairs of a training JSON; this pool comes from "
                         f"{pool.source!r} (train_pool)")
    # Content ids key the cache: the same images hit the same cache however the root path is spelled.
    kw = {"ids": pool.ids, "batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    feats = np.array(embed_images(encoder, pool.paths, **kw).feats, dtype=np.float32)  # a writable copy
    views = []
    for v in range(n_views):
        aug = SeededAugment(augment, encoder.image_size, view=v, seed=seed)
        feats_v = embed_images(encoder, pool.paths, transform=ViewTransform(aug, encoder.preprocess),
                               transform_key=aug.key, **kw).feats
        views.append(np.array(feats_v, dtype=np.float32))
    pairs = pair_model = None
    if with_pairs:
        index = {Path(p).resolve(): i for i, p in enumerate(pool.paths)}
        found = [(index[Path(e).resolve()], index[Path(s).resolve()], m) for e, s, m in training_pairs(root)]
        pairs = np.asarray([f[:2] for f in found], dtype=np.int64)
        pair_model = np.asarray([f[2] for f in found], dtype=np.int64)
    return TrainData(feats, pool.domain.astype(np.int64), np.stack(views) if views else None, list(pool.ids),
                     pairs, pair_model, list(pool.paths), pool.source)


def prefix_training_data(encoder, root: str | Path, *, k: int, n_views: int = 1, augment: str = "gap", seed: int = 0,
                         pool: str = "auto", real_dirs: Sequence[str | Path] = (),
                         synth_dirs: Sequence[str | Path] = (), progress: bool = True) -> TrainData:
    """The pool of :func:`training_data` (same rows, same views) as the input of the encoder's ``blocks[-k]``:
    flattened activations of the frozen layers (:class:`ada_utils.encoders.split.PrefixEncoder`), embedded once and
    cached like features, for ``finetune_from="activations"``."""
    from ada_utils.encoders.split import PrefixEncoder

    return training_data(PrefixEncoder(encoder, k), root, n_views=n_views, augment=augment, seed=seed, pool=pool,
                         real_dirs=real_dirs, synth_dirs=synth_dirs, with_pairs=False, progress=progress)


def select_rows(cfg: TrainConfig, data: TrainData) -> np.ndarray:
    """Row indices of the pool used for training (domains, then the first n_train in pool order)."""
    rows = np.arange(len(data.feats))
    if cfg.train_domains != "both":
        rows = rows[data.domain == (0 if cfg.train_domains == "real" else 1)]
    if cfg.n_train:
        rows = rows[: cfg.n_train]
    if len(rows) < 2:
        raise ValueError(f"train_domains={cfg.train_domains!r}, n_train={cfg.n_train} leave {len(rows)} rows")
    return rows


def validation_split(root: str | Path, data: TrainData, *, every: int = 4):
    """A held-out validation benchmark carved from the *training* split, for choosing defaults without test cells.

    Every ``every``-th training model is a validation model: its synthetic images are queries, its exemplars the
    targets, and the exemplars of the other training models are the distractors (real images). Every image of a
    validation model is removed from the returned training data, for the unsupervised methods too: fitting on
    the validation images themselves (transductively) rewards statistics that do not carry over to new images
    (``04_ablations`` measures how much).

    Returns:
        (``encoders.BenchmarkFeatures`` with one case ``"val"``, ``TrainData`` of the other models' images).
    """
    from ada_utils.data import json_path, load_test_case
    from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures

    if data.paths is None:
        raise ValueError("validation_split needs TrainData.paths (use training_data)")
    case = load_test_case(json_path(root, "train_all"), root=root)
    row = {Path(p).resolve(): i for i, p in enumerate(data.paths)}
    val = [m for m in range(len(case.models)) if m % every == 0]
    new_id = {m: i for i, m in enumerate(val)}
    ex_rows = [[row[Path(p).resolve()] for p in case.models[m].exemplars] for m in range(len(case.models))]
    queries, query_model, held = {}, {}, {r for m in val for r in ex_rows[m]}
    for prompt in case.prompt_types:
        keep = [(row[Path(p).resolve()], new_id[m]) for p, m in zip(case.queries[prompt],
                                                                    case.query_model[prompt].tolist()) if m in new_id]
        held.update(r for r, _ in keep)
        if keep:
            queries[prompt] = data.feats[[k for k, _ in keep]]
            query_model[prompt] = np.asarray([m for _, m in keep], dtype=np.int64)
    exemplars = [r for m in val for r in ex_rows[m]]
    exemplar_model = np.asarray([new_id[m] for m in val for _ in ex_rows[m]], dtype=np.int64)
    distractors = [r for m in range(len(case.models)) if m not in new_id for r in ex_rows[m]]
    bf = BenchmarkFeatures({"val": CaseFeatures(queries, query_model, data.feats[exemplars], exemplar_model)},
                           data.feats[distractors], {})
    return bf, subset(data, np.asarray([r for r in range(len(data.feats)) if r not in held], dtype=np.int64))


def stopping_split(cfg: TrainConfig, root: str | Path, data: TrainData):
    """(validation benchmark or None, training data) for one run: a gradient-trained run on cached features of a
    pool with a training JSON stops early on :func:`validation_split`'s validation models, whose images leave its
    pool; a closed-form fit, the image path, or a pool without labels keeps ``data`` whole and takes its budget."""
    if cfg.fitted_in_closed_form or cfg.finetune != "frozen" or data.source != "train_json":
        return None, data
    return validation_split(root, data)


def subset(data: TrainData, rows: np.ndarray) -> TrainData:
    """``data`` restricted to ``rows`` (pool order kept); pairs, and fixed positives, with a dropped image are
    dropped."""
    new = np.full(len(data.feats), -1, dtype=np.int64)
    new[rows] = np.arange(len(rows))
    pairs = pair_model = None
    if data.pairs is not None:
        keep = (new[data.pairs] >= 0).all(axis=1)
        pairs, pair_model = new[data.pairs[keep]], data.pair_model[keep]
    return TrainData(data.feats[rows], data.domain[rows], None if data.views is None else data.views[:, rows],
                     None if data.ids is None else [data.ids[r] for r in rows], pairs, pair_model,
                     None if data.paths is None else [data.paths[r] for r in rows], data.source,
                     None if data.positives is None else np.where(data.positives[rows] >= 0,
                                                                  new[data.positives[rows]], -1))
