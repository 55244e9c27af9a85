"""The AbC-named rehearsal root: AbC's file names, schema and folder schemes, in both layouts, read by the same
loader, embedded and scored by the same code as the real benchmark."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ada_utils.data import cells, json_path, list_distractors, load_test_case
from ada_utils.data.rehearsal import MEDIA_SAMPLES, build_rehearsal

ABC_CASES = ["test_artchive", "test_bamfg", "test_observed_imagenet", "test_unobserved_imagenet"]
CLASS_ID = {"imagenet": r"n\d{8}_\d{4}", "bamfg": r"\d{6}_0", "artchive": r"[a-z]+\d{3}"}
EXEMPLAR = {"imagenet": r"dataset/exemplar/imagenet/images/n\d{8}/ILSVRC2012_val_\d{8}\.JPEG",
            "bamfg": r"dataset/exemplar/bamfg/images/\d{6}_0/\d{6}\.jpg",
            "artchive": r"dataset/exemplar/artchive/images/[a-z]+\d{3}/[\w-]+\.jpg"}


@pytest.fixture(scope="module", params=["repo", "hf"])
def rehearsal(request, tiny_root: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("rehearsal") / request.param
    return build_rehearsal(tiny_root, out, layout=request.param), request.param


def test_abc_names_schema_and_folder_schemes(rehearsal, tiny_root: Path) -> None:
    root, layout = rehearsal
    assert (root / "dataset").is_dir() == (layout == "repo")
    json_dir = json_path(root, "x").parent
    assert sorted(p.stem for p in json_dir.glob("test_*.json")) == ABC_CASES
    for name in ABC_CASES:
        family = name.split("_")[-1]
        entries = json.loads(json_path(root, name).read_text())
        prompts = {"imagenet": ["gpt", "media"]}.get(family, ["gpt", "object"])
        for e in entries:
            assert set(e) == {"exemplar", "synth", "class_id", "category"} and list(e["synth"]) == prompts
            assert re.fullmatch(CLASS_ID[family], e["class_id"]), e["class_id"]
            assert all(re.fullmatch(EXEMPLAR[family], p) for p in e["exemplar"]), e["exemplar"]
            for prompt, files in e["synth"].items():
                assert all(re.fullmatch(rf"dataset/synth/{family}/{prompt}/{e['class_id']}/samples/\d{{5}}\.png", f)
                           for f in files)
            assert (e["category"] is None) == (family != "imagenet")
        case = load_test_case(json_path(root, name), root=root)  # every file exists (checked by the loader)
        with Image.open(case.queries["gpt"][0]) as im:
            assert im.format == "PNG"
    media = json.loads(json_path(root, "test_observed_imagenet").read_text())[0]["synth"]["media"]
    assert [int(Path(f).stem) for f in media] == list(MEDIA_SAMPLES[:len(media)])
    # Same models, exemplars and queries as the embedded benchmark it was made from.
    src = {n: load_test_case(json_path(tiny_root, n), root=tiny_root) for n in
           ("test_objects_seen", "test_objects_unseen", "test_styles", "train_all")}
    new = {n: load_test_case(json_path(root, n), root=root) for n in [*ABC_CASES, "train_all"]}
    assert len(new["test_observed_imagenet"].models) == len(src["test_objects_seen"].models)
    assert len(new["test_bamfg"].models) + len(new["test_artchive"].models) == len(src["test_styles"].models)
    assert len(new["train_all"].exemplar_paths) == len(src["train_all"].exemplar_paths)
    assert sum(len(q) for c in new.values() for q in c.queries.values()) == \
        sum(len(q) for c in src.values() for q in c.queries.values())
    ex_new, ex_old = new["test_observed_imagenet"].exemplar_paths[0], src["test_objects_seen"].exemplar_paths[0]
    assert ex_new.read_bytes() == ex_old.read_bytes()  # real exemplars are copied byte for byte
    q_new, q_old = new["test_bamfg"].queries["gpt"][0], src["test_styles"].queries["scene"][0]
    with Image.open(q_new) as a, Image.open(q_old) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))  # lossless PNG


def test_distractors_and_hf_captions(rehearsal, tiny_root: Path) -> None:
    root, layout = rehearsal
    dist = list_distractors(root)
    assert len(dist) == len(list_distractors(tiny_root)) and all(p.suffix == ".png" for p in dist)
    assert (dist[0].parent.name == "images") == (layout == "hf")
    if layout == "hf":
        captions = (root / "laion_subset" / "captions.txt").read_text().splitlines()
        assert len(captions) == len(dist)


def test_every_abc_case_has_a_kind_and_the_cli_checks_the_root(rehearsal) -> None:
    from ada_utils.cli import main

    root, _ = rehearsal
    names = [f"{c}/{p}" for c in ABC_CASES for p in load_test_case(json_path(root, c), root=root).prompt_types]
    assert len(cells.object_cells(names)) == 4 and len(cells.style_cells(names)) == 4
    assert main(["data", "check", "--data-root", str(root), *[f"dataset/json/{c}.json" for c in ABC_CASES]]) == 0


def test_existing_root_needs_overwrite(tiny_root: Path, tmp_path: Path) -> None:
    out = build_rehearsal(tiny_root, tmp_path / "r")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_rehearsal(tiny_root, out)
    with pytest.raises(ValueError, match="layout"):
        build_rehearsal(tiny_root, tmp_path / "s", layout="mirror")
