"""Feature-extraction throughput: DataLoader over real JPEG files vs bare forward on preloaded tensors.

For each encoder (at its default resolution, plus EfficientNet-Lite0 at the CPU book's 128 px) this measures,
in one run on one machine:

- ``loader``: images/s of the DataLoader alone (JPEG decode + resize/crop/normalise + collate);
- ``forward``: images/s of ``encoder(x)`` on batches already in memory (on the device);
- ``pipeline``: images/s of the whole extraction (loader -> device -> forward -> host);
- ``ratio`` = pipeline / forward (1.0: the loader costs nothing or is fully hidden), and ``time_split``: the
  share of the pipeline's wall time spent waiting for the loader, copying, and in the forward pass.

Each phase is timed ``--repeats`` times after one untimed warm-up pass; the best time counts (shared machines).

Throughput does not depend on the weights, so every model except EfficientNet-Lite0 uses random init.
The images are random 160 px crops of scikit-learn's two sample photos saved as JPEG quality 95 (the
embedded benchmark's format), or the JPEGs under ``--images``.

Usage: ``python bench/bench_embed.py [--device cuda] [--n-images 256] [--num-workers 4]``; writes
``bench/results/embed-<host-kind>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ada_utils.project import hardware
from ada_utils.distributed import select_device
from ada_utils.encoders import Encoder, load_encoder

DEFAULT_MODELS = ["efficientnet_lite0@128", "efficientnet_lite0", "resnet18", "resnet50", "vit_tiny_patch16_224",
                  "dino_vits16", "mocov3_vits16"]  # add dino_vitb16 / mocov3_vitb16 on a GPU


class _Files(Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def make_jpegs(folder: Path, n: int, *, size: int = 160, seed: int = 0) -> list[Path]:
    """``n`` random ``size``-px crops of the scikit-learn sample photos, saved as JPEG quality 95."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2])))
        y, x = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        paths.append(folder / f"{i:05d}.jpg")
        crop.save(paths[-1], quality=95)
    return paths


def host_kind(device: torch.device) -> str:
    """A short machine label for the result file name, e.g. ``cpu2`` or ``nvidia-h100-80gb-hbm3``."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu{os.cpu_count()}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pipeline(enc: Encoder, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """One full extraction pass; seconds spent waiting for the loader, copying, in forward, in total."""
    wait = copy = fwd = 0.0
    start = last = time.perf_counter()
    for b in loader:
        t0 = time.perf_counter()
        x = b.to(device, non_blocking=True)
        _sync(device)
        t1 = time.perf_counter()
        feats = enc(x)
        _sync(device)
        t2 = time.perf_counter()
        feats.cpu().numpy()
        t3 = time.perf_counter()
        wait, copy, fwd, last = wait + t0 - last, copy + (t1 - t0) + (t3 - t2), fwd + t2 - t1, t3
    return {"loader_wait": wait, "copy": copy, "forward": fwd, "total": time.perf_counter() - start}


def bench_model(enc: Encoder, paths: list[Path], *, device: torch.device, batch_size: int,
                num_workers: int, repeats: int = 2) -> dict:
    """Loader-only, forward-only and full-pipeline throughput of one encoder (images/s, best of ``repeats``).

    One untimed pipeline pass first warms up decoders, allocators and the backend's per-shape kernels.
    """
    loader = DataLoader(_Files(paths, enc.preprocess), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    with torch.inference_mode():
        _pipeline(enc, loader, device)  # warm-up
        t_loader = t_forward = float("inf")
        best: dict[str, float] = {"total": float("inf")}
        for _ in range(repeats):
            start = time.perf_counter()
            batches = list(loader)
            t_loader = min(t_loader, time.perf_counter() - start)
            preloaded = [b.to(device) for b in batches]
            _sync(device)
            start = time.perf_counter()
            for b in preloaded:
                enc(b)
            _sync(device)
            t_forward = min(t_forward, time.perf_counter() - start)
            run = _pipeline(enc, loader, device)
            best = run if run["total"] < best["total"] else best
    n, total = len(paths), best["total"]
    return {"name": enc.name, "image_size": enc.image_size, "dim": enc.dim, "weights": enc.spec["weights"],
            "n_images": n, "batch_size": batch_size, "num_workers": num_workers, "repeats": repeats,
            "loader_img_s": n / t_loader, "forward_img_s": n / t_forward, "pipeline_img_s": n / total,
            "ratio": t_forward / total,
            "time_split": {k: best[k] / total for k in ("loader_wait", "copy", "forward")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="name or name@image_size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per phase; the best counts")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: generated)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images is not None:
            paths = sorted(args.images.rglob("*.jpg"))[: args.n_images]
        else:
            paths = make_jpegs(Path(tmp), args.n_images)
        if not paths:
            raise SystemExit(f"no .jpg files under {args.images}")
        results = []
        for spec in args.models:
            name, _, size = spec.partition("@")
            torch.manual_seed(0)
            enc = load_encoder(name, device=device, image_size=int(size) if size else None,
                               pretrained=name == "efficientnet_lite0")
            row = bench_model(enc, paths, device=device, batch_size=args.batch_size, num_workers=args.num_workers,
                              repeats=args.repeats)
            results.append(row)
            print(f"{spec:24s} loader {row['loader_img_s']:7.1f}  forward {row['forward_img_s']:7.1f}  "
                  f"pipeline {row['pipeline_img_s']:7.1f} img/s  ratio {row['ratio']:.2f}  "
                  f"split {', '.join(f'{k} {v:.0%}' for k, v in row['time_split'].items())}", flush=True)
    out = args.out or Path(__file__).resolve().parent / "results" / f"embed-{host_kind(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"hardware": hardware(), "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
            "images": str(args.images) if args.images else "generated 160 px JPEG q95 crops of sklearn sample photos"}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
