"""What polysemous training adds to the build of a ``PQ{m}x8`` code, the fixed cost in the 1M row of bench_index.

faiss trains a product quantiser's codebooks by k-means, then (unless the factory string ends in ``np``) reorders
each codebook so that Hamming distances between codes approximate their L2 distances (polysemous codes, for
Hamming pre-filtering). The memory rules' searches never filter by Hamming distance, so the rules ask for ``np``
(the same neighbours and distances: ``tests/test_index.py``). The reordering's cost depends on the codebooks
(``m`` x 256 centroids), not on N. This times ``IndexPQ(d, m, 8).train`` on the same Gaussian vectors without and
with it, in one run.

    python bench/bench_pq_training.py          # d 1024, m 256 (the rules' codes at 1280 dims), 65,536 vectors

Writes ``bench/results/pq-training-cpu.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ada_utils.files import write_json
from ada_utils.project import hardware, library_versions


def train_seconds(x: np.ndarray, m: int, polysemous: bool) -> float:
    """Seconds of ``IndexPQ(d, m, 8).train(x)`` with or without the polysemous reordering."""
    import faiss

    pq = faiss.IndexPQ(x.shape[1], m, 8)
    pq.do_polysemous_training = polysemous
    t = time.perf_counter()
    pq.train(x)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=1024, help="the OPQ output dimension of the rules")
    parser.add_argument("--m", type=int, default=256, help="sub-quantisers (bytes per code)")
    parser.add_argument("--rows", type=int, default=65_536, help="faiss trains each codebook on 256 x 256 at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default=None, help="a remark kept in the result (e.g. what shared the cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pq-training-cpu.json")
    args = parser.parse_args()
    x = np.random.default_rng(args.seed).standard_normal((args.rows, args.dim), dtype=np.float32)
    plain, poly = train_seconds(x, args.m, False), train_seconds(x, args.m, True)
    print(f"PQ{args.m}x8 on {args.rows:,} x {args.dim}: {plain:.1f} s without polysemous training, {poly:.1f} s "
          f"with it ({poly - plain:.0f} s more)")
    write_json(args.out, {"dim": args.dim, "m": args.m, "rows": args.rows, "seed": args.seed,
                          "seconds_plain": round(plain, 1), "seconds_polysemous": round(poly, 1),
                          "measured": time.strftime("%Y-%m-%d"), "hardware": hardware(),
                          "libraries": library_versions(), **({"note": args.note} if args.note else {})})


if __name__ == "__main__":
    main()
