"""The real-AbC loader on the official JSON excerpts (``../shared/fixtures/abc``), with placeholder images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ada_utils.data.checks import summarise
from ada_utils.data.abc import (MissingFilesError, list_distractors, load_test_case, resolve, training_pairs,
                                unlabelled_pool)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "abc"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"AbC fixtures not found at {FIXTURES} "
                                "(the shared/ folder beside the repository)")
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def _placeholder(path: Path, seed: int) -> None:
    """A small image in the format its extension names, pixels from ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=FORMATS[path.suffix.lower()])


def _materialise(json_file: Path, root: Path, *, hf: bool = False) -> Path:
    """Write a placeholder at every path the JSON names; return the JSON's copy under ``root``."""
    entries = json.loads(json_file.read_text())
    rels = [p for e in entries for p in e["exemplar"] + [q for v in e["synth"].values() for q in v]]
    for i, rel in enumerate(rels):
        _placeholder(root / (rel.removeprefix("dataset/") if hf else rel), seed=i)
    target = root / ("json" if hf else "dataset/json") / json_file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(json_file, target)
    return target


def test_artchive_repo_layout(tmp_path):
    case = load_test_case(_materialise(FIXTURES / "test_artchive.json", tmp_path), root=tmp_path)
    assert case.name == "test_artchive" and case.prompt_types == ["gpt", "object"]
    assert [m.class_id for m in case.models] == ["african", "altdorfer", "ardon", "avery", "bailey", "baumeister"]
    assert [len(m.exemplars) for m in case.models] == [13, 4, 11, 15, 6, 1]
    assert sum(len(m.exemplars) > 10 for m in case.models) == 3 and case.models[0].category is None
    assert len(case.queries["gpt"]) == 240
    assert np.array_equal(case.query_model["object"], np.repeat(np.arange(6), 40))
    assert case.queries["gpt"][40] == tmp_path / "dataset/synth/artchive/gpt/altdorfer/samples/00000.png"
    assert np.array_equal(case.exemplar_model, np.repeat(np.arange(6), [13, 4, 11, 15, 6, 1]))
    assert case.exemplar_paths[0] == tmp_path / "dataset/exemplar/artchive/images/african/dyula.jpg"


def test_imagenet_hf_layout_and_media_numbers(tmp_path):
    json_file = _materialise(FIXTURES / "test_observed_imagenet.json", tmp_path, hf=True)
    case = load_test_case(json_file, root=tmp_path)
    assert case.prompt_types == ["media", "gpt"]  # media first, as in the file
    assert {m.category for m in case.models} == {"bird"}
    media = sorted(int(p.stem) for p in case.queries["media"][:40])
    assert media[:4] == [20, 21, 22, 23] and media[-1] == 175 and len(set(media)) == 40
    assert case.exemplar_paths[0].is_relative_to(tmp_path / "exemplar/imagenet/images")
    assert case.exemplar_paths[0].suffix == ".JPEG"


def test_only_the_leading_dataset_prefix_is_replaced(tmp_path):
    assert resolve("dataset/synth/dataset/x.png", tmp_path, layout="hf") == tmp_path / "synth/dataset/x.png"
    assert resolve("dataset/synth/x.png", tmp_path, layout="repo") == tmp_path / "dataset/synth/x.png"


def test_all_missing_files_reported_at_once(tmp_path):
    json_file = _materialise(FIXTURES / "test_bamfg.json", tmp_path)
    case = load_test_case(json_file, root=tmp_path)
    gone = case.queries["gpt"][:23] + case.exemplar_paths[:2]
    for path in gone:
        path.unlink()
    with pytest.raises(MissingFilesError) as info:
        load_test_case(json_file, root=tmp_path)
    err = info.value
    assert sorted(err.missing) == sorted(gone)
    message = str(err)
    assert "test_bamfg.json" in message and "25 referenced file(s)" in message and "and 5 more" in message
    assert message.count("\n  ") == 21  # 20 listed paths + the "... and 5 more" line


def test_check_command_reports_counts_and_missing(tmp_path, capsys):
    from ada_utils.cli.data import _check

    json_file = _materialise(FIXTURES / "test_bamfg.json", tmp_path)
    rows = summarise([str(json_file)], root=tmp_path)
    assert [(r["prompt_type"], r["models"], r["exemplars"], r["queries"]) for r in rows] == [
        ("gpt", 6, 29, 240), ("object", 6, 29, 240)]
    load_test_case(json_file, root=tmp_path).models[1].exemplars[0].unlink()
    args = type("Args", (), {"json": [str(json_file)], "root": str(tmp_path), "distractors": None,
                             "json_output": True, "decode": False})()
    assert _check(args) == 1
    assert "103946_0" in capsys.readouterr().err


def test_distractors_sorted_and_sized(tmp_path):
    folder = tmp_path / "dataset/laion_subset"
    for i in (3, 0, 2, 1, 10):
        _placeholder(folder / f"{i:07d}.png", seed=i)
    (folder / "captions.txt").write_text("not an image\n")
    assert [p.name for p in list_distractors(tmp_path)] == [f"{i:07d}.png" for i in (0, 1, 2, 3, 10)]
    assert len(list_distractors(tmp_path, n=3)) == 3
    with pytest.raises(ValueError, match="only 5 images"):
        list_distractors(tmp_path, n=100)
    json_file = _materialise(FIXTURES / "test_artchive.json", tmp_path)
    assert [p.name for p in load_test_case(json_file, root=tmp_path, distractors=2).distractors] == [
        "0000000.png", "0000001.png"]


def _training_root(root: Path, rename: dict[str, str] | None = None) -> Path:
    """The Artchive excerpt as a train_all.json, optionally with model folders renamed."""
    entries = json.loads((FIXTURES / "test_artchive.json").read_text())
    text = json.dumps(entries)
    for old, new in (rename or {}).items():
        text = text.replace(f"/{old}/", f"/{new}/")
    path = root / "src.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    target = _materialise(path, root)
    target.rename(target.with_name("train_all.json"))
    return root


def test_unlabelled_pool_is_label_free_and_rename_invariant(tmp_path):
    pool = unlabelled_pool(_training_root(tmp_path / "a"))
    renamed = unlabelled_pool(_training_root(tmp_path / "b", {"african": "zz_model", "ardon": "aa_model"}))
    assert len(pool.paths) == 50 + 480 and int(pool.domain.sum()) == 480
    assert pool.ids == renamed.ids and np.array_equal(pool.domain, renamed.domain)
    assert pool.ids == sorted(pool.ids) and len(set(pool.ids)) == len(pool.ids)
    assert not any("african" in i for i in pool.ids)


def test_training_pairs_stay_within_a_model(tmp_path):
    root = _training_root(tmp_path)
    pairs = training_pairs(root)
    assert len(pairs) == 480
    case = load_test_case(root / "dataset/json/train_all.json", root=root)
    for exemplar, synth, m in pairs[::37]:
        assert exemplar in case.models[m].exemplars and f"/{case.models[m].class_id}/" in synth.as_posix()
