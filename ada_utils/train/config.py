"""Parameters of a training run: the methods, their knobs, and the per-step schedules derived from them.

``method`` selects what is fitted on the *training split* (never on test cells): one unit per method in
:mod:`ada_utils.train.methods` (its table says what each fits, from what); every other field is a knob of those
units, of the loss (:mod:`.step`) or of the loop (:mod:`.loop`).

Unsupervised methods see only ``TrainData.feats``/``views`` and the real/synthetic flag; only ``supervised``
reads ``TrainData.pairs`` (:mod:`ada_utils.train.data`). The defaults are
starting values, not tuned ones: chapter 04 chooses λ of the closed-form head, the supervised baseline's learning
rate and the stopping step of every gradient run on the held-out ``validation_split`` of the *training* models
(never on test cells) and records each choice in its summary. λ's scale depends on the alignment loss: squared
distance for the closed form, InfoNCE for the gradient solver (λ ≈ 1 there). A gradient run given validation data
stops early (``eval_every``, ``patience``; :mod:`ada_utils.train.stopping`); without, it takes ``epochs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ada_utils.heads import HEAD_KINDS
from ada_utils.train.methods import UNITS, Method, method_of


METHODS = tuple(UNITS)
CHOICES = {
    "method": METHODS, "infomax": ("gaussian", "ica"), "cov_mode": ("pooled", "per_domain"),
    "cov_kind": ("cov", "corr"), "form": ("auto", "logdet", "coding_rate"), "head": HEAD_KINDS,
    "init": ("auto", "identity", "whiten"), "heads": ("shared", "per_domain"), "center": ("none", "pooled", "per_domain"),
    "alignment": ("views", "xdomain_nn", "both", "pairs"), "train_domains": ("both", "real", "synth"),
    "optimizer": ("adamw", "sgd"), "schedule": ("two_stage", "joint"), "finetune": ("frozen", "last_k", "full"), "finetune_from": ("images", "activations"),
    "ica_nonlinearity": ("logistic", "tanh"), "augment": ("generic", "gap"), "solver": ("closed_form", "gradient"),
    "amp_dtype": ("bfloat16", "float16"),
}
# Parameters that may differ between a checkpoint and its resumption (they do not change the arithmetic).
RESUME_FREE = ("device", "checkpoint_every", "num_workers")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (one name per knob across notebook parameters, CLI and config.json)."""

    method: str = "ada"  # see the module docstring
    solver: str = "closed_form"  # ada only: exact minimiser (linear head, frozen encoder) | gradient training
    infomax: str = "gaussian"  # reading of "Infomax": Gaussian log-det | Bell–Sejnowski ICA
    cov_mode: str = "per_domain"  # Gaussian Infomax on one pooled covariance or averaged per domain
    cov_kind: str = "cov"  # covariance or correlation matrix in the log-det
    form: str = "coding_rate"  # log-det (needs batch > dim) | coding rate (any batch) | auto = pick by batch size
    lam: float = 30.0  # λ: weight of the disentanglement loss (>= 0; > 0 for the closed form)
    tau: float = 0.1  # InfoNCE temperature
    eps: float = 0.5  # ridge ε of the log-det (use ~1e-3) / ε of the coding rate (MCR² uses ε² = 0.5)
    head: str = "linear"  # head kind, identity at init
    heads: str = "per_domain"  # one head for both domains, or a real and a synthetic head (CCA's A and B)
    init: str = "auto"  # linear head init: identity | ZCA whitening of training features | auto (identity for supervised, as AbC; whiten otherwise)
    shrinkage: float = -1.0  # covariance shrinkage of closed-form whitening in [0, 1]; -1 = Ledoit–Wolf estimate
    center: str = "per_domain"  # fixed input centring from training means: none | pooled | per real/synth domain
    alignment: str = "both"  # positive pairs: an image and its augmented views | cross-domain NN pairs | both | pairs (fixed pseudo-pairs, TrainData.positives)
    nn_refresh: int = 10  # steps between recomputing the nearest-neighbour table
    nn_symmetric: bool = True  # also pair each real image with its nearest synthetic image
    train_domains: str = "both"  # which unlabelled training images the head sees
    n_train: int = 0  # use the first n_train pool rows (content-hash order); 0 = all
    backbone: str = "efficientnet_lite0"  # encoder name (recorded; the image path fine-tunes it)
    weights: str = ""  # encoder weights file ("" = packaged / none)
    image_size: int = 128  # encoder input side in px
    finetune: str = "frozen"  # image path: frozen encoder | last k blocks | full
    k_blocks: int = 1  # blocks fine-tuned with finetune="last_k"
    finetune_from: str = "images"  # last_k: every step from images | from cached activations of the frozen blocks (encoders.split)
    augment: str = "gap"  # view recipe: generic (SimCLR-style) | gap (a family unlike the generator's transforms)
    n_views: int = 1  # augmented views per image (cached path: views stored in TrainData)
    num_workers: int = 0  # DataLoader workers preparing image batches (image path)
    epochs: int = 8  # passes over the training rows
    batch_size: int = 1024  # rows per step (global batch under DDP)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW/SGD weight decay on matrices (never on biases)
    optimizer: str = "adamw"
    warmup_frac: float = 0.1  # fraction of steps of linear warm-up before the cosine decay
    schedule: str = "two_stage"  # two_stage: alignment only for stage1_frac of the steps, then L_A + λ L_D
    stage1_frac: float = 0.5
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    ica_nonlinearity: str = "logistic"
    amp: bool = True  # autocast on CUDA (ignored on CPU)
    amp_dtype: str = "bfloat16"  # CUDA autocast dtype: bfloat16 | float16 (float16 adds a gradient scaler)
    gather: bool = False  # DDP: all-gather embeddings before the Infomax log-det (global covariance)
    eval_every: int = 5  # steps between validation evaluations of a gradient run given validation data
    patience: int = 5  # evaluations without a better validation R@5 before a gradient run stops early
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; choose one of {allowed}")
        for name in ("lam", "eps", "weight_decay", "grad_clip", "warmup_frac"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("tau", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        for name in ("epochs", "batch_size", "nn_refresh", "checkpoint_every", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.uses_infomax and self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size}: the Infomax log-det needs a batch covariance; "
                             "use batch_size >= 2 (and > feature dim for form='logdet')")
        if self.method in ("align", "ada") and self.alignment != "views" and self.train_domains != "both":
            raise ValueError(f"alignment={self.alignment!r} pairs real with synthetic images: it needs "
                             f"train_domains='both', got {self.train_domains!r}")
        self.unit.check(self)
        if self.infomax == "ica" and self.uses_infomax and self.head != "linear":
            raise ValueError("infomax='ica' needs head='linear' (a square invertible W)")
        from ada_utils.encoders.backbones import get_recipe

        try:
            get_recipe(self.backbone)
        except ValueError as err:
            raise ValueError(f"backbone={self.backbone!r}: {err}") from None
        if not (self.shrinkage == -1 or 0 <= self.shrinkage <= 1):
            raise ValueError(f"shrinkage={self.shrinkage} must be in [0, 1] or -1 (Ledoit–Wolf)")
        if self.finetune_from == "activations" and self.finetune != "last_k":
            raise ValueError(f"finetune_from='activations' trains the last k blocks from cached activations of the "
                             f"frozen ones: it needs finetune='last_k', got {self.finetune!r}")
        if not 0 <= self.stage1_frac < 1:
            raise ValueError(f"stage1_frac={self.stage1_frac} must be in [0, 1)")

    @property
    def unit(self) -> Method:
        """The method's unit (:mod:`.methods`): what it fits, from what, and where its heads start."""
        return method_of(self)

    @property
    def fitted_in_closed_form(self) -> bool:
        """No gradient steps: the closed-form controls and closed-form ``ada``."""
        return self.unit.closed_form(self)

    @property
    def head_init(self) -> str:
        """Where the heads start: "identity" (``pretrained``; with ``init="auto"``, ``supervised``, as AbC's two
        identity-initialised maps) or "whiten" (closed-form fits, and with "auto" every other gradient run)."""
        return self.unit.init(self)

    @property
    def uses_infomax(self) -> bool:
        return self.unit.disentangles

    @property
    def uses_alignment(self) -> bool:
        return self.unit.aligns

    @classmethod
    def from_dict(cls, params: dict) -> TrainConfig:
        """Build from a mapping that may hold other keys (notebook parameters): unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def lr_schedule(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """Per-step learning rates (total_steps,): linear warm-up to ``lr``, then cosine decay to 0."""
    warm = int(round(cfg.warmup_frac * total_steps))
    steps = np.arange(total_steps, dtype=np.float64)
    cos = 0.5 * cfg.lr * (1 + np.cos(np.pi * (steps - warm) / max(1, total_steps - warm)))
    return np.where(steps < warm, cfg.lr * (steps + 1) / max(1, warm), cos)


def lambda_schedule(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """Per-step weights (total_steps, 2) of (L_A, L_D): the method's schedule (:meth:`.methods.Method.schedule`)."""
    return cfg.unit.schedule(cfg, total_steps)
