"""``ada embed``, ``ada eval`` and ``ada attribute``: cached features, official metrics, nearest gallery images.

    ada embed IMAGES_OR_DIRS... --encoder efficientnet_lite0 [--cache DIR]
    ada eval --root DATA_ROOT --encoder efficientnet_lite0 [--distractors N] [--out metrics.json]
    ada attribute --gallery DIR_OR_FEATURES --query IMAGES... --encoder NAME [--top 10] [--index flat|ivf|hnsw]
                  [--sheet out.png|out.html]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="efficientnet_lite0", help="encoder name (offline default efficientnet_lite0)")
    p.add_argument("--weights", default=None, help="local weights file (default: packaged / cached weights)")
    p.add_argument("--image-size", type=int, default=None, help="crop size in pixels (CPU book: 128; GPU: 224)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0 on a 2-core machine)")


def _load_encoder(args: argparse.Namespace):
    from ada_utils.encoders import load_encoder

    return load_encoder(args.encoder, args.weights, args.device, image_size=args.image_size)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``eval`` and ``attribute`` to the ``ada`` command line."""
    p = subparsers.add_parser("embed", help="embed images once into a feature cache (feats.npy + ids + manifest)")
    p.add_argument("images", nargs="+", help="image files or folders (recursive, sorted)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default cache/features/<hash>/<hash>)")
    _encoder_args(p)
    p.set_defaults(func=_embed)

    p = subparsers.add_parser("eval", help="official AbC metrics of an encoder on a data root, per cell")
    p.add_argument("--root", type=Path, required=True, help="data root holding dataset/json/test_*.json")
    p.add_argument("--distractors", type=int, default=None, help="first N distractors (default: all)")
    p.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    _encoder_args(p)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("attribute", help="nearest gallery images of your images (table + contact sheet)")
    p.add_argument("--gallery", type=Path, required=True, help="image folder, or a feature cache folder")
    p.add_argument("--query", nargs="+", required=True, help="query image files or folders")
    p.add_argument("--top", type=int, default=10, help="matches per query")
    p.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat", help="flat = exact search")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet (.png or .html)")
    p.add_argument("--image-root", type=Path, default=None, help="folder that relative gallery ids live under")
    _encoder_args(p)
    p.set_defaults(func=_attribute)


def _embed(args: argparse.Namespace) -> int:
    from ada_utils.eval.attribute import image_files
    from ada_utils.encoders import embed_images

    out = embed_images(_load_encoder(args), image_files(args.images), cache=args.cache, batch_size=args.batch_size,
                       num_workers=args.num_workers)
    print(f"{out.feats.shape[0]} x {out.feats.shape[1]} features in {out.path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ada_utils.project import hardware
    from ada_utils.encoders import embed_benchmark
    from ada_utils.eval import chance_level, evaluate
    from ada_utils.files import write_json

    bf = embed_benchmark(_load_encoder(args), args.root, distractors=args.distractors, batch_size=args.batch_size,
                         num_workers=args.num_workers)
    cells, chance = evaluate(bf, progress=True), chance_level(bf)
    print(f"{'cell':32s} {'R@5':>6s} {'R@10':>6s} {'R@100':>6s} {'mAP':>6s} {'chance mAP':>10s} {'queries':>7s}")
    for name, m in cells.items():
        print(f"{name:32s} {m['R@5']:6.3f} {m['R@10']:6.3f} {m['R@100']:6.3f} {m['mAP']:6.3f} "
              f"{chance[name]['mAP']:10.4f} {m['n_queries']:7d}")
    if args.out:
        write_json(args.out, {"cells": cells, "chance": chance, "encoder": bf.encoder, "root": str(args.root),
                              "n_distractors": len(bf.distractors), "hardware": hardware()})
        print(f"wrote {args.out}")
    return 0


def _gallery(args: argparse.Namespace, encoder):
    """Features + ids of ``--gallery``: a cache folder (checked against the encoder) or an image folder."""
    from ada_utils.eval.attribute import image_files
    from ada_utils.encoders import embed_images, load_features

    if (args.gallery / "manifest.json").is_file():
        feats = load_features(args.gallery)
        if feats.manifest["encoder"] != json.loads(json.dumps(encoder.spec)):
            raise ValueError(f"{args.gallery / 'manifest.json'}: gallery features come from encoder "
                             f"{feats.manifest['encoder'].get('name')!r} with another spec than --encoder "
                             f"{args.encoder!r}; embed the gallery with the same encoder")
        return feats
    return embed_images(encoder, image_files([args.gallery]), batch_size=args.batch_size,
                        num_workers=args.num_workers)


def _attribute(args: argparse.Namespace) -> int:
    from ada_utils.eval.attribute import attribute, contact_sheet, image_files
    from ada_utils.encoders import embed_images

    encoder = _load_encoder(args)
    gallery = _gallery(args, encoder)
    queries = embed_images(encoder, image_files(args.query), batch_size=args.batch_size, num_workers=args.num_workers,
                           progress=False)
    result = attribute(np.asarray(queries.feats), np.asarray(gallery.feats), query_ids=queries.ids,
                       gallery_ids=gallery.ids, top=args.top, index=args.index)
    print(result.table())
    if args.sheet:
        print(f"wrote {contact_sheet(result, args.sheet, image_root=args.image_root)}")
    return 0

