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

from ada_utils.data import json_path, list_distractors, load_test_case, test_case_names
from ada_utils.data.abc import IMAGE_SUFFIXES
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


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def embed_benchmark(encoder: nn.Module, root: str | Path, *, test_cases: Sequence[str] | None = None,
                    distractors: int | None = None, batch_size: int = 64, num_workers: int = 0,
                    progress: bool = True) -> BenchmarkFeatures:
    """Embed every test image of ``root`` (each file once, cached by :func:`ada_utils.encoders.embed.embed_images`).

    Args:
        encoder: see :func:`ada_utils.encoders.embed.embed_images`.
        root: data root (``<root>/dataset/json/test_*.json``; AbC repo or HF layout).
        test_cases: JSON stems to use (default: every ``test_*.json``, sorted).
        distractors: use the first N distractors in sorted order (default: all).
        batch_size, num_workers, progress: passed to ``embed_images``.
    """
    root = Path(root)
    test_cases = test_case_names(root) if test_cases is None else test_cases
    cases = {name: load_test_case(json_path(root, name), root=root) for name in test_cases}
    images = list(dict.fromkeys(p for c in cases.values()
                                for p in [*c.exemplar_paths, *(q for qs in c.queries.values() for q in qs)]))
    kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
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

    def take(paths: list[Path]) -> np.ndarray:
        return np.asarray(feats.feats[[row[p] for p in paths]], dtype=np.float32)

    out = {name: CaseFeatures(queries={k: take(v) for k, v in c.queries.items()},
                              query_model=dict(c.query_model), exemplars=take(c.exemplar_paths),
                              exemplar_model=c.exemplar_model,
                              query_ids={k: [_rel(p, root) for p in v] for k, v in c.queries.items()},
                              exemplar_ids=[_rel(p, root) for p in c.exemplar_paths])
           for name, c in cases.items()}
    return BenchmarkFeatures(out, dist.feats, dict(encoder.spec), dist.ids, root)


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
