"""An AbC-named rehearsal root: an embedded benchmark laid out under AbC's own names, schema and folder schemes.

The real AbC benchmark (Wang et al., ICCV 2023) does not fit the machines that build the book; this module
lets every command and chapter rehearse the paper's path on files that look like AbC's to the code:

- ``dataset/json/test_{observed_imagenet,unobserved_imagenet,bamfg,artchive}.json`` (the embedded seen and unseen
  object cases become the ImageNet cases; the style models are split between BAM-FG and Artchive), plus
  ``train_all.json`` where the Hugging Face mirror keeps its training JSONs;
- AbC's prompt types: ``gpt``/``media`` for ImageNet, ``gpt``/``object`` for the style cases;
- AbC's ``class_id`` forms (``n01518878_0008``, ``101549_0``, ``african``) and folder schemes:
  ``exemplar/imagenet/images/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``, ``exemplar/bamfg/images/<group>_0/<id>.jpg``,
  ``exemplar/artchive/images/<artist>/<title>.jpg``, ``synth/<family>/<prompt>/<class_id>/samples/NNNNN.png``
  (PNG, as AbC's generated images), ImageNet ``media`` samples numbered like AbC's fixed non-contiguous set;
- distractors in ``laion_subset/`` (repository layout) or ``laion_subset/images/`` with ``captions.txt`` (the
  Hugging Face mirror layout, whose data root *is* the ``dataset`` folder).

The pixels are the embedded benchmark's (real exemplars copied byte for byte, synthetic images and distractors
re-encoded losslessly as PNG), so a rehearsal checks code paths, never AbC's numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

from PIL import Image

from ada_utils.data.abc import PREFIX, json_path, list_distractors, read_entries

Layout = Literal["repo", "hf"]
# AbC's ImageNet "media" sample numbers (a fixed non-contiguous set of 40).
MEDIA_SAMPLES = (*range(20, 24), *range(28, 32), *range(56, 64), *range(92, 104), *range(108, 116), *range(172, 176))
# embedded test case -> (AbC test case, synth family, prompt type renames)
OBJECT_PROMPTS = {"scene": "gpt", "media": "media"}
STYLE_PROMPTS = {"scene": "gpt", "object": "object"}
TEST_CASES = {"test_objects_seen": ("test_observed_imagenet", "imagenet", OBJECT_PROMPTS),
              "test_objects_unseen": ("test_unobserved_imagenet", "imagenet", OBJECT_PROMPTS)}
STYLE_CASES = (("test_bamfg", "bamfg"), ("test_artchive", "artchive"))


def _digits(key: str, n: int) -> str:
    """``n`` decimal digits derived from ``key`` (deterministic, different keys rarely collide)."""
    return str(int(hashlib.sha256(key.encode()).hexdigest(), 16))[:n].zfill(n)


def _class_id(family: str, m: int, entry: dict) -> str:
    """AbC's class_id form of model ``m`` of ``family``."""
    if family == "imagenet":
        return f"n{_digits(str(entry.get('category')), 8)}_{m:04d}"
    if family == "bamfg":
        return f"{100000 + m}_0"
    return f"school{chr(97 + m % 26)}{m:03d}"  # Artchive ids are artist slugs such as "african"


def _exemplar(family: str, class_id: str, e: int) -> str:
    """AbC's exemplar path scheme (JSON form, starting with ``dataset/``)."""
    if family == "imagenet":
        wnid = class_id.split("_")[0]
        return f"{PREFIX}exemplar/imagenet/images/{wnid}/ILSVRC2012_val_{_digits(f'{class_id}/{e}', 8)}.JPEG"
    if family == "bamfg":
        return f"{PREFIX}exemplar/bamfg/images/{class_id}/{_digits(f'{class_id}/{e}', 6)}.jpg"
    return f"{PREFIX}exemplar/artchive/images/{class_id}/untitled-{e:02d}.jpg"


def _sample(family: str, prompt: str, j: int) -> int:
    """The sample number of query ``j``: AbC's fixed set for ImageNet ``media``, else ``j``."""
    return MEDIA_SAMPLES[j % len(MEDIA_SAMPLES)] + 1000 * (j // len(MEDIA_SAMPLES)) if (
        family == "imagenet" and prompt == "media") else j


def _convert(entries: list[dict], family: str, prompts: dict[str, str], copies: dict[str, tuple[str, str]],
             start: int = 0) -> list[dict]:
    """AbC-named entries for ``entries``; records ``new path -> (old path, "copy" | "png")`` in ``copies``."""
    out = []
    for m, entry in enumerate(entries, start=start):
        cid = _class_id(family, m, entry)
        exemplars = []
        for e, old in enumerate(entry["exemplar"]):
            exemplars.append(_exemplar(family, cid, e))
            copies[exemplars[-1]] = (old, "copy")
        synth = {}
        for prompt, files in entry["synth"].items():
            new_prompt = prompts[prompt]
            synth[new_prompt] = [f"{PREFIX}synth/{family}/{new_prompt}/{cid}/samples/"
                                 f"{_sample(family, new_prompt, j):05d}.png" for j in range(len(files))]
            copies.update({new: (old, "png") for new, old in zip(synth[new_prompt], files)})
        out.append({"exemplar": exemplars, "synth": synth, "class_id": cid, "category": entry.get("category")})
    return out


def abc_entries(src: Path) -> tuple[dict[str, list[dict]], dict[str, tuple[str, str]]]:
    """AbC-named JSON entries of every test case and of ``train_all``, and the files to write.

    Returns:
        ``({json stem: entries}, {new JSON path: (embedded JSON path, "copy" | "png")})``.
    """
    copies: dict[str, tuple[str, str]] = {}
    out = {new: _convert(read_entries(json_path(src, old)), family, prompts, copies)
           for old, (new, family, prompts) in TEST_CASES.items()}
    styles = read_entries(json_path(src, "test_styles"))
    half = (len(styles) + 1) // 2
    for (name, family), part in zip(STYLE_CASES, (styles[:half], styles[half:])):
        out[name] = _convert(part, family, STYLE_PROMPTS, copies)
    train = read_entries(json_path(src, "train_all"))
    objects = [e for e in train if e.get("category") is not None]
    out["train_all"] = (_convert(objects, "imagenet", OBJECT_PROMPTS, copies, start=len(out["test_observed_imagenet"])
                                 + len(out["test_unobserved_imagenet"]))
                        + _convert([e for e in train if e.get("category") is None], "bamfg", STYLE_PROMPTS, copies,
                                   start=len(styles)))
    return out, copies


def _write_image(src: Path, dst: Path, how: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if how == "copy":
        shutil.copyfile(src, dst)
    else:
        with Image.open(src) as im:
            im.convert("RGB").save(dst, format="PNG")


def build_rehearsal(src: str | Path, out: str | Path, *, layout: Layout = "repo", overwrite: bool = False) -> Path:
    """Lay the embedded benchmark at ``src`` out under AbC's names in ``out`` (see the module docstring).

    Args:
        src: an embedded benchmark root (``ada data build``).
        out: the rehearsal root to write. layout: ``"repo"`` (``out/dataset/...``) or ``"hf"`` (``out`` is the
            ``dataset`` folder; distractors in ``laion_subset/images`` with ``captions.txt``).
        overwrite: replace an existing ``out``.
    """
    src, out = Path(src), Path(out)
    if layout not in ("repo", "hf"):
        raise ValueError(f"layout={layout!r}: choose 'repo' or 'hf'")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
        shutil.rmtree(out)
    base = out / "dataset" if layout == "repo" else out

    def target(rel: str) -> Path:
        return base / rel.removeprefix(PREFIX)

    entries, copies = abc_entries(src)
    for new, (old, how) in copies.items():
        _write_image(src / old, target(new), how)
    dist_dir = base / "laion_subset" / ("images" if layout == "hf" else "")
    names = []
    for i, path in enumerate(list_distractors(src)):
        names.append(f"{i:09d}.png")
        _write_image(path, dist_dir / names[-1], "png")
    if layout == "hf":
        (base / "laion_subset" / "captions.txt").write_text("".join(f"a photo, distractor {i}\n"
                                                                    for i in range(len(names))))
    for name, rows in entries.items():
        target(f"{PREFIX}json/{name}.json").parent.mkdir(parents=True, exist_ok=True)
        target(f"{PREFIX}json/{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "rehearsal.json").write_text(json.dumps({"source": src.name, "layout": layout, "kind": "AbC-named "
                                                    "rehearsal of the embedded benchmark (not AbC's data)"}) + "\n")
    return out
