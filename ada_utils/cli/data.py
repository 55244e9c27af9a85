"""``ada data build | check | fetch-photos``: make the embedded benchmark, check an AbC data root, get photos.

Examples::

    ada data fetch-photos                                   # apt-get download + dpkg-deb -x into cache/photos
    ada data build --scale tiny --seed 0 --out data/embedded-tiny-seed0
    ada data build --scale tiny --layout abc                # AbC-named rehearsal root of the same images
    ada data check --data-root /data/abc dataset/json/test_bamfg.json --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from ada_utils.data.generate import build_benchmark, default_root, ensure_benchmark
    from ada_utils.data.rehearsal import build_rehearsal

    start = time.perf_counter()
    if args.layout == "embedded":
        out = Path(args.out) if args.out else default_root(args.scale, args.seed)
        build_benchmark(out, scale=args.scale, seed=args.seed, photos=args.photos, objects=args.objects,
                        workers=args.workers, overwrite=args.overwrite)
    else:
        src = ensure_benchmark(scale=args.scale, seed=args.seed, photos=args.photos, objects=args.objects)
        hf = args.layout == "abc-hf"
        out = Path(args.out) if args.out else default_root(args.scale, args.seed).with_name(
            f"abc-rehearsal-{args.scale}-seed{args.seed}" + ("-hf" if hf else ""))
        build_rehearsal(src, out, layout="hf" if hf else "repo", overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"built {out} ({args.layout}, {args.scale}, seed {args.seed}) in {time.perf_counter() - start:.1f} s, "
          f"{size / 2**20:.1f} MiB")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ada_utils.data.abc import MissingFilesError, UnsafePathError
    from ada_utils.data.checks import summarise

    try:
        rows = summarise(args.json, root=Path(args.root), distractors=args.distractors)
    except (MissingFilesError, UnsafePathError) as err:
        print(err, file=sys.stderr)
        return 1
    if args.json_output:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'test case':<28}{'prompt':<10}{'models':>8}{'exemplars':>11}{'queries':>9}")
        for r in rows:
            print(f"{r['test_case']:<28}{r['prompt_type']:<10}{r['models']:>8}{r['exemplars']:>11}{r['queries']:>9}")
    for r in rows:
        if r["without_exemplars"]:
            print(f"{r['test_case']}/{r['prompt_type']}: {r['without_exemplars']} queries belong to models whose entry "
                  "lists no exemplar; the evaluation leaves them out (not counted above)", file=sys.stderr)
    groups = _listed_images(args)
    return _decode_all(groups, workers=args.workers) if args.decode else _empty_files(groups)


def _listed_images(args: argparse.Namespace) -> dict[str, list[Path]]:
    """The images each named JSON lists (exemplars and queries), and the first --distractors distractors."""
    from ada_utils.data.abc import list_distractors, load_test_case
    from ada_utils.data.checks import json_file

    root, groups = Path(args.root), {}
    for name in args.json:
        path = json_file(name, root)
        case = load_test_case(path, root=root)
        groups[str(path)] = case.exemplar_paths + [p for q in case.queries.values() for p in q]
    if args.distractors:
        groups["distractors"] = list_distractors(root, n=args.distractors)
    return groups


def _empty_files(groups: dict[str, list[Path]]) -> int:
    """Without --decode: the files exist; flag the empty ones (a stat each) and say how to check the rest."""
    from ada_utils.data.abc import listed

    empty = {source: [p for p in paths if p.stat().st_size == 0] for source, paths in groups.items()}
    for source, files in empty.items():
        if files:
            print(f"{source}: {len(files)} image file(s) are empty (interrupted downloads?):\n  {listed(files)}",
                  file=sys.stderr)
    print("images were not opened: add --decode to decode every one (truncated or corrupt files, bombs)",
          file=sys.stderr)
    return 1 if any(empty.values()) else 0


def _decode_all(groups: dict[str, list[Path]], *, workers: int) -> int:
    """``--decode``: decode every listed image (and the first --distractors distractors); report every failure."""
    from ada_utils.data.abc import MAX_LISTED, listed
    from ada_utils.data.checks import undecodable

    failed = 0
    for source, paths in groups.items():
        bad = undecodable(paths, workers=workers)
        failed += len(bad)
        if bad:
            print(f"{source}: {len(bad)} of {len(paths)} image(s) do not decode (first {min(len(bad), MAX_LISTED)} "
                  f"shown; re-download or replace them):\n  {listed([f'{p}: {why}' for p, why in bad])}",
                  file=sys.stderr)
    total = sum(len(p) for p in groups.values())
    print(f"decoded {total - failed} of {total} images" + (f"; {failed} failed" if failed else ", all good"))
    return 1 if failed else 0


def _fetch(args: argparse.Namespace) -> int:
    from ada_utils.data.photos import fetch_photos, gather_sources

    dest = fetch_photos(Path(args.dest) if args.dest else None, force=args.force)
    desc = gather_sources(fetch=False).description if not args.dest else {}
    print(f"photos ready in {dest}" + (f": {desc['n_photos']} photos, {desc['n_cutouts']} cut-outs" if desc else ""))
    return 0


COMMANDS = {"data": "build the embedded benchmark, check an AbC root, fetch photos"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ada data`` and its subcommands to the ``ada`` parser."""
    data = subparsers.add_parser("data", help=COMMANDS["data"])
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    build = sub.add_parser("build", help="generate the embedded AbC-format benchmark (deterministic)")
    build.add_argument("--scale", default="small", choices=["tiny", "small", "medium"],
                       help="tiny = tests (seconds); small = the CPU book's default; medium = larger")
    build.add_argument("--seed", type=int, default=0, help="generator seed; same seed -> identical files")
    build.add_argument("--out", default=None, help="destination (default data/embedded-<scale>-seed<seed>)")
    build.add_argument("--photos", type=Path, default=None, help="extra folder of your own photographs")
    build.add_argument("--objects", type=Path, default=None,
                       help="extra folder of PNG cut-outs with transparency, one sub-folder per category")
    build.add_argument("--workers", type=int, default=None, help="processes (default 1 for tiny, else 2)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    build.add_argument("--layout", default="embedded", choices=["embedded", "abc", "abc-hf"],
                       help="embedded: the benchmark's own names; abc / abc-hf: the same images under AbC's "
                       "names and schema (repository / Hugging Face mirror layout), to rehearse the paper's path")
    build.set_defaults(func=_build)

    check = sub.add_parser("check", help="count models/exemplars/queries per test case; report missing files")
    check.add_argument("--data-root", dest="root", required=True,
                       help="data root (AbC repo layout or Hugging Face mirror layout)")
    check.add_argument("json", nargs="+", help="benchmark JSON files (paths, or relative to --root)")
    check.add_argument("--distractors", type=int, default=None, help="also check the first N distractors")
    check.add_argument("--json", dest="json_output", action="store_true", help="machine-readable output")
    check.add_argument("--decode", action="store_true",
                       help="decode every listed image (and the --distractors ones) and report every one that fails")
    check.add_argument("--workers", type=int, default=2, help="processes for --decode (default 2)")
    check.set_defaults(func=_check)

    fetch = sub.add_parser("fetch-photos", help="apt-get download + dpkg-deb -x the photo packages (no root)")
    fetch.add_argument("--dest", default=None, help="destination (default cache/photos)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the marker file exists")
    fetch.set_defaults(func=_fetch)
