"""``ada train``: train one configuration (a method of ``ada_utils.train.config``) and evaluate it, from the shell.

Every field of ``TrainConfig`` is an option with the same name (``--lam 0.5``, ``--cov-mode per_domain``,
``--no-nn-symmetric``), so a notebook parameter, a config.json field and a CLI flag share one name. Examples::

    ada train --method ada --scale small --seed 0            # runs/03_train/ada-seed0/
    ada train --method supervised --scale tiny --resume
    torchrun --nproc_per_node=4 -m ada_utils train --method ada --solver gradient --finetune last_k --device cuda \\
        --backbone dino --weights dino_deitsmall16_pretrain.pth --image-size 224 --data-root /data/abc
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ada train`` to the ``ada`` command line."""
    from ada_utils.train import CHOICES, TrainConfig

    p = subparsers.add_parser("train", help="train a head (ada, its ablations, controls, supervised baseline)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="small", help="embedded benchmark scale when --data-root is not given")
    p.add_argument("--data-root", default="", help="benchmark root (AbC layout); default: the embedded one")
    p.add_argument("--out", default="", help="run folder (default runs/03_train/<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in --out and start again")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate on the benchmark's test cells and write metrics.json (default: yes)")
    p.add_argument("--distractors", type=int, default=None, help="number of distractors (default all)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag, default = "--" + field.name.replace("_", "-"), getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default, choices=CHOICES.get(field.name),
                           help=f"default {default!r}")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    """Embed (cached), train, evaluate; prints the run folder and the per-cell R@5 / mAP."""
    import torch

    from ada_utils.project import runs_dir
    from ada_utils.encoders import load_encoder
    from ada_utils.files import write_json
    from ada_utils.train import feature_maps, train
    from ada_utils.train import TrainConfig
    from ada_utils.train import training_data

    cfg = TrainConfig.from_dict(vars(args))
    if cfg.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.data_root:
        root = Path(args.data_root)
    else:
        from ada_utils.data import ensure_benchmark

        root = ensure_benchmark(scale=args.scale, seed=0)
    out = Path(args.out) if args.out else runs_dir() / "03_train" / f"{cfg.method}-seed{cfg.seed}"
    encoder = load_encoder(cfg.backbone, cfg.weights or None, device="cpu" if cfg.finetune == "frozen"
                           else cfg.device, image_size=cfg.image_size)
    data = training_data(encoder, root, n_views=cfg.n_views, augment=cfg.augment,
                         with_pairs=cfg.method == "supervised")
    result = train(cfg, data, out, encoder=None if cfg.finetune == "frozen" else encoder, resume=args.resume,
                   overwrite=args.overwrite)
    print(f"run folder: {out} ({result.steps} steps, {result.seconds:.1f} s)")
    if args.evaluate:
        from ada_utils.encoders import embed_benchmark
        from ada_utils.eval import evaluate

        if cfg.finetune != "frozen":
            encoder = load_encoder(cfg.backbone, out / "encoder.safetensors", image_size=cfg.image_size)
        bf = embed_benchmark(encoder, root, distractors=args.distractors)
        real_map, synth_map = feature_maps(out)
        metrics = evaluate(bf, real_map=real_map, synth_map=synth_map)
        write_json(out / "metrics.json", {"cells": metrics, "data_root": str(root), "scale": args.scale,
                                          "seed": cfg.seed, "method": cfg.method})
        for cell, m in metrics.items():
            print(f"  {cell:40s} R@5 {m['R@5']:.3f}  mAP {m['mAP']:.3f}")
    return 0
