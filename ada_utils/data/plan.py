"""The plan of an embedded benchmark: which model gets which object or style, and every image as a job.

Planning is cheap and deterministic (one seeded generator, sorted inputs); rendering (``generate.py``) then
executes the jobs in any order, each from its own seed, so the files do not depend on worker scheduling.

Object instances: categories (stamp folders) are split into *seen* and *unseen* ones; ``test_objects_unseen``
models come from unseen categories only, ``test_objects_seen`` and all training object models from seen ones,
and no cut-out serves two models (unless the pool is too small, which only ``medium`` hits: then an instance is
reused within one split, as a hue-rotated, mirrored variant, and the manifest records it).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from ada_utils.data.photos import Sources
from ada_utils.data.render import MEDIA
from ada_utils.data.styles import draw_style


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale (the table on the book's reproducibility page)."""

    obj_seen: int
    obj_unseen: int
    styles: int
    queries: int          # synthetic images per model and prompt type
    distractors: int
    train_obj: int
    train_styles: int


SCALES = {
    "tiny": Scale(6, 6, 6, 4, 200, 24, 12),
    "small": Scale(100, 100, 60, 10, 2000, 200, 60),
    "medium": Scale(300, 300, 200, 20, 20000, 600, 200),
}
OBJECT_PROMPTS = ("scene", "media")
STYLE_PROMPTS = ("scene", "object")
TEST_CASES = ("test_objects_seen", "test_objects_unseen", "test_styles")
TRAIN_JSON = "train_all"
# Distractor mix: plain photo crops, composites with objects of no model, photos in styles of no model.
DISTRACTOR_MIX = (("dist_photo", 0.4), ("dist_composite", 0.35), ("dist_style", 0.25))


@dataclass(frozen=True)
class Job:
    """One image to render: ``kind`` (see ``generate.RENDERERS``), output path (``dataset/...``), arguments."""

    kind: str
    out: str
    args: dict

    def seed(self, base: int) -> list[int]:
        """Per-job seed: the benchmark seed and a CRC of the output path (independent of job order)."""
        return [base, zlib.crc32(self.out.encode())]


@dataclass
class Plan:
    """JSON entries per split, the jobs that render their files, and facts for the manifest."""

    entries: dict[str, list[dict]] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "object"


def _opaque(seed: int, key: str) -> str:
    return f"{zlib.crc32(f'{seed}:{key}'.encode()):08x}"


def split_instances(sources: Sources, scale: Scale, rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """Assign cut-outs (index, variant) to ``unseen``, ``seen``, ``train`` and ``spare`` (objects of no model,
    for distractors and style prompts; ``spare_seen``: those of seen categories).

    Categories go to the unseen side (shuffled) until it holds its share of all cut-outs; within a side,
    photo-like cut-outs come before drawn ones, and every test-seen category also has a training model.
    Variant > 0 marks a reuse (only when the pool is too small).
    """
    cats = sorted({c.category for c in sources.cutouts})
    rng.shuffle(cats)
    need_unseen, need_seen = scale.obj_unseen, scale.obj_seen + scale.train_obj
    share = len(sources.cutouts) * need_unseen / (need_unseen + need_seen)
    unseen_cats: set[str] = set()
    for cat in cats:
        if sum(c.category in unseen_cats for c in sources.cutouts) >= share:
            break
        unseen_cats.add(cat)

    def ordered(unseen: bool) -> list[int]:
        idx = [i for i, c in enumerate(sources.cutouts) if (c.category in unseen_cats) == unseen]
        rng.shuffle(idx)
        return sorted(idx, key=lambda i: sources.cutouts[i].tier)  # stable: shuffled within each tier

    def take(pool: list[int], n: int) -> list[tuple[int, int]]:
        return [(pool[k % len(pool)], k // len(pool)) for k in range(n)]

    unseen, seen = ordered(True), ordered(False)
    if len(unseen) < 1 or len(seen) < 2:
        raise ValueError(f"{len(sources.cutouts)} cut-outs in {len(cats)} categories: need at least 3 cut-outs in "
                         f"2 categories (one unseen, two seen); add more to --objects")
    n_test = scale.obj_seen if len(seen) >= need_seen else len(seen) * scale.obj_seen // need_seen
    seen_test, seen_train = _seen_split(seen, sources, n_test, min(len(seen), need_seen) - n_test)
    used = set(seen_test) | set(seen_train)
    return {"unseen": take(unseen, scale.obj_unseen), "seen": take(seen_test, scale.obj_seen),
            "train": take(seen_train, scale.train_obj),
            "spare": [(i, 0) for i in unseen[scale.obj_unseen:] + [i for i in seen if i not in used]],
            "spare_seen": [(i, 0) for i in seen if i not in used]}


def _seen_split(seen: list[int], sources: Sources, n_test: int, n_train: int) -> tuple[list[int], list[int]]:
    """Split seen-category cut-outs into test and training instances so that every category of a test-seen
    model also has a training model (the first cut-out of each category goes to training)."""
    test, train, trained = [], [], set()
    for i in seen:
        cat = sources.cutouts[i].category
        if cat not in trained and len(train) < n_train:
            train.append(i)
            trained.add(cat)
        elif cat in trained and len(test) < n_test:
            test.append(i)
        elif len(train) < n_train:
            train.append(i)
    return test, train


def _object_models(instances: list[tuple[int, int]], sources: Sources, scale: Scale,
                   rng: np.random.Generator, seed: int, start: int, plan: Plan) -> list[dict]:
    entries, media = [], sorted(MEDIA)
    n_photos = len(sources.photos)
    for k, (cut, variant) in enumerate(instances):
        category = sources.cutouts[cut].category
        class_id = f"{_slug(category)}_{start + k:04d}"
        photo = int(rng.integers(n_photos))
        ex = f"dataset/exemplar/objects/images/{_slug(category)}/{_opaque(seed, class_id)}.jpg"
        common = {"cutout": cut, "variant": variant}
        plan.jobs.append(Job("obj_real", ex, {**common, "photo": photo}))
        synth: dict[str, list[str]] = {}
        offset = int(rng.integers(len(media)))
        for prompt in OBJECT_PROMPTS:
            synth[prompt] = [f"dataset/synth/objects/{prompt}/{class_id}/samples/{j:05d}.jpg"
                             for j in range(scale.queries)]
            for j, out in enumerate(synth[prompt]):
                extra = {"avoid": photo} if prompt == "scene" else {"medium": media[(offset + j) % len(media)]}
                plan.jobs.append(Job(f"obj_{prompt}", out, {**common, **extra}))
        entries.append({"exemplar": [ex], "synth": synth, "class_id": class_id, "category": category})
    return entries


def _exemplar_counts(n: int, rng: np.random.Generator) -> list[int]:
    """4-12 exemplars per style model, exactly round(n / 5) of them above 10 (like BAM-FG/Artchive's tails)."""
    counts = rng.integers(4, 11, size=n)
    counts[rng.permutation(n)[:round(n / 5)]] = rng.integers(11, 13, size=round(n / 5))
    return [int(c) for c in counts]


def _style_models(n: int, sources: Sources, scale: Scale, rng: np.random.Generator, seed: int, start: int,
                  spare: list[int], plan: Plan) -> list[dict]:
    entries = []
    for k, count in enumerate(_exemplar_counts(n, rng)):
        style, class_id = draw_style(rng), f"style_{start + k:04d}"
        exemplars = [f"dataset/exemplar/styles/images/{class_id}/{_opaque(seed, f'{class_id}/{e}')}.jpg"
                     for e in range(count)]
        plan.jobs += [Job("style_real", ex, {"style": style}) for ex in exemplars]
        synth = {p: [f"dataset/synth/styles/{p}/{class_id}/samples/{j:05d}.jpg" for j in range(scale.queries)]
                 for p in STYLE_PROMPTS}
        plan.jobs += [Job("style_scene", out, {"style": style}) for out in synth["scene"]]
        plan.jobs += [Job("style_object", out, {"style": style, "cutout": int(rng.choice(spare))})
                      for out in synth["object"]]
        entries.append({"exemplar": sorted(exemplars), "synth": synth, "class_id": class_id, "category": None})
    return entries


def _distractors(n: int, spare: list[int], rng: np.random.Generator, plan: Plan) -> None:
    kinds = np.repeat([k for k, _ in DISTRACTOR_MIX], [round(n * f) for _, f in DISTRACTOR_MIX])[:n]
    kinds = np.concatenate([kinds, ["dist_photo"] * (n - len(kinds))])
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds.tolist()):
        args = {"cutout": int(rng.choice(spare))} if kind == "dist_composite" else {}
        if kind == "dist_style":
            args = {"style": draw_style(rng)}
        plan.jobs.append(Job(kind, f"dataset/laion_subset/{i:07d}.jpg", args))


def make_plan(sources: Sources, *, scale: str, seed: int) -> Plan:
    """Plan every split, image and JSON entry of the benchmark ``scale`` (tiny | small | medium)."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: choose one of {sorted(SCALES)}")
    size, rng, plan = SCALES[scale], np.random.default_rng(seed), Plan()
    inst = split_instances(sources, size, rng)
    spare = [i for i, _ in inst["spare"]] or list(range(len(sources.cutouts)))
    # training style models show seen-category objects only: unseen categories never reach training
    spare_seen = [i for i, _ in inst["spare_seen"]] or [i for i, _ in inst["train"]]
    args = (sources, size, rng, seed)
    plan.entries["test_objects_seen"] = _object_models(inst["seen"], *args, 0, plan)
    plan.entries["test_objects_unseen"] = _object_models(inst["unseen"], *args, size.obj_seen, plan)
    train_obj = _object_models(inst["train"], *args, size.obj_seen + size.obj_unseen, plan)
    plan.entries["test_styles"] = _style_models(size.styles, *args, 0, spare, plan)
    train_styles = _style_models(size.train_styles, *args, size.styles, spare_seen, plan)
    plan.entries[TRAIN_JSON] = train_obj + train_styles
    _distractors(size.distractors, spare, rng, plan)
    reuse = max(v for group in ("seen", "unseen", "train") for _, v in inst[group]) + 1
    plan.facts = {
        "max_instance_reuse": reuse,
        "instance_reuse_note": "each object model has its own cut-out" if reuse == 1 else
        f"cut-out pool too small: an instance serves up to {reuse} models of one split (as hue/mirror variants)",
        "unseen_categories": sorted({sources.cutouts[i].category for i, _ in inst["unseen"]}),
        "seen_categories": sorted({sources.cutouts[i].category for i, _ in inst["seen"] + inst["train"]}),
        "n_spare_cutouts": len(inst["spare"]),
        "distractor_objects": "cut-outs of no model" if inst["spare"] else
        "pool exhausted: distractor composites and style objects reuse model cut-outs (hard negatives)",
    }
    return plan
