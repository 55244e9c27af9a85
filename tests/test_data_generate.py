"""The embedded benchmark: AbC schema and layout, splits, determinism, atomic builds, and no trivial leaks.

Needs the photo packages (``ada data fetch-photos``); without them the tests skip, except under ``CI=true``,
where a missing photo source fails the run (it is never skipped silently).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from ada_utils.data import generate, photos
from ada_utils.data.abc import json_path, list_distractors, load_test_case, training_pairs, unlabelled_pool
from ada_utils.data.plan import SCALES, TEST_CASES, make_plan, split_instances
from ada_utils.data.render import MEDIA, fingerprint

PROMPTS = {"test_objects_seen": ["scene", "media"], "test_objects_unseen": ["scene", "media"],
           "test_styles": ["scene", "object"]}


@pytest.fixture(scope="module")
def sources():
    if not photos.photos_available() and os.environ.get("CI", "").lower() != "true":
        pytest.skip("photo packages not fetched (run `ada data fetch-photos`); under CI=true this fails instead")
    return photos.gather_sources()  # fetches when missing; raises PhotoSourceError when it cannot


@pytest.fixture(scope="module")
def tiny(sources, tiny_root) -> Path:
    """The session's tiny benchmark (``conftest.tiny_root``), once the photo sources are known to exist."""
    return tiny_root


def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cases(root: Path) -> dict:
    return {name: load_test_case(json_path(root, name), root=root) for name in (*TEST_CASES, "train_all")}


def test_layout_schema_and_counts(tiny):
    size, cases = SCALES["tiny"], _cases(tiny)
    for name, prompts in PROMPTS.items():
        case = cases[name]
        assert case.prompt_types == prompts
        entries = json.loads(json_path(tiny, name).read_text())
        assert all(list(e) == ["exemplar", "synth", "class_id", "category"] for e in entries)
        assert all(p.startswith("dataset/") for e in entries for p in e["exemplar"])
        for prompt in prompts:
            assert np.array_equal(np.bincount(case.query_model[prompt]), [size.queries] * len(case.models))
    assert len(cases["test_objects_seen"].models) == size.obj_seen
    assert [len(m.exemplars) for m in cases["test_objects_unseen"].models] == [1] * size.obj_unseen
    counts = [len(m.exemplars) for m in cases["test_styles"].models]
    assert len(counts) == size.styles and min(counts) >= 4 and max(counts) <= 12
    assert sum(c > 10 for c in counts) == round(size.styles / 5)
    assert all(m.category is None for m in cases["test_styles"].models)
    assert len(list_distractors(tiny)) == size.distractors
    manifest = json.loads((tiny / "manifest.json").read_text())
    assert manifest["scale"] == "tiny" and manifest["counts"]["test_styles"]["exemplars"] == sum(counts)
    assert manifest["instances"]["max_instance_reuse"] == 1


def test_splits_are_disjoint(tiny):
    cases = _cases(tiny)
    train, seen, unseen = cases["train_all"], cases["test_objects_seen"], cases["test_objects_unseen"]
    test_ids = {m.class_id for name in TEST_CASES for m in cases[name].models}
    assert not test_ids & {m.class_id for m in train.models}
    assert not {m.category for m in unseen.models} & {m.category for m in seen.models + train.models}
    assert {m.category for m in seen.models} <= {m.category for m in train.models if m.category}
    exemplars = [p for c in cases.values() for p in c.exemplar_paths]
    assert len(set(exemplars)) == len(exemplars)


def test_object_instances_unique_within_small_and_reuse_reported_at_medium(sources):
    rng = np.random.default_rng(0)
    inst = split_instances(sources, SCALES["small"], rng)
    used = [i for g in ("seen", "unseen", "train") for i, _ in inst[g]]
    assert len(used) == len(set(used)) == 400
    assert not {i for i, _ in inst["spare"]} & set(used)
    medium = make_plan(sources, scale="medium", seed=0).facts
    assert medium["max_instance_reuse"] > 1 and "too small" in medium["instance_reuse_note"]
    big = split_instances(sources, SCALES["medium"], np.random.default_rng(0))
    groups = [{i for i, _ in big[g]} for g in ("seen", "unseen", "train")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_unseen_categories_never_reach_training_images(sources):
    plan = make_plan(sources, scale="small", seed=0)
    unseen = set(plan.facts["unseen_categories"])
    train_ids = {e["class_id"] for e in plan.entries["train_all"]}
    # dataset/synth/<objects|styles>/<prompt>/<class_id>/samples/NNNNN.jpg: every synthetic training image
    shown = [sources.cutouts[job.args["cutout"]].category for job in plan.jobs
             if "cutout" in job.args and job.out.startswith("dataset/synth/") and job.out.split("/")[4] in train_ids]
    assert shown and not set(shown) & unseen


def test_same_seed_is_byte_identical_whatever_the_workers(tiny, tmp_path):
    again = generate.build_benchmark(tmp_path / "again", scale="tiny", seed=0, workers=2, progress=False)
    assert _tree_hashes(again) == _tree_hashes(tiny)


def test_interrupted_build_leaves_nothing(sources, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "_run_jobs", crash)
    with pytest.raises(KeyboardInterrupt):
        generate.ensure_benchmark(scale="tiny", seed=3, root=tmp_path / "bench", progress=False)
    # Only the builders' lock stays (deleting a lock file that another process may open would split the lock).
    assert [p.name for p in tmp_path.iterdir()] == [".bench.lock"]


def test_stale_benchmark_is_returned_with_a_warning(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"generator_sha256": "other code"}))
    with pytest.warns(UserWarning, match="another version of the generator"):
        assert generate.ensure_benchmark(scale="tiny", root=tmp_path) == tmp_path


def test_missing_photo_sources_fail_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "photos_dir", lambda: tmp_path / "photos")
    monkeypatch.setattr(photos.shutil, "which", lambda tool: None)
    with pytest.raises(photos.PhotoSourceError, match="--photos DIR") as info:
        photos.gather_sources()
    assert "tuxpaint-stamps-default" in str(info.value) and "apt-get" in str(info.value)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / photos.MARKER).write_text("{}")
    assert photos.fetch_photos(tmp_path / "photos") == tmp_path / "photos"  # idempotent: no apt call


def _domains(root: Path) -> tuple[list[Path], list[Path]]:
    cases = _cases(root)
    real = [p for c in cases.values() for p in c.exemplar_paths] + list_distractors(root)
    synth = [p for c in cases.values() for q in c.queries.values() for p in q]
    return real, synth


def _auc(real: np.ndarray, synth: np.ndarray) -> float:
    auc = roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(synth))], np.r_[real, synth])
    return max(auc, 1 - auc)


def test_no_trivial_cue_separates_real_from_synthetic(tiny):
    real, synth = _domains(tiny)
    opened = [Image.open(p) for p in real[::3] + synth[::3]]
    assert {(im.format, im.size, im.mode) for im in opened} == {("JPEG", (160, 160), "RGB")}
    assert all(im.quantization == opened[0].quantization for im in opened)
    size = lambda paths: np.array([p.stat().st_size for p in paths], dtype=float)  # noqa: E731
    assert _auc(size(real), size(synth)) < 0.75
    mean = lambda paths: np.array([np.asarray(Image.open(p), dtype=float).mean((0, 1)) for p in paths])  # noqa
    m_real, m_synth = mean(real), mean(synth)
    assert all(_auc(m_real[:, c], m_synth[:, c]) < 0.75 for c in range(3))
    assert _auc(m_real.mean(1), m_synth.mean(1)) < 0.75


def test_file_names_do_not_name_the_model(tiny):
    for case in _cases(tiny).values():
        for m in case.models:
            assert all(m.class_id not in p.name for p in m.exemplars)


def test_pool_and_pairs_on_the_training_split(tiny):
    pool = unlabelled_pool(tiny)
    train = load_test_case(json_path(tiny, "train_all"), root=tiny)
    n_synth = sum(len(q) for q in train.queries.values())
    assert len(pool.paths) == len(train.exemplar_paths) + n_synth and int(pool.domain.sum()) == n_synth
    assert pool.ids == sorted(pool.ids)
    pairs = training_pairs(tiny)
    assert len(pairs) == n_synth and all(e in train.models[m].exemplars for e, _, m in pairs)


def test_media_and_fingerprint_keep_size_and_are_seeded():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    for name, medium in MEDIA.items():
        out = medium(img, np.random.default_rng(1))
        assert (out.size, out.mode) == ((160, 160), "RGB"), name
        assert out.tobytes() == medium(img, np.random.default_rng(1)).tobytes(), name
    a, b = fingerprint(img, np.random.default_rng(2)), fingerprint(img, np.random.default_rng(2))
    assert a.tobytes() == b.tobytes() and a.tobytes() != img.tobytes()
