"""Features of a whole benchmark: every test image and distractor of an AbC-format root, embedded once.

:func:`embed_benchmark` reads every ``test_*.json`` of a data root, embeds each file once through the cache of
:func:`ada_utils.encoders.embed.embed_images`, and returns a :class:`BenchmarkFeatures` (rows follow the JSON);
:func:`stack_cells` lays its cells out for one call of the official metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ada_utils.data import TestCase, json_path, list_distractors, load_test_case, test_case_names
from ada_utils.data.abc import IMAGE_SUFFIXES
from ada_utils.data.images import OnError
from ada_utils.encoders.embed import embed_images


@dataclass
class CaseFeatures:
    """Features of one test case. Rows follow the JSON: models in entry order, queries per prompt type."""

    queries: dict[str, np.ndarray]  # prompt type -> (Q, D) float32
    query_model: dict[str, np.ndarray]  # prompt type -> (Q,) int64 model index
    exemplars: np.ndarray  # (E, D) float32
    exemplar_model: np.ndarray  # (E,) int64
    query_ids: dict[str, list[str]] = field(default_factory=dict)  # paths relative to the data root
    exemplar_ids: list[str] = field(default_factory=list)


@dataclass
class BenchmarkFeatures:
    """All test cases of a data root embedded with one encoder, plus the shared distractors (N, D)."""

    cases: dict[str, CaseFeatures]
    distractors: np.ndarray
    encoder: dict
    distractor_ids: list[str] = field(default_factory=list)
    root: Path | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)  # role -> ids left out (on_error="skip")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def embed_benchmark(encoder: nn.Module, root: str | Path, *, test_cases: Sequence[str] | None = None,
                    distractors: int | None = None, batch_size: int | None = None, num_workers: int = 0,
                    progress: bool = True, on_error: OnError = "raise") -> BenchmarkFeatures:
    """Embed every test image of ``root`` (each file once, cached by :func:`ada_utils.encoders.embed.embed_images`).

    Args:
        encoder: see :func:`ada_utils.encoders.embed.embed_images`.
        root: data root (``<root>/dataset/json/test_*.json``; AbC repo or HF layout).
        test_cases: JSON stems to use (default: every ``test_*.json``, sorted).
        distractors: use the first N distractors in sorted order (default: all).
        batch_size, num_workers, progress: passed to ``embed_images``.
        on_error: ``"skip"`` leaves out the images that do not decode (:data:`SKIP_RULE` says how; the ids are in
            ``BenchmarkFeatures.skipped``); ``"raise"`` stops at the first one, naming it.
    """
    root = Path(root)
    test_cases = test_case_names(root) if test_cases is None else test_cases
    cases = {name: load_test_case(json_path(root, name), root=root) for name in test_cases}
    images = list(dict.fromkeys(p for c in cases.values()
                                for p in [*c.exemplar_paths, *(q for qs in c.queries.values() for q in qs)]))
    kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress, on_error=on_error)
    feats = embed_images(encoder, images, ids=[_rel(p, root) for p in images], **kw)
    row = {p: i for i, p in enumerate(images)}
    if distractors is not None and distractors < 1:
        raise ValueError(f"--distractors {distractors} (distractors={distractors}): the official metric ranks each "
                         "query among at least one distractor; pass a positive number, or leave it out for all")
    dist_paths = list_distractors(root, n=distractors)
    if not dist_paths:
        raise ValueError(f"{root}: the distractor folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                         "finish the download of laion_subset")
    dist = embed_images(encoder, dist_paths, ids=[_rel(p, root) for p in dist_paths], **kw)

    bad = set(feats.skipped)
    skipped: dict[str, list[str]] = {"exemplars": [], "queries": [], "distractors": list(dist.skipped),
                                     "queries_of_models_without_exemplars": []}
    out = {name: _case_features(c, feats.feats, row, bad, root, skipped) for name, c in cases.items()}
    dist_feats, dist_ids = dist.decoded()
    return BenchmarkFeatures(out, dist_feats, dict(encoder.spec), dist_ids, root,
                             {k: v for k, v in skipped.items() if v})


# How the official metric treats images that do not decode under on_error="skip" (said in every report).
SKIP_RULE = ("a skipped exemplar is left out of the gallery and of its model's positives; a model left without "
             "exemplars loses its queries; skipped queries and distractors are left out")


def _case_features(c: TestCase, table: np.ndarray, row: dict[Path, int], bad: set[str], root: Path,
                   skipped: dict[str, list[str]]) -> CaseFeatures:
    """One case's rows of ``table``, without the ``bad`` ids (recorded in ``skipped`` by role)."""
    ex_ids = [_rel(p, root) for p in c.exemplar_paths]
    ex_keep = np.array([i not in bad for i in ex_ids], dtype=bool)
    skipped["exemplars"] += [i for i, k in zip(ex_ids, ex_keep) if not k]
    models_left = set(c.exemplar_model[ex_keep].tolist())
    queries, query_model, query_ids = {}, {}, {}
    for prompt, paths in c.queries.items():
        ids, owner = [_rel(p, root) for p in paths], c.query_model[prompt]
        keep = []
        for j, (i, m) in enumerate(zip(ids, owner.tolist())):
            if i in bad:
                skipped["queries"].append(i)
            elif m not in models_left:
                skipped["queries_of_models_without_exemplars"].append(i)
            else:
                keep.append(j)
        queries[prompt] = np.asarray(table[[row[paths[j]] for j in keep]], dtype=np.float32)
        query_model[prompt], query_ids[prompt] = owner[keep], [ids[j] for j in keep]
    exemplars = np.asarray(table[[row[p] for p, k in zip(c.exemplar_paths, ex_keep) if k]], dtype=np.float32)
    return CaseFeatures(queries, query_model, exemplars, c.exemplar_model[ex_keep], query_ids,
                        [i for i, k in zip(ex_ids, ex_keep) if k])


def stack_cells(bf: BenchmarkFeatures):
    """Global model ids (offset per case) so that one metric call covers every cell; yields per-cell slices."""
    offset, qs, qms, exs, ems, cells = 0, [], [], [], [], []
    start = 0
    for name, case in bf.cases.items():
        exs.append(case.exemplars)
        ems.append(case.exemplar_model + offset)
        for prompt, q in case.queries.items():
            qs.append(q)
            qms.append(case.query_model[prompt] + offset)
            cells.append((f"{name}/{prompt}", slice(start, start + len(q))))
            start += len(q)
        offset += int(case.exemplar_model.max()) + 1
    return np.concatenate(qs), np.concatenate(qms), np.concatenate(exs), np.concatenate(ems), cells
