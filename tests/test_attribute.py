"""faiss attribution (exact vs numpy, approximate indexes), contact sheets, and the embed/eval/attribute CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image
from test_embed import TinyEncoder, _mini_root

from ada_utils.cli import eval as cli_eval
from ada_utils.eval.attribute import Attribution, attribute, contact_sheet, in_memory_index


def _cosine_topk(q, g, k):
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    s = qn @ gn.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def test_flat_index_is_exact_cosine_search():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(300, 16)), rng.normal(size=(5, 16))
    out = attribute(q, g, query_ids=list("abcde"), gallery_ids=[str(i) for i in range(300)], top=7)
    s, idx = _cosine_topk(q, g, 7)
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_allclose(out.scores, s, atol=1e-5)
    assert out.rows()[0] == {"query": "a", "rank": 1, "score": pytest.approx(s[0, 0], abs=1e-5),
                             "gallery": str(idx[0, 0])}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_gallery_item_itself(kind):
    rng = np.random.default_rng(1)
    g = rng.normal(size=(2000, 16)).astype(np.float32)
    scores, idx = in_memory_index(g, kind=kind).search(g[:50] / np.linalg.norm(g[:50], axis=1, keepdims=True), 1)
    assert (idx[:, 0] == np.arange(50)).mean() >= 0.9 and scores.max() == pytest.approx(1.0, abs=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind='lsh'"):
        in_memory_index(np.ones((3, 2)), kind="lsh")
    with pytest.raises(ValueError, match="D=3 but gallery_feats D=2"):
        attribute(np.ones((1, 3)), np.ones((4, 2)), query_ids=["q"], gallery_ids=list("abcd"))


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_contact_sheet(tmp_path, suffix):
    for name in ("q", "a", "b"):
        Image.fromarray(np.full((20, 30, 3), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
    res = Attribution(["q.png"], ["a.png", "b.png"], np.array([[0.9, 0.5]]), np.array([[1, 0]]))
    out = contact_sheet(res, tmp_path / f"sheet{suffix}", image_root=tmp_path, highlight={"q.png": {"b.png"}})
    if suffix == ".html":
        text = out.read_text()
        assert text.count("data:image/jpeg;base64,") == 3 and "#1 0.900<br>b.png" in text
        assert text.count("outline:4px") == 1
    else:
        assert Image.open(out).size[0] > 100


def _run(argv, monkeypatch, encoder):
    monkeypatch.setattr(cli_eval, "_load_encoder", lambda args: encoder)
    parser = argparse.ArgumentParser(prog="ada")
    cli_eval.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_embed_eval_attribute(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    root = tmp_path / "root"
    _mini_root(root, np.random.default_rng(2))
    enc = TinyEncoder()
    assert _run(["eval", "--data-root", str(root), "--out", str(tmp_path / "m.json")], monkeypatch, enc) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["cells"]["test_a/scene"]["n_queries"] == 4 and metrics["n_distractors"] == 3
    assert metrics["source"] == "images" and metrics["mapper"] is None
    gallery = root / "dataset" / "laion_subset"
    assert _run(["embed", str(gallery), "--cache", str(tmp_path / "g")], monkeypatch, enc) == 0
    query = root / "dataset" / "laion_subset" / "0000001.png"
    for source in (gallery, tmp_path / "g"):  # an image folder, then the feature cache of the same folder
        _run(["attribute", "--gallery", str(source), "--query", str(query), "--top", "2", "--sheet",
              str(tmp_path / "s.html")], monkeypatch, enc)
        lines = capsys.readouterr().out.splitlines()
        rank1 = next(line for line in lines if line.split()[1:3] == ["1", "1.0000"])
        assert rank1.endswith("0000001.png") and (tmp_path / "s.html").is_file()
    with pytest.raises(ValueError, match=r"g/manifest.json: gallery features come from encoder 'tiny'"):
        other = TinyEncoder()
        other.spec = {**other.spec, "image_size": 32}
        _run(["attribute", "--gallery", str(tmp_path / "g"), "--query", str(query)], monkeypatch, other)


def test_cli_attribute_prints_calibrated_influence(tmp_path, monkeypatch, capsys):
    """--calibrator: an influence column and the rest per query; one fitted for another encoder is refused."""
    from ada_utils.calibration import Calibrator
    from ada_utils.eval.calibrate import save_calibrator

    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    root = tmp_path / "root"
    _mini_root(root, np.random.default_rng(2))
    enc = TinyEncoder()
    gallery = root / "dataset" / "laion_subset"
    query = gallery / "0000001.png"
    abc_file = tmp_path / "dino_tuned.pth"  # AbC's format: no record of the encoder
    save_calibrator(abc_file, Calibrator(20.0, -10.0), {}).with_suffix(".json").unlink()
    argv = ["attribute", "--gallery", str(gallery), "--query", str(query), "--top", "2",
            "--out", str(tmp_path / "a.json")]
    assert _run([*argv, "--calibrator", str(abc_file)], monkeypatch, enc) == 0
    out = capsys.readouterr().out
    assert "no record of the encoder" in out and "not in the top 2:" in out
    rows = json.loads((tmp_path / "a.json").read_text())
    rest = next(iter(rows["rest"].values()))
    assert 0 <= rest <= 1 and sum(r["influence"] for r in rows["rows"]) == pytest.approx(1 - rest)
    ours = save_calibrator(tmp_path / "ours.pth", Calibrator(20.0, -10.0), {"encoder": {"name": "other"}, "dim": 8})
    with pytest.raises(ValueError, match=r"ours\.pth: fitted for encoder 'other'"):
        _run([*argv, "--calibrator", str(ours)], monkeypatch, enc)
