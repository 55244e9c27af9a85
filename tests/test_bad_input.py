"""Bad input and interruptions, where the user meets them: one clear line naming the file or the flag, exit 2 for a
user error, 130 for Ctrl-C, paths confined to the data root, nothing half-written taken for done."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ada_utils.cli import main
from ada_utils.data.abc import UnsafePathError, escapes_root, load_test_case, read_entries
from ada_utils.encoders.checkpoints import CheckpointError, read_checkpoint
from ada_utils.train import TrainData, TrainingDivergedError, TrainConfig, train


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _root(tmp_path: Path, exemplar: list[str], synth: list[str]) -> Path:
    """A one-model AbC-layout root whose JSON names ``exemplar`` and ``synth`` paths (made when inside the root)."""
    root = tmp_path / "root"
    for i, rel in enumerate(exemplar + synth):
        if not escapes_root(rel):
            _image(root / rel, seed=i)
    _image(root / "dataset" / "laion_subset" / "000000.png", seed=99)
    entry = {"exemplar": exemplar, "synth": {"gpt": synth}, "class_id": "m0", "category": None}
    (root / "dataset" / "json").mkdir(parents=True, exist_ok=True)
    (root / "dataset" / "json" / "test_case.json").write_text(json.dumps([entry]))
    return root


def _ada(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- paths confined to the root
@pytest.mark.parametrize("rel", ["../outside.png", "dataset/../../outside.png", "/etc/passwd", "C:/x.png"])
def test_json_paths_may_not_leave_the_root(rel, tmp_path, capsys):
    _image(tmp_path / "outside.png")
    root = _root(tmp_path, ["dataset/exemplar/a.png"], ["dataset/synth/s.png", rel])
    json_file = root / "dataset" / "json" / "test_case.json"
    with pytest.raises(UnsafePathError, match=r"(?s)test_case.json: 1 path\(s\).*entry 0: " + re.escape(repr(rel))):
        load_test_case(json_file, root=root)
    code, err = _ada(capsys, "data", "check", "--data-root", str(root), "dataset/json/test_case.json")
    assert code == 1 and "leave the data root" in err and rel in err and "test_case.json" in err


def test_inner_dot_dot_that_stays_inside_is_allowed(tmp_path):
    root = _root(tmp_path, ["dataset/exemplar/a.png"], ["dataset/synth/x/../s.png"])
    _image(root / "dataset" / "synth" / "s.png")
    assert load_test_case(root / "dataset" / "json" / "test_case.json", root=root).queries["gpt"]


@pytest.mark.parametrize("text, message", [("", "is empty"), ('[{"exemplar": [}', "not valid JSON at line 1"),
                                           ('{"a": 1}', "non-empty JSON list")])
def test_broken_jsons_name_the_file(text, message, tmp_path, capsys):
    path = tmp_path / "dataset" / "json" / "test_case.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_entries(path)
    code, err = _ada(capsys, "data", "check", "--data-root", str(tmp_path), "dataset/json/test_case.json")
    assert code == 2 and str(path) in err and message.split(" at")[0] in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- data check --decode
def test_decode_reports_every_bad_image_at_once(tmp_path, capsys, monkeypatch):
    names = [f"dataset/synth/s{i}.png" for i in range(5)]
    root = _root(tmp_path, ["dataset/exemplar/a.png"], names)
    good = (root / names[0]).read_bytes()
    (root / names[1]).write_bytes(good[: len(good) // 2])  # truncated
    (root / names[2]).write_bytes(b"")  # zero bytes
    (root / names[3]).write_text("not an image")  # not an image
    Image.new("L", (64, 64)).save(root / names[4])  # a decompression bomb under a lowered limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, err = _ada(capsys, "data", "check", "--data-root", str(root), "dataset/json/test_case.json")
    assert code == 1  # without --decode nothing is opened, but an empty file is named (a stat each)
    assert "1 image file(s) are empty" in err and "/s2.png" in err and "/s1.png" not in err
    code, err = _ada(capsys, "data", "check", "--data-root", str(root), "dataset/json/test_case.json", "--decode",
                     "--workers", "1")
    assert code == 1 and "4 of 6 image(s) do not decode" in err
    assert all(f"/{n.split('/')[-1]}:" in err for n in names[1:]) and "/s0.png:" not in err
    assert "DecompressionBomb" in err and "truncated" in err


# ----------------------------------------------------------------------------- weight files
def test_weight_files_say_what_is_wrong(tmp_path, capsys):
    for seed in range(20):  # garbage makes the unpickler fail in many ways: every one must read the same
        (tmp_path / f"random{seed}.pth").write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(CheckpointError, match="not a torch checkpoint"):
            read_checkpoint(tmp_path / f"random{seed}.pth")
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "string.pth").write_bytes(pickle.dumps("hello"))
    torch.save({"args": argparse.Namespace(arch="vit_small"), "teacher": {"w": torch.zeros(2)}}, tmp_path / "full.pth")
    for name in ("random", "string"):
        with pytest.raises(CheckpointError, match="not a torch checkpoint"):
            read_checkpoint(tmp_path / f"{name}.pth")
    with pytest.raises(CheckpointError, match="Python objects besides tensors.*--trust-pickle"):
        read_checkpoint(tmp_path / "full.pth")
    assert read_checkpoint(tmp_path / "full.pth", trust_pickle=True)["args"].arch == "vit_small"
    for command in (["embed", str(tmp_path)], ["train"], ["attribute", "--gallery", str(tmp_path)]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--trust-pickle" in capsys.readouterr().out
    code, err = _ada(capsys, "embed", str(tmp_path), "--backbone", "dino_vits16", "--weights",
                     str(tmp_path / "random.pth"))
    assert code == 2 and "not a torch checkpoint" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- training that runs away
def _pool(n: int = 64, d: int = 8) -> TrainData:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    return TrainData(feats, (np.arange(n) % 2).astype(np.int64), None, [f"i{i}" for i in range(n)], None, None)


@pytest.mark.parametrize("lr", [1e6, 1e30])
def test_divergence_names_lr_and_marks_the_run_failed(lr, tmp_path):
    cfg = TrainConfig(method="disentangle", solver="gradient", lr=lr, epochs=40, batch_size=32, checkpoint_every=5)
    with pytest.raises(TrainingDivergedError, match=re.escape(f"lr={lr}") + ".*lower --lr"):
        train(cfg, _pool(), tmp_path / "r", progress=False)
    header = json.loads((tmp_path / "r" / "config.json").read_text())
    assert header["status"] == "failed" and not (tmp_path / "r" / "head.safetensors").exists()
    with pytest.raises(FileExistsError, match=r"failed run \(diverged at step \d+, lr=.*--overwrite.*--resume"):
        train(cfg, _pool(), tmp_path / "r", progress=False)
    done = train(TrainConfig(method="disentangle", solver="gradient", lr=1e-3, epochs=1, batch_size=32), _pool(),
                 tmp_path / "r", overwrite=True, progress=False)
    assert done.steps > 0 and json.loads((tmp_path / "r" / "config.json").read_text())["status"] == "finished"


# ----------------------------------------------------------------------------- the CLI's conventions
def test_run_folder_errors_name_the_flags(tiny_root, tmp_path, capsys):
    common = ["train", "--scale", "tiny", "--method", "whiten", "--no-evaluate", "--image-size", "32"]
    code, err = _ada(capsys, *common, "--out", str(tmp_path / "none"), "--resume")
    assert code == 2 and "--resume" in err and "holds no run to resume" in err
    assert not (tmp_path / "none").exists()
    assert _ada(capsys, *common, "--out", str(tmp_path / "r"))[0] == 0
    code, err = _ada(capsys, *common, "--out", str(tmp_path / "r"))
    assert code == 2 and "--overwrite" in err and "--resume" in err and "overwrite=True" in err
    code, err = _ada(capsys, *common, "--out", str(tmp_path / "r2"), "--device", "cuda")
    if not torch.cuda.is_available():
        assert code == 2 and "--device cuda" in err and "--device cpu" in err


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    import ada_utils.cli.data as cli_data

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_data, "_fetch", interrupted)
    code, err = _ada(capsys, "data", "fetch-photos")
    assert code == 130 and "stopped by SIGINT" in err and "re-run the same command to resume" in err and "Traceback" not in err


def test_bad_image_and_zero_distractors_in_eval(tiny_root, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    code, err = _ada(capsys, "eval", "--data-root", str(root), "--distractors", "0", "--image-size", "32")
    assert code == 2 and "--distractors 0" in err
    first = load_test_case(root / "dataset" / "json" / "test_objects_seen.json", root=root).exemplar_paths[0]
    first.write_bytes(first.read_bytes()[:200])
    code, err = _ada(capsys, "eval", "--data-root", str(root), "--distractors", "5", "--image-size", "32")
    assert code == 2 and str(first) in err and "cannot decode" in err and "Traceback" not in err


def test_eval_takes_a_1x1_image_and_names_an_empty_distractor_folder_and_a_broken_json(tmp_path, capsys):
    root = _root(tmp_path, ["dataset/exemplar/a.png"], ["dataset/synth/s.png"])
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "dataset" / "exemplar" / "a.png")
    assert _ada(capsys, "eval", "--data-root", str(root), "--image-size", "32")[0] == 0
    (root / "dataset" / "laion_subset" / "000000.png").unlink()
    code, err = _ada(capsys, "eval", "--data-root", str(root), "--image-size", "32")
    assert code == 2 and "the distractor folder holds no images" in err and "Traceback" not in err
    (root / "dataset" / "json" / "test_case.json").write_text('[{"exemplar": ')
    code, err = _ada(capsys, "eval", "--data-root", str(root), "--image-size", "32")
    assert code == 2 and "test_case.json: not valid JSON at line 1" in err
    if not torch.cuda.is_available():
        code, err = _ada(capsys, "embed", str(root / "dataset" / "exemplar"), "--device", "cuda")
        assert code == 2 and "--device cuda" in err and "--device cpu" in err


# ----------------------------------------------------------------------------- --on-error skip
def test_skip_leaves_bad_images_out_of_the_metric_and_says_how(tiny_root, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    case = load_test_case(root / "dataset" / "json" / "test_objects_seen.json", root=root)
    lone = case.models[0].exemplars[0]  # model 0's only exemplar: its queries go too
    query = case.queries["scene"][-1]  # a query of the last model
    distractor = sorted((root / "dataset" / "laion_subset").iterdir())[3]
    for path in (lone, query, distractor):
        path.write_bytes(path.read_bytes()[:100])
    args = ["eval", "--data-root", str(root), "--distractors", "20", "--image-size", "32"]
    code = main([*args, "--on-error", "skip", "--out", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert code == 0 and "1 exemplars skipped" in out and "left out of the gallery" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert metrics["skipped"]["exemplars"] == [rel(lone)] and metrics["skipped"]["distractors"] == [rel(distractor)]
    assert metrics["skipped"]["queries"] == [rel(query)] and metrics["skip_rule"].startswith("a skipped exemplar")
    dropped = metrics["skipped"]["queries_of_models_without_exemplars"]
    assert dropped and all(p.split("/")[-3].startswith(case.models[0].class_id) for p in dropped)
    total = sum(len(q) for q in case.queries.values())
    cells = [c for name, c in metrics["cells"].items() if name.startswith("test_objects_seen/")]
    assert sum(c["n_queries"] for c in cells) == total - 1 - len(dropped) and metrics["n_distractors"] == 19
    code, err = _ada(capsys, *args)  # the cache made with skip, read with raise: names the files
    assert code == 2 and "did not decode" in err and "--on-error skip" in err


def test_attribute_skips_a_query_that_does_not_decode(tmp_path, capsys):
    gallery = [_image(tmp_path / "gallery" / f"g{i}.png", seed=i) for i in range(4)]
    good, bad = _image(tmp_path / "q" / "good.png", seed=1), tmp_path / "q" / "bad.png"
    bad.write_bytes(b"not an image")
    argv = ["attribute", "--gallery", str(tmp_path / "gallery"), "--query", str(good), str(bad), "--top", "2",
            "--image-size", "32"]
    code, err = _ada(capsys, *argv)
    assert code == 2 and "bad.png" in err
    assert main([*argv, "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "1 query images skipped" in out and "good.png" in out and gallery[1].name in out
