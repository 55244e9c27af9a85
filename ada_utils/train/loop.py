"""One training loop for every method (:mod:`.config`) and its controls, resumable to the bit.

Two data paths share the loop: cached features (CPU book: a frozen encoder, the head trains in seconds)
and images (GPU: ``finetune`` = last-k blocks or full; ``step.ImageSource``). On CUDA the forward runs under
autocast (``amp``: bfloat16, or float16 with a gradient scaler). Closed-form methods are fitted by
``build_model`` on training rows only.

Under ``torchrun`` (WORLD_SIZE > 1) :mod:`ada_utils.distributed` starts the process group (NCCL on ``cuda:LOCAL_RANK``,
gloo on the CPU) and the model is wrapped in DistributedDataParallel; ``batch_size`` is the global batch and
InfoNCE negatives are gathered from every process, so the logged loss (the mean over processes) is the
one-process loss of the same global batch. Rank 0 alone writes the run folder; a finished or refused run
ends at once on every rank.

Exact resumption: every random draw is a pure function of ``(seed, step)`` (``step``), the optimiser
state and the nearest-neighbour table are checkpointed, and learning rates come from arrays precomputed from
the config, so a run killed and resumed from its last checkpoint (with the same number of processes) ends with
bit-identical weights on CPU.

Run folder (:mod:`.run_folder`): ``config.json``, ``log.jsonl``, ``checkpoint.safetensors``, ``head.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from ada_utils.heads import DomainHeads
from ada_utils.train.run_folder import load_checkpoint, prepare_dir, read_log, run_header, save_checkpoint, load_head
from ada_utils.train.config import CLOSED_FORM, TrainConfig, lambda_schedule, lr_schedule
from ada_utils.train.data import TrainData, select_rows
from ada_utils import distributed
from ada_utils.train.step import FeatureSource, ImageSource, StepBatches, Step, autocast_dtype
from ada_utils.train.stopping import EarlyStopping

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures


ICA_COMPONENTS = 128  # FastICA sources of the closed-form ICA control (the leading PCA-whitened coordinates)


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; the last good checkpoint is kept on disk."""


# ----------------------------------------------------------------------------- model and closed-form fits
def _centers(cfg: TrainConfig, x: np.ndarray, dom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed input centring (real, synthetic) from training rows."""
    zero = np.zeros(x.shape[1])
    if cfg.center == "none" or cfg.method == "pretrained":  # "pretrained" is the encoder's features as they are
        return zero, zero
    pooled = x.mean(0)
    if cfg.center == "pooled":
        return pooled, pooled
    return tuple(x[dom == d].mean(0) if (dom == d).sum() >= 2 else pooled for d in (0, 1))  # type: ignore


def _set_linear(head: torch.nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    lin = head.skip.linear if hasattr(head, "skip") else head.linear
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))


_WHITENING: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # see whitening_map
_WHITENING_KEPT = 8


def whitening_map(kind: str, shrinkage: str | float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Whitening(kind, shrinkage).fit(x).as_linear()``, remembered by the content of ``x`` for this process.

    The runs of one study (chapter 04's grid and final comparison, the validation path) fit the same training rows
    again and again, and each fit costs seconds on a CPU; the remembered map is the one a new fit would compute,
    bit for bit. Copies are returned: callers edit them in place (ICA).
    """
    from ada_utils.whitening import Whitening

    x = np.ascontiguousarray(x)
    key = (kind, shrinkage, x.shape, x.dtype.str, hashlib.sha256(x.view(np.uint8)).hexdigest())
    if key in _WHITENING:
        _WHITENING.move_to_end(key)
        w, b = _WHITENING[key]
    else:
        w, b = _WHITENING[key] = Whitening(kind, shrinkage=shrinkage).fit(x).as_linear()
        while len(_WHITENING) > _WHITENING_KEPT:
            _WHITENING.popitem(last=False)
    return w.copy(), b.copy()


def build_model(cfg: TrainConfig, data: TrainData, rows: np.ndarray) -> DomainHeads:
    """The head(s) of a run, initialised (and, for closed-form methods, fitted) on training rows only."""
    from ada_utils.whitening import fit_fastica

    torch.manual_seed(cfg.seed)
    per_domain_fit = cfg.method == "whiten" and cfg.cov_mode == "per_domain"  # ICA: one pooled rotation
    shared = cfg.method != "supervised" and not per_domain_fit and (cfg.method in CLOSED_FORM or cfg.heads == "shared")
    kind = "linear" if cfg.fitted_in_closed_form else cfg.head
    model = DomainHeads(kind, data.feats.shape[1], shared=shared)
    x, dom = data.feats[rows].astype(np.float64), data.domain[rows]
    c_real, c_synth = _centers(cfg, x, dom)
    model.set_centers(torch.from_numpy(c_real), torch.from_numpy(c_synth))
    xc = x - np.where(dom[:, None] == 1, c_synth, c_real)
    if cfg.method == "pretrained" or (not cfg.fitted_in_closed_form and cfg.head_init == "identity"):
        return model
    groups = [(model.real, dom == 0), (model.synth, dom == 1)] if not shared else [(model.real, dom >= 0)]
    shrink = "auto" if cfg.shrinkage < 0 else cfg.shrinkage
    kind = "pca" if cfg.method == "ica" else "zca"
    maps = [whitening_map(kind, shrink, xc[mask]) for _, mask in groups]
    if cfg.method == "ica":
        # One FastICA rotation, fitted on the pooled whitened training features of both domains (per-domain
        # rotations would order and sign the sources differently in each domain), applied to the top-k
        # PCA-whitened coordinates (k = ICA_COMPONENTS: FastICA on all D takes minutes on CPU); the other
        # coordinates pass unchanged, so the map stays square.
        k = min(ICA_COMPONENTS, maps[0][0].shape[0])
        pooled = np.concatenate([xc[mask] @ w[:k].T + b[:k] for (_, mask), (w, b) in zip(groups, maps)])
        w_ica, b_ica = fit_fastica(pooled, seed=cfg.seed)
        for w, b in maps:
            w[:k], b[:k] = w_ica @ w[:k], w_ica @ b[:k] + b_ica
    if cfg.closed_form_ada:
        from ada_utils.train.fit import fit_ada

        maps, model.fit_info = fit_ada(cfg, data, rows, [mask for _, mask in groups], maps, (c_real, c_synth))
    for (head, _), (w, b) in zip(groups, maps):
        _set_linear(head, w.astype(np.float32), b.astype(np.float32))
    return model


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on matrices only (never biases/norms), as DINO's ``get_params_groups``."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)


def set_trainable(encoder: torch.nn.Module, finetune: str, k_blocks: int) -> list[str]:
    """Freeze the encoder except what ``finetune`` opens: nothing, the last ``k_blocks`` of
    ``encoder.backbone.blocks`` plus every module after them (final norm / head conv), or everything.

    Returns:
        Names of the trainable parameters. The encoder stays in eval mode (frozen BatchNorm statistics).
    """
    for p in encoder.parameters():
        p.requires_grad = finetune == "full"
    if finetune == "last_k":
        backbone = encoder.backbone
        if not hasattr(backbone, "blocks"):
            raise ValueError(f"finetune='last_k' needs a backbone with .blocks; {type(backbone).__name__} has none")
        names = [n for n, _ in backbone.named_children()]
        after = names[names.index("blocks") + 1:]
        for module in [*list(backbone.blocks)[-k_blocks:], *(getattr(backbone, n) for n in after)]:
            for p in module.parameters():
                p.requires_grad = True
    encoder.eval()
    return [n for n, p in encoder.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What ``train`` returns: the trained head(s), the per-step log and timing."""

    run_dir: Path
    model: DomainHeads
    log: list[dict]
    seconds: float
    steps: int


def train(cfg: TrainConfig, data: TrainData, out_dir: str | Path, *, encoder: torch.nn.Module | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_at: int | None = None, validation: BenchmarkFeatures | None = None) -> TrainResult | None:
    """Fit the head(s) of ``cfg.method`` on training data and write the run folder.

    Args:
        cfg: the run's parameters.
        data: the unlabelled training pool: cached features (+ views; + pairs for ``supervised``); with
            ``cfg.finetune != "frozen"`` also ``data.paths`` (images) and ``encoder``.
        out_dir: run folder (e.g. ``runs/03_train/ada-seed0``).
        encoder: the ``Encoder`` to fine-tune (image path only).
        resume: continue from ``checkpoint.safetensors`` (same config and data required); a finished run is
            loaded as is (on every rank under torchrun, at once).
        overwrite: delete an existing run in ``out_dir`` and start again.
        progress: show a tqdm bar.
        stop_at: stop *before* this step without finishing (simulates a killed run; for tests).
        validation: the validation benchmark of the training models (:func:`ada_utils.train.data.validation_split`):
            a gradient run then stops early on it (:mod:`.stopping`, ``eval_every``/``patience``) and keeps its
            best heads; None: the run takes its whole budget of ``epochs``, recorded as such.

    Returns:
        ``TrainResult``, or None when stopped by ``stop_at``.

    Under ``torchrun`` every rank calls ``train`` with the same arguments (and the same ``data``); rank 0 alone
    writes ``out_dir``, every rank returns the same result, and errors about the run folder reach every rank.

    Raises:
        FileExistsError: ``out_dir`` holds a run and neither resume nor overwrite was given.
        ValueError: resuming with other parameters or data (the message names them).
        TrainingDivergedError: the loss became NaN/inf or stopped moving, or the weights exploded; the run folder
            is marked failed (the last good checkpoint stays).
    """
    from tqdm.auto import tqdm

    from ada_utils.heads import EncoderWithHeads
    from ada_utils.files import write_json

    out_dir = Path(out_dir)
    ctx = distributed.setup(cfg.device)
    rank, world, device = ctx.rank, ctx.world, ctx.device
    rows = select_rows(cfg, data)
    t0 = time.perf_counter()  # seconds of a run = closed-form fits + training steps
    heads = build_model(cfg, data, rows)
    header = run_header(cfg, data, rows, heads)

    def prepare() -> bool:
        out_dir.mkdir(parents=True, exist_ok=True)
        return prepare_dir(out_dir, header, resume=resume, overwrite=overwrite)

    # Rank 0 checks (and with overwrite empties) the folder; its verdict, or its error, reaches every rank.
    if distributed.on_main(prepare):
        return TrainResult(out_dir, load_head(out_dir), read_log(out_dir), 0.0, 0)
    if cfg.finetune == "frozen":
        source, encoder = FeatureSource(data), None
    else:
        if encoder is None or data.paths is None:
            raise ValueError(f"finetune={cfg.finetune!r} trains on images: pass encoder= and TrainData.paths")
        header["trainable_encoder_params"] = len(set_trainable(encoder, cfg.finetune, cfg.k_blocks))
        source = ImageSource(data.paths, encoder.preprocess, recipe=cfg.augment, image_size=cfg.image_size,
                             n_views=cfg.n_views, seed=cfg.seed)
    if validation is not None and cfg.finetune != "frozen":
        raise ValueError(f"finetune={cfg.finetune!r}: early stopping reads cached validation features of the frozen "
                         "encoder; train without validation= (a fixed budget) or with finetune='frozen'")
    model = EncoderWithHeads(heads, encoder).to(device)
    stepper = Step(cfg, data, rows, source, rank=rank, world=world)
    total = 0 if cfg.fitted_in_closed_form else cfg.epochs * stepper.steps_per_epoch
    lrs, weights = lr_schedule(cfg, max(total, 1)), lambda_schedule(cfg, max(total, 1))
    header.update(steps=total, steps_per_epoch=stepper.steps_per_epoch, infomax_form=stepper.form, world_size=world)
    opt = _optimizer(cfg, model) if total else None
    # float16 autocast needs loss scaling; bfloat16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(cfg, device) == torch.float16)
    start, ckpt = 0, out_dir / "checkpoint.safetensors"
    if resume and ckpt.is_file() and opt is not None:
        start = load_checkpoint(ckpt, model, opt, stepper, scaler)
    log = [r for r in read_log(out_dir) if r["step"] < start]
    stopper = None
    if validation is not None and total:
        stopper = EarlyStopping(validation, cfg.eval_every, cfg.patience, out_dir if rank == 0 else None,
                                warmup=int(round(cfg.warmup_frac * total)))
        if start:
            stopper.resume(start, heads)
    distributed.barrier()  # every rank has read the checkpoint and the log before rank 0 rewrites them
    net, start_peak = model, _peak(model)
    if world > 1 and opt is not None:
        # Buffers (input centres, frozen BatchNorm statistics) never change during training: no broadcast per step.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    writer = open(out_dir / "log.jsonl", "w") if rank == 0 else None  # noqa: SIM115 (closed below)
    if writer is not None:
        write_json(out_dir / "config.json", header)
        writer.writelines(json.dumps(r) + "\n" for r in log)
    batches = StepBatches(stepper, range(start, total), weights)
    stopped = total
    loader = (batches[i] for i in range(len(batches))) if cfg.num_workers == 0 else torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    try:
        bar = tqdm(zip(range(start, total), loader), total=total - start, desc=f"train {cfg.method}",
                   disable=not progress or rank != 0, leave=False)
        for step, batch in bar:
            if stop_at is not None and step == stop_at:
                return None
            if stopper is not None and stopper.due(step, total) and stopper.update(
                    step, heads, log[-1]["loss"] if log else None):
                stopped = step
                break
            if stepper.uses_nn and step % cfg.nn_refresh == 0:
                stepper.refresh_nn(model, device, step)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            loss, parts = stepper.loss(net, batch, weights[step], device)
            # The logged loss is the mean over processes (= the one-process loss of the global batch); every
            # rank sees the same value, so a divergence stops all of them together.
            values = distributed.all_reduce_mean(torch.tensor([float(loss.detach()), *parts.values()],
                                                              dtype=torch.float64, device=device)).tolist()
            value, parts = values[0], dict(zip(parts, values[1:]))
            if not math.isfinite(value):
                raise _failed(cfg, step, value, "the loss is NaN/inf", out_dir, header, writer)
            if _stuck(log, value, step - start):
                raise _failed(cfg, step, value, f"the loss has not changed for {STUCK_STEPS} steps", out_dir, header,
                              writer)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            blown = _exploded(model, start_peak)
            if blown:
                raise _failed(cfg, step, value, f"{blown} in this step's update", out_dir, header,
                              writer)
            rec = {"step": step, "epoch": step // stepper.steps_per_epoch, "lr": float(lrs[step]), "loss": value,
                   **parts}
            log.append(rec)
            bar.set_postfix(loss=f"{value:.4f}")
            if writer is not None:
                writer.write(json.dumps(rec) + "\n")
                if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                    writer.flush()
                    save_checkpoint(ckpt, model, opt, stepper, step + 1, scaler)
    finally:
        if writer is not None:
            writer.close()
    if stopper is not None:
        if stopped == total:
            stopper.update(total, heads, log[-1]["loss"] if log else None)
        stopper.restore(heads)
        header["stopping"] = stopper.summary(stopped, total)
    else:
        header["stopping"] = {"rule": "none: the whole budget" if total else "closed form: no steps",
                              "stopped_at": total, "budget_steps": total, "early": False}
    seconds = time.perf_counter() - t0

    def finish() -> None:
        if opt is not None and stopped == total:
            save_checkpoint(ckpt, model, opt, stepper, total, scaler)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()},
                  str(out_dir / "head.safetensors"))
        if encoder is not None:
            from ada_utils.encoders.checkpoints import save_encoder_checkpoint

            save_encoder_checkpoint(encoder, out_dir / "encoder.safetensors")
        write_json(out_dir / "config.json", {**header, "status": "finished", "train_seconds": seconds})

    distributed.on_main(finish)  # returns on every rank once the finished run is on disk
    return TrainResult(out_dir, heads.cpu().eval(), log, seconds, stopped)


# Trainable weights this many times larger than at the start of the session mean the optimiser has run away
# (a sane lr moves a weight by about lr per step).
GROWTH = 1e4
# A loss identical to the first one for this many steps means training is dead (saturated outputs: too high an lr).
STUCK_STEPS = 20


def _peak(model: torch.nn.Module) -> float:
    """Largest magnitude of a trainable weight (NaN when one is NaN); one device sync."""
    peaks = [p.detach().abs().amax() for p in model.parameters() if p.requires_grad and p.numel()]
    return float(torch.stack(peaks).max()) if peaks else 0.0


def _exploded(model: torch.nn.Module, start_peak: float) -> str:
    """Which weight check fired ("" when none): a trainable weight is NaN/inf, or ``GROWTH`` times the largest one
    at the start."""
    peak = _peak(model)
    if not math.isfinite(peak):
        return "a weight became NaN/inf"
    if peak > GROWTH * max(start_peak, 1e-3):
        return f"the largest weight grew {peak / max(start_peak, 1e-3):.3g}-fold (limit {GROWTH:g})"
    return ""


def _stuck(log: list[dict], value: float, done: int) -> bool:
    """True when the loss has not moved at all over the last ``STUCK_STEPS`` steps of this session."""
    if done < STUCK_STEPS or value == 0.0:
        return False
    return all(r["loss"] == value for r in log[-STUCK_STEPS:])


def _failed(cfg: TrainConfig, step: int, loss: float, reason: str, out_dir: Path, header: dict,
            writer) -> TrainingDivergedError:
    """The divergence error naming ``reason``; rank 0 marks the run folder failed, so that no later run takes it for
    finished."""
    message = (f"training diverged at step {step}: {reason} (loss={loss}) with lr={cfg.lr} (method={cfg.method!r}, "
               f"lam={cfg.lam}, eps={cfg.eps}): lower --lr (or raise eps / grad_clip) and run again with --overwrite")
    ckpt = out_dir / "checkpoint.safetensors"
    message += f"; the last good checkpoint is kept in {ckpt}" if ckpt.is_file() else ""
    if writer is not None:
        from ada_utils.files import write_json

        write_json(out_dir / "config.json", {**header, "status": "failed", "error": f"diverged at step {step}, "
                                             f"lr={cfg.lr}: {reason}"})
    return TrainingDivergedError(message)


# ----------------------------------------------------------------------------- using a trained head
def feature_maps(run: str | Path | DomainHeads, *, chunk: int = 8192
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(real_map, synth_map)``: numpy callables (N, D) float32 -> (N, D') for ``evaluate(bf, real_map=...)``.

    The heads stay where they are (device and train/eval mode untouched): rows go to the heads' device and the
    outputs come back to the CPU, so a run in progress can be evaluated (early stopping) without moving its heads.

    Args:
        run: a run folder or a ``DomainHeads`` already loaded.
        chunk: rows per forward pass.
    """
    model = run if isinstance(run, DomainHeads) else load_head(run).eval()
    device = model.center.device

    def make(domain: int) -> Callable[[np.ndarray], np.ndarray]:
        @torch.no_grad()
        def apply(x: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            return torch.cat([model.forward_domain(c.to(device), domain).float().cpu() for c in x.split(chunk)]).numpy()
        return apply

    return make(0), make(1)
