"""Checks of a data root: what it holds (:func:`summarise` per cell, :func:`root_overview` for the whole root), which
images do not decode (:func:`undecodable`, ``ada data check --decode``), and trivial cues that would separate the
domains.

Trivial cues: can image size, file size or mean colour alone tell real from synthetic images?
A benchmark where such a cue separates the domains would let a method "attribute" by file statistics. Each cue is
scored by the ROC AUC of a single threshold, folded to [0.5, 1] (0.5 = no information, 1 = perfect separation).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ada_utils.data.abc import describe_root, json_path, list_distractors, load_test_case, resolve, test_case_names
from ada_utils.data.plan import TRAIN_JSON
from ada_utils.calibration import auroc


def domain_paths(root: str | Path, test_cases: Sequence[str] | None = None) -> tuple[list[Path], list[Path]]:
    """Real images (exemplars + distractors) and synthetic images (queries) of ``test_cases`` (default: all)."""
    real, synth = list_distractors(root), []
    for name in test_cases or test_case_names(root):
        case = load_test_case(json_path(root, name), root=root)
        real += case.exemplar_paths
        synth += [p for q in case.queries.values() for p in q]
    return real, synth


def folded_auc(real: np.ndarray, synth: np.ndarray) -> float:
    """ROC AUC of a threshold on a scalar cue, folded to [0.5, 1]."""
    auc = auroc(np.r_[real, synth], np.r_[np.zeros(len(real)), np.ones(len(synth))])
    return float(max(auc, 1.0 - auc))


def trivial_cue_report(root: str | Path, *, max_images: int = 600, seed: int = 0) -> dict:
    """AUCs of file size and of mean R, G, B and brightness for real vs synthetic (subsampled, seeded).

    Returns:
        ``{"n_real", "n_synth", "formats": distinct "FORMAT WxH MODE", "n_quantisation_tables": distinct JPEG
        tables, "auc": {cue: float}}``.
    """
    rng = np.random.default_rng(seed)
    real, synth = domain_paths(root)
    real = [real[i] for i in sorted(rng.permutation(len(real))[:max_images])]
    synth = [synth[i] for i in sorted(rng.permutation(len(synth))[:max_images])]
    stats = {}
    for name, paths in (("real", real), ("synth", synth)):
        opened = [Image.open(p) for p in paths]
        stats[name] = {"formats": {(im.format, im.size, im.mode) for im in opened},
                       "tables": {repr(getattr(im, "quantization", None)) for im in opened},
                       "bytes": np.array([p.stat().st_size for p in paths], dtype=float),
                       "mean": np.array([np.asarray(im.convert("RGB"), dtype=float).mean((0, 1)) for im in opened])}
    r, s = stats["real"], stats["synth"]
    auc = {"file_size": folded_auc(r["bytes"], s["bytes"]), "brightness": folded_auc(r["mean"].mean(1),
                                                                                      s["mean"].mean(1))}
    auc.update({f"mean_{c}": folded_auc(r["mean"][:, i], s["mean"][:, i]) for i, c in enumerate("RGB")})
    formats = sorted(f"{f} {w}x{h} {m}" for f, (w, h), m in r["formats"] | s["formats"])
    return {"n_real": len(real), "n_synth": len(synth), "formats": formats,
            "n_quantisation_tables": len(r["tables"] | s["tables"]), "auc": auc}


def json_file(name: str, root: Path) -> Path:
    """A benchmark JSON named on the command line: a path as given, else relative to ``root`` in either layout."""
    return Path(name) if Path(name).is_file() else resolve(name, root)


def summarise(json_files: list[str], *, root: Path, distractors: int | None = None) -> list[dict]:
    """Per test case and prompt type: models, exemplars, queries as the evaluation counts them (raises
    MissingFilesError on absent files); ``without_exemplars`` counts the queries of models whose JSON entry lists no
    exemplar, which the evaluation leaves out (nothing to retrieve)."""
    rows = []
    for name in json_files:
        case = load_test_case(json_file(name, root), root=root, distractors=distractors)
        for prompt in case.prompt_types:
            owner = case.query_model[prompt].tolist()
            used = sorted(m for m in set(owner) if case.models[m].exemplars)
            dropped = sum(not case.models[m].exemplars for m in owner)
            rows.append({"test_case": case.name, "prompt_type": prompt, "models": len(used),
                         "exemplars": sum(len(case.models[m].exemplars) for m in used),
                         "queries": len(owner) - dropped, "without_exemplars": dropped,
                         "distractors": len(case.distractors)})
    return rows


def root_overview(root: str | Path) -> dict:
    """What a data root holds, from its JSONs and folders (any AbC-layout root; no manifest needed).

    Returns:
        ``{"data": describe_root(root), "distractors": int, "images": int (test cases, training JSON and
        distractors), "train": {"models", "exemplars", "queries": {prompt: n}} or None when the root has no
        training JSON (AbC's repository), "generator": the embedded benchmark's manifest or None}``.
    """
    root = Path(root)
    n_distractors = len(list_distractors(root))
    images = n_distractors
    for name in test_case_names(root):
        case = load_test_case(json_path(root, name), root=root)
        images += len(case.exemplar_paths) + sum(len(q) for q in case.queries.values())
    train = None
    if json_path(root, TRAIN_JSON).is_file():
        case = load_test_case(json_path(root, TRAIN_JSON), root=root)
        queries = {p: len(q) for p, q in case.queries.items()}
        train = {"models": len(case.models), "exemplars": len(case.exemplar_paths), "queries": queries}
        images += train["exemplars"] + sum(queries.values())
    manifest = root / "manifest.json"
    generator = json.loads(manifest.read_text()) if manifest.is_file() else None
    return {"data": describe_root(root), "distractors": n_distractors, "images": images, "train": train,
            "generator": generator}


def _decode_failure(path: str) -> str | None:
    """None when the image at ``path`` decodes fully; else the reason (a decompression bomb is a failure)."""
    import warnings

    from ada_utils.data.images import ImageDecodeError, load_image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            load_image(path)
        except ImageDecodeError as err:
            cause = err.__cause__ or err
            return f"{type(cause).__name__}: {cause}"
        except Image.DecompressionBombWarning as err:
            return f"DecompressionBombWarning: {err}"
    return None


def undecodable(paths: Sequence[Path], *, workers: int = 1, progress: bool = True) -> list[tuple[Path, str]]:
    """Every file of ``paths`` that does not decode, with the reason (truncated, empty, not an image, too large).

    Decodes each image fully, in ``workers`` processes (1: in this process), with a progress bar.
    """
    from tqdm.auto import tqdm

    names = [str(p) for p in paths]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            reasons = list(tqdm(pool.map(_decode_failure, names, chunksize=32), total=len(names), desc="decoding",
                                unit="img", disable=not progress))
    else:
        reasons = [_decode_failure(n) for n in tqdm(names, desc="decoding", unit="img", disable=not progress)]
    return [(Path(n), r) for n, r in zip(names, reasons) if r is not None]
