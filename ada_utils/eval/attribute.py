"""Attribute your own images: nearest gallery images by cosine similarity (faiss), as a table and a contact sheet.

Features are L2-normalised float32, so inner product = cosine. ``index="flat"`` is exact (``IndexFlatIP``);
``"ivf"`` (``IndexIVFFlat``, ``nlist`` ~ 4 sqrt(N) cells, ``nprobe`` probed) and ``"hnsw"`` (``IndexHNSWFlat``)
are approximate and faster for million-image galleries. This is a nearest-neighbour demo, not the official
metric (:mod:`ada_utils.retrieval`), and it ranks all gallery images together (no per-model gallery).

With a calibrator (:mod:`ada_utils.calibration`), each match also gets its calibrated influence: its share of
AbC's truncated softmax over the *whole* gallery (exact scores, whatever the index), and each query the share
left to images outside its top matches.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ada_utils.calibration import Calibrator
from ada_utils.data import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FRAME_COLOUR = "#009E73"  # colour-blind-safe green (ada_utils.book.style.PALETTE)
FRAME_HTML = f' style="outline:4px solid {FRAME_COLOUR}"'


@dataclass
class Attribution:
    """Top matches: ``scores`` and ``indices`` (Q, top) into ``gallery_ids``; rows follow ``query_ids``.

    With a calibrator, ``influence`` (Q, top) is each match's calibrated probability over the whole gallery and
    ``rest`` (Q,) what is left to the images outside the top matches.
    """

    query_ids: list[str]
    gallery_ids: list[str]
    scores: np.ndarray
    indices: np.ndarray
    influence: np.ndarray | None = None
    rest: np.ndarray | None = None
    outside: np.ndarray | None = None  # with an index: the bound on the share outside the shortlist
    gallery_rows: np.ndarray | None = None  # with an index: each gallery id's row in the shard folder

    def rows(self) -> list[dict]:
        """One dict per (query, rank): ``query``, ``rank`` (1-based), ``score`` (cosine), ``gallery``, and
        ``influence`` (a fraction) with a calibrator."""
        return [{"query": q, "rank": r + 1, "score": float(self.scores[i, r]),
                 "gallery": self.gallery_ids[self.indices[i, r]],
                 **({} if self.influence is None else {"influence": float(self.influence[i, r])})}
                for i, q in enumerate(self.query_ids) for r in range(self.indices.shape[1])
                if self.indices[i, r] >= 0]

    def table(self) -> str:
        """Plain-text table of :meth:`rows`; with a calibrator, an influence column and each query's rest."""
        soft = self.influence is not None
        lines = [f"{'query':40s} {'rank':>4s} {'score':>7s} " + ("influence " if soft else "") + " gallery"]
        for r in self.rows():
            share = f"{r['influence']:9.1%} " if soft else ""
            lines.append(f"{r['query'][-40:]:40s} {r['rank']:4d} {r['score']:7.4f} {share} {r['gallery']}")
        if soft:
            top = self.indices.shape[1]
            lines += [f"{q[-40:]:40s} not in the top {top}: {rest:.1%}" for q, rest in zip(self.query_ids, self.rest)]
        if soft and self.outside is not None:
            lines += [f"{q[-40:]:40s} outside the shortlist: at most {out:.2%}"
                      for q, out in zip(self.query_ids, self.outside)]
        return "\n".join(lines)


def image_files(items: list[str | Path]) -> list[Path]:
    """Files as given, plus the images under each folder (recursive, sorted)."""
    out = []
    for item in map(Path, items):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            out.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(i) for i in items]}")
    return out


def _normalised(feats: np.ndarray) -> np.ndarray:
    x = np.array(feats, dtype=np.float32, order="C")  # a copy: faiss normalises in place
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    faiss.normalize_L2(x)
    return x


def in_memory_index(gallery_feats: np.ndarray, *, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
                hnsw_m: int = 32, seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over L2-normalised (N, D) gallery features.

    Args:
        gallery_feats: (N, D) features (any float dtype; copied and normalised).
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate).
        nlist: IVF cells (default ``4 sqrt(N)``, at most N // 39 so every cell gets training points).
        nprobe: IVF cells searched per query.
        hnsw_m: HNSW graph degree.
        seed: IVF k-means seed.
    """
    return _index(_normalised(gallery_feats), kind=kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, seed=seed)


def _index(x: np.ndarray, *, kind: str, nlist: int | None, nprobe: int, hnsw_m: int, seed: int) -> faiss.Index:
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"kind={kind!r}: choose 'flat', 'ivf' or 'hnsw'")
    index.add(x)
    return index


def attribute(query_feats: np.ndarray, gallery_feats: np.ndarray, *, query_ids: list[str], gallery_ids: list[str],
              top: int = 10, index: str = "flat", calibrator: Calibrator | None = None) -> Attribution:
    """The ``top`` most similar gallery images of each query (cosine, descending), with their calibrated
    influence when a ``calibrator`` is given."""
    if len(gallery_feats) == 0:
        raise ValueError("the gallery is empty: no image to attribute to")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query_feats has D={query_feats.shape[1]} but gallery_feats D={gallery_feats.shape[1]}"
                         " (embedded with another encoder?)")
    if len(gallery_ids) != len(gallery_feats) or len(query_ids) != len(query_feats):
        raise ValueError("query_ids / gallery_ids must have one entry per feature row")
    if not 1 <= top <= len(gallery_feats):
        raise ValueError(f"top={top} (--top): choose between 1 and the gallery's {len(gallery_feats)} images")
    g, q = _normalised(gallery_feats), _normalised(query_feats)
    scores, indices = _index(g, kind=index, nlist=None, nprobe=16, hnsw_m=32, seed=0).search(q, top)
    result = Attribution(list(query_ids), list(gallery_ids), scores, indices)
    if calibrator is not None:
        result.influence, result.rest = calibrated_influence(calibrator, q, g, indices)
    return result


def attribute_with_index(query_feats: np.ndarray, index: faiss.Index, gallery: Any, *, query_ids: list[str],
                         top: int = 10, shortlist: int = 1000, calibrator: Calibrator | None = None
                         ) -> Attribution:
    """Attribution against a gallery too large to score whole: the index's approximate top ``shortlist`` (K'),
    re-ranked by exact cosine from the stored shard features (``gallery``: :func:`open_shards`), the best ``top``
    kept. With a calibrator, the influence is taken over the shortlist and the mass outside it is bounded
    (:func:`shortlist_influence`), never dropped. With K' >= the gallery, the result equals exact search."""
    n = gallery.rows
    if not 1 <= top <= min(shortlist, n):
        raise ValueError(f"top={top} (--top): choose between 1 and --shortlist {shortlist} (and the gallery's {n:,})")
    if index.ntotal != n or index.d != query_feats.shape[1]:
        raise ValueError(f"the index holds {index.ntotal:,} vectors of D={index.d}, the gallery {n:,} of "
                         f"D={gallery.arrays[0].shape[1]} and the queries D={query_feats.shape[1]}: build the index "
                         "from this shard folder with the same encoder")
    from ada_utils.eval.index import rescore

    q = _normalised(query_feats)
    candidates = index.search(q, min(shortlist, n))[1]
    scores = rescore(gallery, q, candidates)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, candidates = np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)
    rows = np.unique(candidates[:, :top][candidates[:, :top] >= 0])
    local = np.where(candidates[:, :top] >= 0, np.searchsorted(rows, candidates[:, :top]), -1)
    result = Attribution(list(query_ids), [gallery.ids[r] for r in rows], scores[:, :top], local, gallery_rows=rows)
    if calibrator is not None:
        result.influence, result.rest, result.outside = shortlist_influence(calibrator, scores, n, top)
    return result


def shortlist_influence(calibrator: Calibrator, scores: np.ndarray, n: int, top: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AbC's truncated softmax over a shortlist (Q, K') of exact scores, descending, from a gallery of ``n``.

    Every item outside the shortlist scores at most its last score s_K' (if the index found the true top K'),
    so its term is at most t(s_K'): the outside mass is at most ``(n − K') t(s_K')``, and exactly 0 when s_K'
    falls below the calibrator's cut. Returns ``(influence (Q, top)`` over the shortlist (an upper bound, exact when
    the outside mass is 0), ``rest (Q,)`` the shortlist's share beyond the top, ``outside (Q,)`` the bound on the
    share outside the shortlist)``; each listed influence is at least ``influence * (1 − outside)``.
    """
    import torch

    found = np.isfinite(scores)  # an index may return fewer than K' candidates (-inf after them)
    with torch.no_grad():
        s = torch.from_numpy(np.where(found, scores, -2.0)).double()  # cosines lie in [-1, 1]
        terms = calibrator.terms(s, torch.from_numpy(found)).numpy()
        edge = terms[np.arange(len(s)), found.sum(1) - 1]
    inside = terms.sum(axis=1)
    outside = np.maximum(n - found.sum(1), 0) * edge
    influence = terms[:, :top] / inside[:, None]
    return influence, np.clip(1.0 - influence.sum(axis=1), 0.0, 1.0), outside / (inside + outside)


def calibrated_influence(calibrator: Calibrator, q: np.ndarray, g: np.ndarray, indices: np.ndarray, *,
                         chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probability of each listed match over the whole gallery (unit rows ``q``, ``g``), and the rest.

    Returns:
        ``(influence (Q, top), rest (Q,))``; an index of -1 (no match) gets 0.
    """
    import torch

    influence = np.zeros(indices.shape, dtype=np.float64)
    with torch.no_grad():
        for lo in range(0, len(q), chunk):
            p = calibrator(torch.from_numpy(q[lo:lo + chunk] @ g.T)).double().numpy()
            idx = indices[lo:lo + chunk]
            influence[lo:lo + chunk] = np.where(idx >= 0, np.take_along_axis(p, idx.clip(0), 1), 0.0)
    return influence, np.clip(1.0 - influence.sum(axis=1), 0.0, 1.0)  # no -0.0 from rounding


def _thumbnail(img: Any, size: int) -> str:
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def contact_sheet(result: Attribution, out: str | Path, *, image_root: str | Path | None = None,
                  highlight: dict[str, set[str]] | None = None, max_queries: int = 8, max_matches: int = 8,
                  size: int = 128, images: dict[str, Any] | None = None) -> Path:
    """Write the queries and their top matches as ``.png`` (matplotlib grid) or ``.html`` (self-contained).

    Ids are image paths, resolved against ``image_root`` when relative, unless ``images`` holds their image (the
    samples of tar shards, :func:`ada_utils.encoders.sharded.shard_images`). ``highlight`` maps a query id to
    gallery ids to frame (e.g. the exemplars of the query's own model).
    """
    out = Path(out)
    marked, held = highlight or {}, images or {}

    def image(id_: str) -> Any:
        if id_ in held:
            return held[id_]
        return load_image(Path(image_root) / id_ if image_root is not None and not Path(id_).is_absolute() else id_)

    soft = result.influence is not None

    def label(i: int, r: int) -> str:  # the score, and the influence with a calibrator
        return f"{result.scores[i, r]:.3f}" + (f" · {result.influence[i, r]:.0%}" if soft else "")

    rows = [(q, [(result.gallery_ids[j], label(i, r)) for r, j in enumerate(result.indices[i])
                 if j >= 0][:max_matches]) for i, q in enumerate(result.query_ids[:max_queries])]
    heads = [f"query · rest {rest:.0%}" for rest in result.rest] if soft else ["query"] * len(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".html":
        cells = []
        for (q, matches), head in zip(rows, heads):
            tds = [f'<td><img src="data:image/jpeg;base64,{_thumbnail(image(q), size)}"><br><b>{head}</b><br>'
                   f"{html.escape(Path(q).name)}</td>"]
            tds += [f'<td><img src="data:image/jpeg;base64,{_thumbnail(image(g), size)}"'
                    f'{FRAME_HTML if g in marked.get(q, ()) else ""}><br>#{r + 1} '
                    f"{s}<br>{html.escape(Path(g).name)}</td>" for r, (g, s) in enumerate(matches)]
            cells.append(f"<tr>{''.join(tds)}</tr>")
        out.write_text("<!doctype html><meta charset='utf-8'><title>ada attribute</title>"
                       "<style>td{text-align:center;font:11px sans-serif;padding:4px}</style>"
                       f"<table>{''.join(cells)}</table>\n")
        return out
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the contact sheet is written as .png or .html")
    import matplotlib.pyplot as plt

    ncols = 1 + max(len(m) for _, m in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.5 * ncols, 1.7 * len(rows)), squeeze=False)
    for ax_row, (q, matches), head in zip(axes, rows, heads):
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
        for ax, (img_id, title) in zip(ax_row, [(q, head)] + [(g, f"#{r + 1}  {s}")
                                                               for r, (g, s) in enumerate(matches)]):
            ax.imshow(image(img_id))
            ax.set_title(title, fontsize=8)
            if img_id in marked.get(q, ()):
                ax.set_frame_on(True)
                for spine in ax.spines.values():
                    spine.set(color=FRAME_COLOUR, linewidth=4, visible=True)
    legend = " (framed: highlighted matches)" if marked else ""
    what = (f"cosine similarity · calibrated influence;\nrest: influence outside the top {result.indices.shape[1]}"
            if soft else "cosine similarity")
    fig.suptitle(f"Queries (left) and their nearest gallery images ({what}){legend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
