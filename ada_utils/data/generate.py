"""Build the embedded benchmark: an AbC-format stand-in made offline from packaged photographs.

``build_benchmark(out, scale=..., seed=...)`` renders every planned image (``plan.py``) as a 160 px JPEG
(quality 95, real and synthetic alike), writes AbC-schema JSONs and ``manifest.json``, and moves the finished
tree into place in one rename, so an interrupted build never leaves a half dataset. The same seed (and the same
photo packages and library versions) gives byte-identical files. It is a stand-in, **not AbC**.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ada_utils.project import data_dir
from ada_utils.data.abc import PREFIX
from ada_utils.data.images import JPEG_QUALITY, save_jpeg
from ada_utils.data.photos import Sources, gather_sources, prepared_cutout, prepared_photo
from ada_utils.data.plan import SCALES, TEST_CASES, TRAIN_JSON, Job, Plan, make_plan
from ada_utils.data.render import MEDIA, SIZE, colour_shift, composite, fingerprint, lighting, photo_crop
from ada_utils.data.styles import apply_style

GENERATOR_VERSION = "1.0"
GENERATOR_MODULES = ("generate", "plan", "render", "styles", "photos", "images")
Rng = np.random.Generator
_SOURCES: Sources | None = None  # set in each worker by _init_worker


def _cutout(cut: int, variant: int) -> Image.Image:
    """The prepared RGBA cut-out; a reused instance (variant > 0) is hue-rotated and mirrored."""
    obj = prepared_cutout(_SOURCES.cutouts[cut].path)
    if variant == 0:
        return obj
    rgb = colour_shift(obj.convert("RGB"), np.random.default_rng([cut, variant])).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)
    rgb.putalpha(obj.getchannel("A").transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return rgb


def _crop(rng: Rng, photo: int | None = None, avoid: int | None = None) -> Image.Image:
    """A background crop of photo ``photo`` (random if None, never ``avoid``)."""
    n = len(_SOURCES.photos)
    if photo is None:
        photo = int(rng.integers(n - (avoid is not None)))
        photo += int(avoid is not None and photo >= avoid)
    return photo_crop(prepared_photo(_SOURCES.photos[photo]), rng)


def _obj_real(a: dict, rng: Rng) -> Image.Image:
    return composite(_crop(rng, a["photo"]), _cutout(a["cutout"], a["variant"]), rng, scale=(0.5, 0.75), jitter=0.08)


def _obj_scene(a: dict, rng: Rng) -> Image.Image:
    img = composite(_crop(rng, avoid=a["avoid"]), _cutout(a["cutout"], a["variant"]), rng, scale=(0.35, 0.75),
                    jitter=0.15, flip=bool(rng.random() < 0.5), rotate=float(rng.uniform(-25, 25)))
    return fingerprint(lighting(img, rng), rng)


def _obj_media(a: dict, rng: Rng) -> Image.Image:
    img = composite(_crop(rng), _cutout(a["cutout"], a["variant"]), rng, scale=(0.45, 0.75), jitter=0.1,
                    flip=bool(rng.random() < 0.5))
    return fingerprint(MEDIA[a["medium"]](img, rng), rng)


def _style_object(a: dict, rng: Rng) -> Image.Image:
    img = composite(_crop(rng), _cutout(a["cutout"], 0), rng, scale=(0.45, 0.75), jitter=0.1)
    return fingerprint(apply_style(img, a["style"], rng), rng)


RENDERERS: dict[str, Callable[[dict, Rng], Image.Image]] = {
    "obj_real": _obj_real,
    "obj_scene": _obj_scene,
    "obj_media": _obj_media,
    "style_real": lambda a, rng: apply_style(_crop(rng), a["style"], rng),
    "style_scene": lambda a, rng: fingerprint(apply_style(_crop(rng), a["style"], rng), rng),
    "style_object": _style_object,
    "dist_photo": lambda a, rng: _crop(rng),
    "dist_composite": lambda a, rng: composite(_crop(rng), _cutout(a["cutout"], 0), rng, scale=(0.35, 0.75),
                                               jitter=0.12),
    "dist_style": lambda a, rng: apply_style(_crop(rng), a["style"], rng),
}


def _init_worker(sources: Sources) -> None:
    global _SOURCES
    _SOURCES = sources


def _render(task: tuple[Job, int, str]) -> str:
    job, seed, out_root = task
    img = RENDERERS[job.kind](job.args, np.random.default_rng(job.seed(seed)))
    save_jpeg(img, Path(out_root) / job.out)
    return job.out


def _write_jsons(plan: Plan, tmp: Path) -> None:
    folder = tmp / PREFIX / "json"
    folder.mkdir(parents=True, exist_ok=True)
    for name, entries in plan.entries.items():  # AbC's 2-space formatting, key order as in AbC's files
        (folder / f"{name}.json").write_text(json.dumps(entries, indent=2) + "\n")


def _counts(plan: Plan, scale: str) -> dict:
    out = {name: {"models": len(e), "exemplars": sum(len(m["exemplar"]) for m in e),
                  "queries": {p: sum(len(m["synth"].get(p, [])) for m in e)
                              for p in dict.fromkeys(k for m in e for k in m["synth"])}}
           for name, e in plan.entries.items()}
    out["distractors"] = SCALES[scale].distractors
    out["images"] = len(plan.jobs)
    return out


def generator_hash() -> str:
    """SHA-256 of the generator's source files: a benchmark built by other code is stale."""
    digest = hashlib.sha256()
    for name in GENERATOR_MODULES:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


def _manifest(plan: Plan, sources: Sources, *, scale: str, seed: int) -> dict:
    return {"name": "ada embedded benchmark (an AbC-format stand-in, not AbC)", "generator_version": GENERATOR_VERSION,
            "generator_sha256": generator_hash(),
            "scale": scale, "seed": seed, "image_size": SIZE, "test_cases": list(TEST_CASES), "train": TRAIN_JSON,
            "codec": {"format": "JPEG", "quality": JPEG_QUALITY, "subsampling": "4:2:0"},
            "counts": _counts(plan, scale), "sources": sources.description, "instances": plan.facts,
            "layout": "AbC repository layout: dataset/{json,exemplar,synth,laion_subset}"}


def _run_jobs(plan: Plan, sources: Sources, tmp: Path, *, seed: int, workers: int, progress: bool) -> None:
    tasks = [(job, seed, str(tmp)) for job in plan.jobs]
    bar = tqdm(total=len(tasks), desc="rendering", unit="img", disable=not progress)
    if workers <= 1:
        _init_worker(sources)
        for task in tasks:
            _render(task)
            bar.update()
    else:
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(sources,)) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=32):
                bar.update()
    bar.close()


def _remove_stale_partials(out: Path) -> None:
    """Delete ``.<name>.partial-<pid>`` / ``.old-<pid>`` folders of killed builds (process no longer runs)."""
    for tmp in [*out.parent.glob(f".{out.name}.partial-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = int(tmp.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)  # signal 0: only checks that the process exists
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def build_benchmark(out: str | Path, *, scale: str = "small", seed: int = 0, photos: Path | None = None,
                    objects: Path | None = None, workers: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Generate the embedded benchmark at ``out`` (AbC layout; see the module docstring).

    Args:
        out: destination data root; must not exist unless ``overwrite``.
        scale: ``tiny`` (tests, seconds), ``small`` (the CPU book) or ``medium``.
        seed: generator seed; the same seed gives byte-identical files.
        photos, objects: extra user folders (photographs; PNG cut-outs with alpha, one folder per category).
        workers: processes (default: 1 for tiny, else min(2, cores)).
        overwrite: replace an existing ``out``.

    Returns:
        ``out``, holding ``dataset/`` and ``manifest.json``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists; delete it, choose another --out, or pass --overwrite (overwrite=True)")
    sources = gather_sources(photos=photos, objects=objects)
    for path in tqdm(sources.photos, desc="preparing photos", disable=not progress):
        prepared_photo(path)  # decode the big photos once, before forking workers
    plan = make_plan(sources, scale=scale, seed=seed)
    workers = workers or (1 if scale == "tiny" else min(2, os.cpu_count() or 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        _run_jobs(plan, sources, tmp, seed=seed, workers=workers, progress=progress)
        _write_jsons(plan, tmp)
        (tmp / "manifest.json").write_text(json.dumps(_manifest(plan, sources, scale=scale, seed=seed),
                                                      indent=2, sort_keys=True) + "\n")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():  # two renames: readers never see a missing or half-written root for long
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_root(scale: str, seed: int = 0) -> Path:
    """``data/embedded-<scale>-seed<seed>``: where notebooks find the benchmark."""
    return data_dir() / f"embedded-{scale}-seed{seed}"


def ensure_benchmark(*, scale: str, seed: int = 0, root: Path | None = None, photos: Path | None = None,
                     objects: Path | None = None, progress: bool = True) -> Path:
    """Return the benchmark root for (scale, seed), building it first when its manifest is missing.

    A root built by other generator code (``generator_sha256`` in its manifest) is returned with a warning, not
    rebuilt: other processes may be reading it.
    """
    root = Path(root) if root is not None else default_root(scale, seed)
    if (root / "manifest.json").is_file():
        if json.loads((root / "manifest.json").read_text()).get("generator_sha256") != generator_hash():
            warnings.warn(f"{root} was built by another version of the generator; rebuild it with "
                          f"`ada data build --scale {scale} --seed {seed} --out {root} --overwrite`", stacklevel=2)
        return root
    from ada_utils.files import locked

    # One builder at a time (two notebooks on a fresh machine): the second waits, then finds the root built.
    with locked(root, waiting=f"[data] another process is building {root}: waiting for it, then using it") as waited:
        if (root / "manifest.json").is_file():
            if waited:
                print(f"[data] using {root}, built by the other process", file=sys.stderr)
            return root
        return build_benchmark(root, scale=scale, seed=seed, photos=photos, objects=objects, overwrite=True,
                               progress=progress)


def benchmark_root(data_root: str | Path, *, scale: str, seed: int = 0) -> Path:
    """The data root a chapter works on: ``data_root`` (any AbC-layout root) when given, else the embedded
    benchmark of ``scale`` (built on first use)."""
    if data_root:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data_root={str(data_root)!r}: no such folder (an AbC-layout root holding "
                                    "dataset/json/, or the Hugging Face mirror's folder holding json/)")
        return root
    return ensure_benchmark(scale=scale, seed=seed)
