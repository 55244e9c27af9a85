"""Reading AbC-format benchmarks: the real AbC JSONs and the embedded benchmark (same schema, same layout).

A benchmark JSON is a list with one entry per customised model (entry index = model index)::

    {"exemplar": [path, ...], "synth": {prompt_type: [path, ...]}, "class_id": str, "category": str | null}

Paths start with ``dataset/`` (repo-relative). Two on-disk layouts hold the same tree (see
AbC's README and its ``GenDataAttribution`` code; the book's data chapter): the original repository (``<root>/dataset/...``) and the Hugging Face mirror,
whose data root *is* the ``dataset`` folder; there only the **leading** ``dataset/`` is replaced by the root.
Before any work starts every referenced file is checked, and all missing files are reported at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Layout = Literal["auto", "repo", "hf"]
PREFIX = "dataset/"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MAX_LISTED = 20


def listed(items: Sequence[object], *, most: int = MAX_LISTED, sep: str = "\n  ") -> str:
    """The first ``most`` items joined by ``sep`` (one per indented line by default), then "... and N more"."""
    shown = sep.join(str(item) for item in items[:most])
    return shown + (f"{sep}... and {len(items) - most} more" if len(items) > most else "")


class MissingFilesError(FileNotFoundError):
    """Files named by a benchmark JSON that are absent; ``.missing`` holds them all."""

    def __init__(self, source: str | Path, missing: list[Path]):
        self.source, self.missing = str(source), missing
        first = min(len(missing), MAX_LISTED)
        super().__init__(f"{source}: {len(missing)} referenced file(s) are missing (first {first} shown; "
                         f"check --data-root and the layout, or finish the download):\n  {listed(missing)}")


@dataclass(frozen=True)
class Model:
    """One customised model: its id (folder under ``synth/``), coarse category and real exemplars."""

    class_id: str
    category: str | None
    exemplars: list[Path]


@dataclass
class TestCase:
    """One test case (one JSON): models, and per prompt type the flat query list with each query's model.

    Attributes:
        name: JSON stem, e.g. ``test_observed_imagenet``.
        models: entry ``m`` of the JSON is model ``m``.
        queries: prompt type -> synthetic image paths, models in JSON order.
        query_model: prompt type -> (Q,) int64 model index of each query.
        distractors: the listed distractor files (sorted order; empty unless requested).
    """

    name: str
    json_path: Path
    root: Path
    models: list[Model]
    queries: dict[str, list[Path]]
    query_model: dict[str, np.ndarray]
    distractors: list[Path] = field(default_factory=list)

    @property
    def prompt_types(self) -> list[str]:
        """Prompt types in the order of the first model's ``synth`` dict."""
        return list(self.queries)

    @property
    def exemplar_paths(self) -> list[Path]:
        """All models' exemplars, concatenated in model order."""
        return [p for m in self.models for p in m.exemplars]

    @property
    def exemplar_model(self) -> np.ndarray:
        """(E,) int64 model index of each entry of :attr:`exemplar_paths`."""
        return np.repeat(np.arange(len(self.models)), [len(m.exemplars) for m in self.models]).astype(np.int64)


class UnsafePathError(ValueError):
    """Paths in a benchmark JSON that are absolute or leave the data root; ``.bad`` holds (entry, path) pairs."""

    def __init__(self, source: str | Path, bad: list[tuple[int, str]]):
        self.source, self.bad = str(source), bad
        super().__init__(f"{source}: {len(bad)} path(s) are absolute or leave the data root after normalisation "
                         f"(a benchmark JSON may name files under its root only; fix or re-download the JSON):"
                         f"\n  {listed([f'entry {i}: {p!r}' for i, p in bad])}")


def escapes_root(rel: str) -> bool:
    """True when a JSON path is absolute or leaves the root once ``.`` and ``..`` are resolved."""
    norm = posixpath.normpath(rel.replace("\\", "/"))
    return posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or (rel[:1].isalpha() and rel[1:2] == ":")


def detect_layout(root: str | Path) -> Literal["repo", "hf"]:
    """``"repo"`` when ``<root>/dataset`` exists (original repository), else ``"hf"`` (mirror layout)."""
    return "repo" if (Path(root) / "dataset").is_dir() else "hf"


def resolve(rel: str, root: str | Path, *, layout: Layout = "auto") -> Path:
    """Map a JSON path (``dataset/...``) to a file under ``root``; only a leading ``dataset/`` is replaced.

    Raises:
        UnsafePathError: ``rel`` is absolute or leaves ``root`` (benchmark JSONs come from downloads: they must
            not make the tool read arbitrary files).
    """
    if escapes_root(rel):
        raise UnsafePathError(root, [(-1, rel)])
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "hf" and rel.startswith(PREFIX):
        rel = rel[len(PREFIX):]
    return Path(root) / rel


def json_path(root: str | Path, name: str, *, layout: Layout = "auto") -> Path:
    """Where the JSON ``name`` (``test_styles`` or ``test_styles.json``) lives under ``root``."""
    name = name if name.endswith(".json") else f"{name}.json"
    return resolve(f"{PREFIX}json/{name}", root, layout=layout)


def require_root(root: str | Path) -> Path:
    """``root`` as a Path, or FileNotFoundError naming it when the folder does not exist (before any of its files)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root}: no such folder (a data root holds dataset/json/*.json in AbC's "
                                "layout); check the path, or leave --data-root / data_root empty for the embedded "
                                "benchmark")
    return root


def test_case_names(root: str | Path, *, layout: Layout = "auto") -> list[str]:
    """The test cases of a data root: the stems of its ``test_*.json``, sorted (AbC's four, the embedded three)."""
    require_root(root)
    json_dir = json_path(root, "any", layout=layout).parent
    names = sorted(p.stem for p in json_dir.glob("test_*.json"))
    if not names:
        raise FileNotFoundError(f"{json_dir}: no test_*.json (is {root} an AbC-layout data root?)")
    return names


def describe_root(root: str | Path) -> str:
    """Which data a root holds, as figures and tables state it: the embedded benchmark, its AbC-named rehearsal,
    or an AbC-layout root (the real benchmark)."""
    root = Path(root)
    if (root / "rehearsal.json").is_file():
        return f"AbC-named rehearsal of the embedded benchmark ({root.name})"
    if (root / "manifest.json").is_file():
        return f"embedded benchmark ({root.name})"
    return f"AbC data root ({root.name})"


def read_entries(path: str | Path) -> list[dict]:
    """Read and validate an AbC JSON (list of model entries); errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark JSON not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: the benchmark JSON is empty (interrupted download?)")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of model entries")
    bad: list[tuple[int, str]] = []
    for i, entry in enumerate(entries):
        keys = {"exemplar", "synth", "class_id"}
        if not isinstance(entry, dict) or not keys <= set(entry) or not isinstance(entry["synth"], dict):
            raise ValueError(f"{path}: entry {i} lacks the AbC keys {sorted(keys)} (synth must be a dict)")
        files = [entry["exemplar"], *entry["synth"].values()]
        if not all(isinstance(f, list) and all(isinstance(p, str) for p in f) for f in files):
            raise ValueError(f"{path}: entry {i}: exemplar and every synth value must be lists of path strings")
        bad += [(i, p) for f in files for p in f if escapes_root(p)]
    if bad:
        raise UnsafePathError(path, bad)
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        j = first.setdefault(str(entry["class_id"]), i)
        if j != i:
            raise ValueError(f"{path}: entries {j} and {i} share the model id class_id={entry['class_id']!r}: each "
                             "model appears once in a benchmark JSON (merge the entries, or give one another id)")
    return entries


class LinkOutsideRootError(ValueError):
    """Files of a data root that are symlinks (or lie under symlinked folders) resolving outside the root."""


FOLLOW_LINKS_ENV = "ADA_FOLLOW_SYMLINKS"  # "1": a data root that is a tree of symlinks by design


def check_inside(paths: list[Path], root: str | Path, *, source: str | Path) -> None:
    """Raise :class:`LinkOutsideRootError` when a listed file resolves outside ``root`` through a symlink.

    The rule "a JSON names files under its root only" is checked on the path text by :func:`read_entries`; a link
    inside the root could still point anywhere (a system file), so the real location is checked too: each distinct
    folder is resolved once and each file's own ``lstat`` says whether it is a link (cheap for 1M distractors).
    ``ADA_FOLLOW_SYMLINKS=1`` accepts links for a root built of them on purpose.
    """
    if os.environ.get(FOLLOW_LINKS_ENV) == "1" or not paths:
        return
    top = Path(root).resolve()
    real_dirs = {d: d.resolve() for d in {p.parent for p in paths}}
    bad = []
    for p in paths:
        target = p.resolve() if p.is_symlink() else real_dirs[p.parent] / p.name
        if not target.is_relative_to(top):
            bad.append(f"{p} -> {target}")
    if bad:
        shown = listed(bad, most=3, sep="; ")
        raise LinkOutsideRootError(
            f"{source}: {len(bad)} file(s) are symlinks to files outside the data root {root} ({shown}): the tool reads files under the root only; copy them in, or set {FOLLOW_LINKS_ENV}=1 if "
            "the root is a tree of links by design")


def check_files(paths: list[Path], *, source: str | Path) -> None:
    """Raise :class:`MissingFilesError` (first 20 + count, naming ``source``) if any path is not a file."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingFilesError(source, missing)


def distractor_dir(root: str | Path, *, layout: Layout = "auto") -> Path:
    """The distractor folder: ``laion_subset/images`` (HF mirror) if present, else ``laion_subset``."""
    base = resolve(f"{PREFIX}laion_subset", root, layout=layout)
    return base / "images" if (base / "images").is_dir() else base


def list_distractors(root: str | Path, *, n: int | None = None, layout: Layout = "auto") -> list[Path]:
    """The first ``n`` distractor images in sorted file-name order (all when ``n`` is None).

    AbC uses N = 1M (official) or 100K (a common smaller protocol); record which one a result used.
    """
    folder = distractor_dir(root, layout=layout)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: distractor folder not found (root={root})")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
    if n is not None and n > len(files):
        raise ValueError(f"{folder}: distractors={n} requested but only {len(files)} images exist")
    files = files if n is None else files[:n]
    check_inside(files, root, source=folder)  # a linked distractor is read like any other file
    return files


def load_test_case(path: str | Path, *, root: str | Path, distractors: int | None = None,
                   layout: Layout = "auto", check: bool = True) -> TestCase:
    """Load one AbC JSON into a :class:`TestCase`, after checking that every file it names exists.

    Args:
        path: the JSON file (e.g. ``<root>/dataset/json/test_bamfg.json``).
        root: data root (repo layout or HF mirror layout, see :func:`resolve`).
        distractors: also list the first N distractors (sorted order), checked the same way; None = none.
        layout: ``"auto"``, ``"repo"`` or ``"hf"``.
        check: verify file existence (all missing reported at once, :class:`MissingFilesError`).
    """
    path, root = Path(path), Path(root)
    entries = read_entries(path)
    models = [Model(str(e["class_id"]), e.get("category"), [resolve(p, root, layout=layout) for p in e["exemplar"]])
              for e in entries]
    queries: dict[str, list[Path]] = {}
    owner: dict[str, list[int]] = {}
    for m, entry in enumerate(entries):
        for prompt, files in entry["synth"].items():
            queries.setdefault(prompt, []).extend(resolve(p, root, layout=layout) for p in files)
            owner.setdefault(prompt, []).extend([m] * len(files))
    listed = list_distractors(root, n=distractors, layout=layout) if distractors is not None else []
    if check:
        named = [p for m in models for p in m.exemplars] + [p for q in queries.values() for p in q]
        check_files(named, source=path)
        check_inside(named, root, source=path)  # the distractors: checked by list_distractors
    return TestCase(path.stem, path, root, models, queries,
                    {k: np.asarray(v, dtype=np.int64) for k, v in owner.items()}, listed)


@dataclass
class Pool:
    """An unlabelled training pool: no class ids, no folder names, only a domain flag per image.

    Attributes:
        paths: image files ordered by content hash (renaming folders or permuting pairs cannot change it).
        domain: (N,) int64, 0 = real, 1 = synthetic.
        ids: opaque ids (the content hash prefix).
        source: where the images come from (``train_json``, ``folders`` or ``transductive``; see
            :mod:`ada_utils.data.pools`).
    """

    paths: list[Path]
    domain: np.ndarray
    ids: list[str]
    source: str = "train_json"


def _content_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def pool_of(items: list[tuple[Path, int]], *, source: str) -> Pool:
    """A :class:`Pool` of ``(path, domain)`` items in content-hash order (ties: domain, then path)."""
    keyed = sorted(((_content_id(p), str(p), p, d) for p, d in items), key=lambda t: (t[0], t[3], t[1]))
    return Pool([t[2] for t in keyed], np.asarray([t[3] for t in keyed], dtype=np.int64), [t[0] for t in keyed],
                source)


def unlabelled_pool(root: str | Path, *, split_json: str = "train_all.json", layout: Layout = "auto") -> Pool:
    """Every exemplar (real) and synthetic image of a training JSON as a flat, label-free pool."""
    case = load_test_case(json_path(root, split_json, layout=layout), root=root, layout=layout)
    items = [(p, 0) for p in case.exemplar_paths] + [(p, 1) for q in case.queries.values() for p in q]
    return pool_of(items, source="train_json")


def training_pairs(root: str | Path, *, split_json: str = "train_all.json",
                   layout: Layout = "auto") -> list[tuple[Path, Path, int]]:
    """(exemplar, synthetic, model index) pairs for the supervised baseline only.

    Synthetic image j of model m (over its prompt types in order) is paired with exemplar ``j mod E_m``.
    """
    case = load_test_case(json_path(root, split_json, layout=layout), root=root, layout=layout)
    pairs, seen = [], dict.fromkeys(range(len(case.models)), 0)
    for prompt in case.prompt_types:
        for synth, m in zip(case.queries[prompt], case.query_model[prompt].tolist()):
            ex = case.models[m].exemplars
            pairs.append((ex[seen[m] % len(ex)], synth, m))
            seen[m] += 1
    return pairs
