"""One training loop for every method (:mod:`.config`) and its controls, resumable to the bit.

Two data paths share the loop: cached features (CPU book: a frozen encoder, the head trains in seconds)
and images (GPU: ``finetune`` = last-k blocks or full; ``step.ImageSource``). On CUDA the forward runs under
autocast (``amp``: bfloat16, or float16 with a gradient scaler). What a method fits, and from what, is its unit
in :mod:`.methods`; closed-form methods are fitted there (``build_model``) on training rows only.

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
One process trains in a folder at a time (rank 0 holds its lock; a second run waits, then resumes or reuses it).
SIGINT, SIGTERM (what schedulers send before killing a job) and SIGHUP are acted on between two steps: every rank
stops at the same step, rank 0 saves a checkpoint of it, and the run ends with ``KeyboardInterrupt`` (the CLI: the
resume line); a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ada_utils.files import locked, save_safetensors, space_errors
from ada_utils.heads import DomainHeads
from ada_utils.train.run_folder import load_checkpoint, prepare_dir, read_log, run_header, save_checkpoint, load_head
from ada_utils.train.config import TrainConfig, lambda_schedule, lr_schedule
from ada_utils.train.methods import build_model
from ada_utils.train.data import TrainData, select_rows
from ada_utils import distributed
from ada_utils.train.step import FeatureSource, ImageSource, StepBatches, Step, autocast_dtype
from ada_utils.train.stopping import EarlyStopping

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.encoders.split import Tail


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; the last good checkpoint is kept on disk."""


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
          stop_at: int | None = None, validation: BenchmarkFeatures | None = None,
          activations: TrainData | None = None) -> TrainResult | None:
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
            best heads; None: the run takes its whole budget of ``epochs``, recorded as such. With ``activations``
            it holds the validation images' prefix activations (``validation_split`` of the activation pool).
        activations: ``finetune_from="activations"``: the prefix activations of ``data``'s rows and views
            (:func:`ada_utils.train.data.prefix_training_data`); the run trains ``encoder``'s last ``k_blocks`` and
            the heads from them (:class:`ada_utils.encoders.split.Tail`).

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

    out_dir = Path(out_dir)
    ctx = distributed.setup(cfg.device)
    rows = select_rows(cfg, data)
    t0 = time.perf_counter()  # seconds of a run = closed-form fits + training steps
    heads = build_model(cfg, data, rows)
    header = run_header(cfg, data, rows, heads)
    if activations is not None:
        header["activations_hash"] = activations.fingerprint(with_pairs=False)

    with contextlib.ExitStack() as hold:
        def prepare() -> bool:
            out_dir.mkdir(parents=True, exist_ok=True)
            # Under torchrun the other ranks wait in a collective meanwhile: a busy folder is refused at once.
            torchrun = distributed.rank_and_world()[1] > 1
            hold.enter_context(locked(
                out_dir, waiting=f"[train] another process is training in {out_dir}: waiting for it to end, then "
                "this run checks the folder again", refuse=f"{out_dir}: another process is training in this folder; "
                "wait for it to end, or choose another --out" if torchrun else ""))
            return prepare_dir(out_dir, header, resume=resume, overwrite=overwrite)

        # Rank 0 checks (and with overwrite empties) the folder; its verdict, or its error, reaches every rank.
        if distributed.on_main(prepare):
            return TrainResult(out_dir, load_head(out_dir), read_log(out_dir), 0.0, 0)
        return _train(cfg, data, out_dir, ctx, rows, heads, header, t0, encoder=encoder, resume=resume,
                      progress=progress, stop_at=stop_at, validation=validation, activations=activations)


def _train(cfg: TrainConfig, data: TrainData, out_dir: Path, ctx: distributed.Context, rows: np.ndarray,
           heads: DomainHeads, header: dict, t0: float, *, encoder: torch.nn.Module | None, resume: bool,
           progress: bool, stop_at: int | None, validation: BenchmarkFeatures | None,
           activations: TrainData | None) -> TrainResult | None:
    """The steps of :func:`train` in a prepared (and, on rank 0, locked) run folder."""
    from tqdm.auto import tqdm

    from ada_utils.heads import EncoderWithHeads

    source, front = _source(cfg, data, encoder, header, validation, activations)
    model = EncoderWithHeads(heads, front).to(ctx.device)
    scored = model if activations is not None else heads  # what early stopping evaluates and keeps
    stepper = Step(cfg, data, rows, source, rank=ctx.rank, world=ctx.world)
    total = 0 if cfg.fitted_in_closed_form else cfg.epochs * stepper.steps_per_epoch
    header.update(steps=total, steps_per_epoch=stepper.steps_per_epoch, infomax_form=stepper.form,
                  world_size=ctx.world)
    run = _Session(cfg, model, stepper, total, ctx.device, out_dir, header)
    start = run.resume() if resume else 0
    log = [r for r in read_log(out_dir) if r["step"] < start]
    stopper = None
    if validation is not None and total:
        stopper = EarlyStopping(validation, cfg.eval_every, cfg.patience, out_dir if ctx.rank == 0 else None,
                                warmup=int(round(cfg.warmup_frac * total)))
        if start:
            stopper.resume(start, scored)
    distributed.barrier()  # every rank has read the checkpoint and the log before rank 0 rewrites them
    run.open(ctx.rank, ctx.world, log)
    batches = StepBatches(stepper, range(start, total), run.weights)
    stopped, stack, signals = total, contextlib.ExitStack(), _Signals()
    loader = (batches[i] for i in range(len(batches))) if cfg.num_workers == 0 else torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=cfg.num_workers, pin_memory=ctx.device.type == "cuda",
        worker_init_fn=_ignore_signals)  # the main process alone acts on a signal (a checkpoint first)
    try:
        bar = tqdm(zip(range(start, total), loader), total=total - start, desc=f"train {cfg.method}",
                   disable=not progress or ctx.rank != 0, leave=False)
        stack.enter_context(signals)
        for step, batch in bar:
            if signals.pending(ctx.device):
                if run.writer is not None and step > start:
                    run.write_log([], flush=True)  # the log holds every step before the checkpoint's
                    save_checkpoint(run.ckpt, run.model, run.opt, stepper, step, run.scaler)
                raise KeyboardInterrupt(signals.name)
            if stop_at is not None and step == stop_at:
                return None
            if stopper is not None and stopper.due(step, total) and stopper.update(
                    step, scored, log[-1]["loss"] if log else None):
                stopped = step
                break
            log.append(run.update(step, batch, log, step - start))
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    finally:
        stack.close()
        run.close()
    header["stopping"] = _stopping(stopper, scored, log, stopped, total)
    seconds = time.perf_counter() - t0
    tuned = encoder if cfg.finetune != "frozen" else None
    distributed.on_main(lambda: run.finish(heads, tuned, seconds, complete=stopped == total))
    if signals.pending(ctx.device):  # it came with the last step or an early stop: the run is saved, then it stops
        raise KeyboardInterrupt(signals.name)
    return TrainResult(out_dir, heads.cpu().eval(), log, seconds, stopped)


def _source(cfg: TrainConfig, data: TrainData, encoder: torch.nn.Module | None, header: dict,
            validation: BenchmarkFeatures | None, activations: TrainData | None
            ) -> tuple[FeatureSource | ImageSource, torch.nn.Module | None]:
    """The inputs of the steps and the module before the heads: cached features (frozen encoder, dropped), cached
    prefix activations and the encoder's :class:`~ada_utils.encoders.split.Tail`, or images and the encoder
    (fine-tuning opens ``cfg.finetune``'s parameters of ``encoder`` and records how many in ``header``)."""
    if (activations is not None) != (cfg.finetune_from == "activations"):
        raise ValueError("finetune_from='activations' and activations= go together: build them with "
                         "ada_utils.train.data.prefix_training_data")
    if cfg.finetune == "frozen":
        return FeatureSource(data), None
    if activations is not None:
        return _activation_source(cfg, data, encoder, header, validation, activations)
    if encoder is None or data.paths is None:
        raise ValueError(f"finetune={cfg.finetune!r} trains on images: pass encoder= and TrainData.paths")
    if validation is not None:
        raise ValueError(f"finetune={cfg.finetune!r}: early stopping reads cached validation features of the frozen "
                         "encoder; train without validation= (a fixed budget) or with finetune='frozen'")
    header["trainable_encoder_params"] = len(set_trainable(encoder, cfg.finetune, cfg.k_blocks))
    return ImageSource(data.paths, encoder.preprocess, recipe=cfg.augment, image_size=cfg.image_size,
                       n_views=cfg.n_views, seed=cfg.seed), encoder


def _activation_source(cfg: TrainConfig, data: TrainData, encoder: torch.nn.Module | None, header: dict,
                       validation: BenchmarkFeatures | None, activations: TrainData) -> tuple[FeatureSource, Tail]:
    """Cached prefix activations of ``data``'s rows and views, and the encoder's trainable tail."""
    from ada_utils.encoders.split import PrefixEncoder, Tail

    if encoder is None:
        raise ValueError("finetune_from='activations' trains the encoder's last blocks: pass encoder=")
    shape = PrefixEncoder(encoder, cfg.k_blocks).shape
    if activations.feats.shape != (len(data.feats), math.prod(shape)):
        raise ValueError(f"activations {activations.feats.shape} are not the input of blocks[-{cfg.k_blocks}] "
                         f"({math.prod(shape)} values) of the pool's {len(data.feats)} images: make them with "
                         f"prefix_training_data(..., k={cfg.k_blocks}) on the same pool")
    if validation is not None and validation.distractors.shape[1] != activations.feats.shape[1]:
        raise ValueError("with activations=, early stopping reads the validation images' prefix activations: pass "
                         "validation_split(root, activations)[0]")
    header["trainable_encoder_params"] = len(set_trainable(encoder, "last_k", cfg.k_blocks))
    return FeatureSource(activations), Tail(encoder, cfg.k_blocks, shape)


def _stopping(stopper: EarlyStopping | None, heads: torch.nn.Module, log: list[dict], stopped: int, total: int
              ) -> dict:
    """The run's stopping record; an early-stopped run gets its best heads (and tail) back (a run that took its
    whole budget is evaluated once more at its end first)."""
    if stopper is None:
        return {"rule": "none: the whole budget" if total else "closed form: no steps", "stopped_at": total,
                "budget_steps": total, "early": False}
    if stopped == total:
        stopper.update(total, heads, log[-1]["loss"] if log else None)
    stopper.restore(heads)
    return stopper.summary(stopped, total)


class _Session:
    """What one training session holds between steps: optimiser, gradient scaler, schedules, the DDP wrapper and the
    log writer; it takes one optimiser step at a time and checkpoints the run folder."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, stepper: Step, total: int, device: torch.device,
                 out_dir: Path, header: dict) -> None:
        self.cfg, self.model, self.net, self.stepper, self.total = cfg, model, model, stepper, total
        self.device, self.out_dir, self.header, self.writer = device, out_dir, header, None
        self.lrs, self.weights = lr_schedule(cfg, max(total, 1)), lambda_schedule(cfg, max(total, 1))
        self.opt = _optimizer(cfg, model) if total else None
        # float16 autocast needs loss scaling; bfloat16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(cfg, device) == torch.float16)
        self.ckpt = out_dir / "checkpoint.safetensors"
        self.start_peak = 0.0  # the largest trainable weight at the start of this session (set by open())

    def resume(self) -> int:
        """The step to start from: the checkpoint's (0 without one, or for a closed-form fit)."""
        if self.ckpt.is_file() and self.opt is not None:
            return load_checkpoint(self.ckpt, self.model, self.opt, self.stepper, self.scaler)
        return 0

    def open(self, rank: int, world: int, log: list[dict]) -> None:
        """After a resumption: note the weights' scale, wrap the model for DDP; on rank 0 write the header and
        rewrite the log kept from before the resumption."""
        from ada_utils.files import write_json

        self.start_peak = _peak(self.model)
        if world > 1 and self.opt is not None:
            # Buffers (input centres, frozen BatchNorm statistics) never change in training: no broadcast per step.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        if rank == 0:
            with space_errors(self.out_dir / "log.jsonl"):
                self.writer = open(self.out_dir / "log.jsonl", "w")  # noqa: SIM115 (closed by close())
            write_json(self.out_dir / "config.json", self.header)
            self.write_log(log)

    def write_log(self, records: list[dict], *, flush: bool = False) -> None:
        """Rank 0: append ``records`` to ``log.jsonl`` (a full disk names it: :class:`NoSpaceError`)."""
        with space_errors(self.out_dir / "log.jsonl"):
            self.writer.writelines(json.dumps(r) + "\n" for r in records)
            if flush:
                self.writer.flush()

    def update(self, step: int, batch: dict, log: list[dict], done: int) -> dict:
        """One optimiser step on ``batch``; returns its log record (written, and checkpointed on schedule).

        Raises:
            TrainingDivergedError: the loss is NaN/inf or stuck, or a weight ran away (the run folder is marked).
        """
        cfg, stepper, opt = self.cfg, self.stepper, self.opt
        if stepper.uses_nn and step % cfg.nn_refresh == 0:
            stepper.refresh_nn(self.model, self.device, step)
        for group in opt.param_groups:
            group["lr"] = float(self.lrs[step])
        loss, parts = stepper.loss(self.net, batch, self.weights[step], self.device)
        # The logged loss is the mean over processes (= the one-process loss of the global batch); every rank sees
        # the same value, so a divergence stops all of them together.
        values = distributed.all_reduce_mean(torch.tensor([float(loss.detach()), *parts.values()],
                                                          dtype=torch.float64, device=self.device)).tolist()
        value, parts = values[0], dict(zip(parts, values[1:]))
        if not math.isfinite(value):
            raise self._failed(step, value, "the loss is NaN/inf")
        if _stuck(log, value, done):
            raise self._failed(step, value, f"the loss has not changed for {STUCK_STEPS} steps")
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        blown = _exploded(self.model, self.start_peak)
        if blown:
            raise self._failed(step, value, f"{blown} in this step's update")
        rec = {"step": step, "epoch": step // stepper.steps_per_epoch, "lr": float(self.lrs[step]), "loss": value,
               **parts}
        if self.writer is not None:
            due = (step + 1) % cfg.checkpoint_every == 0 and step + 1 < self.total
            self.write_log([rec], flush=due)
            if due:
                save_checkpoint(self.ckpt, self.model, opt, stepper, step + 1, self.scaler)
        return rec

    def close(self) -> None:
        if self.writer is not None:
            with space_errors(self.out_dir / "log.jsonl"):
                self.writer.close()

    def finish(self, heads: DomainHeads, encoder: torch.nn.Module | None, seconds: float, *, complete: bool) -> None:
        """Rank 0: the final checkpoint (a run that took its whole budget), the heads, a fine-tuned encoder, and the
        header marked finished."""
        from ada_utils.files import write_json

        if self.opt is not None and complete:
            save_checkpoint(self.ckpt, self.model, self.opt, self.stepper, self.total, self.scaler)
        save_safetensors(self.out_dir / "head.safetensors",
                         {k: v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()}, record=True)
        if encoder is not None:
            from ada_utils.encoders.checkpoints import save_encoder_checkpoint

            save_encoder_checkpoint(encoder, self.out_dir / "encoder.safetensors")
        write_json(self.out_dir / "config.json", {**self.header, "status": "finished", "train_seconds": seconds})

    def _failed(self, step: int, loss: float, reason: str) -> TrainingDivergedError:
        """The divergence error naming ``reason``; rank 0 marks the run folder failed, so that no later run takes it
        for finished."""
        cfg = self.cfg
        message = (f"training diverged at step {step}: {reason} (loss={loss}) with lr={cfg.lr} (method={cfg.method!r}, "
                   f"lam={cfg.lam}, eps={cfg.eps}): lower --lr (or raise eps / grad_clip) and run again with "
                   "--overwrite")
        message += f"; the last good checkpoint is kept in {self.ckpt}" if self.ckpt.is_file() else ""
        if self.writer is not None:
            from ada_utils.files import write_json

            write_json(self.out_dir / "config.json", {**self.header, "status": "failed",
                                                      "error": f"diverged at step {step}, lr={cfg.lr}: {reason}"})
        return TrainingDivergedError(message)


def _ignore_signals(worker: int) -> None:
    """DataLoader workers ignore SIGINT, SIGTERM and SIGHUP (a scheduler signals every process): the main process
    saves a checkpoint and stops them."""
    for sig in _Signals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class _Signals:
    """SIGINT, SIGTERM and SIGHUP noted while training (main thread only; restored after), so that the loop stops
    between two steps with a checkpoint of the last one; a second signal raises at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.caught: int | None = None
        self.old: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.caught).name if self.caught else "SIGINT"

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, frame: object) -> None:
        if self.caught is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.caught = signum

    def pending(self, device: torch.device) -> bool:
        """Whether any rank has caught a signal (one small all-reduce per step under torchrun)."""
        flag = torch.tensor([1.0 if self.caught else 0.0], dtype=torch.float64, device=device)
        return bool(distributed.all_reduce_mean(flag).item() > 0)


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


# ----------------------------------------------------------------------------- using a trained head
def feature_maps(run: str | Path | torch.nn.Module, *, chunk: int = 8192
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(real_map, synth_map)``: numpy callables (N, D) float32 -> (N, D') for ``evaluate(bf, real_map=...)``.

    The heads stay where they are (device and train/eval mode untouched): rows go to the heads' device and the
    outputs come back to the CPU, so a run in progress can be evaluated (early stopping) without moving its heads.

    Args:
        run: a run folder, a ``DomainHeads`` already loaded, or an ``EncoderWithHeads`` (inputs go through its
            encoder first: the cached last-block path maps prefix activations).
        chunk: rows per forward pass.
    """
    model = run if isinstance(run, torch.nn.Module) else load_head(run).eval()
    device = model.center.device

    def make(domain: int) -> Callable[[np.ndarray], np.ndarray]:
        @torch.no_grad()
        def apply(x: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            return torch.cat([model.forward_domain(c.to(device), domain).float().cpu() for c in x.split(chunk)]).numpy()
        return apply

    return make(0), make(1)
