"""One prepared GPU run: the pipeline's throughput against the bare arithmetic, four parts in one process.

Every ratio is measured inside this one run on one machine (design section 8), with its target:

1. ``embed``: ``embed_images`` (JPEG decoding, preprocessing, DataLoader workers, chunk and cache writes) vs a
   bare forward pass of the same encoder on one pre-made batch, same batch size and image count, for ViT-S/16
   and ViT-B/16 (``dino_vits16`` / ``dino_vitb16``, random weights: throughput does not depend on them) at
   224 px under bfloat16 autocast. ratio = bare seconds / pipeline seconds (the smaller of the two models);
   target >= 0.90. Also recorded: the DataLoader alone (the CPU's ceiling), the pipeline with one chunk (one
   DataLoader instead of one per ``chunk_size`` images) and the encoder hash every call computes.
2. ``train``: ``train`` on image files (``finetune="last_k"``, the gradient solver, two augmented views per row,
   DataLoader workers, per-step checks, checkpoints) vs a bare forward + backward + AdamW step of the same
   encoder and head on one pre-made batch of the same size. Steps/s of ``train`` come from two runs of
   different length (their difference removes start-up); target >= 0.85.
3. ``notebook``: ``03_train`` fine-tuning ViT-S/16 (a random DINO-format weights file) for about 200 steps at
   224 px on the AbC-named rehearsal root, through papermill, or through the same library calls where papermill
   is not installed. Wall time and steps/s; ratio = its training steps/s / the bare step of part 2 at the
   notebook's batch (target 0.85; the notebook's defaults add a nearest-neighbour refresh every 10 steps).
4. ``metric``: ``abc_metrics`` with 1,000,000 x 768 random unit distractors (float32 tensor on the GPU),
   10,000 queries of 250 models with one exemplar each, vs one ``torch.mm`` of the same operand shapes:
   ratio = achieved GFLOP/s (2 Nq N D / seconds) / ``torch.mm``'s; target >= 0.70 (as ``bench_retrieval.py``).

Each part runs under its own time budget (an alarm ends it), catches its own failure, records the error and
lets the next part run; the JSON is rewritten after every part. Exit status 1 when any part failed.

    python bench/bench_gpu.py                       # full run on CUDA (<= 8 min): bench/results/gpu-<card>.json
    python bench/bench_gpu.py --smoke --out DIR     # every part at tiny sizes, any device: DIR/cpu-smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("ada_utils") is None:  # a bare GPU machine: the package is not installed
    sys.path.insert(0, str(REPO))

from bench_embed import host_kind, make_jpegs  # noqa: E402 (bench/ is the script's folder)
from bench_retrieval import mm_gflops  # noqa: E402

PARTS = ("embed", "train", "notebook", "metric")
TARGETS = {"embed": 0.90, "train": 0.85, "notebook": 0.85, "metric": 0.70}


@dataclass(frozen=True)
class Sizes:
    """Sizes of one run; ``FULL`` fits a GPU in 8 minutes, ``SMOKE`` a 2-core CPU in seconds."""

    image_size: int = 224  # px, the paper's encoders
    unique_images: int = 1024  # distinct generated 160 px JPEGs (q95, the embedded benchmark's format)
    embed_images: int = 8192  # images per embedding pass (the unique files repeated: decoding is redone)
    embed_batch: int = 256
    repeats: int = 2  # timed passes per measurement; the best counts
    embed_models: tuple[str, ...] = ("dino_vits16", "dino_vitb16")
    train_batch: int = 128  # rows per step; two views each -> 256 images per step
    train_epochs: tuple[int, int] = (1, 11)  # short and long run (8 steps per epoch on 1024 images)
    k_blocks: int = 2  # fine-tuned blocks, as params/paper/03_train_*.yaml
    bare_steps: int = 30
    notebook_steps: int = 200
    notebook_batch: int = 128  # the tiny rehearsal pool has 399 images: 3 steps per epoch
    notebook_rows: int = 0  # n_train: the first rows of the pool (0 = all)
    metric_queries: int = 10_000
    metric_distractors: int = 1_000_000
    metric_dim: int = 768
    # seconds per part (an alarm ends a part at its budget); 440 s in all, within 8 minutes with start-up
    budget_s: dict = field(default_factory=lambda: {"embed": 120, "train": 90, "notebook": 180, "metric": 50})


FULL = Sizes()
SMOKE = Sizes(image_size=32, unique_images=16, embed_images=32, embed_batch=8, repeats=1, train_batch=8,
              train_epochs=(1, 4), bare_steps=2, notebook_steps=1, notebook_batch=32, notebook_rows=64,
              metric_queries=200, metric_distractors=20_000, metric_dim=64,
              budget_s={"embed": 120, "train": 120, "notebook": 240, "metric": 60})


@dataclass
class Context:
    """What the parts share: device, sizes, DataLoader workers, a temporary folder, the generated JPEGs."""

    device: torch.device
    sizes: Sizes
    workers: int
    tmp: Path
    runner: str
    _jpegs: list[Path] = field(default_factory=list)

    def jpegs(self) -> list[Path]:
        if not self._jpegs:
            (self.tmp / "jpegs").mkdir(exist_ok=True)
            self._jpegs = make_jpegs(self.tmp / "jpegs", self.sizes.unique_images)
        return self._jpegs

    def autocast(self):
        """bfloat16 autocast on CUDA (as ``TrainConfig.amp``); float32 on the CPU."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @property
    def dtype(self) -> str:
        return "bfloat16 autocast" if self.device.type == "cuda" else "float32"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def best_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` (synchronised)."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------- 1. embedding
def embed_one(ctx: Context, enc, paths: list[Path]) -> dict:
    """Loader alone, bare forward, ``embed_images`` (default chunks and one chunk) for one encoder."""
    from ada_utils.data import ImageListDataset
    from ada_utils.encoders import embed_images
    from ada_utils.encoders.embed import encoder_key

    s, n, b, w = ctx.sizes, len(paths), ctx.sizes.embed_batch, ctx.workers
    loader = torch.utils.data.DataLoader(ImageListDataset(paths, enc.preprocess), batch_size=b, num_workers=w)
    t_loader = best_seconds(lambda: sum(len(x) for x in loader), 1, ctx.sync)
    x = torch.randn(b, 3, s.image_size, s.image_size, device=ctx.device)
    full, rest = divmod(n, b)

    @torch.inference_mode()
    def forward() -> None:
        with ctx.autocast():
            for _ in range(full):
                enc(x)
            if rest:
                enc(x[:rest])

    forward()  # warm-up: kernels for both batch shapes
    t_forward = best_seconds(forward, s.repeats, ctx.sync)
    runs = itertools.count()

    def pipeline(files: list[Path], chunk: int | None = None) -> None:
        kw = {} if chunk is None else {"chunk_size": chunk}
        with ctx.autocast():  # a fresh cache folder each time: a cache hit would skip the work
            embed_images(enc, files, cache=ctx.tmp / f"feats-{enc.name}-{next(runs)}", batch_size=b, num_workers=w,
                         progress=False, **kw)

    pipeline(paths[: 2 * b])  # warm-up
    t_pipeline = best_seconds(lambda: pipeline(paths), s.repeats, ctx.sync)
    t_one_chunk = best_seconds(lambda: pipeline(paths, n), 1, ctx.sync)
    t_hash = best_seconds(lambda: encoder_key(enc), 1, ctx.sync)
    chunk = inspect.signature(embed_images).parameters["chunk_size"].default
    return {"model": enc.name, "ratio": t_forward / t_pipeline, "pipeline_img_s": n / t_pipeline,
            "forward_img_s": n / t_forward, "loader_only_img_s": n / t_loader,
            "pipeline_one_chunk_img_s": n / t_one_chunk, "encoder_hash_seconds": t_hash,
            "n_images": n, "unique_images": s.unique_images, "batch_size": b, "num_workers": w,
            "chunk_size": chunk, "image_size": enc.image_size, "dim": enc.dim, "dtype": ctx.dtype}


def part_embed(ctx: Context) -> dict:
    from ada_utils.encoders import load_encoder

    paths = (ctx.jpegs() * (-(-ctx.sizes.embed_images // ctx.sizes.unique_images)))[: ctx.sizes.embed_images]
    rows = []
    for name in ctx.sizes.embed_models:
        torch.manual_seed(0)
        enc = load_encoder(name, pretrained=False, device=ctx.device, image_size=ctx.sizes.image_size)
        rows.append(embed_one(ctx, enc, paths))
        del enc
        free(ctx)
    return {"ratio": min(r["ratio"] for r in rows), "ratio_is": "smallest over models", "models": rows}


# ----------------------------------------------------------------------------- 2. training on images
def bare_steps_per_s(ctx: Context, enc, *, finetune: str, k_blocks: int, images: int, steps: int) -> float:
    """Steps/s of forward + backward + AdamW on one pre-made batch of ``images`` through ``enc`` and a linear head
    (the encoder's trainable part as ``train`` opens it; the loss is a plain mean square)."""
    from ada_utils.heads import DomainHeads, EncoderWithHeads
    from ada_utils.train.loop import set_trainable

    set_trainable(enc, finetune, k_blocks)
    model = EncoderWithHeads(DomainHeads("linear", enc.dim), enc).to(ctx.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    side = ctx.sizes.image_size
    x = torch.randn(images, 3, side, side, device=ctx.device)
    domain = (torch.arange(images) % 2).to(ctx.device)

    def step() -> None:
        with ctx.autocast():
            z = model(x, domain)
        loss = z.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up
        step()
    return steps / best_seconds(lambda: [step() for _ in range(steps)], 1, ctx.sync)


def part_train(ctx: Context) -> dict:
    from ada_utils.encoders import load_encoder
    from ada_utils.train import TrainConfig, TrainData, train

    s = ctx.sizes
    paths = ctx.jpegs()
    torch.manual_seed(0)
    enc = load_encoder("dino_vits16", pretrained=False, device=ctx.device, image_size=s.image_size)
    # Stand-in features only initialise the head (whitening, centres); every step reads the image files.
    feats = np.random.default_rng(0).standard_normal((len(paths), enc.dim), dtype=np.float32)
    data = TrainData(feats, np.arange(len(paths)) % 2, ids=[p.name for p in paths], paths=list(paths),
                     source="folders")
    # alignment="views": per-step work only (the notebook's default adds a nearest-neighbour refresh: part 3)
    base = {"method": "ada", "solver": "gradient", "backbone": "dino_vits16", "image_size": s.image_size,
            "finetune": "last_k", "k_blocks": s.k_blocks, "alignment": "views", "n_views": 1, "lam": 1.0,
            "lr": 1e-4, "batch_size": s.train_batch, "num_workers": ctx.workers, "device": str(ctx.device)}
    runs = []
    for epochs in s.train_epochs:
        cfg = TrainConfig(**base, epochs=epochs)
        t0 = time.perf_counter()
        result = train(cfg, data, ctx.tmp / "train-run", encoder=enc, overwrite=True, progress=False)
        ctx.sync()
        runs.append({"steps": result.steps, "wall_seconds": time.perf_counter() - t0,
                     "train_seconds": result.seconds})
    short, long = runs
    extra = long["wall_seconds"] - short["wall_seconds"]
    # The steady rate; on a noisy machine with few steps the difference can vanish: then the long run's own rate.
    steady = extra > 0 and long["steps"] > short["steps"]
    train_rate = (long["steps"] - short["steps"]) / extra if steady else long["steps"] / long["wall_seconds"]
    bare = bare_steps_per_s(ctx, enc, finetune="last_k", k_blocks=s.k_blocks, images=2 * s.train_batch,
                            steps=s.bare_steps)
    return {"ratio": train_rate / bare, "train_steps_per_s": train_rate, "bare_steps_per_s": bare,
            "train_steps_per_s_with_startup": long["steps"] / long["wall_seconds"], "runs": runs,
            "train_rate_from": "difference of the two runs" if steady else "the long run (difference <= 0)",
            "images_per_step": 2 * s.train_batch, "pool_images": len(paths), "bare_steps": s.bare_steps,
            "dtype": ctx.dtype, "config": dataclasses.asdict(TrainConfig(**base, epochs=s.train_epochs[1]))}


# ----------------------------------------------------------------------------- 3. the training notebook
def dino_weights(path: Path) -> Path:
    """A random ViT-S/16 written as DINO's ``dino_deitsmall16_pretrain.pth``: a plain state dict, official keys."""
    from ada_utils.encoders import load_encoder

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in load_encoder("dino_vits16", pretrained=False).backbone.state_dict().items()}
    # DINO's file: 150 tensors (cls_token, pos_embed (1, 197, 384), patch_embed.proj.*, blocks.*, norm.*)
    if len(sd) != 150 or tuple(sd["pos_embed"].shape) != (1, 197, 384) or "norm.weight" not in sd:
        raise ValueError(f"not DINO's ViT-S/16 layout: {len(sd)} tensors, pos_embed {tuple(sd['pos_embed'].shape)}")
    torch.save(sd, path)
    return path


def notebook_library(params: dict, work: Path) -> dict:
    """The calls of ``03_train``'s cells (data, training, evaluation) with the notebook's checked parameters."""
    from ada_utils.book.notebook import check_parameters, parse_parameters_cell
    from ada_utils.data import benchmark_root
    from ada_utils.encoders import embed_benchmark, load_encoder
    from ada_utils.eval import evaluate
    from ada_utils.files import run_dir
    from ada_utils.project import set_seed
    from ada_utils.train import TrainConfig, feature_maps, train, training_data

    nb = json.loads((REPO / "notebooks" / "03_train.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    defaults, choices = parse_parameters_cell("".join(cell["source"]))
    p = check_parameters(defaults, params, choices)
    set_seed(p["seed"])
    old_work, os.environ["ADA_WORK"] = os.environ.get("ADA_WORK"), str(work)
    try:
        root = benchmark_root(p["data_root"], scale=p["scale"])
        encoder = load_encoder(p["backbone"], p["weights"] or None, device=p["device"], image_size=p["image_size"])
        data = training_data(encoder, root, n_views=p["n_views"], augment=p["augment"],
                             with_pairs=p["method"] == "supervised", pool=p["train_pool"],
                             real_dirs=p["train_real_dirs"], synth_dirs=p["train_synth_dirs"], progress=False)
        out = run_dir("03_train", p["method"], p["seed"])
        frozen = p["finetune"] == "frozen"
        result = train(TrainConfig.from_dict(p), data, out, encoder=None if frozen else encoder,
                       overwrite=p["overwrite"], resume=not p["overwrite"], progress=False)
        tuned = None if frozen else load_encoder(p["backbone"], out / "encoder.safetensors", device=p["device"],
                                                 image_size=p["image_size"])
        bf = embed_benchmark(tuned or encoder, root, distractors=p["distractors"] or None, progress=False)
        real_map, synth_map = feature_maps(out)
        evaluate(bf, real_map=real_map, synth_map=synth_map)
    finally:
        if old_work is None:
            os.environ.pop("ADA_WORK", None)
        else:
            os.environ["ADA_WORK"] = old_work
    return {"steps": result.steps, "train_seconds": result.seconds}


def notebook_papermill(params: dict, work: Path, out_nb: Path, timeout: float) -> dict:
    """``python -m papermill notebooks/03_train.ipynb`` in its own process group, killed at ``timeout``."""
    import yaml

    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "ADA_WORK": str(work), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / "03_train.ipynb"), str(out_nb),
           "-f", str(work / "params.yaml"), "-k", "python3", "--cwd", str(REPO), "--no-progress-bar"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out or interrupted: end papermill and its kernel (its process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"papermill exited {proc.returncode}: {log[-2000:]}")
    runs = (work / "runs" / "03_train").glob(f"{params['method']}-seed0-*/metrics.json")  # its configuration's folder
    metrics = json.loads(max(runs, key=lambda path: path.stat().st_mtime).read_text())
    return {"steps": metrics["steps"], "train_seconds": metrics["train_seconds"]}


def part_notebook(ctx: Context) -> dict:
    from ada_utils.data import ensure_benchmark
    from ada_utils.data.pools import training_pool
    from ada_utils.data.rehearsal import build_rehearsal
    from ada_utils.encoders import load_encoder

    s, t0 = ctx.sizes, time.perf_counter()
    root = build_rehearsal(ensure_benchmark(scale="tiny", progress=False), ctx.tmp / "abc-rehearsal-tiny")
    weights = dino_weights(ctx.tmp / "dino_deitsmall16_pretrain.pth")
    pool = len(training_pool(root).paths)
    rows = min(s.notebook_rows or pool, pool)
    batch = min(s.notebook_batch, rows)
    epochs = max(1, round(s.notebook_steps / max(1, rows // batch)))
    params = {"data_root": str(root), "backbone": "dino_vits16", "weights": str(weights), "finetune": "last_k",
              "solver": "gradient", "device": ctx.device.type, "image_size": s.image_size, "epochs": epochs,
              "batch_size": batch, "n_train": s.notebook_rows, "k_blocks": s.k_blocks, "lam": 1.0,
              "num_workers": ctx.workers, "method": "ada", "overwrite": True}
    runner = ctx.runner
    if runner == "auto":
        runner = "papermill" if all(importlib.util.find_spec(m) for m in ("papermill", "ipykernel", "yaml")) \
            else "library"
    setup_seconds, t1 = time.perf_counter() - t0, time.perf_counter()
    work = ctx.tmp / "notebook-work"
    work.mkdir()
    if runner == "papermill":
        left = s.budget_s["notebook"] - (time.perf_counter() - t0) - 20
        run = notebook_papermill(params, work, ctx.tmp / "03_train.ipynb", timeout=max(10.0, left))
    else:
        run = notebook_library(params, work)
    wall = time.perf_counter() - t1
    rate = run["steps"] / run["train_seconds"]
    bare = bare_steps_per_s(ctx, load_encoder("dino_vits16", weights, device=ctx.device, image_size=s.image_size),
                            finetune="last_k", k_blocks=s.k_blocks, images=2 * batch, steps=s.bare_steps)
    return {"ratio": rate / bare, "runner": runner, "wall_seconds": wall, "setup_seconds": setup_seconds,
            "steps": run["steps"], "train_seconds": run["train_seconds"], "steps_per_s": rate,
            "bare_steps_per_s": bare, "images_per_step": 2 * batch, "pool_images": pool,
            "params": {k: v.replace(str(ctx.tmp), "<tmp>") if isinstance(v, str) else v for k, v in params.items()},
            "dtype": ctx.dtype, "note": "ratio = the notebook's training steps/s / bare step at its batch; "
                                        "its defaults refresh nearest neighbours every 10 steps"}


# ----------------------------------------------------------------------------- 4. the official metric
def part_metric(ctx: Context) -> dict:
    from ada_utils.retrieval import abc_metrics

    s, dev = ctx.sizes, ctx.device
    nq, n, d = s.metric_queries, s.metric_distractors, s.metric_dim
    g = torch.Generator(device=dev).manual_seed(0)
    n_models = max(1, nq // 40)
    q_model, ex_model = np.repeat(np.arange(n_models), 40)[:nq], np.arange(n_models)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, device=dev, generator=g), dim=1)

    centres = unit(n_models, d)
    exemplars = torch.nn.functional.normalize(centres + 0.5 * unit(n_models, d), dim=1)
    queries = torch.nn.functional.normalize(centres[torch.from_numpy(q_model).to(dev)] + 2.0 * unit(nq, d), dim=1)
    dist = torch.empty(n, d, device=dev)
    for lo in range(0, n, 65536):  # in slices: no second full-size temporary
        dist[lo:lo + 65536] = unit(min(65536, n - lo), d)
    # The reference product's output is (Nq, N) float32 (40 GB at full size): capped by free memory.
    n_ref = n
    if dev.type == "cuda":
        n_ref = int(min(n, 0.7 * torch.cuda.mem_get_info(dev)[0] / 4 / (nq + d)))
    _ = queries @ dist[:1024].T  # warm-up of the GEMM library
    ref_gflops, _, ref_shape = mm_gflops(queries, n_ref)
    free(ctx)
    args = (queries, q_model, exemplars, ex_model)
    abc_metrics(*args, dist[: min(n, 16384)], device=dev)  # warm-up
    ctx.sync()
    t0 = time.perf_counter()
    res = abc_metrics(*args, dist, device=dev)
    ctx.sync()
    t_fast = time.perf_counter() - t0
    achieved = 2 * nq * n * d / t_fast / 1e9
    out = {"ratio": achieved / ref_gflops, "achieved_gflops": achieved, "reference_mm_gflops": ref_gflops,
           "reference_mm_shape_MxKxN": ref_shape, "metric_seconds": t_fast, "queries": nq, "distractors": n,
           "dim": d, "models": n_models, "exemplars_per_model": 1, "distractors_on": str(dev),
           "dtype": "float32", "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "block": inspect.signature(abc_metrics).parameters["block"].default,
           "query_block": inspect.signature(abc_metrics).parameters["query_block"].default,
           "map": res["map"], "recall": res["recall"]}
    if dev.type == "cuda":  # the same distractors as a host array (a memory-mapped gallery's path)
        host = dist.cpu().numpy()
        del dist
        free(ctx)
        t_host = best_seconds(lambda: abc_metrics(*args, host, device=dev), 1, ctx.sync)
        out.update(host_array_seconds=t_host, host_array_gflops=2 * nq * n * d / t_host / 1e9)
    return out


# ----------------------------------------------------------------------------- running the parts
class PartTimeout(TimeoutError):
    """A part ran past its time budget."""


def free(ctx: Context) -> None:
    import gc

    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def run_part(name: str, fn: Callable[[Context], dict], ctx: Context) -> dict:
    """Run one part under its budget; a failure becomes ``status="failed"`` with the error string."""
    budget = ctx.sizes.budget_s[name]

    def expire(signum, frame):
        raise PartTimeout(f"part {name!r} ran past its budget of {budget} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(budget)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    try:
        out = {"status": "ok", "error": None, **fn(ctx)}
    except Exception as err:  # noqa: BLE001 (one part's failure must not lose the others' numbers)
        out = {"status": "failed", "error": f"{type(err).__name__}: {err}", "ratio": None,
               "traceback": traceback.format_exc(limit=-6)}
    finally:
        signal.alarm(0)
    out.update(target=TARGETS[name], meets_target=out["ratio"] is not None and out["ratio"] >= TARGETS[name],
               seconds=time.perf_counter() - t0, budget_s=budget)
    if ctx.device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    free(ctx)
    return out


def meta(ctx: Context, args: argparse.Namespace) -> dict:
    import timm

    from ada_utils.project import hardware, library_versions

    cuda = ctx.device.type == "cuda"
    return {"script": "bench/bench_gpu.py", "smoke": args.smoke, "parts": args.parts, "runner": args.runner,
            "device": str(ctx.device),
            "card": torch.cuda.get_device_name(ctx.device) if cuda else None, "hardware": hardware(),
            "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda if cuda else None,
            "python": platform.python_version(), "versions": library_versions(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "dataloader_workers": ctx.workers,
            "sizes": dataclasses.asdict(ctx.sizes), "targets": TARGETS,
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_1_5_15min_before": os.getloadavg()}


def summary(name: str, part: dict) -> str:
    """One line of the final table: the part's headline numbers."""
    if part["status"] != "ok":
        return part["error"][:90]
    if name == "embed":
        return "; ".join(f"{m['model']} {m['ratio']:.2f} ({m['pipeline_img_s']:.0f} / {m['forward_img_s']:.0f} "
                         f"img/s, loader {m['loader_only_img_s']:.0f})" for m in part["models"])
    if name in ("train", "notebook"):
        rate = part.get("train_steps_per_s", part.get("steps_per_s"))
        extra = f", {part['steps']} steps, wall {part['wall_seconds']:.0f} s ({part['runner']})" \
            if name == "notebook" else ""
        return f"{rate:.2f} / bare {part['bare_steps_per_s']:.2f} steps/s{extra}"
    return (f"{part['achieved_gflops']:.0f} / mm {part['reference_mm_gflops']:.0f} GFLOP/s, "
            f"{part['metric_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes on any device (seconds)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder of the JSON")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    parser.add_argument("--runner", choices=("auto", "papermill", "library"), default="auto",
                        help="part 3: papermill when installed (auto), else the notebook's library calls")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 2, max 14)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        parser.error("the full run needs a CUDA GPU; on a CPU run --smoke")
    if device.type == "cpu":  # a shared CPU: two threads wait on each other at every small op
        torch.set_num_threads(1)
    workers = args.workers
    if workers is None:  # the main process keeps a core; 14 feed a GPU's batches without oversubscribing 16 cores
        workers = 1 if args.smoke else max(1, min(14, (os.cpu_count() or 2) - 2))
    name = f"gpu-{host_kind(device)}" if device.type == "cuda" else "cpu"
    out = args.out / f"{name}{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fns = {"embed": part_embed, "train": part_train, "notebook": part_notebook, "metric": part_metric}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        ctx = Context(device, SMOKE if args.smoke else FULL, workers, Path(tmp), args.runner)
        result = {"meta": meta(ctx, args), "parts": {}}
        for part in args.parts:
            print(f"[{time.perf_counter() - t0:6.1f} s] {part} ...", flush=True)
            result["parts"][part] = run_part(part, fns[part], ctx)
            result["meta"]["total_seconds"] = time.perf_counter() - t0
            result["meta"]["load_average_1_5_15min_after"] = os.getloadavg()
            out.write_text(json.dumps(result, indent=1, default=str) + "\n")  # after every part: nothing is lost
    print(f"\n{'part':9s} {'ratio':>6s} {'target':>6s} {'met':>4s} {'s':>6s}  numbers")
    for part, r in result["parts"].items():
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{part:9s} {ratio:>6s} {r['target']:6.2f} {'yes' if r['meets_target'] else 'no':>4s} "
              f"{r['seconds']:6.1f}  {summary(part, r)}")
    print(f"total {result['meta']['total_seconds']:.1f} s on {result['meta']['hardware']}; wrote {out}")
    return int(any(r["status"] != "ok" for r in result["parts"].values()))


if __name__ == "__main__":
    raise SystemExit(main())
