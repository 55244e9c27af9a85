"""Benchmark-level evaluation: embed an AbC-format root once, then score every (test case, prompt type) cell.

Cells are ``"<test case>/<prompt type>"`` (e.g. ``test_styles/object``); each reports the official metrics of
:mod:`ada_utils.retrieval` as fractions in [0, 1]: ``{"R@5", "R@10", "R@100", "mAP", "n_queries"}``, means over
the cell's queries (never pooled across cells; ``../shared/docs/abc-protocol.md`` section 4.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import digamma
from torch import nn

from ada_utils.data import json_path, list_distractors, load_test_case
from ada_utils.embed import embed_images
from ada_utils.retrieval import FeatureMap, abc_metrics


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
    """Embed every test image of ``root`` (each file once, cached by :func:`ada_utils.embed.embed_images`).

    Args:
        encoder: see :func:`ada_utils.embed.embed_images`.
        root: data root (``<root>/dataset/json/test_*.json``; AbC repo or HF layout).
        test_cases: JSON stems to use (default: every ``test_*.json``, sorted).
        distractors: use the first N distractors in sorted order (default: all).
        batch_size, num_workers, progress: passed to ``embed_images``.
    """
    root = Path(root)
    if test_cases is None:
        json_dir = json_path(root, "any").parent  # dataset/json/ (repo layout) or json/ (HF mirror layout)
        test_cases = sorted(p.stem for p in json_dir.glob("test_*.json"))
        if not test_cases:
            raise FileNotFoundError(f"{json_dir}: no test_*.json (is {root} a data root?)")
    cases = {name: load_test_case(json_path(root, name), root=root) for name in test_cases}
    images = list(dict.fromkeys(p for c in cases.values()
                                for p in [*c.exemplar_paths, *(q for qs in c.queries.values() for q in qs)]))
    kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    feats = embed_images(encoder, images, ids=[_rel(p, root) for p in images], **kw)
    row = {p: i for i, p in enumerate(images)}
    dist_paths = list_distractors(root, n=distractors)
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


def evaluate(bf: BenchmarkFeatures, *, real_map: FeatureMap | None = None, synth_map: FeatureMap | None = None,
             ks: Sequence[int] = (5, 10, 100), device: str = "cpu", progress: bool = False) -> dict[str, dict]:
    """Official metrics per cell. ``real_map`` maps exemplars and distractors, ``synth_map`` queries (AbC eval).

    Every cell's gallery is all distractors + its own model's exemplars; the distractors are streamed once for
    all cells (model ids are made unique across test cases).

    Returns:
        ``{"<test case>/<prompt>": {"R@5": float, "R@10": float, "R@100": float, "mAP": float,
        "n_queries": int}}`` (one ``R@k`` per k in ``ks``), fractions in [0, 1].
    """
    q, qm, ex, em, cells = stack_cells(bf)
    res = abc_metrics(q, qm, ex, em, bf.distractors, ks, real_map=real_map, synth_map=synth_map, device=device,
                      progress=progress)
    return {name: {**{f"R@{k}": float(res["recall_per_query"][k][sl].mean()) for k in ks},
                   "mAP": float(res["ap"][sl].mean()), "n_queries": sl.stop - sl.start}
            for name, sl in cells}


def expected_random_ap(n_relevant: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """E[AP] of a uniformly random ranking of ``gallery`` items of which ``n_relevant`` are positives.

    A positive at position p has on average (R - 1)(p - 1)/(G - 1) positives ahead of it, so its expected
    precision is (1/G) sum_p (1/p)(1 + (R - 1)(p - 1)/(G - 1)) = (H_G + (R - 1)(G - H_G)/(G - 1)) / G,
    with H_G the G-th harmonic number; AP averages this over the R positives.
    """
    r, g = np.asarray(n_relevant, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    h = digamma(g + 1) + np.euler_gamma  # H_G
    return np.where(g > 1, (h + (r - 1) * (g - h) / np.maximum(g - 1, 1)) / g, 1.0)


def chance_level(bf: BenchmarkFeatures, *, ks: Sequence[int] = (5, 10, 100)) -> dict[str, dict]:
    """Expected metrics of a random ranking, same layout as :func:`evaluate` (R@K = min(K, G)/G, G = N + E_m)."""
    n = len(bf.distractors)
    out = {}
    for name, case in bf.cases.items():
        per_model = np.bincount(case.exemplar_model)
        for prompt, qm in case.query_model.items():
            r = per_model[qm]
            g = n + r
            out[f"{name}/{prompt}"] = {**{f"R@{k}": float(np.mean(np.minimum(k, g) / g)) for k in ks},
                                       "mAP": float(np.mean(expected_random_ap(r, g))), "n_queries": len(qm)}
    return out
