"""An approximate nearest-neighbour index over a shard folder, chosen from a memory budget, built out of core.

The rules follow autofaiss's (whose defaults users of LAION indexes know), applied with faiss's own
``index_factory`` so that every choice is visible in ``params.json`` (autofaiss itself is not a dependency: its
pinned faiss and pyarrow versions clash with ours, and its choices are a few lines). For N vectors of D dims:

- ``Flat`` (exact) when N <= 100,000 and N x D x 4 bytes fit the budget: nothing to gain from approximation;
- ``IVF<nlist>,Flat`` when N < 1M and the raw vectors fit: exact distances inside the probed lists;
- ``OPQ<m>_<4m>,IVF<nlist>_HNSW32,PQ<m>x8np`` beyond: m bytes per vector, m the largest of 256 ... 8 whose codes
  (plus ids) fit the budget; the coarse quantiser is an HNSW graph over the centroids. ``np`` (no polysemous
  training: autofaiss leaves it on) skips a simulated annealing that reorders each codebook for Hamming-distance
  filtering, which these searches never use: the same neighbours and distances (tested), a shorter build.

``nlist`` is the power of two nearest to 4 sqrt(N) (faiss's guideline: 4 to 16 sqrt(N)); the quantiser trains on
``min(N, max(100 nlist, 9,984))`` vectors (9,984 = 39 per centroid of a PQ codebook, faiss's minimum) drawn
from the whole gallery with the seed, fewer when they would not fit ``build_memory`` (as autofaiss caps its
training set by the memory available): a training vector takes 12 D bytes while faiss trains (the sample, its
rotated copy and its residuals). The index is filled shard by shard: each
shard's part is written to ``parts/`` and the parts are merged into one on-disk inverted-list file
(``faiss.contrib.ondisk.merge_ondisk``) that queries read memory-mapped, so the build never holds more than one
shard's vectors; ``in_memory=True`` builds one index in RAM instead (the same vectors, the same results). The
search parameter (``nprobe``, or ``efSearch``) is the smallest whose 10-recall@10 against exact search reaches
``target_recall`` on ``n_queries`` vectors drawn from the gallery (each finds itself in both searches; the
attribution a user cares about is measured by ``bench/bench_index.py``); under a query-time bound
(``max_ms_per_query``, as autofaiss tunes) it is the one of highest recall among those within the bound. The
inverted-list file is named beside ``index.faiss`` and opened from there, so the folder can be moved or shared as a
whole. A killed build loses at most one shard's part: the trained index is saved before filling starts and each
part is written atomically, and the same command resumes from them (other settings or shards train afresh).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ada_utils.files import ensure_space, locked, read_json, write_atomic, write_json

FLAT_MAX = 100_000
IVF_FLAT_MAX = 1_000_000
PQ_BYTES = (256, 128, 96, 64, 48, 32, 16, 8)


def parse_bytes(text: str) -> int:
    """``"4GB"``, ``"512MiB"``, ``"2e9"`` -> bytes (decimal and binary units alike: GB = GiB here, as autofaiss)."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = body[-1] if body and body[-1] in units else ""
    try:
        value = float(body[:-1] if unit else body)
    except ValueError:
        raise ValueError(f"--memory {text!r}: give a size such as 4GB, 512MB or 2e9") from None
    if value <= 0:
        raise ValueError(f"--memory {text!r}: must be positive")
    return int(value * units[unit])


@dataclass(frozen=True)
class IndexChoice:
    """The factory string, why it was chosen, and the bytes its vectors take in memory."""

    factory: str
    rule: str
    nlist: int
    index_bytes: int


def default_nlist(n: int) -> int:
    """The power of two nearest to 4 sqrt(n): the inverted lists of an IVF index over ``n`` vectors."""
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def choose_index(n: int, d: int, memory: int) -> IndexChoice:
    """The index for ``n`` vectors of ``d`` dims under ``memory`` bytes (the rules of the module docstring)."""
    flat, nlist = n * d * 4, default_nlist(n)
    if n <= FLAT_MAX and flat <= memory:
        return IndexChoice("Flat", f"N = {n:,} <= {FLAT_MAX:,} and the vectors fit: exact search", 0, flat)
    ids = 8 * n
    if n < IVF_FLAT_MAX and flat + ids <= memory:
        return IndexChoice(f"IVF{nlist},Flat", f"N = {n:,} < 1M and the raw vectors fit ({flat + ids:,} bytes)",
                           nlist, flat + ids)
    for m in PQ_BYTES:
        if 4 * m <= d and n * m + ids <= memory:
            return IndexChoice(f"OPQ{m}_{4 * m},IVF{nlist}_HNSW32,PQ{m}x8np",
                               f"the raw vectors ({flat:,} bytes) exceed the budget or N >= 1M: {m}-byte codes",
                               nlist, n * m + ids)
    raise ValueError(f"--memory {memory:,} bytes: too little for {n:,} vectors even at 8 bytes each "
                     f"({8 * n + ids:,} bytes needed)")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Drop what faiss prints from C++ while the block runs (its "please provide at least N training points"
    warnings, which :func:`build_index` states itself in one line, and on-disk notices); its errors still raise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, null = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _unit(x: np.ndarray) -> np.ndarray:
    """Float32, C-ordered unit rows (what faiss takes) of :func:`ada_utils.retrieval.unit_rows`."""
    from ada_utils.retrieval import unit_rows

    return np.ascontiguousarray(unit_rows(np.asarray(x, dtype=np.float32)))


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take now (MemAvailable), or half the physical memory."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def training_rows(n: int, nlist: int, d: int, build_memory: int) -> tuple[int, str]:
    """How many vectors the index trains on, and why (the rule of the module docstring)."""
    wanted = min(n, max(100 * nlist, 39 * 256))
    fits = build_memory // (12 * d)
    if fits >= wanted:
        if wanted == n < 100 * nlist:
            return n, f"all {n:,} vectors, fewer than 100 per list: a gallery this small gains little from an " \
                      "approximate index"
        return wanted, f"min(N, max(100 x {nlist} lists, 9,984))"
    return max(min(fits, n), 1), (f"{fits:,} fit the build memory ({build_memory:,} bytes at 12 x {d} bytes each), "
                                  f"fewer than the {wanted:,} of 100 per list")


def _sample(feats: Any, count: int, seed: int) -> np.ndarray:
    rows = np.sort(np.random.default_rng(seed).choice(feats.rows, size=min(count, feats.rows), replace=False))
    return _unit(feats.rows_at(rows))


def exact_search(feats: Any, queries: np.ndarray, k: int, *, block: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top ``k`` of unit ``queries`` over every shard, block by block (memory: one block); ties go to
    the lower row, as a stable descending sort of all scores would order them."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    start = 0
    for arr in feats.arrays:
        for lo in range(0, len(arr), block):
            scores = queries @ _unit(arr[lo:lo + block]).T
            ids = np.broadcast_to(np.arange(start + lo, start + lo + scores.shape[1]), scores.shape)
            best_s, best_i = _top_k(np.concatenate([best_s, scores], axis=1),
                                    np.concatenate([best_i, ids], axis=1), k)
        start += len(arr)
    return best_s, best_i


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` highest scores in descending order, ties in column order (the columns' ids ascend among
    equal scores): a partition finds the k-th score, every higher one is kept and the first equal ones fill up to k,
    so only k columns are sorted instead of the whole block."""
    if scores.shape[1] > k:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        above, tied = scores > kth, scores == kth
        keep = above | (tied & (np.cumsum(tied, axis=1) <= k - above.sum(axis=1, keepdims=True)))
        cols = np.nonzero(keep)[1].reshape(len(scores), k)
        scores, ids = np.take_along_axis(scores, cols, 1), np.take_along_axis(ids, cols, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def knn_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """k-recall@k: the share of the exact top k that the approximate top k holds."""
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, exact)]))


def build_index(shards: str | Path, out: str | Path, *, memory: int, factory: str | None = None,
                in_memory: bool = False, target_recall: float = 0.95, n_queries: int = 500, seed: int = 0,
                build_memory: int | None = None, max_ms_per_query: float | None = None,
                progress: bool = True) -> Path:
    """Build the index of the shard folder ``shards`` into ``out`` (``index.faiss``, ``params.json``).

    ``memory`` bounds the index at query time (the rules), ``build_memory`` the training sample (default: half of
    the memory available now); ``params.json`` records the seconds of each phase (train, add, merge, tune).
    A build killed after training resumes when run again with the same settings on the same shards: the trained
    index and the parts already written are kept (``params.json`` says ``resumed``; its seconds of training are the
    earlier run's, ``build_seconds`` this run's)."""
    import faiss

    from ada_utils.encoders.sharded import open_shards

    feats, out, t0 = open_shards(shards), Path(out).resolve(), time.perf_counter()
    n, d = feats.rows, int(feats.manifest["dim"])
    choice = choose_index(n, d, memory) if factory is None else IndexChoice(factory, "given (--factory)", 0, 0)
    out.mkdir(parents=True, exist_ok=True)
    ensure_space(out, choice.index_bytes, f"the index {choice.factory}")
    index = faiss.index_factory(d, choice.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = _ivf(index)
    # Fast-scan codes sit in blocked lists, which faiss cannot merge on disk: those are built in memory.
    on_disk = ivf is not None and not in_memory and not type(faiss.downcast_index(ivf)).__name__.endswith("FastScan")
    build_memory = available_memory() // 2 if build_memory is None else build_memory
    with locked(out, refuse=f"{out}: another `ada index build` is writing this folder; wait for it or pass "
                            "another --out"):
        index, trained = _trained(feats, out, choice, index, build_memory, seed)
        seconds = {"train": trained["train_seconds"]} if "train_seconds" in trained else {}
        seconds.update(_fill(index, feats, out, on_disk=on_disk, resumed=trained["resumed"], progress=progress))
        index, t = open_index(out, params=False), time.perf_counter()
        param, curve = _tune(index, feats, target_recall, n_queries, seed, max_ms_per_query)
        seconds["tune"] = round(time.perf_counter() - t, 2)
        params = {"factory": choice.factory, "rule": choice.rule, "rows": n, "dim": d, "memory_budget": memory,
                  "index_bytes": choice.index_bytes, "on_disk": on_disk, "train_rows": trained["train_rows"],
                  "train_rule": trained["train_rule"], "build_memory": build_memory, "search": param,
                  "recall_curve": curve, "target_recall": target_recall, "max_ms_per_query": max_ms_per_query, "n_queries": n_queries,
                  "seed": seed, "build_seconds": round(time.perf_counter() - t0, 2), "seconds": seconds,
                  "shards": str(Path(shards)), "encoder": feats.manifest.get("encoder"),
                  "dtype": feats.manifest.get("dtype"), "resumed": trained["resumed"]}
        write_json(out / "params.json", params)
        for name in (TRAINED, STATE):
            (out / name).unlink(missing_ok=True)
        return out


def _fill(index: Any, feats: Any, out: Path, *, on_disk: bool, resumed: dict | None, progress: bool) -> dict:
    """Add every shard (in RAM, or as parts merged on disk, reusing a resumed build's parts and counting them in
    ``resumed``); the seconds of the phases."""
    import faiss
    from tqdm.auto import tqdm

    offsets = np.cumsum([0] + [len(a) for a in feats.arrays])
    with tqdm(total=feats.rows, desc="index", unit="vec", disable=not progress) as bar:
        if on_disk:
            seconds, reused = _build_on_disk(index, feats, offsets, out, bar, reuse=resumed is not None)
            if resumed is not None:
                resumed["parts"] = reused
            return seconds
        t, with_ids = time.perf_counter(), _ivf(index) is not None
        for s, arr in enumerate(feats.arrays):
            _add(index, arr, offsets[s], with_ids)
            bar.update(len(arr))
        faiss.write_index(index, str(out / "index.faiss"))
        return {"add": round(time.perf_counter() - t, 2)}


def _trained(feats: Any, out: Path, choice: IndexChoice, index: Any, build_memory: int, seed: int
             ) -> tuple[Any, dict]:
    """The trained index and how it was trained: resumed from the state an interrupted build of the same index over
    the same shards left in ``out``, or trained now on the sample of the rules (and that state saved first)."""
    import faiss

    n, d, ivf = feats.rows, int(feats.manifest["dim"]), _ivf(index)
    key = {"factory": choice.factory, "rows": n, "dim": d, "seed": seed, "shards": _shards_identity(feats)}
    if index.is_trained:
        return index, {"train_rows": 0, "train_rule": None, "resumed": None}
    state = _resumed_state(out, key)
    if state is not None:
        print(f"[index] {out}: resuming the interrupted build's trained {choice.factory} ({state['train_rows']:,} "
              f"training vectors, {state['train_seconds']:.0f} s of training kept)", file=sys.stderr)
        return faiss.read_index(str(out / TRAINED)), {**state, "resumed": {"train": True}}
    t = time.perf_counter()
    count, train_rule = training_rows(n, ivf.nlist if ivf is not None else 0, d, build_memory)
    sample = _sample(feats, count, seed)
    if ivf is not None and len(sample) < 39 * ivf.nlist:
        print(f"[index] {choice.factory}: trained on {len(sample):,} vectors for {ivf.nlist} lists (faiss asks for "
              f"39 per list): {train_rule}", file=sys.stderr)
    with _quiet():
        index.train(sample)
    state = {"key": key, "train_rows": len(sample), "train_rule": train_rule,
             "train_seconds": round(time.perf_counter() - t, 2)}
    del sample
    _save_trained(out, index, state)
    return index, {**state, "resumed": None}


def _ivf(index: Any) -> Any:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _add(index: Any, arr: np.ndarray, start: int, with_ids: bool) -> None:
    x = _unit(arr)
    if with_ids:
        index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
    else:
        index.add(x)


def _build_on_disk(trained: Any, feats: Any, offsets: np.ndarray, out: Path, bar: Any, *, reuse: bool
                   ) -> tuple[dict, int]:
    """One part per shard in ``parts/`` (each written atomically; with ``reuse``, the parts an interrupted build of
    the same trained index left are kept), merged into ``index.ivfdata`` (read memory-mapped at query time);
    returns the seconds of the two phases and the number of parts reused."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    t, parts = time.perf_counter(), out / "parts"
    parts.mkdir(exist_ok=True)
    names, reused = [], 0
    for s, arr in enumerate(feats.arrays):
        names.append(str(parts / f"{s:05d}.index"))
        if reuse and Path(names[-1]).is_file():
            reused += 1
        else:
            part = faiss.clone_index(trained)
            _add(part, arr, offsets[s], True)
            _write_index(part, Path(names[-1]))
            del part
        bar.update(len(arr))
    added, t = round(time.perf_counter() - t, 2), time.perf_counter()
    (out / IVFDATA).unlink(missing_ok=True)
    with _quiet():
        merge_ondisk(trained, names, str(out / IVFDATA))
        faiss.write_index(trained, str(out / "index.faiss"))
    for name in names:
        Path(name).unlink()
    parts.rmdir()
    return {"add": added, "merge": round(time.perf_counter() - t, 2)}, reused


def _write_index(index: Any, path: Path) -> None:
    """``faiss.write_index``, atomically (a killed build leaves whole files only, which a resumed one keeps)."""
    import faiss

    write_atomic(path, lambda fh: fh.write(memoryview(faiss.serialize_index(index))))


def _shards_identity(feats: Any) -> str:
    """What an interrupted build must have read to be resumed: the manifest, and each array's size and mtime
    (re-embedded shards change them)."""
    digest = hashlib.sha256((Path(feats.path) / "manifest.json").read_bytes())
    for shard in feats.manifest["shards"]:
        st = (Path(feats.path) / "emb" / f"{shard['name']}.npy").stat()
        digest.update(f"{shard['name']}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def _resumed_state(out: Path, key: dict) -> dict | None:
    """The trained state an interrupted build of the same index over the same shards left in ``out``, or None
    (another build's state is discarded, with its parts, and the line says so)."""
    if not (out / STATE).is_file() or not (out / TRAINED).is_file():
        return None
    state = read_json(out / STATE)
    if state.get("key") == key:
        return state
    print(f"[index] {out}: an interrupted build of other settings or shards left its trained state there; "
          "training afresh", file=sys.stderr)
    shutil.rmtree(out / "parts", ignore_errors=True)
    return None


def _save_trained(out: Path, index: Any, state: dict) -> None:
    """The trained index and what it was trained for, so that a killed build resumes after training."""
    (out / STATE).unlink(missing_ok=True)  # a kill before the new state is written must not pair the old with
    shutil.rmtree(out / "parts", ignore_errors=True)  # this index; the parts of an earlier training are not its
    _write_index(index, out / TRAINED)
    write_json(out / STATE, state)


IVFDATA = "index.ivfdata"
TRAINED, STATE = "trained.index", "build-state.json"  # an interrupted build's, until it ends


def open_index(folder: str | Path, *, params: bool = True, search: dict | None = None) -> Any:
    """The index of ``folder`` (memory-mapped inverted lists when built on disk), with its tuned search parameter
    set (``search``: another ``{"name": ..., "value": ...}``; ``params=False``: none)."""
    import faiss

    folder = Path(folder)
    path = folder / "index.faiss"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no index.faiss: build one with `ada index build SHARDS --out {folder}`")
    # The inverted lists are mapped read-only from beside index.faiss wherever the folder now lies.
    with _quiet():
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    if params:
        search = search or read_json(folder / "params.json")["search"]
        if search:
            faiss.ParameterSpace().set_index_parameter(index, search["name"], search["value"])
    return index


def _timed_search(index: Any, queries: np.ndarray, repeats: int = 3) -> tuple[np.ndarray, float]:
    """The top-10 ids of ``queries`` and the fastest of ``repeats`` searches in seconds (the least disturbed by
    other work on a shared machine)."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        found = index.search(queries, 10)[1]
        best = min(best, time.perf_counter() - t)
    return found, best


def _tune(index: Any, feats: Any, target: float, n_queries: int, seed: int, max_ms: float | None = None
          ) -> tuple[dict | None, list[dict]]:
    """The smallest search parameter reaching ``target`` 10-recall@10 (the largest tried if none does); with a
    query-time bound ``max_ms``, the one of highest recall within it (the first value tried if none is)."""
    import faiss

    queries = _sample(feats, n_queries, seed + 1)
    exact = exact_search(feats, queries, 10)[1]
    ivf = _ivf(index)
    if ivf is not None:
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v <= ivf.nlist]
    elif hasattr(index, "hnsw"):
        name, values = "efSearch", [16, 32, 64, 128, 256, 512]
    else:
        found, seconds = _timed_search(index, queries)
        return None, [{"recall@10": knn_recall(found, exact), "ms_per_query": 1000 * seconds / len(queries)}]
    curve = []
    for value in values:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
        found, seconds = _timed_search(index, queries)
        curve.append({name: value, "recall@10": knn_recall(found, exact),
                      "ms_per_query": 1000 * seconds / len(queries)})
        if curve[-1]["recall@10"] >= target or (max_ms is not None and curve[-1]["ms_per_query"] > max_ms):
            break
    within = [p for p in curve if max_ms is None or p["ms_per_query"] <= max_ms] or curve[:1]
    chosen = within[-1] if max_ms is None else max(within, key=lambda p: (p["recall@10"], -p[name]))
    return {"name": name, "value": chosen[name]}, curve


def rescore(gallery: Any, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Exact cosine of each unit query with its shortlist (``candidates``: rows of the shard folder ``gallery``, -1
    where the index found fewer), read from the stored features: ``(Q, K')``, -inf at the -1s."""
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for i, row in enumerate(candidates):
        found = row >= 0
        scores[i, found] = _unit(gallery.rows_at(row[found])) @ queries[i]
    return scores


def metrics_through_index(index: Any, gallery: Any, n_distractors: int, exemplar_rows: np.ndarray,
                          exemplar_model: np.ndarray, query_feats: np.ndarray, query_model: np.ndarray, *,
                          shortlist: int = 1000, ks: tuple[int, ...] = (5, 10, 100)) -> dict:
    """AbC's R@K and mAP when attribution goes through the index, as a user's would: the index holds the whole
    gallery (a shard folder of ``n_distractors`` distractors first, then exemplars; ``exemplar_rows`` the rows of
    this test case's, in its exemplar order), each query takes the index's top ``shortlist``, re-scored exactly;
    exemplars of other models and other test cases are left out (AbC's per-model gallery) and the rest ranked by the
    official tie rule
    (:func:`ada_utils.retrieval.rank_gallery`). An own exemplar the shortlist misses is not retrieved (it adds 0 to
    R@K and to AP); a distractor the index misses cannot outrank anything. So the metric can fall (missed exemplars)
    or rise (missed distractors) against the exact one (:func:`~ada_utils.retrieval.abc_metrics`, the official
    metric), and equals it when the shortlist is the whole gallery. Returns ``{"recall": {K: mean}, "map": mean}``."""
    from ada_utils.retrieval import rank_gallery

    q = _unit(query_feats)
    exemplar_rows, exemplar_model = np.asarray(exemplar_rows), np.asarray(exemplar_model)
    which = dict(zip(exemplar_rows.tolist(), range(len(exemplar_rows))))  # gallery row -> exemplar index
    candidates = index.search(q, min(shortlist, gallery.rows))[1]
    ap, rec = np.zeros(len(q)), {k: np.zeros(len(q)) for k in ks}
    for i, (row, scores) in enumerate(zip(candidates, rescore(gallery, q, candidates))):
        row, scores = row[row >= 0], scores[row >= 0]
        ex = np.array([which.get(r, -1) for r in row.tolist()], dtype=np.int64)
        own_total = int((exemplar_model == query_model[i]).sum())
        distractor = scores[row < n_distractors]
        mine = (ex >= 0) & (exemplar_model[ex.clip(0)] == query_model[i])
        own = scores[mine][np.argsort(ex[mine], kind="stable")]  # in exemplar order: the official tie rule
        pos = np.flatnonzero(rank_gallery(distractor, own) >= len(distractor)) + 1
        ap[i] = np.sum(np.arange(1, len(pos) + 1) / pos) / own_total
        for k in ks:
            rec[k][i] = np.sum(pos <= k) / own_total
    return {"recall": {k: float(v.mean()) for k, v in rec.items()}, "map": float(ap.mean())}


def tradeoff(shards: str | Path, work: str | Path, factories: list[str], *, n_queries: int = 500, seed: int = 0
             ) -> list[dict]:
    """Recall, latency and size of each faiss ``factories`` string over a shard folder: one row per search
    parameter value tried (the whole curve up to recall 1), built in ``work``. For chapter 06's trade-off plot."""
    rows = []
    for factory in factories:
        out = build_index(shards, Path(work) / factory.replace(",", "_"), memory=1 << 62, factory=factory,
                          target_recall=1.0, n_queries=n_queries, seed=seed, progress=False)
        params = read_json(out / "params.json")
        size = sum(p.stat().st_size for p in out.iterdir() if p.name != "params.json")
        for point in params["recall_curve"]:
            name = params["search"]["name"] if params["search"] else None
            rows.append({"index": factory, "parameter": f"{name}={point[name]}" if name else "exact",
                         "recall@10": point["recall@10"], "ms_per_query": point.get("ms_per_query"),
                         "bytes_per_vector": size / params["rows"], "folder": out})
    return rows


def index_study(bench: Any, work: str | Path, *, shortlist: int = 100, n_queries: int = 500, seed: int = 0
                ) -> tuple[list[dict], list[dict]]:
    """Chapter 06's study of a benchmark's gallery (:class:`~ada_utils.encoders.BenchmarkFeatures`): its distractors
    (4 shards) and every test case's exemplars (one shard each), written to ``work`` as float32 shards; for Flat,
    IVF-Flat, HNSW32 and IVF-PQ (4-bit fast scan), the :func:`tradeoff` curve, and each test cell's R@5 exact and
    through the index (:func:`metrics_through_index`) at the index's cheapest setting. Returns ``(curve, cells)``."""
    from ada_utils.encoders.sharded import open_shards, write_feature_shards
    from ada_utils.retrieval import abc_metrics

    dist = np.asarray(bench.distractors, dtype=np.float32)
    n_dist, dim = dist.shape
    parts = np.array_split(np.arange(n_dist), 4)
    cases = list(bench.cases.items())
    shards = write_feature_shards(
        Path(work) / "shards", [dist[p] for p in parts] + [c.exemplars for _, c in cases],
        [[bench.distractor_ids[i] for i in p] for p in parts] + [c.exemplar_ids for _, c in cases],
        source=bench.encoder, dtype="float32")
    nlist = default_nlist(n_dist)
    curve = tradeoff(shards, work, ["Flat", f"IVF{nlist},Flat", "HNSW32", f"IVF{nlist},PQ{dim // 16}x4fs"],
                     n_queries=n_queries, seed=seed)
    gallery, cells = open_shards(shards), []
    starts = n_dist + np.cumsum([0] + [len(c.exemplars) for _, c in cases])
    for factory in dict.fromkeys(r["index"] for r in curve):
        first = next(r for r in curve if r["index"] == factory)
        name, _, value = first["parameter"].partition("=")
        index = open_index(first["folder"], search={"name": name, "value": int(value)} if value else None)
        for start, (case_name, case) in zip(starts, cases):
            rows = np.arange(start, start + len(case.exemplars))
            for prompt, q in case.queries.items():
                qm = case.query_model[prompt]
                exact = abc_metrics(q, qm, case.exemplars, case.exemplar_model, dist, ks=(5,))
                through = metrics_through_index(index, gallery, n_dist, rows, case.exemplar_model, q, qm,
                                                shortlist=shortlist, ks=(5,))
                cells.append({"index": factory, "setting": first["parameter"], "cell": f"{case_name}/{prompt}",
                              "exact R@5": exact["recall"][5], "through the index R@5": through["recall"][5]})
    return curve, cells
