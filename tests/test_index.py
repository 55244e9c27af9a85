"""The index over feature shards: the memory rules, an index merged on disk equal to one built in memory, the
folder movable, a killed build resumed, and the command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ada_utils.cli import main
from ada_utils.encoders.sharded import open_shards, write_feature_shards
from ada_utils.files import locked
from ada_utils.eval.index import (build_index, choose_index, exact_search, knn_recall, open_index, parse_bytes,
                                  training_rows)


def test_the_memory_rules_choose_like_autofaiss():
    assert choose_index(50_000, 768, 4 << 30).factory == "Flat"
    assert choose_index(500_000, 768, 4 << 30).factory == "IVF2048,Flat"  # 4 sqrt(N) = 2828 -> 2^11
    big = choose_index(10_000_000, 768, 4 << 30)  # raw vectors 30.7 GB: 128-byte codes (256 would need 4m > D)
    assert big.factory == "OPQ128_512,IVF16384_HNSW32,PQ128x8np" and big.index_bytes == 10_000_000 * (128 + 8)
    assert choose_index(500_000, 768, 1 << 30).factory.startswith("OPQ")  # 1.5 GB raw > 1 GiB
    with pytest.raises(ValueError, match="too little"):
        choose_index(10_000_000, 768, 10 << 20)
    assert parse_bytes("4GB") == 4 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("2e9") == 2_000_000_000
    with pytest.raises(ValueError, match="--memory 'lots'"):
        parse_bytes("lots")


def test_exact_search_and_recall_have_known_values():
    feats = type("F", (), {"arrays": [np.eye(4, dtype=np.float32)[:2], np.eye(4, dtype=np.float32)[2:]], "rows": 4})
    scores, idx = exact_search(feats, np.array([[0, 0, 1, 0.5]], dtype=np.float32) / np.sqrt(1.25), 2, block=1)
    assert idx.tolist() == [[2, 3]] and np.allclose(scores, [[1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)]])
    assert knn_recall(np.array([[1, 2, 9]]), np.array([[2, 1, 3]])) == pytest.approx(2 / 3)


def test_exact_search_keeps_the_order_of_a_stable_sort_with_ties():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    x = base[rng.integers(0, 50, 900)]  # repeated rows: many exact ties, across blocks and shards
    feats = type("F", (), {"arrays": [x[:400], x[400:]], "rows": 900})
    q = base[:6] / np.linalg.norm(base[:6], axis=1, keepdims=True)
    scores, idx = exact_search(feats, q, 25, block=64)
    full = q @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    order = np.argsort(-full, axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(scores, np.take_along_axis(full, order, 1), rtol=1e-6)


def test_the_training_sample_follows_the_lists_and_the_build_memory():
    assert training_rows(10_000_000, 16384, 1280, 1 << 40) == (1_638_400, "min(N, max(100 x 16384 lists, 9,984))")
    assert training_rows(5000, 64, 32, 1 << 40) == (5000, "all 5,000 vectors, fewer than 100 per list: a gallery "
                                                          "this small gains little from an approximate index")
    rows, why = training_rows(10_000_000, 16384, 1280, 10 << 30)
    assert rows == (10 << 30) // (12 * 1280) and "fit the build memory" in why


@pytest.fixture()
def shards(tmp_path) -> Path:
    """Three shards of clustered unit vectors (D = 32), one of them shorter."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = (centres[rng.integers(0, 40, 7000)] + 0.4 * rng.normal(size=(7000, 32))).astype(np.float32)
    parts = [x[:3000], x[3000:6000], x[6000:]]
    ids = [[f"img{i}" for i in range(a, a + len(p))] for a, p in zip((0, 3000, 6000), parts)]
    return write_feature_shards(tmp_path / "shards", parts, ids, source={"name": "drawn", "seed": 0})


@pytest.mark.parametrize("factory", ["IVF64,Flat", "OPQ8_32,IVF64_HNSW32,PQ8x8np"])
def test_an_index_merged_on_disk_equals_one_built_in_memory(shards, tmp_path, factory):
    disk = build_index(shards, tmp_path / "disk", memory=1 << 30, factory=factory, progress=False)
    ram = build_index(shards, tmp_path / "ram", memory=1 << 30, factory=factory, in_memory=True, progress=False)
    assert (disk / "index.ivfdata").is_file() and not (ram / "index.ivfdata").exists() and not (disk / "parts").exists()
    moved = tmp_path / "moved"
    shutil.move(disk, moved)  # the folder travels whole: its inverted lists are named relative to it
    queries = np.array(open_shards(shards).rows_at(np.arange(0, 7000, 70)))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    a, b = open_index(moved), open_index(ram)
    assert a.ntotal == b.ntotal == 7000
    (da, ia), (db, ib) = a.search(queries, 10), b.search(queries, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-6)
    params = json.loads((moved / "params.json").read_text())
    assert params["search"]["name"] == "nprobe" and params["recall_curve"][-1]["recall@10"] > 0.5


def test_ada_index_build_chooses_from_the_budget_and_reports_recall(shards, tmp_path, capsys):
    assert main(["index", "build", str(shards), "--out", str(tmp_path / "idx"), "--memory", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "Flat over 7,000 vectors" in out and "10-recall@10 1.000" in out
    assert main(["index", "build", str(shards), "--out", str(tmp_path / "x"), "--memory", "1KB"]) == 2
    assert "too little for 7,000 vectors" in capsys.readouterr().err


def test_a_query_time_bound_and_a_build_memory_are_kept(shards, tmp_path, capsys):
    free = build_index(shards, tmp_path / "free", memory=1 << 30, factory="IVF64,Flat", progress=False)
    loose = build_index(shards, tmp_path / "loose", memory=1 << 30, factory="IVF64,Flat", progress=False,
                        max_ms_per_query=1e9)
    search = [json.loads((f / "params.json").read_text())["search"] for f in (free, loose)]
    assert search[0] == search[1]
    args = ["index", "build", str(shards), "--factory", "IVF64,Flat", "--max-ms", "1e-9", "--build-memory", "400KB"]
    assert main([*args, "--out", str(tmp_path / "tight")]) == 0
    params = json.loads((tmp_path / "tight" / "params.json").read_text())
    assert params["search"] == {"name": "nprobe", "value": 1} and len(params["recall_curve"]) == 1
    assert params["train_rows"] == (400 << 10) // (12 * 32) and "fit the build memory" in params["train_rule"]
    assert set(params["seconds"]) == {"train", "add", "merge", "tune"}
    assert "trained on 1,066 vectors for 64 lists (faiss asks for 39 per list): 1,066 fit the build memory" \
        in capsys.readouterr().err


def test_without_polysemous_training_the_codes_find_the_same_neighbours(shards, tmp_path):
    """``np`` skips only the reordering of the codebooks for Hamming filtering: the same ids and distances."""
    found = []
    for factory in ("OPQ8_32,IVF64_HNSW32,PQ8x8", "OPQ8_32,IVF64_HNSW32,PQ8x8np"):
        out = build_index(shards, tmp_path / factory.replace(",", "_"), memory=1 << 30, factory=factory,
                          progress=False)
        found.append(open_index(out).search(_queries(shards), 10))
    np.testing.assert_array_equal(found[0][1], found[1][1])
    np.testing.assert_array_equal(found[0][0], found[1][0])


_UNINTERRUPTED = """
import sys
from ada_utils.eval import index
index.build_index(sys.argv[1], sys.argv[2], memory=1 << 30, factory=sys.argv[3], progress=False)
"""
_KILLED_AFTER_TWO_PARTS = """
import os, signal
from ada_utils.eval import index
write = index._write_index
def write_then_die(part, path):
    write(part, path)
    if path.name == "00001.index":  # the second shard's part is on disk, the third is not
        os.kill(os.getpid(), signal.SIGKILL)
index._write_index = write_then_die
""" + _UNINTERRUPTED
PQ = "OPQ8_32,IVF64_HNSW32,PQ8x8np"


def _build_in_one_thread(script: str, shards: Path, out: Path) -> subprocess.CompletedProcess:
    """Run a build script in a fresh process with one OpenMP thread: faiss adds the HNSW quantizer's centroids in
    parallel, so with more threads the graph, and the lists vectors land in, depend on their interleaving."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script, str(shards), str(out), PQ], capture_output=True, text=True,
                          env=env)


def test_a_build_killed_after_two_parts_resumes_them_and_equals_an_uninterrupted_one(shards, tmp_path, capsys):
    """A real SIGKILL in the fill (sent by the build to itself, so the test never races it): the same command keeps
    the trained index and both parts, fills the third, and finds what an uninterrupted build finds."""
    out = tmp_path / "killed"
    proc = _build_in_one_thread(_KILLED_AFTER_TWO_PARTS, shards, out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["00000.index", "00001.index"]  # whole files only
    build_index(shards, out, memory=1 << 30, factory=PQ, progress=False)
    assert "resuming the interrupted build's trained" in capsys.readouterr().err
    params = json.loads((out / "params.json").read_text())
    assert params["resumed"] == {"train": True, "parts": 2} and params["train_rows"] == 7000
    assert not (out / "parts").exists() and not (out / "trained.index").exists()
    whole = tmp_path / "whole"
    built = _build_in_one_thread(_UNINTERRUPTED, shards, whole)
    assert built.returncode == 0, built.stderr
    assert json.loads((whole / "params.json").read_text())["resumed"] is None
    (da, ia), (db, ib) = (open_index(o).search(_queries(shards), 10) for o in (out, whole))
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(da, db)


def test_an_interrupted_build_of_other_settings_is_not_resumed(shards, tmp_path, capsys):
    out = tmp_path / "idx"
    proc = _build_in_one_thread(_KILLED_AFTER_TWO_PARTS, shards, out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    build_index(shards, out, memory=1 << 30, factory=PQ, seed=1, progress=False)
    assert "other settings or shards" in capsys.readouterr().err
    assert json.loads((out / "params.json").read_text())["resumed"] is None


def test_a_second_build_into_a_folder_being_built_is_refused(shards, tmp_path):
    with locked(tmp_path / "idx"), pytest.raises(FileExistsError, match="another `ada index build`"):
        build_index(shards, tmp_path / "idx", memory=1 << 30, factory=PQ, progress=False)


def _queries(shards: Path, n: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = open_shards(shards).rows_at(rng.choice(7000, n, replace=False))
    return (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32)


def test_a_shortlist_covering_the_gallery_equals_exact_search(shards, tmp_path):
    from ada_utils.calibration import Calibrator
    from ada_utils.eval.attribute import attribute, attribute_with_index

    gallery, q = open_shards(shards), _queries(shards)
    index = open_index(build_index(shards, tmp_path / "idx", memory=1 << 30, factory="IVF64,Flat", progress=False))
    cal = Calibrator(30.0, -0.5)
    import faiss

    faiss.ParameterSpace().set_index_parameter(index, "nprobe", 64)  # every list: the index returns all 7,000
    exact = attribute(q, gallery.rows_at(np.arange(7000)), query_ids=[str(i) for i in range(20)],
                      gallery_ids=gallery.ids, top=5, calibrator=cal)
    full = attribute_with_index(q, index, gallery, query_ids=[str(i) for i in range(20)], top=5, shortlist=7000,
                                calibrator=cal)
    assert [r["gallery"] for r in full.rows()] == [r["gallery"] for r in exact.rows()]
    np.testing.assert_allclose(full.scores, exact.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.influence, exact.influence, rtol=2e-5, atol=1e-8)  # float32 vs 64
    assert np.all(full.outside == 0)
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", 4)
    short = attribute_with_index(q, index, gallery, query_ids=[str(i) for i in range(20)], top=5, shortlist=50,
                                 calibrator=cal)
    same = np.mean([r["gallery"] == e["gallery"] for r, e in zip(short.rows(), exact.rows())])
    assert same >= 0.9 and np.all(short.outside >= 0) and np.all(short.outside <= 1)


def test_the_bound_on_the_mass_outside_the_shortlist_holds(shards):
    """Against the full calibrated softmax: the outside bound is never below the true outside mass."""
    import torch

    from ada_utils.calibration import Calibrator
    from ada_utils.eval.attribute import shortlist_influence

    gallery, q = open_shards(shards), _queries(shards)
    g = gallery.rows_at(np.arange(7000))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = np.sort(q @ g.T, axis=1)[:, ::-1].copy()
    for bias in (-0.9, -0.2, 0.5):
        cal = Calibrator(20.0, bias)
        p = cal(torch.from_numpy(scores).double()).detach().numpy()
        for k in (10, 200):
            influence, _, outside = shortlist_influence(cal, scores[:, :k], 7000, top=5)
            true_outside = p[:, k:].sum(axis=1)
            assert np.all(outside >= true_outside - 1e-12), (bias, k)
            assert np.all(influence * (1 - outside[:, None]) <= p[:, :5] + 1e-12)
            assert np.all(influence >= p[:, :5] - 1e-12)


def test_the_readme_path_embed_shards_build_an_index_attribute(tiny_root, tmp_path, capsys):
    """``ada embed --shards``, ``ada index build``, ``ada attribute --index``: the rows of exact search."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, src in enumerate(sorted((tiny_root / "dataset").rglob("*.jpg"))[:60]):
        shutil.copy(src, gallery / f"{i:03d}.jpg")
    query = sorted((tiny_root / "dataset").rglob("*.jpg"))[70]
    common = ["--image-size", "32", "--batch-size", "8"]
    assert main(["embed", str(gallery), "--shards", str(tmp_path / "shards"), "--shard-size", "25", *common]) == 0
    assert main(["index", "build", str(tmp_path / "shards"), "--out", str(tmp_path / "idx"), "--memory", "1GB",
                 "--factory", "IVF4,Flat"]) == 0
    assert main(["attribute", "--gallery", str(tmp_path / "shards"), "--index", str(tmp_path / "idx"), "--query",
                 str(query), "--top", "3", "--shortlist", "60", "--out", str(tmp_path / "a.json"), *common]) == 0
    assert main(["attribute", "--gallery", str(gallery), "--query", str(query), "--top", "3",
                 "--out", str(tmp_path / "b.json"), *common]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / f).read_text())["rows"] for f in ("a.json", "b.json"))
    assert [r["gallery"] for r in a] == [r["gallery"] for r in b]
    assert np.allclose([r["score"] for r in a], [r["score"] for r in b], atol=2e-3)  # float16 shards
    assert main(["attribute", "--gallery", str(gallery), "--index", str(tmp_path / "nope"), "--query",
                 str(query)]) == 2
    assert "neither flat, ivf, hnsw nor an index folder" in capsys.readouterr().err


def test_a_contact_sheet_of_a_tar_gallery_shows_the_samples_read_back_by_key(tiny_root, tmp_path, capsys):
    from test_shards import make_shards

    jpgs = sorted((tiny_root / "dataset").rglob("*.jpg"))
    make_shards(jpgs[:24], tmp_path / "tars", per_shard=10)
    common = ["--image-size", "32", "--batch-size", "8"]
    assert main(["embed", str(tmp_path / "tars"), "--shards", str(tmp_path / "shards"), *common]) == 0
    assert main(["index", "build", str(tmp_path / "shards"), "--out", str(tmp_path / "idx"), "--memory", "1GB"]) == 0
    args = ["attribute", "--gallery", str(tmp_path / "shards"), "--index", str(tmp_path / "idx"), "--query",
            str(jpgs[3]), "--top", "3", "--shortlist", "24", "--sheet", str(tmp_path / "sheet.html"),
            "--out", str(tmp_path / "a.json"), *common]
    assert main(args) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    sheet = (tmp_path / "sheet.html").read_text()
    assert sheet.count("<img") == 4 and all(f"{r['gallery']}</td>" in sheet for r in rows)
    assert rows[0]["gallery"] == "000000003" and rows[0]["score"] > 0.999  # the query's own image, by its key
    shutil.move(tmp_path / "tars", tmp_path / "moved")
    capsys.readouterr()
    assert main(args) == 2
    assert "the contact sheet shows its images: put it back, or leave out --sheet" in capsys.readouterr().err


def test_metrics_through_an_exact_index_equal_the_official_metric(shards, tmp_path):
    """An index over distractors and exemplars: Flat with a shortlist of the whole gallery reproduces abc_metrics;
    a short shortlist through IVF stays close."""
    from ada_utils.eval.index import metrics_through_index
    from ada_utils.retrieval import abc_metrics

    distractors, rng = open_shards(shards), np.random.default_rng(2)
    centres = distractors.rows_at(rng.choice(7000, 30, replace=False))
    ex_model = np.repeat(np.arange(30), 2)
    exemplars = (centres[ex_model] + 0.3 * rng.normal(size=(60, 32))).astype(np.float32)
    q_model = np.repeat(np.arange(30), 3)
    queries = (centres[q_model] + 0.3 * rng.normal(size=(90, 32))).astype(np.float32)
    both = write_feature_shards(tmp_path / "both", [*distractors.arrays, exemplars],
                                [*(distractors.ids[i:i + len(a)] for i, a in zip((0, 3000, 6000), distractors.arrays)),
                                 [f"ex{i}" for i in range(60)]], source={"name": "drawn", "seed": 0})
    gallery = open_shards(both)
    rows = np.arange(7000, 7060)
    official = abc_metrics(queries, q_model, gallery.rows_at(rows), ex_model, np.asarray(gallery[0:7000]), ks=(5, 10))
    flat = open_index(build_index(both, tmp_path / "flat", memory=1 << 30, progress=False))
    through = metrics_through_index(flat, gallery, 7000, rows, ex_model, queries, q_model, shortlist=7060, ks=(5, 10))
    assert 0.1 < official["map"] < 0.9 and through["map"] == pytest.approx(official["map"], abs=1e-6)
    assert through["recall"][5] == pytest.approx(official["recall"][5], abs=1e-9)
    ivf = open_index(build_index(both, tmp_path / "ivf", memory=1 << 30, factory="IVF64,Flat", progress=False))
    short = metrics_through_index(ivf, gallery, 7000, rows, ex_model, queries, q_model, shortlist=100, ks=(5, 10))
    assert abs(short["recall"][5] - official["recall"][5]) < 0.05
