"""Webdataset tar shards in, feature shards out: the reader (a damaged tar included), resumption shard by shard,
agreement with the feature cache, and two torchrun processes equal to one."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ada_utils.data.shards import ShardError, list_shards, read_shard, sample_key
from ada_utils.encoders import embed_images
from ada_utils.encoders.sharded import (embed_shards, open_shards, shard_done, shard_inputs, verify_shards,
                                       write_feature_shards)
from ada_utils.files import DamagedFileError
from test_embed import TinyEncoder

REPO = Path(__file__).resolve().parents[1]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(images: list[Path], folder: Path, per_shard: int) -> list[Path]:
    """img2dataset's layout: ``<shard>.tar`` of ``<key>.jpg/.txt/.json`` samples and ``<shard>_stats.json``; the
    first shard also holds a failed download (a sample with no image)."""
    folder.mkdir(parents=True)
    shards = []
    for s in range(0, len(images), per_shard):
        path = folder / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            if s == 0:
                _add(tar, f"{s // per_shard:05d}9999.json", b'{"status": "failed_to_download"}')
            for i, image in enumerate(images[s:s + per_shard]):
                key = f"{s // per_shard:05d}{i:04d}"
                _add(tar, f"{key}.jpg", image.read_bytes())
                _add(tar, f"{key}.txt", f"caption {key}".encode())
                _add(tar, f"{key}.json", json.dumps({"key": key}).encode())
        (folder / f"{path.stem}_stats.json").write_text(json.dumps({"successes": len(images[s:s + per_shard])}))
        shards.append(path)
    return shards


@pytest.fixture()
def jpgs(tiny_root: Path) -> list[Path]:
    return sorted((tiny_root / "dataset").rglob("*.jpg"))[:30]


def test_the_reader_follows_webdatasets_keys_and_skips_samples_without_an_image(jpgs, tmp_path):
    shards = make_shards(jpgs, tmp_path / "tars", per_shard=12)
    assert list_shards([tmp_path / "tars"]) == shards and len(shards) == 3
    samples = [s for shard in shards for s in read_shard(shard)]
    assert [k for k, _ in samples[:2]] == ["000000000", "000000001"] and len(samples) == 30
    assert all(data == src.read_bytes() for (_, data), src in zip(samples, jpgs))
    assert sample_key("a/b/x.seg.png") == ("a/b/x", "seg.png") and sample_key("README") is None


def test_a_damaged_tar_is_named_or_cut_at_the_damage(jpgs, tmp_path, capsys):
    shard = make_shards(jpgs, tmp_path / "tars", per_shard=30)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(ShardError, match=rf"{shard}: damaged tar shard after sample '\d{{9}}' .*--on-error skip"):
        list(read_shard(shard))
    kept = list(read_shard(shard, on_error="skip"))
    assert 5 < len(kept) < 30 and all(d == src.read_bytes() for (_, d), src in zip(kept, jpgs))
    assert "the rest of this shard is left out" in capsys.readouterr().err
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match="before its first sample"):
        list(read_shard(tmp_path / "junk.tar"))


def test_shards_resume_one_by_one_and_match_the_feature_cache(jpgs, tmp_path):
    encoder, out = TinyEncoder(), tmp_path / "out"
    shards = make_shards(jpgs, tmp_path / "tars", per_shard=12)
    embed_shards(encoder, shard_inputs(shards), out, dtype="float32", batch_size=4, progress=False)
    found = open_shards(out)
    assert found.rows == 30 and found.ids[0] == "000000000" and found.manifest["shards"][2]["rows"] == 6
    reference = embed_images(encoder, jpgs, cache=tmp_path / "cache", batch_size=4, progress=False).feats
    np.testing.assert_allclose(found.rows_at(np.arange(30)), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(found.rows_at(np.array([29, 3, 12])), np.asarray(reference)[[29, 3, 12]])
    before = found.rows_at(np.arange(30))
    # a lost ids file and a damaged array: exactly those two shards are embedded again
    (out / "ids" / "00001.json").unlink()
    emb = out / "emb" / "00002.npy"
    emb.write_bytes(emb.read_bytes()[:-8] + bytes(8))
    assert verify_shards(out) == ["00001", "00002"]
    (out / "manifest.json").unlink()
    encoder.images = 0
    embed_shards(encoder, shard_inputs(shards), out, dtype="float32", batch_size=4, progress=False)
    assert encoder.images == 12 + 6 and verify_shards(out) == []
    np.testing.assert_array_equal(open_shards(out).rows_at(np.arange(30)), before)
    with pytest.raises(ValueError, match="another dtype"):
        embed_shards(encoder, shard_inputs(shards), out, dtype="float16", progress=False)


def test_ids_are_read_per_shard_and_a_resized_array_is_refused(tmp_path):
    parts = [np.ones((n, 4), np.float32) * i for i, n in enumerate((3, 0, 5))]
    names = [[f"s{i}-{r}" for r in range(len(a))] for i, a in enumerate(parts)]
    out = write_feature_shards(tmp_path / "f", parts, names, source={"name": "test"}, dtype="float32")
    found = open_shards(out)
    assert found.ids._shard.cache_info().currsize == 0  # nothing read at open
    assert found.ids[4] == "s2-1" and found.ids[-1] == "s2-4" and found.ids[2:4] == ["s0-2", "s2-0"]
    assert list(found.ids) == [i for n in names for i in n] and found.ids._shard.cache_info().currsize == 2
    with pytest.raises(IndexError, match="row 8 of a gallery of 8"):
        found.ids[8]
    emb = out / "emb" / "00002.npy"
    for damage in (emb.read_bytes()[:-4], emb.read_bytes() + bytes(4)):
        emb.write_bytes(damage)
        with pytest.raises(DamagedFileError, match=rf"{emb}: missing or of another size"):
            open_shards(out)


def test_embedding_reader_reads_a_shard_folder_in_row_order(tmp_path):
    from embedding_reader import EmbeddingReader

    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 8)).astype(np.float32) for n in (7, 0, 5, 11)]  # an empty shard among them
    ids = [[f"{i}-{r}" for r in range(len(a))] for i, a in enumerate(parts)]
    out = write_feature_shards(tmp_path / "f", parts, ids, source={"name": "test"})
    reader = EmbeddingReader(str(out / "emb"), file_format="npy")
    assert (reader.count, reader.dimension) == (23, 8)
    read = np.concatenate([e for e, _ in reader(batch_size=4, start=0, end=reader.count, show_progress=False)])
    np.testing.assert_array_equal(read, open_shards(out)[0:23].astype(np.float32))


def test_a_shard_finished_during_this_run_is_checked_by_size_one_from_before_by_content(tmp_path, capsys):
    out = write_feature_shards(tmp_path / "f", [np.ones((5, 4), np.float32)], [list("abcde")],
                               source={"name": "test"}, dtype="float32")
    emb = out / "emb" / "00000.npy"
    emb.write_bytes(emb.read_bytes()[:-4] + bytes(4))  # same size, other content
    written = (out / "ids" / "00000.json").stat().st_mtime
    assert shard_done(out, "00000", since=written)  # another rank wrote it in this run: size only
    assert not shard_done(out, "00000", since=written + 1) and "SHA-256 mismatch" in capsys.readouterr().err
    assert not (out / "ids" / "00000.json").exists()  # to be embedded again


def test_image_lists_are_cut_into_shards_and_bad_samples_follow_on_error(jpgs, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    inputs = shard_inputs([*jpgs[:9], bad], shard_size=4)
    assert [s.name for s in inputs] == ["00000", "00001", "00002"] and len(inputs[2].files) == 2
    out = embed_shards(TinyEncoder(), inputs, tmp_path / "out", on_error="skip", progress=False)
    found = open_shards(out)
    assert found.rows == 9 and found.arrays[0].dtype == np.float16
    assert json.loads((out / "ids" / "00002.json").read_text())["skipped"] == [bad.as_posix()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: str, args: list[str], env: dict) -> None:
    """``torchrun`` with 2 processes on this node, or as 2 nodes of 1 process each (``--nnodes 2 --node_rank i``
    with a rendezvous on localhost: two launchers, as two machines on a shared file system would run them)."""
    torchrun, port = [sys.executable, "-m", "torch.distributed.run"], _free_port()
    if launch == "2 processes":
        cmds = [[*torchrun, "--nproc_per_node=2", f"--master_port={port}", *args]]
    else:
        cmds = [[*torchrun, "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                 f"--master_port={port}", *args] for i in range(2)]
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]


@pytest.mark.parametrize("launch", ["2 processes", "2 nodes"])
def test_two_torchrun_processes_write_the_shards_of_one(jpgs, tmp_path, launch):
    """``torchrun --nproc_per_node 2 -m ada_utils embed TARS --shards OUT`` (or ``--nnodes 2``): the same shards as
    one process."""
    shards = make_shards(jpgs, tmp_path / "tars", per_shard=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["-m", "ada_utils", "embed", str(tmp_path / "tars"), "--image-size", "32", "--batch-size", "4"]
    _torchrun(launch, [*common, "--shards", str(tmp_path / "two")], env)
    one = subprocess.run([sys.executable, *common, "--shards", str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]
    assert f"30 x 1280 float16 features in {len(shards)} shards" in one.stdout
    # Which rank took which shard depends on who started first (a rank takes every shard nobody holds yet):
    ranks = {json.loads(p.read_text())["rank"] for p in (tmp_path / "two" / "ids").glob("*.json")}
    assert ranks <= {0, 1} and len(list((tmp_path / "two" / "ids").glob("*.json"))) == len(shards)
    a, b = open_shards(tmp_path / "one"), open_shards(tmp_path / "two")
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(a.rows_at(np.arange(30)), b.rows_at(np.arange(30)))
    shutil.rmtree(tmp_path / "tars")
