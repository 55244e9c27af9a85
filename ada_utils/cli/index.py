"""``ada index build``: an approximate nearest-neighbour index over a shard folder (``ada embed --shards``)."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = {"index": "an index over feature shards, chosen from a memory budget (ada index build)"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index build`` to the ``ada`` command line."""
    index = subparsers.add_parser("index", help=COMMANDS["index"])
    sub = index.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("build", help="choose, train, fill (shard by shard, merged on disk) and tune an index")
    p.add_argument("shards", type=Path, help="a finished shard folder (ada embed IMAGES --shards OUT)")
    p.add_argument("--out", type=Path, required=True, help="index folder (index.faiss, index.ivfdata, params.json)")
    p.add_argument("--memory", default="4GB", help="memory the index may take at query time (default 4GB)")
    p.add_argument("--factory", default=None, help="a faiss index_factory string instead of the memory rules")
    p.add_argument("--in-memory", action="store_true", help="build in RAM instead of merging parts on disk")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="the search parameter reaches this 10-recall@10 against exact search (default 0.95)")
    p.add_argument("--max-ms", type=float, default=None,
                   help="query-time bound: the search parameter of highest recall within this many ms per query")
    p.add_argument("--build-memory", default=None,
                   help="memory the training sample may take (default: half of the memory available now)")
    p.add_argument("--queries", type=int, default=500, help="gallery vectors the recall is measured on")
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample and the recall queries")
    p.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from ada_utils.eval.index import build_index, parse_bytes
    from ada_utils.files import read_json

    if not 0 < args.target_recall <= 1:
        raise ValueError(f"--target-recall {args.target_recall}: must lie in (0, 1]")
    if args.max_ms is not None and args.max_ms <= 0:
        raise ValueError(f"--max-ms {args.max_ms}: must be positive (milliseconds per query)")
    out = build_index(args.shards, args.out, memory=parse_bytes(args.memory), factory=args.factory,
                      in_memory=args.in_memory, target_recall=args.target_recall, n_queries=args.queries,
                      seed=args.seed, max_ms_per_query=args.max_ms,
                      build_memory=None if args.build_memory is None else parse_bytes(args.build_memory))
    params = read_json(out / "params.json")
    search = params["search"]
    print(f"{params['factory']} over {params['rows']:,} vectors in {out} ({params['rule']}); "
          f"10-recall@10 {params['recall_curve'][-1]['recall@10']:.3f}"
          + (f" at {search['name']}={search['value']}" if search else "") + f", built in {params['build_seconds']} s ("
          + ", ".join(f"{phase} {s} s" for phase, s in params["seconds"].items()) + ")"
          + (f"; resumed: training and {params['resumed'].get('parts', 0)} parts kept from the interrupted build"
             if params["resumed"] else ""))
    return 0
