"""embed_images: exact features, cache reuse, resume after a crash, wrong-encoder errors, transforms, ranks."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from ada_utils.encoders import embed_images, load_features
from ada_utils.files import locked

PREPROCESS = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])


class TinyEncoder(nn.Module):
    """A real (small, random) conv net with the Encoder attributes: .preprocess, .spec, .dim."""

    def __init__(self, seed: int = 0, dim: int = 6, fail_after: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, dim))
        self.dim, self.preprocess = dim, PREPROCESS
        self.spec = {"name": "tiny", "weights": "random", "image_size": 16}
        self.calls, self.images, self.fail_after = 0, 0, fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(torch.unique(x, dim=0))  # distinct images: a short batch is padded with copies
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return self.net(x)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12 + i, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _direct(encoder, paths):
    with torch.no_grad():
        return encoder.net(torch.stack([PREPROCESS(Image.open(p).convert("RGB")) for p in paths])).numpy()


def test_features_match_a_direct_forward_and_are_reused(images, tmp_path):
    enc = TinyEncoder()
    out = embed_images(enc, images, cache=tmp_path / "c", batch_size=2, chunk_size=3, progress=False)
    np.testing.assert_allclose(out.feats, _direct(enc, images), atol=1e-5)
    assert out.feats.dtype == np.float32 and out.ids == [p.as_posix() for p in images]
    m = out.manifest
    assert (m["count"], m["dim"], m["dtype"], m["transform"]) == (7, 6, "float32", "preprocess")
    assert not (tmp_path / "c" / "chunks").exists() and not (tmp_path / "c" / "progress.json").exists()
    calls = enc.calls
    again = embed_images(enc, images, cache=tmp_path / "c", progress=False)
    assert enc.calls == calls and np.array_equal(again.feats, out.feats)
    assert load_features(tmp_path / "c").ids == out.ids


def test_default_chunks_keep_most_of_an_interrupted_short_list(images, tmp_path):
    """A few hundred images (one 1,024-image chunk before) now make 16-ish resumable chunks of at least 64."""
    paths = images * 20  # 140 rows
    crashing = TinyEncoder(fail_after=40)  # dies in the 41st batch of 2: 80 rows embedded
    with pytest.raises(KeyboardInterrupt):
        embed_images(crashing, paths, ids=[str(i) for i in range(140)], cache=tmp_path / "c", batch_size=2,
                     progress=False, streams=1)
    assert json.loads((tmp_path / "c" / "progress.json").read_text())["chunk_size"] == 64
    assert sorted(p.name for p in (tmp_path / "c" / "chunks").glob("*.npy")) == ["000000.npy"]  # rows 0-63 kept


def test_resumes_after_an_interruption(images, tmp_path):
    ref = embed_images(TinyEncoder(), images, cache=tmp_path / "ref", batch_size=2, chunk_size=3, progress=False)
    crashing = TinyEncoder(fail_after=3)  # chunk 0 = 2 batches done, chunk 1 dies in its 2nd batch
    with pytest.raises(KeyboardInterrupt):
        embed_images(crashing, images, cache=tmp_path / "c", batch_size=2, chunk_size=3, progress=False, streams=1)
    assert sorted(p.name for p in (tmp_path / "c" / "chunks").glob("*.npy")) == ["000000.npy"]
    resumed = TinyEncoder()
    out = embed_images(resumed, images, cache=tmp_path / "c", batch_size=2, chunk_size=3, progress=False,
                       streams=1)
    assert resumed.calls == 3  # chunk 1 (2 batches) + chunk 2 (1 batch); chunk 0 was not recomputed
    np.testing.assert_array_equal(out.feats, ref.feats)


def test_concurrent_streams_give_the_same_features_and_keep_finished_chunks(images, tmp_path):
    """Two chunks at a time (one torch thread each): the same bits as one stream, plain and seeded views; an
    interruption keeps the chunks that finished, and the resumed cache equals the uninterrupted one."""
    aug = transforms.Compose([transforms.RandomResizedCrop(16, scale=(0.3, 1.0)), transforms.ToTensor()])
    paths, plain = images * 6, None  # 42 rows, 14 chunks of 3
    for kw in ({}, {"transform": aug, "transform_key": "rrc16", "seed": 3}):
        one = embed_images(TinyEncoder(), paths, ids=range(42), cache=tmp_path / f"one{len(kw)}", batch_size=2,
                           chunk_size=3, progress=False, streams=1, **kw)
        two = embed_images(TinyEncoder(), paths, ids=range(42), cache=tmp_path / f"two{len(kw)}", batch_size=2,
                           chunk_size=3, progress=False, streams=2, **kw)
        np.testing.assert_array_equal(one.feats, two.feats)
        plain = one if plain is None else plain
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        embed_images(TinyEncoder(fail_after=12), paths, ids=range(42), cache=tmp_path / "c", batch_size=2,
                     chunk_size=3, progress=False, streams=2)
    assert torch.get_num_threads() == threads  # restored after the interruption
    kept = len(list((tmp_path / "c" / "chunks").glob("*.npy")))
    assert 4 <= kept < 14  # 12 batches of 2 = at least 4 whole chunks; the chunks not started were dropped
    resumed = TinyEncoder()
    out = embed_images(resumed, paths, ids=range(42), cache=tmp_path / "c", batch_size=2, chunk_size=3,
                       progress=False, streams=2)
    assert resumed.calls == 2 * (14 - kept)
    np.testing.assert_array_equal(out.feats, plain.feats)


def test_other_encoder_or_list_in_the_same_cache_is_an_error(images, tmp_path):
    embed_images(TinyEncoder(), images, cache=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=r"c/manifest.json: feature cache written for another encoder"):
        embed_images(TinyEncoder(seed=1), images, cache=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="another image list or chunking"):
        embed_images(TinyEncoder(), images[:3], cache=tmp_path / "c", progress=False)
    with pytest.raises(KeyboardInterrupt):
        embed_images(TinyEncoder(fail_after=0), images, cache=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match=r"d/progress.json: feature cache written for another encoder"):
        embed_images(TinyEncoder(seed=1), images, cache=tmp_path / "d", progress=False)


def test_default_cache_location_separates_encoders(images, tmp_path, monkeypatch):
    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    a = embed_images(TinyEncoder(), images, progress=False)
    b = embed_images(TinyEncoder(seed=1), images, progress=False)
    assert a.path != b.path and a.path.parent.parent == tmp_path / "work" / "cache" / "features"


def test_a_new_list_embeds_only_the_images_no_other_list_holds(images, tmp_path, monkeypatch):
    """Lists sharing files under one encoder: the shared rows are copied, only new files go through the model; a
    rebuilt file (new mtime) and seeded views are embedded again."""
    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    enc = TinyEncoder()
    first = embed_images(enc, images[:5], batch_size=2, progress=False)
    assert enc.images == 5 and first.manifest["rows_from_other_lists"] == 0
    second = embed_images(enc, images[3:], batch_size=2, progress=False)
    assert enc.images == 5 + 2 and second.manifest["rows_from_other_lists"] == 2
    np.testing.assert_allclose(second.feats, _direct(enc, images[3:]), atol=1e-5)
    np.testing.assert_array_equal(second.feats[:2], first.feats[3:5])
    os.utime(images[0], ns=(1, 1))
    embed_images(enc, images[:2], progress=False)
    assert enc.images == 7 + 1  # images[0] changed on disk: embedded again; images[1] copied
    aug = transforms.Compose([transforms.RandomResizedCrop(16), transforms.ToTensor()])
    embed_images(enc, images[:3], transform=aug, transform_key="rrc", progress=False)
    embed_images(enc, images[:2], transform=aug, transform_key="rrc", progress=False)
    assert enc.images == 8 + 3 + 2


def test_seeded_transform_views_are_reproducible(images, tmp_path):
    aug = transforms.Compose([transforms.RandomResizedCrop(16, scale=(0.3, 1.0)), transforms.ToTensor()])
    kw = dict(transform=aug, transform_key="rrc16", seed=5, batch_size=3, progress=False)
    a = embed_images(TinyEncoder(), images, cache=tmp_path / "a", chunk_size=2, **kw)
    b = embed_images(TinyEncoder(), images, cache=tmp_path / "b", chunk_size=7, **kw)
    plain = embed_images(TinyEncoder(), images, cache=tmp_path / "p", progress=False)
    np.testing.assert_array_equal(a.feats, b.feats)
    assert not np.allclose(a.feats, plain.feats) and a.manifest["transform"] == "rrc16"
    with pytest.raises(ValueError, match="transform and transform_key go together"):
        embed_images(TinyEncoder(), images, transform=aug, progress=False)


def test_two_ranks_share_the_work_and_rank0_merges(images, tmp_path, monkeypatch):
    ref = embed_images(TinyEncoder(), images, cache=tmp_path / "ref", progress=False)
    kw = dict(cache=tmp_path / "c", chunk_size=2, world_size=2, progress=False, timeout=60)
    # Both encoders are built before the worker starts: TinyEncoder seeds torch's global RNG, which threads share.
    enc0, enc1, results = TinyEncoder(), TinyEncoder(), {}
    worker = threading.Thread(target=lambda: results.setdefault(1, embed_images(enc1, images, rank=1, **kw)))
    worker.start()
    out = embed_images(enc0, images, rank=0, **kw)
    worker.join()
    np.testing.assert_allclose(out.feats, ref.feats, atol=1e-6)
    np.testing.assert_array_equal(results[1].feats, out.feats)
    assert enc0.calls == 2 and enc1.calls == 2  # chunks 0, 2 and 1, 3 of 2 images (1 batch each)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"rank=3 must lie in \[0, world_size=2\)"):
        embed_images(TinyEncoder(), images, cache=tmp_path / "e", progress=False)


def _mini_root(root, rng):
    """An AbC-format root: two test cases sharing one exemplar file, 3 distractors."""
    import json

    def image(rel):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
        return rel

    shared = image("dataset/exemplar/x/images/g0/shared.png")
    for case, n_models in (("test_a", 2), ("test_b", 1)):
        entries = [{"class_id": f"{case}_{m}", "category": None,
                    "exemplar": [shared] + [image(f"dataset/exemplar/x/images/{case}{m}/{e}.png") for e in range(m)],
                    "synth": {p: [image(f"dataset/synth/x/{p}/{case}_{m}/samples/{i:05d}.png") for i in range(2)]
                              for p in ("scene", "media")}} for m in range(n_models)]
        (root / "dataset" / "json").mkdir(parents=True, exist_ok=True)
        (root / "dataset" / "json" / f"{case}.json").write_text(json.dumps(entries))
    for i in range(3):
        image(f"dataset/laion_subset/{i:07d}.png")


def test_embed_benchmark_embeds_each_file_once(tmp_path, monkeypatch):
    from ada_utils.encoders import embed_benchmark
    from ada_utils.eval import chance_level, evaluate

    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    _mini_root(tmp_path / "root", np.random.default_rng(1))
    enc = TinyEncoder()
    bf = embed_benchmark(enc, tmp_path / "root", progress=False)
    # unique files: 1 shared + 1 extra exemplar + 12 queries, and 3 distractors
    assert enc.images == 14 + 3
    a = bf.cases["test_a"]
    assert a.exemplar_ids == ["dataset/exemplar/x/images/g0/shared.png"] * 2 + [
        "dataset/exemplar/x/images/test_a1/0.png"]
    assert a.queries["media"].shape == (4, 6) and a.query_model["media"].tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(a.exemplars[0], bf.cases["test_b"].exemplars[0])
    assert bf.distractors.shape == (3, 6) and bf.distractor_ids[0] == "dataset/laion_subset/0000000.png"
    cells = evaluate(bf)
    assert sorted(cells) == ["test_a/media", "test_a/scene", "test_b/media", "test_b/scene"]
    assert cells["test_a/scene"]["n_queries"] == 4 and 0 < cells["test_a/scene"]["mAP"] <= 1
    assert chance_level(bf)["test_b/scene"]["R@5"] == 1.0  # 3 distractors + 1 exemplar: all in the top 5
    embed_benchmark(enc, tmp_path / "root", progress=False)
    assert enc.images == 17  # second call: all from the cache


def test_abandoned_partial_caches_are_removed_and_live_ones_kept(tmp_path):
    """A partial cache of another image list idle for hours goes; a recent one, a finished one and the kept one stay."""
    from ada_utils.encoders.embed import ABANDONED_S, remove_abandoned

    folders = {}
    for name, files in {"old": ["progress.json", "chunks/000000.npy"], "recent": ["progress.json"],
                        "done": ["progress.json", "manifest.json"], "keep": ["progress.json"],
                        "other": ["notes.txt"]}.items():
        folders[name] = tmp_path / name
        for f in files:
            (folders[name] / f).parent.mkdir(parents=True, exist_ok=True)
            (folders[name] / f).write_text("{}")
    old = time.time() - ABANDONED_S - 60
    for name in ("old", "done", "keep", "other"):
        for p in [folders[name], *folders[name].rglob("*")]:
            os.utime(p, (old, old))
    assert remove_abandoned(tmp_path, keep=folders["keep"]) == [folders["old"]]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["done", "keep", "other",
                                                                                        "recent"]  # (lock files stay)
    with locked(folders["done"].parent / "recent"):  # a live writer holds it: never deleted, however old its files
        for p in [folders["recent"], *folders["recent"].rglob("*")]:
            os.utime(p, (old, old))
        assert remove_abandoned(tmp_path, keep=folders["keep"]) == []
