"""AbC's released feature files and tuned mappers as a feature source; our features written in their format.

With these files the official metric runs with no images, no encoder and no GPU. The layout is that of [1]
(GenDataAttribution at ``ed044d0``: ``extract_feat.py``, ``eval.py``, ``networks.py``, ``scripts/*.sh``;
[0] Wang et al., ICCV 2023, arXiv 2306.09345). A features folder ``feats/<model>/`` holds:

* ``laion_subset.pth``, the distractors (``extract_feat.py`` folder mode, released for the five backbones):
  ``{"feats": (N, D) float32 tensor, "paths": list[str]}``, rows in sorted file order;
* one file per test case (``extract_feat.py --json``; ``scripts/preprocess_feats.sh`` writes
  ``test_observed_imagenet.pth``, ``test_unobserved_imagenet.pth``, ``test_bamfg.pth``, ``test_artchive.pth``;
  ``eval.py --test-case NAME`` reads ``NAME.pth``), a dict of

  - ``exemplar_paths``: list[str], every model's exemplars, models in JSON entry order;
  - ``exemplar_chunks``: list of ``(start, end)``, one per model (JSON entry index): rows ``start:end`` of
    ``exemplar_tensors`` are that model's exemplars (consecutive, ``end`` of one = ``start`` of the next);
  - ``exemplar_tensors``: (E, D) float32;
  - ``synth_paths``, ``synth_ids``, ``synth_tensors``: dicts keyed by prompt type ``k``: list[str] of query
    paths, list[int] model index of each query, (Q_k, D) float32.

The tuned mappers ``weights/mapper/<model>_tuned.pth`` (the supervised baseline of [0]) are
``{"real_mapper": state dict, "synth_mapper": state dict}`` of ``torch.nn.Linear(D, D)`` (``weight`` (D, D),
``bias`` (D,)); ``eval.py`` applies the real map to distractors and exemplars, the synthetic map to queries,
then L2-normalises. Features and mappers are read with ``torch.load(weights_only=True)`` only (a file that
pickles other objects is refused, never executed). Test cases are read from ``test_*.pth`` (the JSON stems).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures

DISTRACTOR_FILE = "laion_subset.pth"
CASE_PATTERN = "test_*.pth"
CASE_KEYS = ("exemplar_paths", "exemplar_chunks", "exemplar_tensors", "synth_paths", "synth_ids", "synth_tensors")
MAPPER_KEYS = ("real_mapper", "synth_mapper")


def read_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU (memory-mapped when the file is in zip format).

    Raises:
        FileNotFoundError: no such file. ValueError: not a torch file, truncated, or pickling other objects;
        the message names the file, what it should be (``what``) and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise ValueError(f"{path}: empty file (an interrupted download?); expected the {what}")
    zip_format = magic == b"PK\x03\x04"  # torch.save's format since torch 1.6 (memory-mappable)
    if not zip_format and not magic.startswith(b"\x80"):  # nor the legacy format (a pickle, protocol >= 2)
        raise ValueError(f"{path}: not a torch file (it starts with {magic!r}); expected the {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(f"{path}: pickles the Python object {found.group(1)}, which "
                             f"torch.load(weights_only=True) refuses (unpickling could run code); expected the "
                             f"{what} with plain tensors, lists and dicts: re-save it that way") from err
        raise ValueError(f"{path}: cannot read it: truncated or not a torch file? Expected the {what}; "
                         f"download it again") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read it: truncated or not a torch file? Expected the {what}; "
                         f"download it again ({str(err).splitlines()[0]})") from err


def _matrix(t: Any, path: Path, key: str) -> np.ndarray:
    """A (n, D) float32 numpy view (no copy for float32 CPU tensors, e.g. memory-mapped distractors)."""
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{path}: {key} must be an (n, D) float tensor, got {shape}")
    return t.detach().to(torch.float32).numpy()


def _strings(x: Any, n: int, path: Path, key: str) -> list[str]:
    if not isinstance(x, (list, tuple)) or len(x) != n or not all(isinstance(s, str) for s in x):
        got = f"{len(x)} entries" if isinstance(x, (list, tuple)) else type(x).__name__
        raise ValueError(f"{path}: {key} must list {n} path strings (one per feature row), got {got}")
    return list(x)


def read_distractors(path: str | Path, *, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` (default all) rows of a ``laion_subset.pth``: ``(feats (n, D) float32, paths)``."""
    path = Path(path)
    obj = read_torch_file(path, "distractor features {'feats': (N, D) tensor, 'paths': [str]}")
    if not isinstance(obj, dict) or not {"feats", "paths"} <= set(obj):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with keys 'feats' and 'paths' (AbC's laion_subset.pth), got {keys}")
    feats = _matrix(obj["feats"], path, "feats")
    paths = _strings(obj["paths"], len(feats), path, "paths")
    if n is not None:
        if not 1 <= n <= len(feats):
            raise ValueError(f"{path}: distractors={n} requested but the file holds {len(feats)}; "
                             f"give 1 <= N <= {len(feats)}")
        feats, paths = feats[:n], paths[:n]
    return feats, paths


def _chunks(x: Any, n_rows: int, path: Path) -> np.ndarray:
    """Per-model exemplar counts from ``exemplar_chunks``, which must tile ``0:n_rows`` in order."""
    try:
        pairs = np.array([(int(s), int(e)) for s, e in x], dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: exemplar_chunks must be a list of (start, end) pairs") from None
    starts, ends = pairs[:, 0], pairs[:, 1]
    expected = np.concatenate([[0], ends[:-1]])
    if len(pairs) == 0 or (starts != expected).any() or (ends < starts).any() or ends[-1] != n_rows:
        raise ValueError(f"{path}: exemplar_chunks must be consecutive (start, end) rows covering 0:{n_rows} "
                         f"of exemplar_tensors, one per model, as extract_feat.py writes them")
    return ends - starts


def _read_keyed(path: Path, keys: tuple[str, ...], what: str, kind: str, source: str) -> dict:
    """A torch file holding a dict with at least ``keys``; otherwise an error naming the file and what it holds."""
    obj = read_torch_file(path, what)
    if not isinstance(obj, dict) or set(keys) - set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not {kind}: expected the keys {list(keys)} ({source}), found {found}")
    return obj


def read_case_file(path: str | Path) -> CaseFeatures:
    """One test-case file written by ``extract_feat.py --json`` (or :func:`save_case_file`), checked.

    Model ``m`` is chunk ``m`` (= JSON entry ``m``); the exemplar rows of the file become ``exemplar_model``
    and ``synth_ids`` becomes ``query_model``. Every query's model must have at least one exemplar.
    """
    path = Path(path)
    obj = _read_keyed(path, CASE_KEYS, "test-case features written by extract_feat.py --json",
                      "a test-case feature file", "extract_feat.py --json")
    ex = _matrix(obj["exemplar_tensors"], path, "exemplar_tensors")
    counts = _chunks(obj["exemplar_chunks"], len(ex), path)
    prompts = obj["synth_tensors"]
    if not all(isinstance(obj[k], dict) and list(obj[k]) == list(prompts) for k in CASE_KEYS[3:]) or not prompts:
        raise ValueError(f"{path}: synth_paths, synth_ids and synth_tensors must be dicts with the same prompt "
                         f"types, in the same order")
    queries, query_model, query_ids = {}, {}, {}
    for k in prompts:
        q = _matrix(prompts[k], path, f"synth_tensors[{k!r}]")
        if q.shape[1] != ex.shape[1] or len(q) == 0:
            raise ValueError(f"{path}: synth_tensors[{k!r}] has shape {q.shape} but exemplar_tensors has D="
                             f"{ex.shape[1]}; both must come from one backbone, with at least one query")
        ids = obj["synth_ids"][k]
        try:
            qm = np.array([int(i) for i in ids], dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: synth_ids[{k!r}] must be a list of int model indices") from None
        if len(qm) != len(q) or qm.min() < 0 or qm.max() >= len(counts) or (counts[qm] == 0).any():
            raise ValueError(f"{path}: synth_ids[{k!r}] must give one model index in 0..{len(counts) - 1} per "
                             f"query ({len(q)} rows), of a model with exemplars")
        queries[k], query_model[k] = q, qm
        query_ids[k] = _strings(obj["synth_paths"][k], len(q), path, f"synth_paths[{k!r}]")
    return CaseFeatures(queries=queries, query_model=query_model, exemplars=ex,
                        exemplar_model=np.repeat(np.arange(len(counts)), counts).astype(np.int64),
                        query_ids=query_ids,
                        exemplar_ids=_strings(obj["exemplar_paths"], len(ex), path, "exemplar_paths"))


def load_released_features(folder: str | Path, *, distractors: int | None = None,
                           test_cases: list[str] | None = None) -> BenchmarkFeatures:
    """A :class:`BenchmarkFeatures` from an AbC features folder (``feats/<model>/``), ready for ``evaluate``.

    Args:
        folder: holds ``laion_subset.pth`` and ``test_*.pth`` (see the module docstring).
        distractors: use the first N distractors (AbC's file order); default all (~1M in the release).
        test_cases: file stems to read (default every ``test_*.pth``, sorted).

    The distractors stay memory-mapped (float32 files); ``encoder`` records the folder name as the model.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: features folder not found; give AbC's feats/<model>/ folder "
                                f"(laion_subset.pth + test_*.pth)")
    names = test_cases if test_cases is not None else sorted(p.stem for p in folder.glob(CASE_PATTERN))
    if not names:
        raise FileNotFoundError(f"{folder}: no test-case feature files ({CASE_PATTERN}); write them with AbC's "
                                f"extract_feat.py --json (scripts/preprocess_feats.sh) or write_released_features")
    dist_file = folder / DISTRACTOR_FILE
    feats, paths = read_distractors(dist_file, n=distractors)
    cases = {}
    for name in names:
        case = read_case_file(folder / f"{name}.pth")
        if case.exemplars.shape[1] != feats.shape[1]:
            raise ValueError(f"{folder / f'{name}.pth'}: features have D={case.exemplars.shape[1]} but "
                             f"{dist_file} has D={feats.shape[1]}; extract both with the same backbone")
        cases[name] = case
    return BenchmarkFeatures(cases, feats, {"name": folder.name, "source": "abc-feats"}, paths, None)


@dataclass(frozen=True)
class LinearMap:
    """``x -> x @ weight.T + bias`` on (n, D) float32 numpy rows: a ``torch.nn.Linear`` state as a feature map."""

    weight: np.ndarray  # (D_out, D) float32
    bias: np.ndarray  # (D_out,) float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias


def load_mapper(path: str | Path, *, dim: int | None = None, features: str | Path | None = None
                ) -> tuple[LinearMap, LinearMap]:
    """AbC's tuned mappers (``weights/mapper/<model>_tuned.pth``) as ``(real_map, synth_map)``.

    Args:
        path: the mapper file; ``real_mapper`` / ``synth_mapper`` must each hold exactly ``weight`` (D, D) and
            ``bias`` (D,) (the linear probe of ``networks.py``; the MLP and per-channel ablations are refused).
        dim: the feature dimension D they must map (checked when given); ``features`` names its source.
    """
    path = Path(path)
    obj = _read_keyed(path, MAPPER_KEYS, "tuned mapper {'real_mapper': ..., 'synth_mapper': ...}",
                      "an AbC mapper file", "weights/mapper/<model>_tuned.pth")
    maps = []
    for key in MAPPER_KEYS:
        sd = obj[key]
        keys = sorted(map(str, sd)) if isinstance(sd, dict) else type(sd).__name__
        if not isinstance(sd, dict) or set(sd) != {"weight", "bias"}:
            raise ValueError(f"{path}: {key} must be the state dict of torch.nn.Linear(D, D) with exactly the keys "
                             f"['bias', 'weight'], found {keys} (only the linear tuned mappers are supported)")
        w, b = sd["weight"], sd["bias"]
        if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.ndim == 2
                and w.shape[0] == w.shape[1] and tuple(b.shape) == (w.shape[0],)):
            raise ValueError(f"{path}: {key} must hold weight (D, D) and bias (D,), got "
                             f"{tuple(getattr(w, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")
        maps.append(LinearMap(w.detach().to(torch.float32).numpy().copy(), b.detach().to(torch.float32).numpy().copy()))
    d_real, d_synth = maps[0].weight.shape[0], maps[1].weight.shape[0]
    if d_real != d_synth:
        raise ValueError(f"{path}: real_mapper is {d_real}-dimensional but synth_mapper {d_synth}-dimensional")
    if dim is not None and d_real != dim:
        where = f" in {features}" if features is not None else ""
        raise ValueError(f"{path}: the mapper maps D={d_real} features but the features{where} have D={dim}; "
                         f"use the mapper of the same backbone (weights/mapper/<model>_tuned.pth)")
    return maps[0], maps[1]


def _tensor(x: np.ndarray) -> torch.Tensor:
    # A copy: torch.save writes a tensor's whole storage, and a slice of a memory map would drag it all along.
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def save_distractor_file(path: str | Path, feats: np.ndarray, paths: list[str]) -> Path:
    """Write ``{"feats": (N, D) float32, "paths": [str]}`` as AbC's ``laion_subset.pth``."""
    path = Path(path)
    if len(paths) != len(feats):
        raise ValueError(f"{path}: {len(feats)} feature rows but {len(paths)} paths")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"feats": _tensor(feats), "paths": [str(p) for p in paths]}, path)
    return path


def save_case_file(path: str | Path, case: CaseFeatures) -> Path:
    """Write one test case in the layout of ``extract_feat.py --json`` (readable by AbC's ``eval.py``).

    Exemplar rows are grouped by model (stable order), which gives the consecutive ``exemplar_chunks``; models
    are ``0..max id``. Missing ids are written as empty strings.
    """
    path = Path(path)
    order = np.argsort(case.exemplar_model, kind="stable")
    n_models = int(max([case.exemplar_model.max(), *(qm.max() for qm in case.query_model.values())])) + 1
    ends = np.cumsum(np.bincount(case.exemplar_model, minlength=n_models))
    chunks = [(int(s), int(e)) for s, e in zip(np.concatenate([[0], ends[:-1]]), ends)]
    ex_ids = case.exemplar_ids or [""] * len(case.exemplars)
    q_ids = {k: case.query_ids.get(k) or [""] * len(q) for k, q in case.queries.items()}
    if len(ex_ids) != len(case.exemplars) or any(len(q_ids[k]) != len(q) for k, q in case.queries.items()):
        raise ValueError(f"{path}: ids and feature rows differ in number")
    data = {"exemplar_paths": [str(ex_ids[i]) for i in order], "exemplar_chunks": chunks,
            "exemplar_tensors": _tensor(case.exemplars[order]),
            "synth_paths": {k: [str(p) for p in v] for k, v in q_ids.items()},
            "synth_ids": {k: [int(i) for i in qm] for k, qm in case.query_model.items()},
            "synth_tensors": {k: _tensor(q) for k, q in case.queries.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_released_features(bf: BenchmarkFeatures, folder: str | Path) -> Path:
    """Write ``bf`` as an AbC features folder: ``laion_subset.pth`` + ``<test case>.pth`` per test case.

    The folder reads back with :func:`load_released_features` and works as ``feats/<model>/`` for AbC's
    ``eval.py --model-type <model> --test-case <test case>``. Test-case names must start with ``test_``.
    """
    folder = Path(folder)
    bad = [name for name in bf.cases if not name.startswith("test_")]
    if bad:
        raise ValueError(f"test cases {bad}: names must start with 'test_' (files {CASE_PATTERN} are read back)")
    save_distractor_file(folder / DISTRACTOR_FILE, bf.distractors,
                         bf.distractor_ids or [""] * len(bf.distractors))
    for name, case in bf.cases.items():
        save_case_file(folder / f"{name}.pth", case)
    return folder
