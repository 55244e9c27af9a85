"""Benchmark of the approximate index (``ada index build``) at 1M and 10M vectors: cost, recall, attribution kept.

Data: the embedded benchmark's real features (``--scale``, EfficientNet-Lite0 at ``--image-size``): its test
queries and exemplars, and its real distractors; the distractor gallery is filled up to each size with vectors
drawn from a Gaussian with the real distractors' mean and covariance (a full-rank fit, the seed fixed): the
same first and second moments as real features, none of their cluster structure, which makes the drawn
distractors easier to tell apart from the exemplars than real ones would be (said with the numbers). The gallery
is written as float16 shards of ``--shard-rows`` (what ``ada embed --shards`` writes).

For each index kind (the memory rules' choice under ``--memory``, and exact Flat and IVF-Flat where they fit): build
time (and its phases: train, add, merge, tune), peak resident memory of the build (sampled; VmRSS counts the
shards' memory-mapped pages, which the kernel may drop, RssAnon only what the build holds), disk, search latency
per query at the tuned parameter, 10-recall@10 on 500 gallery vectors against exact search, and the attribution
kept: the official R@5 and mAP of every test cell (all its queries, or ``--queries-per-cell`` drawn with the seed)
when the gallery (distractors and exemplars) is searched through the index (each query's shortlist of
``--shortlist``, re-ranked exactly: an exemplar it misses is not retrieved) against the exact metric over all
distractors (:func:`ada_utils.retrieval.abc_metrics`, which stays the official one) on the same queries, as their
ratio.

    python bench/bench_index.py --sizes 100000            # a check (minutes)
    python bench/bench_index.py --sizes 1000000                             # 56 min on 2 cores
    python bench/bench_index.py --sizes 10000000 --queries-per-cell 200     # hours; disk 2 B x D x N

Writes ``bench/results/index-<device>.json`` (one row per size and kind).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ada_utils.files import human_bytes, read_json, write_json
from ada_utils.project import hardware, library_versions
from bench_retrieval import RssSampler  # the same sampler as the metric's benchmark (run from bench/)


def real_features(scale: str, image_size: int):
    """The embedded benchmark's features (cached after the first run)."""
    from ada_utils.data import ensure_benchmark
    from ada_utils.encoders import embed_benchmark, load_encoder

    root = ensure_benchmark(scale=scale, seed=0)
    return embed_benchmark(load_encoder("efficientnet_lite0", device="cpu", image_size=image_size), root)


def drawn_gallery(real: np.ndarray, exemplars: list[np.ndarray], size: int, folder: Path, shard_rows: int,
                  seed: int) -> Path:
    """``size`` distractors (the real ones, then Gaussian vectors with their mean and covariance), then every test
    case's exemplars (one shard each): the gallery a user would index, drawn and written one shard at a time."""
    from ada_utils.encoders.sharded import write_feature_shards

    mean = real.mean(axis=0)
    factor = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-6 * np.eye(real.shape[1])).astype(np.float32)
    rng = np.random.default_rng(seed)
    starts = range(0, size, shard_rows)

    def arrays():
        for made in starts:
            n = min(shard_rows, size - made)
            take = real[made:made + n] if made < len(real) else np.zeros((0, real.shape[1]), np.float32)
            drawn = rng.standard_normal((n - len(take), real.shape[1]), dtype=np.float32) @ factor.T + mean
            yield np.concatenate([take, drawn]).astype(np.float16)
        yield from (e.astype(np.float16) for e in exemplars)

    def ids():
        for made in starts:
            yield [f"real{i}" if i < len(real) else f"drawn{i}" for i in range(made, min(made + shard_rows, size))]
        yield from ([f"case{c}-exemplar{i}" for i in range(len(e))] for c, e in enumerate(exemplars))

    return write_feature_shards(folder, arrays(), ids(), count=len(starts) + len(exemplars),
                                source={"name": "gaussian-matched", "seed": seed, "real_rows": len(real)})


class Head:
    """The first ``n`` rows of a shard folder as one array-like (the distractors, for the exact metric)."""

    def __init__(self, feats, n: int) -> None:
        self.feats, self.shape = feats, (n, feats.shape[1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi, _ = rows.indices(self.shape[0])
        return self.feats[lo:hi]


def attribution(index, gallery, n_dist: int, bench, shortlist: int, per_cell: int | None, seed: int) -> dict:
    """Official R@5/mAP per cell: through the index, and exact over all distractors (the same float16 values), on
    the same queries: all of them, or ``per_cell`` drawn with the seed (the exact metric costs Q x N products)."""
    from ada_utils.eval.index import metrics_through_index
    from ada_utils.retrieval import abc_metrics

    cells, start, rng = {}, n_dist, np.random.default_rng(seed)
    for name, case in bench.cases.items():
        rows = np.arange(start, start + len(case.exemplars))
        start += len(case.exemplars)
        exemplars = gallery.rows_at(rows)
        for prompt, q in case.queries.items():
            qm = np.asarray(case.query_model[prompt])
            if per_cell is not None and per_cell < len(q):
                pick = np.sort(rng.choice(len(q), per_cell, replace=False))
                q, qm = np.asarray(q)[pick], qm[pick]
            exact = abc_metrics(q, qm, exemplars, case.exemplar_model, Head(gallery, n_dist), ks=(5,))
            approx = metrics_through_index(index, gallery, n_dist, rows, case.exemplar_model, q, qm,
                                           shortlist=shortlist, ks=(5,))
            cells[f"{name}/{prompt}"] = {"exact_R@5": exact["recall"][5], "index_R@5": approx["recall"][5],
                                         "exact_mAP": exact["map"], "index_mAP": approx["map"], "queries": len(q)}
    return cells


def run_kind(gallery_dir: Path, gallery, n_dist: int, bench, factory: str, memory: int, work: Path,
             shortlist: int, per_cell: int | None, seed: int) -> dict:
    """Build, measure and score one index kind."""
    from ada_utils.eval.index import build_index, choose_index, open_index

    out = work / f"index-{factory}".replace(",", "_")
    with RssSampler() as rss:
        t = time.perf_counter()
        build_index(gallery_dir, out, memory=memory, progress=False,
                    factory=None if factory == choose_index(gallery.rows, gallery.shape[1], memory).factory
                    else factory)
        seconds = time.perf_counter() - t
    params = read_json(out / "params.json")
    index = open_index(out)
    t = time.perf_counter()
    cells = attribution(index, gallery, n_dist, bench, shortlist, per_cell, seed)
    scored = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in out.iterdir())
    row = {"factory": params["factory"], "rule": params["rule"], "index_bytes": params["index_bytes"],
           "build_seconds": round(seconds, 1),
           "build_peak_rss_bytes": int(rss.peak["VmRSS"] * 2**20),
           "build_peak_anon_bytes": int(rss.peak["RssAnon"] * 2**20), "disk_bytes": disk, "disk": human_bytes(disk),
           "search": params["search"], "recall@10": params["recall_curve"][-1]["recall@10"],
           "ms_per_query": params["recall_curve"][-1].get("ms_per_query"), "recall_curve": params["recall_curve"],
           "phase_seconds": params["seconds"], "train_rows": params["train_rows"], "train_rule": params["train_rule"],
           "attribution_seconds": round(scored, 1), "queries_per_cell": per_cell, "shortlist": shortlist,
           "cells": cells, "measured": time.strftime("%Y-%m-%d"),
           "R@5_kept": float(np.mean([c["index_R@5"] / max(c["exact_R@5"], 1e-12) for c in cells.values()])),
           "mAP_kept": float(np.mean([c["index_mAP"] / max(c["exact_mAP"], 1e-12) for c in cells.values()]))}
    shutil.rmtree(out)
    return row


# LAION's sizes, and the embedding throughputs the projection uses: ours measured on the 2-core CPU
# (bench/results/embed-cpu2.json, EfficientNet-Lite0 at 128 px, decode + forward), and clip-retrieval's published
# figure for ViT-L/14 on one 8 x A100 node (not measured here: no GPU was lent to this project's runs yet).
TARGETS = {"LAION-400M": 400_000_000, "LAION-5B": 5_850_000_000}
EMBED_IMG_S = {"efficientnet_lite0 128 px, 2 CPU cores (measured)": 14.5,
               "ViT-L/14, one 8 x A100 node (clip-retrieval's figure)": 2500.0}


def projection(row: dict) -> dict:
    """Disk, RAM, build hours and embedding time at LAION's sizes, scaled linearly from one measured row
    (adding vectors is linear in N; so is training on 100 x nlist vectors with nlist ~ sqrt(N) lists)."""
    n, d = row["size"], row["dim"]
    out = {}
    for name, target in TARGETS.items():
        scale = target / n
        out[name] = {"vectors": target, "shards_float16_bytes": 2 * d * target,
                     "index_disk_bytes": row["disk_bytes"] * scale, "index_ram_bytes": row["index_bytes"] * scale,
                     "build_hours_2_cores": row["build_seconds"] * scale / 3600,
                     "embedding_hours": {k: target / v / 3600 for k, v in EMBED_IMG_S.items()},
                     "from": f"{row['factory']} at N={n:,}"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--memory", default="4GB", help="the budget of the memory rules")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--shortlist", type=int, default=1000)
    parser.add_argument("--queries-per-cell", type=int, default=None,
                        help="score this many queries of each test cell, drawn with the seed (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the gallery shards (default: a temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default=None, help="a remark kept in each row written (e.g. what shared the cores)")
    parser.add_argument("--flat-max-bytes", type=float, default=8e9,
                        help="also build Flat and IVF-Flat when the raw float32 vectors take at most this much")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "index-cpu.json")
    args = parser.parse_args()

    import torch

    from ada_utils.eval.index import choose_index, default_nlist, parse_bytes
    from ada_utils.encoders.sharded import open_shards

    memory, bench = parse_bytes(args.memory), real_features(args.scale, args.image_size)
    real = np.asarray(bench.distractors, dtype=np.float32)
    # Rows of other sizes measured before stay in the file (each row says when it was measured).
    kept = [r for r in read_json(args.out)["rows"] if r["size"] not in args.sizes] if args.out.is_file() else []
    rows = []
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            work = Path(tmp)
            t = time.perf_counter()
            exemplars = [np.asarray(c.exemplars, dtype=np.float32) for c in bench.cases.values()]
            gallery_dir = drawn_gallery(real, exemplars, size, work / "gallery", args.shard_rows, args.seed)
            gallery = open_shards(gallery_dir)
            made = time.perf_counter() - t
            rule = choose_index(gallery.rows, real.shape[1], memory).factory
            # The memory rules' choice, then exact Flat and IVF-Flat where the raw vectors fit this machine.
            fits = gallery.rows * real.shape[1] * 4 <= args.flat_max_bytes
            kinds = list(dict.fromkeys([rule] + (["Flat", f"IVF{default_nlist(gallery.rows)},Flat"] if fits else [])))
            for factory in kinds:
                row = run_kind(gallery_dir, gallery, size, bench, factory, memory, work, args.shortlist,
                               args.queries_per_cell, args.seed)
                rows.append({"size": size, "dim": real.shape[1], "gallery_seconds": round(made, 1), **row,
                             **({"note": args.note} if args.note else {})})
                print(f"N={size:,} {row['factory']}: build {row['build_seconds']} s, peak "
                      f"{human_bytes(row['build_peak_rss_bytes'])} ({human_bytes(row['build_peak_anon_bytes'])} "
                      f"anonymous), disk {row['disk']}, recall@10 "
                      f"{row['recall@10']:.3f}, {row['ms_per_query']} ms/query, R@5 kept {row['R@5_kept']:.3f}, "
                      f"mAP kept {row['mAP_kept']:.3f}", flush=True)
                every = sorted(kept + rows, key=lambda r: r["size"])
                rule_rows = [r for r in every if r["rule"] != "given (--factory)"]
                write_json(args.out, {"rows": every, "projection": projection(rule_rows[-1]) if rule_rows else None,
                                      "hardware": hardware(), "torch_threads": torch.get_num_threads(),
                                      "libraries": library_versions(), "memory_budget": memory,
                                      "data": f"embedded benchmark scale={args.scale} (efficientnet_lite0, "
                                      f"{args.image_size} px): {len(real):,} real distractors + Gaussian-matched "
                                      f"draws (seed {args.seed})"})


if __name__ == "__main__":
    main()
