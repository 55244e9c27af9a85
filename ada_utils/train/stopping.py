"""Early stopping on the validation split of the training models: the stopping rule of every gradient-trained run.

A training loss that still falls says nothing about retrieval on new models (a head can overfit a few thousand
pairs), so a gradient run evaluates the official metric on held-out *validation models* of the training split
(:func:`ada_utils.train.data.validation_split`, never a test cell) every ``eval_every`` steps, keeps the heads of
the best evaluation (mean R@5 over the validation cells, ties to the earlier step), and stops after ``patience``
evaluations without improvement after the learning-rate warm-up, or at the budget (``epochs``). The curve goes to ``validation.jsonl`` beside
``log.jsonl``, the best heads to ``best.safetensors``, so a killed run resumes to the same choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file

if TYPE_CHECKING:
    from ada_utils.encoders.features import BenchmarkFeatures
    from ada_utils.heads import DomainHeads

CURVE = "validation.jsonl"
BEST = "best.safetensors"


def validation_score(heads: DomainHeads, validation: BenchmarkFeatures) -> dict[str, float]:
    """``{"val_R@5", "val_mAP"}``: means over the validation cells of the official metric under ``heads``."""
    from ada_utils.eval.benchmark import evaluate
    from ada_utils.train.loop import feature_maps

    real_map, synth_map = feature_maps(heads)
    cells = evaluate(validation, real_map=real_map, synth_map=synth_map)
    return {"val_R@5": float(np.mean([v["R@5"] for v in cells.values()])),
            "val_mAP": float(np.mean([v["mAP"] for v in cells.values()]))}


@dataclass
class EarlyStopping:
    """The validation curve of one run and the heads of its best point.

    Args:
        validation: the validation benchmark (features of the frozen encoder).
        every: steps between evaluations (the state after 0, every, 2·every, ... updates, and after the last).
        patience: evaluations without a better mean R@5 before the run stops, counted from the end of the
            learning-rate warm-up (``warmup``): a run never stops while its learning rate is still rising.
        warmup: steps of the warm-up.
        out_dir: the run folder (rank 0 writes the curve and the best heads; None: nothing is written).
    """

    validation: BenchmarkFeatures
    every: int
    patience: int
    out_dir: Path | None
    warmup: int = 0
    curve: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    def resume(self, start: int, heads: DomainHeads) -> None:
        """Reload the curve before step ``start`` and the best heads of a killed run."""
        path = None if self.out_dir is None else self.out_dir / CURVE
        if path is not None and path.is_file():
            self.curve = [r for r in map(json.loads, filter(None, path.read_text().splitlines())) if r["step"] < start]
        if self.curve and self.out_dir is not None and (self.out_dir / BEST).is_file():
            from ada_utils.files import DamagedFileError, recorded_damage

            damage = recorded_damage(self.out_dir / BEST)
            if damage:
                raise DamagedFileError(f"{damage}: the best heads so far are lost; pass --overwrite (overwrite=True) "
                                       "to train the run again")
            self.best_state = load_file(str(self.out_dir / BEST))

    @property
    def best(self) -> dict | None:
        """The best record of the curve so far (first of equals)."""
        return max(self.curve, key=lambda r: r["val_R@5"]) if self.curve else None

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def update(self, step: int, heads: DomainHeads, train_loss: float | None) -> bool:
        """Evaluate the heads after ``step`` updates; returns True when the run should stop here."""
        rec = {"step": step, **validation_score(heads, self.validation), "train_loss": train_loss}
        improved = self.best is None or rec["val_R@5"] > self.best["val_R@5"]
        self.curve.append(rec)
        if improved:
            self.best_state = {k: v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()}
            if self.out_dir is not None:
                from ada_utils.files import save_safetensors

                save_safetensors(self.out_dir / BEST, self.best_state, {"step": str(step)}, record=True)
        if self.out_dir is not None:
            from ada_utils.files import write_atomic

            write_atomic(self.out_dir / CURVE, lambda f: f.writelines(json.dumps(r) + "\n" for r in self.curve),
                         mode="w")
        since = [r for r in self.curve[self.curve.index(self.best) + 1:] if r["step"] >= self.warmup]
        return step >= self.warmup and len(since) >= self.patience

    def restore(self, heads: DomainHeads) -> None:
        """Load the best heads into ``heads`` (the run's result)."""
        if self.best_state is not None:
            heads.load_state_dict(self.best_state)

    def summary(self, stopped_at: int, budget: int) -> dict:
        """What ``config.json`` records of the stopping rule."""
        best = self.best or {}
        return {"rule": f"best mean validation R@5, evaluated every {self.every} steps, patience {self.patience} "
                        f"evaluations after the {self.warmup}-step warm-up", "best_step": best.get("step"), "best_val_R@5": best.get("val_R@5"),
                "stopped_at": stopped_at, "budget_steps": budget, "early": stopped_at < budget,
                "evaluations": len(self.curve)}


def read_curve(run_dir: str | Path) -> list[dict]:
    """The validation curve of a run folder (empty when the run had no stopping rule)."""
    path = Path(run_dir) / CURVE
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.is_file() else []
