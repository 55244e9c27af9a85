"""``ada embed``, ``ada eval`` and ``ada attribute``: cached features, official metrics, nearest gallery images.

    ada embed IMAGES_OR_DIRS... --backbone efficientnet_lite0 [--cache DIR]
    ada embed TARS_OR_IMAGES... --shards OUT [--dtype float16] [--shard-size 10000]   (torchrun: ranks share shards)
    ada eval --data-root DATA_ROOT --backbone efficientnet_lite0 [--distractors N] [--out metrics.json]
    ada eval --abc-feats feats/dino [--mapper weights/mapper/dino_tuned.pth] [--distractors N] [--out metrics.json]
    ada attribute --gallery DIR_OR_FEATURES --query IMAGES... --backbone NAME [--top 10] [--index flat|ivf|hnsw]
    ada attribute --gallery SHARDS --index INDEX_DIR --query IMAGES... [--shortlist 1000]
                  [--sheet out.png|out.html] [--calibrator FILE | --calibrate-on DATA_ROOT] [--out rows.json]

Flag names follow ``ada train`` and the notebooks' parameters (``--data-root``, ``--backbone``, ``--weights``,
``--image-size``, ``--device``). ``ada eval --abc-feats`` reads AbC's released feature files
(:mod:`ada_utils.eval.released`): no images, no encoder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="encoder name (offline default efficientnet_lite0)")
    p.add_argument("--weights", default=None, help="local weights file (default: packaged / cached weights)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let --weights hold pickled Python objects (DINO full checkpoints): only for trusted files")
    p.add_argument("--image-size", type=int, default=None, help="crop size in pixels (CPU book: 128; GPU: 224)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (ada eval --abc-feats: where the metric runs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 16 on a CPU, 64 on a GPU)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0 on a 2-core machine)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an image that does not decode: stop and name it (raise), or leave it out and report it (skip)")


def _load_encoder(args: argparse.Namespace):
    from ada_utils.encoders import load_encoder

    return load_encoder(args.backbone, args.weights, args.device, image_size=args.image_size,
                        trust_pickle=args.trust_pickle)


COMMANDS = {"embed": "embed images once into a feature cache (feats.npy + ids + manifest)",
            "eval": "official AbC metrics per cell, of an encoder on a data root or of AbC's released features",
            "attribute": "nearest gallery images of your images (table + contact sheet)"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``eval`` and ``attribute`` to the ``ada`` command line."""
    p = subparsers.add_parser("embed", help=COMMANDS["embed"])
    p.add_argument("images", nargs="+", help="image files or folders (recursive, sorted); with --shards also "
                   "webdataset .tar shards or folders of them")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cache", type=Path, default=None, help="cache folder (default cache/features/<hash>/<hash>)")
    where.add_argument("--shards", type=Path, default=None, metavar="OUT",
                       help="write one feature shard per input shard into OUT (training-set scale; under torchrun "
                       "or a job array the processes share the shards)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="with --shards: feature type")
    p.add_argument("--shard-size", type=int, default=10_000,
                   help="with --shards and image files: images per output shard (tar shards keep their own)")
    _encoder_args(p)
    p.set_defaults(func=_embed)

    p = subparsers.add_parser("eval", help=COMMANDS["eval"])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", type=Path, default=None,
                        help="data root holding dataset/json/test_*.json: embeds its images with --backbone")
    source.add_argument("--abc-feats", type=Path, default=None,
                        help="AbC features folder feats/<model>/ (laion_subset.pth + test_*.pth): no images, no "
                        "encoder (--backbone, --weights, --image-size are ignored)")
    p.add_argument("--mapper", type=Path, default=None, help="with --abc-feats: AbC tuned mapper "
                   "weights/mapper/<model>_tuned.pth (the supervised baseline; default: pretrained features)")
    p.add_argument("--distractors", type=int, default=None, help="first N distractors (default: all)")
    p.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    _encoder_args(p)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("attribute", help=COMMANDS["attribute"])
    p.add_argument("--gallery", type=Path, required=True, help="image folder, or a feature cache folder")
    p.add_argument("--query", nargs="+", required=True, help="query image files or folders")
    p.add_argument("--top", type=int, default=10, help="matches per query")
    p.add_argument("--index", default="flat", metavar="flat|ivf|hnsw|DIR",
                   help="flat = exact search; ivf, hnsw: approximate, built in memory; DIR: an index folder from ada "
                   "index build over the shard folder --gallery (shortlist, then exact re-ranking)")
    p.add_argument("--shortlist", type=int, default=1000,
                   help="with --index DIR: candidates re-ranked by exact cosine (K'; default 1000)")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet (.png or .html)")
    p.add_argument("--image-root", type=Path, default=None, help="folder that relative gallery ids live under")
    soft = p.add_mutually_exclusive_group()
    soft.add_argument("--calibrator", type=Path, default=None,
                      help="calibrator file for influence percentages (ours, or AbC's weights/calibrator/*.pth)")
    soft.add_argument("--calibrate-on", type=Path, default=None, metavar="DATA_ROOT",
                      help="fit the label-free calibrator on this root's unlabelled training images (no labels "
                           "read) and save it under cache/calibrators/")
    p.add_argument("--out", type=Path, default=None, help="write the rows (and influences) as JSON")
    _encoder_args(p)
    p.set_defaults(func=_attribute)


def _embed(args: argparse.Namespace) -> int:
    from ada_utils.eval.attribute import image_files
    from ada_utils.encoders import embed_images

    if args.shards is not None:
        return _embed_shards(args)

    out = embed_images(_load_encoder(args), image_files(args.images), cache=args.cache, batch_size=args.batch_size,
                       num_workers=args.num_workers, on_error=args.on_error)
    print(f"{out.feats.shape[0]} x {out.feats.shape[1]} features in {out.path}")
    _print_skipped({"images": out.skipped}, "their rows are NaN in feats.npy and listed in manifest.json")
    return 0


def _embed_shards(args: argparse.Namespace) -> int:
    from ada_utils.distributed import rank_and_world
    from ada_utils.encoders.sharded import embed_shards, open_shards, shard_inputs

    inputs = shard_inputs(args.images, shard_size=args.shard_size)
    rank = rank_and_world()[0]
    out = embed_shards(_load_encoder(args), inputs, args.shards, dtype=args.dtype, batch_size=args.batch_size,
                       on_error=args.on_error, rank=rank)
    if rank == 0:
        found = open_shards(out)
        skipped = sum(s["skipped"] for s in found.manifest["shards"])
        print(f"{found.rows} x {found.manifest['dim']} {args.dtype} features in {len(inputs)} shards in {out}"
              + (f" ({skipped} samples skipped: listed in {out / 'ids'})" if skipped else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.abc_feats is not None:
        return _eval_abc_feats(args)
    if args.mapper is not None:
        raise ValueError("--mapper applies to AbC's released features only: use it with --abc-feats")
    from ada_utils.encoders import embed_benchmark
    from ada_utils.eval import evaluate

    bf = embed_benchmark(_load_encoder(args), args.data_root, distractors=args.distractors,
                         batch_size=args.batch_size, num_workers=args.num_workers, on_error=args.on_error)
    _report(args, bf, evaluate(bf, progress=True), source="images", root=args.data_root, mapper=None)
    return 0


def _eval_abc_feats(args: argparse.Namespace) -> int:
    """Official metrics of AbC's released (or AbC-format) features, optionally through a tuned mapper."""
    from ada_utils.eval import evaluate
    from ada_utils.eval.released import load_mapper, load_released_features
    from ada_utils.distributed import select_device

    bf = load_released_features(args.abc_feats, distractors=args.distractors)
    real_map = synth_map = None
    if args.mapper is not None:
        real_map, synth_map = load_mapper(args.mapper, dim=bf.distractors.shape[1], features=args.abc_feats)
    cells = evaluate(bf, real_map=real_map, synth_map=synth_map, device=str(select_device(args.device)),
                     progress=True)
    _report(args, bf, cells, source="abc-feats", root=args.abc_feats,
            mapper=None if args.mapper is None else args.mapper.name)
    return 0


def _report(args: argparse.Namespace, bf, cells: dict, *, source: str, root: Path, mapper: str | None) -> None:
    """Print the per-cell table; with ``--out`` write the metrics JSON (one schema for both sources)."""
    from ada_utils.encoders.features import SKIP_RULE
    from ada_utils.eval import chance_level
    from ada_utils.files import write_json
    from ada_utils.project import hardware

    _print_skipped(bf.skipped, SKIP_RULE)
    chance = chance_level(bf)
    print(f"{'cell':32s} {'R@5':>6s} {'R@10':>6s} {'R@100':>6s} {'mAP':>6s} {'chance mAP':>10s} {'queries':>7s}")
    for name, m in cells.items():
        print(f"{name:32s} {m['R@5']:6.3f} {m['R@10']:6.3f} {m['R@100']:6.3f} {m['mAP']:6.3f} "
              f"{chance[name]['mAP']:10.4f} {m['n_queries']:7d}")
    if args.out:
        write_json(args.out, {"cells": cells, "chance": chance, "encoder": bf.encoder, "root": str(root),
                              "n_distractors": len(bf.distractors), "hardware": hardware(), "source": source,
                              "mapper": mapper, "skipped": bf.skipped, "skip_rule": SKIP_RULE if bf.skipped else None})
        print(f"wrote {args.out}")


def _print_skipped(skipped: dict[str, list[str]], rule: str) -> None:
    """One line per role of the images left out because they did not decode (``--on-error skip``)."""
    from ada_utils.data.abc import listed

    for role, ids in skipped.items():
        if ids:
            print(f"{len(ids)} {role.replace('_', ' ')} skipped ({listed(ids, most=3, sep=', ')}): {rule}")


def _gallery(args: argparse.Namespace, encoder):
    """Features + ids of ``--gallery``: a cache folder (checked against the encoder) or an image folder."""
    from ada_utils.eval.attribute import image_files
    from ada_utils.encoders import embed_images, load_features

    if (args.gallery / "manifest.json").is_file():
        feats = load_features(args.gallery)
        _same_encoder(args, feats.manifest, encoder, "gallery features come", "embed the gallery with the same encoder")
        return feats
    return embed_images(encoder, image_files([args.gallery]), batch_size=args.batch_size,
                        num_workers=args.num_workers, on_error=args.on_error)


def _same_encoder(args: argparse.Namespace, manifest: dict, encoder, what: str, fix: str) -> None:
    """Raise unless the features of ``--gallery`` (their ``manifest``) come from the encoder of the flags."""
    if manifest["encoder"] != json.loads(json.dumps(encoder.spec)):
        raise ValueError(f"{args.gallery / 'manifest.json'}: {what} from encoder "
                         f"{manifest['encoder'].get('name')!r} with another spec than --backbone "
                         f"{args.backbone!r}; {fix}")


def _queries(args: argparse.Namespace, encoder, skipped: dict[str, list[str]]):
    """The decoded ``--query`` images' features and ids (what did not decode is listed with ``skipped``)."""
    from ada_utils.eval.attribute import image_files
    from ada_utils.encoders import embed_images

    queries = embed_images(encoder, image_files(args.query), batch_size=args.batch_size, num_workers=args.num_workers,
                           progress=False, on_error=args.on_error)
    _print_skipped({"query images": queries.skipped, **skipped}, "left out of the table")
    q_feats, q_ids = queries.decoded()
    if not q_ids:
        raise ValueError("--query: no query image decodes")
    return np.asarray(q_feats), q_ids


def _print_attribution(args: argparse.Namespace, result, encoder, record: dict) -> None:
    """Print the table; write the contact sheet (``--sheet``) and the rows with ``record`` (``--out``)."""
    print(result.table())
    if args.sheet:
        from ada_utils.eval.attribute import contact_sheet

        images = None
        if result.gallery_rows is not None:  # a shard gallery: the tars' samples, read back by key
            from ada_utils.encoders.sharded import open_shards, shard_images

            images = shard_images(open_shards(args.gallery), result.gallery_rows)
        print(f"wrote {contact_sheet(result, args.sheet, image_root=args.image_root, images=images)}")
    if args.out:
        from ada_utils.files import write_json

        write_json(args.out, {"rows": result.rows(), **record, "encoder": encoder.spec})
        print(f"wrote {args.out}")


def _attribute(args: argparse.Namespace) -> int:
    from ada_utils.eval.attribute import attribute

    if args.index not in ("flat", "ivf", "hnsw"):
        return _attribute_with_index(args)
    encoder = _load_encoder(args)
    gallery = _gallery(args, encoder)
    q_feats, q_ids = _queries(args, encoder, {"gallery images": gallery.skipped})
    g_feats, g_ids = gallery.decoded()
    calibrator = _calibrator(args, encoder, dim=np.asarray(g_feats).shape[1])
    result = attribute(q_feats, np.asarray(g_feats), query_ids=q_ids, gallery_ids=g_ids, top=args.top,
                       index=args.index, calibrator=calibrator)
    _print_attribution(args, result, encoder, {"rest": None if result.rest is None else
                                    dict(zip(result.query_ids, map(float, result.rest)))})
    return 0


def _attribute_with_index(args: argparse.Namespace) -> int:
    """``ada attribute --index DIR --gallery SHARDS``: shortlist from the index, exact re-ranking from the shards."""
    from ada_utils.eval.attribute import attribute_with_index
    from ada_utils.eval.index import open_index
    from ada_utils.encoders.sharded import open_shards

    folder = Path(args.index)
    if not (folder / "index.faiss").is_file():
        raise FileNotFoundError(f"--index {args.index}: neither flat, ivf, hnsw nor an index folder (build one with "
                                f"`ada index build SHARDS --out {args.index}`)")
    if not (args.gallery / "plan.json").is_file():
        raise ValueError(f"--gallery {args.gallery}: with --index DIR, give the shard folder the index was built from "
                         "(ada embed IMAGES --shards OUT)")
    gallery, encoder = open_shards(args.gallery), _load_encoder(args)
    _same_encoder(args, gallery.manifest, encoder, "the shards come", "query with the encoder that embedded them")
    q_feats, q_ids = _queries(args, encoder, {})
    calibrator = _calibrator(args, encoder, dim=int(gallery.manifest["dim"]))
    result = attribute_with_index(q_feats, open_index(folder), gallery, query_ids=q_ids, top=args.top,
                                  shortlist=args.shortlist, calibrator=calibrator)
    _print_attribution(args, result, encoder, {"index": str(folder), "shortlist": args.shortlist, "outside_at_most":
                                    None if result.outside is None else
                                    dict(zip(result.query_ids, map(float, result.outside)))})
    return 0


def _calibrator(args: argparse.Namespace, encoder, *, dim: int):
    """``--calibrator`` (checked against the encoder), a label-free fit on ``--calibrate-on``, or None."""
    from ada_utils.eval.calibrate import label_free_set, load_calibrator, save_calibrator

    if args.calibrator is not None:
        cal, meta = load_calibrator(args.calibrator, encoder=json.loads(json.dumps(encoder.spec)), dim=dim)
        if meta is None:
            print(f"{args.calibrator}: no record of the encoder it was fitted for (AbC's format); "
                  f"influences assume it matches --backbone {args.backbone}")
        return cal
    if args.calibrate_on is None:
        print("influence percentages need a calibrator: pass --calibrator FILE or --calibrate-on DATA_ROOT")
        return None
    from ada_utils.project import cache_dir
    from ada_utils.train.data import training_data

    data = training_data(encoder, args.calibrate_on, n_views=1, augment="gap", batch_size=args.batch_size,
                         num_workers=args.num_workers)
    cal = label_free_set(data).fit(init_tau=0.1)
    # The features' fingerprint names the file: it changes with the encoder, its weights and the images.
    path = cache_dir() / "calibrators" / f"{encoder.name}-{data.fingerprint(with_pairs=False)[:16]}.pth"
    save_calibrator(path, cal, {"fit": "label_free", "pseudo": "mutual", "encoder": encoder.spec, "dim": dim,
                                "data_root": args.calibrate_on.name, "train_pool": data.source})
    print(f"label-free calibrator (inv_tau {cal.inv_tau.item():.2f}, bias {cal.bias.item():.2f}) fitted on "
          f"{len(data.feats):,} unlabelled training images of {args.calibrate_on.name}; saved to {path}")
    return cal

