"""The index over feature shards: the memory rules, an index merged on disk equal to one built in memory, the
folder movable, and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ada_utils.cli import main
from ada_utils.encoders.sharded import open_shards, write_feature_shards
from ada_utils.eval.index import (build_index, choose_index, exact_search, knn_recall, open_index, parse_bytes)


def test_the_memory_rules_choose_like_autofaiss():
    assert choose_index(50_000, 768, 4 << 30).factory == "Flat"
    assert choose_index(500_000, 768, 4 << 30).factory == "IVF2048,Flat"  # 4 sqrt(N) = 2828 -> 2^11
    big = choose_index(10_000_000, 768, 4 << 30)  # raw vectors 30.7 GB: 128-byte codes (256 would need 4m > D)
    assert big.factory == "OPQ128_512,IVF16384_HNSW32,PQ128x8" and big.index_bytes == 10_000_000 * (128 + 8)
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


@pytest.fixture()
def shards(tmp_path) -> Path:
    """Three shards of clustered unit vectors (D = 32), one of them shorter."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = (centres[rng.integers(0, 40, 7000)] + 0.4 * rng.normal(size=(7000, 32))).astype(np.float32)
    parts = [x[:3000], x[3000:6000], x[6000:]]
    ids = [[f"img{i}" for i in range(a, a + len(p))] for a, p in zip((0, 3000, 6000), parts)]
    return write_feature_shards(tmp_path / "shards", parts, ids, source={"name": "drawn", "seed": 0})


@pytest.mark.parametrize("factory", ["IVF64,Flat", "OPQ8_32,IVF64_HNSW32,PQ8x8"])
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
