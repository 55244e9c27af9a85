"""``ada train``: train one configuration (a method of ``ada_utils.train.config``) and evaluate it, from the shell.

Every field of ``TrainConfig`` is an option with the same name (``--lam 0.5``, ``--cov-mode per_domain``,
``--no-nn-symmetric``), so a notebook parameter, a config.json field and a CLI flag share one name. Examples::

    ada train --method ada --scale small --seed 0            # runs/03_train/ada-seed0-<hash of config and data>/
    ada train --method supervised --scale tiny --resume
    ada train -f params/paper/03_train_dino_vitb16.yaml --data-root /data/abc --weights dino_vitbase16_pretrain.pth
    torchrun --nproc_per_node=4 -m ada_utils train --method ada --solver gradient --finetune last_k --device cuda \\
        --backbone dino --weights dino_deitsmall16_pretrain.pth --image-size 224 --data-root /data/abc

Under ``torchrun`` every process embeds its share of the images on its own device (``cuda:$LOCAL_RANK`` with
``--device cuda``), trains one DistributedDataParallel replica, and embeds its share of the test images;
rank 0 alone writes the run folder and ``metrics.json`` and prints the results.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


COMMANDS = {"train": "train a head (ada, its ablations, controls, supervised baseline)"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ada train`` to the ``ada`` command line."""
    from ada_utils.data.pools import POOL_SOURCES
    from ada_utils.train import CHOICES, TrainConfig

    p = subparsers.add_parser("train", help=COMMANDS["train"],
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="small", help="embedded benchmark scale when --data-root is not given")
    p.add_argument("--data-root", default="", help="benchmark root (AbC layout); default: the embedded one")
    p.add_argument("--out", default="", help="run folder (default runs/03_train/<method>-seed<seed>-<hash>: the hash of the settings and "
                   "the training data, so another backbone, root or setting never collides with an earlier run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in --out and start again")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate on the benchmark's test cells and write metrics.json (default: yes)")
    p.add_argument("--distractors", type=int, default=None, help="number of distractors (default all)")
    p.add_argument("-f", "--params-file", type=Path, default=None,
                   help="YAML file of parameters, the same files papermill takes (params/paper/*.yaml); flags override")
    p.add_argument("--train-pool", default="auto", choices=POOL_SOURCES,
                   help="unlabelled training images: the training JSON (auto prefers it), --train-*-dirs folders, "
                   "or the test cells' synthetic images without labels (transductive, labelled so in every output)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let --weights hold pickled Python objects (DINO full checkpoints): only for trusted files")
    p.add_argument("--train-real-dirs", nargs="*", default=[], help="folders of real training images (folders pool)")
    p.add_argument("--train-synth-dirs", nargs="*", default=[],
                   help="folders of synthetic images from your own customised models (folders pool)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag, default = "--" + field.name.replace("_", "-"), getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default, choices=CHOICES.get(field.name),
                           help=f"default {default!r}")
    p.set_defaults(func=train_command, apply_params_file=_params_file_defaults(p))


def train_command(args: argparse.Namespace) -> int:
    """Embed (cached), train, evaluate; prints the run folder and the per-cell R@5 / mAP."""
    import torch

    from ada_utils.encoders import load_encoder
    from ada_utils.files import write_json
    from ada_utils.project import runs_dir
    from ada_utils import distributed
    from ada_utils.train import TrainConfig, feature_maps, prefix_training_data, train, training_data
    from ada_utils.train.data import stopping_split
    from ada_utils.train.run_folder import run_name

    cfg = TrainConfig.from_dict(vars(args))
    if cfg.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    ctx = distributed.setup(cfg.device)  # under torchrun: the process group and cuda:$LOCAL_RANK
    if args.data_root:
        from ada_utils.data.abc import require_root

        root = require_root(args.data_root)  # before the encoder loads: a wrong path fails at once
    else:
        from ada_utils.data import ensure_benchmark

        with distributed.main_first():  # rank 0 builds the embedded benchmark; the others then find it built
            root = ensure_benchmark(scale=args.scale, seed=0)
    # The run's device for every forward pass, frozen encoder included (features are embedded once and cached).
    encoder = load_encoder(cfg.backbone, cfg.weights or None, device=ctx.device, image_size=cfg.image_size,
                           trust_pickle=args.trust_pickle)
    data = training_data(encoder, root, n_views=cfg.n_views, augment=cfg.augment,
                         with_pairs=cfg.unit.reads_pairs, pool=args.train_pool, real_dirs=args.train_real_dirs,
                         synth_dirs=args.train_synth_dirs, progress=ctx.is_main)
    validation, data = stopping_split(cfg, root, data)  # gradient runs stop early on the validation models
    acts = None if cfg.finetune_from == "images" else prefix_training_data(  # the frozen blocks' output, cached
        encoder, root, k=cfg.k_blocks, n_views=cfg.n_views, augment=cfg.augment, pool=args.train_pool,
        real_dirs=args.train_real_dirs, synth_dirs=args.train_synth_dirs, progress=ctx.is_main)
    out = Path(args.out) if args.out else runs_dir() / "03_train" / run_name(cfg, data, acts)
    if args.resume and not (out / "config.json").is_file():
        raise ValueError(f"--resume: {out} holds no run to resume; drop --resume to start one, or name it with --out")
    result = train(cfg, data, out, encoder=None if cfg.finetune == "frozen" else encoder, resume=args.resume,
                   overwrite=args.overwrite, progress=ctx.is_main, validation=validation, activations=acts)
    if ctx.is_main:
        from ada_utils.files import read_json

        rule = read_json(out / "config.json").get("stopping", {}).get("rule", "")
        print(f"run folder: {out} ({result.steps} steps, {result.seconds:.1f} s; stopping: {rule})")
    if args.evaluate:
        from ada_utils.encoders import embed_benchmark
        from ada_utils.eval import evaluate

        if cfg.finetune != "frozen":
            encoder = load_encoder(cfg.backbone, out / "encoder.safetensors", device=ctx.device,
                                   image_size=cfg.image_size)
        bf = embed_benchmark(encoder, root, distractors=args.distractors, progress=ctx.is_main)  # sharded by rank

        def evaluate_and_write() -> None:
            real_map, synth_map = feature_maps(out)
            metrics = evaluate(bf, real_map=real_map, synth_map=synth_map)
            write_json(out / "metrics.json", {"cells": metrics, "data_root": str(root), "scale": args.scale,
                                              "seed": cfg.seed, "method": cfg.method, "train_pool": data.source})
            if data.source == "transductive":
                print("  (transductive: trained on the test cells' synthetic images, without their labels)")
            for cell, m in metrics.items():
                print(f"  {cell:40s} R@5 {m['R@5']:.3f}  mAP {m['mAP']:.3f}")

        distributed.on_main(evaluate_and_write)  # rank 0 alone evaluates and writes; the others wait for it
    distributed.barrier()
    return 0


def _params_file_defaults(parser: argparse.ArgumentParser):
    """A function that makes a YAML parameters file the defaults of ``parser`` (flags then override them)."""
    def apply(path: Path) -> None:
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"{path}: parameters file not found (-f)")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of parameter names to values (-f)")
        known = set(vars(parser.parse_known_args([])[0])) - {"func", "apply_params_file"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown parameter(s) {', '.join(unknown)} for ada train (-f)")
        parser.set_defaults(**values)

    return apply
