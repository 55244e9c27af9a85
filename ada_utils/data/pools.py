"""Where the unsupervised method's unlabelled training images come from, on AbC or any AbC-layout root.

AbC's train/val split is not generally available, and the method needs only unlabelled images with a
real/synthetic flag, so a pool comes from, in this order of preference (``source="auto"``):

1. ``train_json``: the benchmark's training JSON (``dataset/json/train_all.json``; the embedded benchmark and the
   Hugging Face mirror have one): every exemplar (real) and synthetic image of the training models;
2. ``folders``: folders the user names: synthetic images from their own customised models (``synth_dirs``) and
   real images such as the LAION distractors (``real_dirs``);
3. ``transductive``, only when asked: the test cells' synthetic images, without their labels, and the
   distractors as real images. Every output of such a run says "transductive": its images are the test queries.

Whatever the source, the pool is a flat list in content-hash order with opaque ids (:func:`ada_utils.data.abc.pool_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ada_utils.data.abc import (IMAGE_SUFFIXES, Layout, Pool, json_path, list_distractors, load_test_case, pool_of,
                                require_root, test_case_names, unlabelled_pool)

POOL_SOURCES = ("auto", "train_json", "folders", "transductive")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: training image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this training folder")
    return files


def _transductive(root: Path, layout: Layout) -> Pool:
    cases = [json_path(root, name, layout=layout) for name in test_case_names(root, layout=layout)]
    synth = [p for c in cases for q in load_test_case(c, root=root, layout=layout).queries.values() for p in q]
    return pool_of([(p, 0) for p in list_distractors(root, layout=layout)] + [(p, 1) for p in synth],
                   source="transductive")


def training_pool(root: str | Path, *, source: str = "auto", real_dirs: Sequence[str | Path] = (),
                  synth_dirs: Sequence[str | Path] = (), split_json: str = "train_all.json",
                  layout: Layout = "auto") -> Pool:
    """The unlabelled training pool of ``root`` from ``source`` (see the module docstring).

    Args:
        root: data root (AbC repository or Hugging Face layout). source: one of :data:`POOL_SOURCES`.
        real_dirs, synth_dirs: folders of real / synthetic images (``source="folders"``, or ``"auto"`` without a
            training JSON). split_json: the training JSON's name. layout: see :func:`ada_utils.data.abc.resolve`.
    """
    if source not in POOL_SOURCES:
        raise ValueError(f"train_pool={source!r}: choose one of {', '.join(POOL_SOURCES)}")
    require_root(root)
    has_json = json_path(root, split_json, layout=layout).is_file()
    if source == "auto":
        source = "train_json" if has_json else "folders" if (real_dirs or synth_dirs) else ""
        if not source:
            raise FileNotFoundError(
                f"{json_path(root, split_json, layout=layout)}: no training JSON. Name folders of unlabelled "
                "images (train_real_dirs / train_synth_dirs: your own customised models' images, LAION images), or "
                "set train_pool='transductive' to fit on the test cells' synthetic images without their labels "
                "(every output then says 'transductive').")
    if source == "train_json":
        return unlabelled_pool(root, split_json=split_json, layout=layout)
    if source == "transductive":
        return _transductive(Path(root), layout)
    if not (real_dirs or synth_dirs):
        raise ValueError("train_pool='folders' needs train_real_dirs and/or train_synth_dirs")
    items = [(p, 0) for d in real_dirs for p in _images(Path(d))] + \
        [(p, 1) for d in synth_dirs for p in _images(Path(d))]
    return pool_of(items, source="folders")
