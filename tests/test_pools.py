"""Training pools on any AbC-layout root: the training JSON, folders the user names, or (only when asked) the
test cells' synthetic images, labelled transductive."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ada_utils.data import json_path, list_distractors, load_test_case
from ada_utils.data.pools import training_pool


def test_auto_prefers_the_training_json(tiny_root: Path) -> None:
    pool = training_pool(tiny_root)
    case = load_test_case(json_path(tiny_root, "train_all"), root=tiny_root)
    assert pool.source == "train_json" and len(pool.paths) == len(case.exemplar_paths) + \
        sum(len(q) for q in case.queries.values())
    assert int(pool.domain.sum()) == sum(len(q) for q in case.queries.values())


def test_folders_and_transductive_pools(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    json_path(root, "train_all").unlink()  # like AbC without its train/val split
    with pytest.raises(FileNotFoundError, match="no training JSON.*train_real_dirs.*transductive"):
        training_pool(root)
    real, synth = tmp_path / "real", tmp_path / "synth" / "my_model"
    synth.mkdir(parents=True)
    shutil.copytree(list_distractors(root)[0].parent, real)
    case = load_test_case(json_path(root, "test_styles"), root=root)
    for i, p in enumerate(case.queries["scene"][:5]):
        shutil.copyfile(p, synth / f"{i}.jpg")
    pool = training_pool(root, real_dirs=[real], synth_dirs=[tmp_path / "synth"])
    assert pool.source == "folders" and int(pool.domain.sum()) == 5 and len(pool.paths) == 5 + len(list(real.iterdir()))
    # Content-hash order: the same images in renamed folders give the same pool.
    shutil.move(str(real), str(tmp_path / "renamed"))
    again = training_pool(root, source="folders", real_dirs=[tmp_path / "renamed"], synth_dirs=[tmp_path / "synth"])
    assert again.ids == pool.ids and np.array_equal(again.domain, pool.domain)
    trans = training_pool(root, source="transductive")
    n_queries = sum(len(q) for c in root.glob("dataset/json/test_*.json")
                    for q in load_test_case(c, root=root).queries.values())
    assert trans.source == "transductive" and int(trans.domain.sum()) == n_queries
    with pytest.raises(ValueError, match="train_pool"):
        training_pool(root, source="test")
    with pytest.raises(ValueError, match="train_synth_dirs"):
        training_pool(root, source="folders")
    with pytest.raises(FileNotFoundError, match="training image folder not found"):
        training_pool(root, source="folders", real_dirs=[tmp_path / "nowhere"])


def test_ada_train_reads_a_params_file_and_flags_override(tmp_path: Path) -> None:
    """``ada train -f FILE.yaml`` takes the papermill files; unknown keys and missing files are clear errors."""
    from ada_utils.cli import build_parser, main

    params = tmp_path / "p.yaml"
    params.write_text("method: whiten\nlam: 3.0\ntrain_pool: transductive\n")
    parser = build_parser()
    args = parser.parse_args(["train", "-f", str(params), "--lam", "5"])
    args.apply_params_file(args.params_file)
    args = parser.parse_args(["train", "-f", str(params), "--lam", "5"])
    assert (args.method, args.lam, args.train_pool) == ("whiten", 5.0, "transductive")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methd: ada\n")
    assert main(["train", "-f", str(bad)]) == 2
    assert main(["train", "-f", str(tmp_path / "missing.yaml")]) == 2
