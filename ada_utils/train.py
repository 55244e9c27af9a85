"""One training loop for every variant of the method and its controls, resumable to the bit.

``method`` selects what is fitted on the *training split* (never on test cells):

=============  ==========================================================================================
pretrained     nothing: the identity head (the encoder's features as they are)
whiten         closed-form ZCA whitening of the unlabelled training features (pooled or per domain)
ica            whitening followed by FastICA (scikit-learn), the closed-form Infomax-ICA control
align          alignment loss only (``alignment``: InfoNCE between augmented views, cross-domain
               nearest-neighbour positives, or both)
disentangle    Infomax loss only (``infomax``: "gaussian" log-det / coding rate, or "ica" Bell–Sejnowski)
ada            L = L_A + λ L_D, two-stage (alignment first, then both) or joint
supervised     AbC's tuned baseline: a real and a synthetic head, InfoNCE over (exemplar, synthetic) pairs
=============  ==========================================================================================

Unsupervised methods see only ``TrainData.feats``/``views`` and the real/synthetic flag; only ``supervised``
reads ``TrainData.pairs``. Two data paths share the loop: cached features (CPU book: a frozen encoder, the head
trains in seconds) and images (GPU: ``finetune`` = last-k blocks or full, bfloat16 autocast, DistributedDataParallel
under ``torchrun`` when WORLD_SIZE > 1; ``ImageSource``). Defaults (per-domain heads started at per-domain
whitening, cross-domain nearest-neighbour InfoNCE, coding-rate Infomax with λ = 0.05) were chosen on
``validation_split`` of the *training* models, never on test cells.

Exact resumption: every random draw is a pure function of ``(seed, step)`` (``_generator``), the optimiser
state and the nearest-neighbour table are checkpointed, and learning rates come from arrays precomputed from
the config, so a run killed and resumed from its last checkpoint ends with bit-identical weights on CPU.

Run folder: ``config.json`` (every parameter, data hash, versions, status), ``log.jsonl`` (one line per step),
``checkpoint.safetensors`` + ``checkpoint.json`` (last good state), ``head.safetensors`` (final weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ada_utils.heads import HEAD_KINDS, DomainHeads

METHODS = ("pretrained", "align", "disentangle", "ada", "whiten", "ica", "supervised")
CLOSED_FORM = ("pretrained", "whiten", "ica")
ICA_COMPONENTS = 128  # FastICA sources of the closed-form ICA control (the leading PCA-whitened coordinates)
_CHOICES = {
    "method": METHODS, "infomax": ("gaussian", "ica"), "cov_mode": ("pooled", "per_domain"),
    "cov_kind": ("cov", "corr"), "form": ("auto", "logdet", "coding_rate"), "head": HEAD_KINDS,
    "init": ("identity", "whiten"), "heads": ("shared", "per_domain"), "center": ("none", "pooled", "per_domain"),
    "alignment": ("views", "xdomain_nn", "both"), "train_domains": ("both", "real", "synth"),
    "optimizer": ("adamw", "sgd"), "schedule": ("two_stage", "joint"), "finetune": ("frozen", "last_k", "full"),
    "ica_nonlinearity": ("logistic", "tanh"), "augment": ("generic", "gap"),
}
# Parameters that may differ between a checkpoint and its resumption (they do not change the arithmetic).
_RESUME_FREE = ("device", "checkpoint_every", "num_workers")


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; the last good checkpoint is kept on disk."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (one name per knob across notebook parameters, CLI and config.json)."""

    method: str = "ada"  # see the module docstring
    infomax: str = "gaussian"  # reading of "Infomax": Gaussian log-det | Bell–Sejnowski ICA
    cov_mode: str = "per_domain"  # Gaussian Infomax on one pooled covariance or averaged per domain
    cov_kind: str = "cov"  # covariance or correlation matrix in the log-det
    form: str = "coding_rate"  # log-det (needs batch > dim) | coding rate (any batch) | auto = pick by batch size
    lam: float = 0.05  # λ: weight of the disentanglement loss (>= 0)
    tau: float = 0.1  # InfoNCE temperature
    eps: float = 0.5  # ridge ε of the log-det (use ~1e-3) / ε of the coding rate (MCR² uses ε² = 0.5)
    head: str = "linear"  # head kind, identity at init
    heads: str = "per_domain"  # one head for both domains, or a real and a synthetic head (CCA's A and B)
    init: str = "whiten"  # linear head init: identity | closed-form ZCA whitening of training features
    shrinkage: float = -1.0  # covariance shrinkage of closed-form whitening in [0, 1]; -1 = Ledoit–Wolf estimate
    center: str = "per_domain"  # fixed input centring from training means: none | pooled | per real/synth domain
    alignment: str = "xdomain_nn"  # views = InfoNCE between augmented views; xdomain_nn = cross-domain NN pairs
    nn_refresh: int = 10  # steps between recomputing the nearest-neighbour table
    nn_symmetric: bool = True  # also pair each real image with its nearest synthetic image
    train_domains: str = "both"  # which unlabelled training images the head sees
    n_train: int = 0  # use the first n_train pool rows (content-hash order); 0 = all
    backbone: str = "efficientnet_lite0"  # encoder name (recorded; the image path fine-tunes it)
    weights: str = ""  # encoder weights file ("" = packaged / none)
    image_size: int = 128  # encoder input side in px
    finetune: str = "frozen"  # image path: frozen encoder | last k blocks | full
    k_blocks: int = 1  # blocks fine-tuned with finetune="last_k"
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
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    gather: bool = False  # DDP: all-gather embeddings before the Infomax log-det (global covariance)
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; choose one of {allowed}")
        for name in ("lam", "eps", "weight_decay", "grad_clip", "warmup_frac"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("tau", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        for name in ("epochs", "batch_size", "nn_refresh", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.uses_infomax and self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size}: the Infomax log-det needs a batch covariance; "
                             "use batch_size >= 2 (and > feature dim for form='logdet')")
        if self.method in ("align", "ada") and self.alignment != "views" and self.train_domains != "both":
            raise ValueError(f"alignment={self.alignment!r} pairs real with synthetic images: it needs "
                             f"train_domains='both', got {self.train_domains!r}")
        if self.infomax == "ica" and self.uses_infomax and self.head != "linear":
            raise ValueError("infomax='ica' needs head='linear' (a square invertible W)")
        from ada_utils.encoders import get_recipe

        try:
            get_recipe(self.backbone)
        except ValueError as err:
            raise ValueError(f"backbone={self.backbone!r}: {err}") from None
        if not (self.shrinkage == -1 or 0 <= self.shrinkage <= 1):
            raise ValueError(f"shrinkage={self.shrinkage} must be in [0, 1] or -1 (Ledoit–Wolf)")
        if not 0 <= self.stage1_frac < 1:
            raise ValueError(f"stage1_frac={self.stage1_frac} must be in [0, 1)")

    @property
    def uses_infomax(self) -> bool:
        return self.method in ("disentangle", "ada")

    @property
    def uses_alignment(self) -> bool:
        return self.method in ("align", "ada")

    @classmethod
    def from_dict(cls, params: dict) -> TrainConfig:
        """Build from a mapping that may hold other keys (notebook parameters): unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclass
class TrainData:
    """Cached features of the unlabelled training pool.

    Attributes:
        feats: (N, D) float32 features of the plain images (pool order = ``data.unlabelled_pool``).
        domain: (N,) int64, 0 = real, 1 = synthetic.
        views: (V, N, D) float32 features of V augmented views, or None.
        ids: N opaque ids (for the data hash).
        pairs: (P, 2) int64 rows (real, synthetic) of matched training pairs: supervised baseline only.
        pair_model: (P,) int64 model index of each pair: supervised baseline only.
        paths: N image files (image path, ``finetune != "frozen"``).
    """

    feats: np.ndarray
    domain: np.ndarray
    views: np.ndarray | None = None
    ids: list[str] | None = None
    pairs: np.ndarray | None = None
    pair_model: np.ndarray | None = None
    paths: list[Path] | None = None

    def __post_init__(self) -> None:
        n = len(self.feats)
        if self.feats.ndim != 2 or self.domain.shape != (n,):
            raise ValueError(f"TrainData: feats must be (N, D) and domain (N,); got {self.feats.shape}, "
                             f"{self.domain.shape}")
        if self.views is not None and self.views.shape[1:] != self.feats.shape:
            raise ValueError(f"TrainData: views must be (V, N, D) = (V, {n}, {self.feats.shape[1]}), "
                             f"got {self.views.shape}")

    def fingerprint(self, *, with_pairs: bool) -> str:
        """SHA-256 over features, domains, views, ids (and pairs for the supervised baseline)."""
        h = hashlib.sha256()
        for arr in (self.feats, self.domain, self.views):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.ids or []).encode())
        if with_pairs and self.pairs is not None:
            h.update(np.ascontiguousarray(self.pairs).tobytes())
            h.update(np.ascontiguousarray(self.pair_model).tobytes())
        return h.hexdigest()


def training_data(encoder, root: str | Path, *, n_views: int = 1, augment: str = "gap", seed: int = 0,
                  with_pairs: bool = False, batch_size: int = 64, num_workers: int = 0,
                  progress: bool = True) -> TrainData:
    """Cached features of a benchmark's unlabelled training pool (plain images + ``n_views`` augmented views).

    The pool comes from ``data.unlabelled_pool`` (content-hash order, opaque ids, real/synthetic flag only), so
    renaming folders or re-pairing images cannot change what the unsupervised methods see. Each image and view
    is embedded once and cached by ``embed.embed_images`` (key: encoder spec + view recipe).

    Args:
        encoder: an ``Encoder`` (frozen).
        root: benchmark root (AbC layout).
        n_views: augmented views per image (``augment.SeededAugment`` views 0..n_views-1).
        augment: view recipe, ``"generic"`` or ``"gap"``.
        seed: seed of the views (data seed, not the training seed).
        with_pairs: also read ``data.training_pairs`` (supervised baseline only).
        batch_size, num_workers, progress: passed to ``embed_images``.
    """
    from ada_utils.augment import SeededAugment, ViewTransform
    from ada_utils.data import training_pairs, unlabelled_pool
    from ada_utils.embed import embed_images

    pool = unlabelled_pool(root)
    # Content ids key the cache: the same images hit the same cache however the root path is spelled.
    kw = {"ids": pool.ids, "batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    feats = np.array(embed_images(encoder, pool.paths, **kw).feats, dtype=np.float32)  # a writable copy
    views = []
    for v in range(n_views):
        aug = SeededAugment(augment, encoder.image_size, view=v, seed=seed)
        feats_v = embed_images(encoder, pool.paths, transform=ViewTransform(aug, encoder.preprocess),
                               transform_key=aug.key, **kw).feats
        views.append(np.array(feats_v, dtype=np.float32))
    pairs = pair_model = None
    if with_pairs:
        index = {Path(p).resolve(): i for i, p in enumerate(pool.paths)}
        found = [(index[Path(e).resolve()], index[Path(s).resolve()], m) for e, s, m in training_pairs(root)]
        pairs = np.asarray([f[:2] for f in found], dtype=np.int64)
        pair_model = np.asarray([f[2] for f in found], dtype=np.int64)
    return TrainData(feats, pool.domain.astype(np.int64), np.stack(views) if views else None, list(pool.ids),
                     pairs, pair_model, list(pool.paths))


def lr_schedule(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """Per-step learning rates (total_steps,): linear warm-up to ``lr``, then cosine decay to 0."""
    warm = int(round(cfg.warmup_frac * total_steps))
    steps = np.arange(total_steps, dtype=np.float64)
    cos = 0.5 * cfg.lr * (1 + np.cos(np.pi * (steps - warm) / max(1, total_steps - warm)))
    return np.where(steps < warm, cfg.lr * (steps + 1) / max(1, warm), cos)


def lambda_schedule(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """Per-step weights (total_steps, 2) of (L_A, L_D) from the method and schedule."""
    w = np.zeros((total_steps, 2))
    w[:, 0] = 1.0 if cfg.uses_alignment else 0.0
    w[:, 1] = (cfg.lam if cfg.method == "ada" else 1.0) if cfg.uses_infomax else 0.0
    if cfg.method == "ada" and cfg.schedule == "two_stage":
        w[: int(cfg.stage1_frac * total_steps), 1] = 0.0
    if cfg.method == "supervised":
        w[:, 0] = 1.0
    return w


def _generator(seed: int, tag: str, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, tag, step): the source of every random draw."""
    digest = hashlib.sha256(f"{seed}|{tag}|{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def select_rows(cfg: TrainConfig, data: TrainData) -> np.ndarray:
    """Row indices of the pool used for training (domains, then the first n_train in pool order)."""
    rows = np.arange(len(data.feats))
    if cfg.train_domains != "both":
        rows = rows[data.domain == (0 if cfg.train_domains == "real" else 1)]
    if cfg.n_train:
        rows = rows[: cfg.n_train]
    if len(rows) < 2:
        raise ValueError(f"train_domains={cfg.train_domains!r}, n_train={cfg.n_train} leave {len(rows)} rows")
    return rows



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


def build_model(cfg: TrainConfig, data: TrainData, rows: np.ndarray) -> DomainHeads:
    """The head(s) of a run, initialised (and, for closed-form methods, fitted) on training rows only."""
    from ada_utils.whitening import Whitening, fit_fastica

    torch.manual_seed(cfg.seed)
    per_domain_fit = cfg.method == "whiten" and cfg.cov_mode == "per_domain"  # ICA: one pooled rotation
    shared = cfg.method != "supervised" and not per_domain_fit and (cfg.method in CLOSED_FORM or cfg.heads == "shared")
    kind = "linear" if cfg.method in CLOSED_FORM else cfg.head
    model = DomainHeads(kind, data.feats.shape[1], shared=shared)
    x, dom = data.feats[rows].astype(np.float64), data.domain[rows]
    c_real, c_synth = _centers(cfg, x, dom)
    model.set_centers(torch.from_numpy(c_real), torch.from_numpy(c_synth))
    xc = x - np.where(dom[:, None] == 1, c_synth, c_real)
    if cfg.method in ("pretrained", "supervised") or (cfg.method not in CLOSED_FORM and cfg.init == "identity"):
        # supervised: AbC's two identity-initialised linear maps, whatever ``init`` says
        return model
    groups = [(model.real, dom == 0), (model.synth, dom == 1)] if not shared else [(model.real, dom >= 0)]
    shrink = "auto" if cfg.shrinkage < 0 else cfg.shrinkage
    kind = "pca" if cfg.method == "ica" else "zca"
    maps = [Whitening(kind, shrinkage=shrink).fit(xc[mask]).as_linear() for _, mask in groups]
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
    for (head, _), (w, b) in zip(groups, maps):
        _set_linear(head, w.astype(np.float32), b.astype(np.float32))
    return model


# ----------------------------------------------------------------------------- inputs of a step
class FeatureSource:
    """Inputs from cached features: view ``v < V`` is augmented view v, ``v = V`` (or None) the plain image."""

    def __init__(self, data: TrainData) -> None:
        self.feats = torch.from_numpy(np.ascontiguousarray(data.feats, dtype=np.float32))
        views = data.views
        self.views = None if views is None else torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
        self.n_views = 0 if views is None else len(views)

    def inputs(self, rows: torch.Tensor, pick: torch.Tensor | None, step: int) -> torch.Tensor:
        """(B, D) features of view ``pick[i]`` of row ``rows[i]``."""
        if self.views is None or pick is None:
            return self.feats[rows]
        stacked = torch.cat([self.views[:, rows], self.feats[rows][None]], dim=0)  # (V+1, B, D)
        return stacked[pick, torch.arange(len(rows))]


class ImageSource:
    """Inputs from image files (image path): the plain image or a seeded augmented view, preprocessed.

    Args:
        paths: pool image paths (row order of ``TrainData``).
        preprocess: the encoder's PIL -> (3, H, W) transform.
        recipe, image_size, n_views, seed: the ``SeededAugment`` views; ``salt = step`` gives fresh views
            every step while staying a pure function of (image, view, seed, step).
    """

    def __init__(self, paths: list[Path], preprocess: Callable, *, recipe: str, image_size: int, n_views: int,
                 seed: int) -> None:
        from ada_utils.augment import SeededAugment

        self.paths, self.preprocess, self.n_views = list(paths), preprocess, n_views
        self.augs = [SeededAugment(recipe, image_size, view=v, seed=seed) for v in range(n_views)]

    def inputs(self, rows: torch.Tensor, pick: torch.Tensor | None, step: int) -> torch.Tensor:
        """(B, 3, H, W) float32 images."""
        from ada_utils.data.images import load_image

        picks = [self.n_views] * len(rows) if pick is None else pick.tolist()
        out = []
        for row, view in zip(rows.tolist(), picks):
            img = load_image(self.paths[row])
            out.append(self.preprocess(self.augs[view](img, salt=step) if view < self.n_views else img))
        return torch.stack(out)


# ----------------------------------------------------------------------------- losses of one step
class _Step:
    """Plans the batch of a step, computes its loss; holds the nearest-neighbour table and bank.

    A step's batch is a pure function of (seed, step): the epoch's permutation and the view picks come from
    ``_generator``, so a resumed run (or a DataLoader worker) draws exactly what the original run drew.
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, rows: np.ndarray, source, *, rank: int = 0,
                 world: int = 1) -> None:
        self.cfg, self.source, self.rank, self.world = cfg, source, rank, world
        self.rows = torch.from_numpy(rows.astype(np.int64))
        self.domain = torch.from_numpy(data.domain.astype(np.int64))
        self.supervised = cfg.method == "supervised"
        if self.supervised:
            if data.pairs is None or data.pair_model is None:
                raise ValueError("method='supervised' needs TrainData.pairs and pair_model (training pairs)")
            self.pairs = torch.from_numpy(data.pairs.astype(np.int64))
            self.pair_model = torch.from_numpy(data.pair_model.astype(np.int64))
        self.uses_nn = cfg.uses_alignment and cfg.alignment != "views"
        self.nn_table = torch.full((len(data.domain),), -1, dtype=torch.int64)
        self.bank = torch.zeros(len(data.domain), data.feats.shape[1])
        d = data.feats.shape[1]
        smallest = min(cfg.batch_size, len(rows)) * (min((data.domain[rows] == g).mean() for g in (0, 1))
                                                       if cfg.cov_mode == "per_domain" else 1.0)
        self.form = cfg.form if cfg.form != "auto" else ("logdet" if smallest > 1.5 * d else "coding_rate")
        self.n_items = len(self.pairs) if self.supervised else len(self.rows)
        self.batch_size = min(cfg.batch_size, self.n_items)
        self.steps_per_epoch = max(1, self.n_items // self.batch_size)

    def _picks(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two different view indices per row in [0, V] (V = the plain image)."""
        v = self.source.n_views
        a = torch.randint(0, v + 1, (n,), generator=g)
        return a, (a + 1 + torch.randint(0, max(1, v), (n,), generator=g)) % (v + 1)

    def batch(self, step: int, w: np.ndarray) -> dict:
        """Inputs of ``step`` (CPU tensors) for this process's shard of the global batch."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        items = torch.randperm(self.n_items, generator=_generator(self.cfg.seed, "epoch", epoch))
        items = items[pos * self.batch_size:(pos + 1) * self.batch_size][self.rank::self.world]
        pick_a, pick_b = self._picks(len(items), _generator(self.cfg.seed, "views", step))
        if not self.supervised and self.cfg.alignment == "xdomain_nn":
            pick_a = torch.full_like(pick_a, self.source.n_views)  # NN pairs are made between plain images
        if self.supervised:
            groups = [(self.pairs[items, 0], pick_a), (self.pairs[items, 1], pick_b)]
        else:
            rows = self.rows[items]
            groups = [(rows, pick_a)]
            if w[0] > 0 and self.cfg.alignment in ("views", "both"):
                groups.append((rows, pick_b))
        return {"items": items, "rows": groups[0][0], "sizes": [len(r) for r, _ in groups],
                "x": torch.cat([self.source.inputs(r, p, step) for r, p in groups]),
                "domain": torch.cat([self.domain[r] for r, _ in groups])}

    @torch.no_grad()
    def refresh_nn(self, model: torch.nn.Module, device: torch.device, step: int, *, chunk: int = 1024) -> None:
        """Embed every training row (plain image), then pair each synthetic row with its nearest real row
        (cosine, in the current head space) and, with ``nn_symmetric``, each real row with its nearest synthetic."""
        from ada_utils.losses import cross_domain_nn_positives

        for part in self.rows.split(chunk):
            x = self.source.inputs(part, None, step).to(device)
            self.bank[part] = model(x, self.domain[part].to(device)).float().cpu()
        real, synth = self.rows[self.domain[self.rows] == 0], self.rows[self.domain[self.rows] == 1]
        self.nn_table[synth] = real[cross_domain_nn_positives(self.bank[synth], self.bank[real])]
        if self.cfg.nn_symmetric:
            self.nn_table[real] = synth[cross_domain_nn_positives(self.bank[real], self.bank[synth])]

    def loss(self, model: torch.nn.Module, batch: dict, w: np.ndarray, device: torch.device
             ) -> tuple[torch.Tensor, dict]:
        """Loss of a planned batch with term weights ``w`` = (w_A, w_D); returns (loss, float parts)."""
        from ada_utils import losses

        cfg = self.cfg
        amp = cfg.amp and device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            z = model(batch["x"].to(device, non_blocking=True), batch["domain"].to(device)).float()
        zs = z.split(batch["sizes"])
        if self.supervised:
            pair_model = self.pair_model[batch["items"]].to(device)
            loss = losses.pair_contrastive_loss(zs[0], zs[1], temperature=cfg.tau, model=pair_model)
            return loss, {"loss_pairs": float(loss.detach())}
        za, dom, parts, total = zs[0], batch["domain"][: batch["sizes"][0]].to(device), {}, 0.0
        if w[0] > 0:
            terms = []
            if cfg.alignment in ("views", "both"):
                terms.append(losses.info_nce_loss(za, zs[1], temperature=cfg.tau))
            if cfg.alignment in ("xdomain_nn", "both"):  # NNCLR-style: the positive comes from the bank (no grad)
                partner = self.nn_table[batch["rows"]]
                keep = (partner >= 0).to(device)
                terms.append(losses.info_nce_loss(za[keep], self.bank[partner[partner >= 0]].to(device),
                                                  temperature=cfg.tau))
            la = torch.stack(terms).mean()
            parts["loss_align"], total = float(la.detach()), total + w[0] * la
        if w[1] > 0:
            if cfg.gather and self.world > 1:  # global covariance across processes (documented flag)
                za, dom = _all_gather(za), _all_gather(dom)
            if cfg.infomax == "gaussian":
                ld = losses.infomax_loss(za, eps=cfg.eps, mode=cfg.cov_kind, form=self.form, domain=dom,
                                         per_domain=cfg.cov_mode == "per_domain")
            else:
                ld = losses.infomax_ica_loss(za, _unwrap(model).heads.real.weight,
                                             nonlinearity=cfg.ica_nonlinearity)
            parts["loss_infomax"], total = float(ld.detach()), total + w[1] * ld
        return total, parts


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process, keeping the gradient of the local part."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x))


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, stepper: _Step,
                     step: int) -> None:
    """Model, optimiser state, NN table/bank and RNG states in one safetensors file, written atomically."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict = {}
    for pid, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().clone().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    tensors.update({"nn_table": stepper.nn_table.clone(), "nn_bank": stepper.bank.clone(),
                    "rng.torch": torch.get_rng_state()})
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "param_groups": sd["param_groups"], "opt_scalars": scalars}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"json": json.dumps(meta)})
    tmp.replace(path)


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, stepper: _Step) -> int:
    """Restore what ``_save_checkpoint`` wrote; returns the step to continue from."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["json"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    stepper.nn_table.copy_(tensors["nn_table"])
    stepper.bank.copy_(tensors["nn_bank"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"])


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


def _run_header(cfg: TrainConfig, data: TrainData, rows: np.ndarray, model: DomainHeads) -> dict:
    from ada_utils.config import hardware, library_versions

    return {"config": dataclasses.asdict(cfg), "data_hash": data.fingerprint(with_pairs=cfg.method == "supervised"),
            "n_rows": int(len(rows)), "feature_dim": int(data.feats.shape[1]), "head_kind": model.kind,
            "shared": model.shared, "library_versions": library_versions(), "hardware": hardware(),
            "status": "running"}


def _prepare_dir(out_dir: Path, header: dict, *, resume: bool, overwrite: bool) -> bool:
    """Check what ``out_dir`` holds; returns True when a finished identical run can be reused (resume)."""
    from ada_utils.io import read_json

    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        return False
    old = read_json(cfg_path)
    if overwrite:
        for name in ("config.json", "log.jsonl", "checkpoint.safetensors", "head.safetensors", "encoder.safetensors",
                     "encoder.json"):
            (out_dir / name).unlink(missing_ok=True)
        return False
    if not resume:
        state = "a finished" if old.get("status") == "finished" else "an unfinished"
        raise FileExistsError(f"{out_dir} already holds {state} run; pass overwrite=True to retrain it from "
                              "scratch, resume=True to continue it, or choose another folder")
    diff = sorted(k for k, v in header["config"].items()
                  if k not in _RESUME_FREE and old.get("config", {}).get(k) != v)
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {old['config'].get(k)!r} vs now {header['config'][k]!r}" for k in diff)
        raise ValueError(f"cannot resume {out_dir}: its checkpoint was made with other parameters ({pairs}); "
                         "use the same parameters, another folder, or overwrite=True")
    if old.get("data_hash") != header["data_hash"]:
        raise ValueError(f"cannot resume {out_dir}: the training data differ (data_hash {old.get('data_hash')} "
                         f"vs {header['data_hash']}); rebuild the same features or use overwrite=True")
    return old.get("status") == "finished"


class _Batches(torch.utils.data.Dataset):
    """Step ``i`` -> its planned batch; lets a DataLoader prepare image batches in worker processes."""

    def __init__(self, stepper: _Step, steps: range, weights: np.ndarray) -> None:
        self.stepper, self.steps, self.weights = stepper, steps, weights

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict:
        step = self.steps[i]
        return self.stepper.batch(step, self.weights[step])


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed only under torchrun with WORLD_SIZE > 1."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def train(cfg: TrainConfig, data: TrainData, out_dir: str | Path, *, encoder: torch.nn.Module | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_at: int | None = None) -> TrainResult | None:
    """Fit the head(s) of ``cfg.method`` on training data and write the run folder.

    Args:
        cfg: the run's parameters.
        data: the unlabelled training pool: cached features (+ views; + pairs for ``supervised``); with
            ``cfg.finetune != "frozen"`` also ``data.paths`` (images) and ``encoder``.
        out_dir: run folder (e.g. ``runs/03_train/ada-seed0``).
        encoder: the ``Encoder`` to fine-tune (image path only).
        resume: continue from ``checkpoint.safetensors`` (same config and data required); a finished run is
            loaded as is.
        overwrite: delete an existing run in ``out_dir`` and start again.
        progress: show a tqdm bar.
        stop_at: stop *before* this step without finishing (simulates a killed run; for tests).

    Returns:
        ``TrainResult``, or None when stopped by ``stop_at``.

    Raises:
        FileExistsError: ``out_dir`` holds a run and neither resume nor overwrite was given.
        ValueError: resuming with other parameters or data (the message names them).
        TrainingDivergedError: the loss or weights became NaN/inf (the last good checkpoint stays).
    """
    from tqdm.auto import tqdm

    from ada_utils.heads import EncoderWithHeads
    from ada_utils.io import write_json

    out_dir = Path(out_dir)
    rank, world = _distributed()
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    rows = select_rows(cfg, data)
    heads = build_model(cfg, data, rows)
    header = _run_header(cfg, data, rows, heads)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if _prepare_dir(out_dir, header, resume=resume, overwrite=overwrite):
            return TrainResult(out_dir, load_head(out_dir), _read_log(out_dir), 0.0, 0)
    if cfg.finetune == "frozen":
        source, encoder = FeatureSource(data), None
    else:
        if encoder is None or data.paths is None:
            raise ValueError(f"finetune={cfg.finetune!r} trains on images: pass encoder= and TrainData.paths")
        header["trainable_encoder_params"] = len(set_trainable(encoder, cfg.finetune, cfg.k_blocks))
        source = ImageSource(data.paths, encoder.preprocess, recipe=cfg.augment, image_size=cfg.image_size,
                             n_views=cfg.n_views, seed=cfg.seed)
    model = EncoderWithHeads(heads, encoder).to(device)
    stepper = _Step(cfg, data, rows, source, rank=rank, world=world)
    total = 0 if cfg.method in CLOSED_FORM else cfg.epochs * stepper.steps_per_epoch
    lrs, weights = lr_schedule(cfg, max(total, 1)), lambda_schedule(cfg, max(total, 1))
    header.update(steps=total, steps_per_epoch=stepper.steps_per_epoch, infomax_form=stepper.form, world_size=world)
    opt = _optimizer(cfg, model) if total else None
    start, ckpt = 0, out_dir / "checkpoint.safetensors"
    if resume and ckpt.is_file() and opt is not None:
        start = _load_checkpoint(ckpt, model, opt, stepper)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                                        else None)
    log = [r for r in _read_log(out_dir) if r["step"] < start]
    writer = open(out_dir / "log.jsonl", "w") if rank == 0 else None  # noqa: SIM115 (closed below)
    if writer is not None:
        write_json(out_dir / "config.json", header)
        writer.writelines(json.dumps(r) + "\n" for r in log)
    batches = _Batches(stepper, range(start, total), weights)
    loader = (batches[i] for i in range(len(batches))) if cfg.num_workers == 0 else torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    try:
        bar = tqdm(zip(range(start, total), loader), total=total - start, desc=f"train {cfg.method}",
                   disable=not progress or rank != 0, leave=False)
        for step, batch in bar:
            if stop_at is not None and step == stop_at:
                return None
            if stepper.uses_nn and step % cfg.nn_refresh == 0:
                stepper.refresh_nn(model, device, step)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            loss, parts = stepper.loss(net, batch, weights[step], device)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(_diverged(cfg, step, value, out_dir))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                raise TrainingDivergedError(_diverged(cfg, step, value, out_dir))
            rec = {"step": step, "epoch": step // stepper.steps_per_epoch, "lr": float(lrs[step]), "loss": value,
                   **parts}
            log.append(rec)
            bar.set_postfix(loss=f"{value:.4f}")
            if writer is not None:
                writer.write(json.dumps(rec) + "\n")
                if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                    writer.flush()
                    _save_checkpoint(ckpt, model, opt, stepper, step + 1)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    if rank == 0:
        if opt is not None:
            _save_checkpoint(ckpt, model, opt, stepper, total)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()},
                  str(out_dir / "head.safetensors"))
        if encoder is not None:
            from ada_utils.checkpoints import save_encoder_checkpoint

            save_encoder_checkpoint(encoder, out_dir / "encoder.safetensors")
        write_json(out_dir / "config.json", {**header, "status": "finished", "train_seconds": seconds})
    return TrainResult(out_dir, heads.cpu().eval(), log, seconds, total)


def _diverged(cfg: TrainConfig, step: int, loss: float, out_dir: Path) -> str:
    return (f"training diverged at step {step}: loss={loss} or the weights became NaN/inf (method={cfg.method!r}, "
            f"lr={cfg.lr}, lam={cfg.lam}, eps={cfg.eps}). The last good checkpoint is kept in "
            f"{out_dir / 'checkpoint.safetensors'}; lower lr, raise eps or grad_clip, then run again.")


def _read_log(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


# ----------------------------------------------------------------------------- using a trained head
def load_head(run_dir: str | Path) -> DomainHeads:
    """Rebuild the head(s) of a finished run from ``config.json`` + ``head.safetensors`` (CPU, eval mode)."""
    from ada_utils.io import read_json

    run_dir = Path(run_dir)
    header = read_json(run_dir / "config.json")
    if header.get("status") != "finished" or not (run_dir / "head.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir}: no finished run (config.json status {header.get('status')!r}); "
                                "train it first (notebooks/03_train.ipynb or `ada train`)")
    model = DomainHeads(header["head_kind"], header["feature_dim"], shared=header["shared"])
    model.load_state_dict(load_file(str(run_dir / "head.safetensors")))
    return model.eval()


def feature_maps(run: str | Path | DomainHeads, *, chunk: int = 8192
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(real_map, synth_map)``: numpy callables (N, D) float32 -> (N, D') for ``evaluate(bf, real_map=...)``.

    Args:
        run: a run folder or a ``DomainHeads`` already loaded.
        chunk: rows per forward pass.
    """
    model = run if isinstance(run, DomainHeads) else load_head(run)
    model = model.cpu().eval()

    def make(domain: int) -> Callable[[np.ndarray], np.ndarray]:
        @torch.no_grad()
        def apply(x: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            return torch.cat([model.forward_domain(c, domain) for c in x.split(chunk)]).numpy()
        return apply

    return make(0), make(1)


# ----------------------------------------------------------------------------- comparing variants (04_ablations)
def per_query_metrics(bf, *, real_map: Callable | None = None, synth_map: Callable | None = None,
                      ks: tuple[int, ...] = (5, 10, 100)) -> dict[str, dict[str, np.ndarray]]:
    """Per-query official metrics of every cell: ``{cell: {"R@5": (Q,), ..., "AP": (Q,), "model": (Q,)}}``.

    Same protocol, gallery and maps as ``evaluate.evaluate`` (``cell_means`` of this equals its output); the
    per-query values feed the paired bootstrap over models. ``model`` ids are unique across test cases.
    """
    from ada_utils.retrieval import abc_metrics

    offset, qs, qms, exs, ems, cells, start = 0, [], [], [], [], [], 0
    for name, case in bf.cases.items():
        exs.append(case.exemplars)
        ems.append(case.exemplar_model + offset)
        for prompt, q in case.queries.items():
            qs.append(q)
            qms.append(case.query_model[prompt] + offset)
            cells.append((f"{name}/{prompt}", slice(start, start + len(q))))
            start += len(q)
        offset += int(case.exemplar_model.max()) + 1
    qm = np.concatenate(qms)
    res = abc_metrics(np.concatenate(qs), qm, np.concatenate(exs), np.concatenate(ems), bf.distractors, ks,
                      real_map=real_map, synth_map=synth_map)
    return {name: {**{f"R@{k}": np.asarray(res["recall_per_query"][k][sl]) for k in ks},
                   "AP": np.asarray(res["ap"][sl]), "model": qm[sl]} for name, sl in cells}


def cell_means(per_query: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """``evaluate``-format cell metrics (``R@k``, ``mAP``, ``n_queries``) from ``per_query_metrics``."""
    return {cell: {**{k: float(v.mean()) for k, v in d.items() if k.startswith("R@")}, "mAP": float(d["AP"].mean()),
                   "n_queries": len(d["AP"])} for cell, d in per_query.items()}


def run_variant(cfg: TrainConfig, data: TrainData, bf, out_dir: str | Path, *, progress: bool = False) -> dict:
    """Train one variant (replacing any run in ``out_dir``), evaluate it, write ``metrics.json``.

    Returns:
        ``{"cells": evaluate-format metrics, "per_query": per_query_metrics, "seconds": training time,
        "steps": int}``.
    """
    from ada_utils.io import write_json

    res = train(cfg, data, out_dir, overwrite=True, progress=progress)
    real_map, synth_map = feature_maps(res.model)
    pq = per_query_metrics(bf, real_map=real_map, synth_map=synth_map)
    cells = cell_means(pq)
    write_json(Path(out_dir) / "metrics.json", {"cells": cells, "config": dataclasses.asdict(cfg),
                                                "train_seconds": res.seconds, "steps": res.steps})
    return {"cells": cells, "per_query": pq, "seconds": res.seconds, "steps": res.steps}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, model: np.ndarray, *, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean difference ``a - b`` over queries and its 95 % paired bootstrap interval, resampling *models*.

    Args:
        a, b: (Q,) per-query metric of two methods on the same queries (e.g. means over seeds).
        model: (Q,) model id of each query; models are drawn with replacement, all their queries kept.
        n_boot: bootstrap replicates. seed: RNG seed.

    Returns:
        (difference, 2.5 % quantile, 97.5 % quantile).
    """
    ids, inverse = np.unique(model, return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(a, np.float64) - np.asarray(b, np.float64), minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    boot = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(sums.sum() / counts.sum()), float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    """Design section 8: ">" when the interval lies above zero, "≥" when not entirely below, else "<"."""
    return ">" if lo > 0 else ("≥" if hi >= 0 else "<")


def validation_split(root: str | Path, data: TrainData, *, every: int = 4):
    """A validation benchmark carved from the *training* split, for choosing defaults without test cells.

    Every ``every``-th training model is a validation model: its synthetic images are queries, its exemplars the
    targets, and the exemplars of the other training models are the distractors (real images). Unsupervised
    variants may still train on the whole unlabelled pool (they never see the pairs); the supervised baseline
    must train on the returned ``train_data`` (pairs of validation models removed).

    Returns:
        (``evaluate.BenchmarkFeatures`` with one case ``"val"``, ``TrainData`` without validation pairs).
    """
    from ada_utils.data import json_path, load_test_case
    from ada_utils.evaluate import BenchmarkFeatures, CaseFeatures

    if data.paths is None:
        raise ValueError("validation_split needs TrainData.paths (use training_data)")
    case = load_test_case(json_path(root, "train_all"), root=root)
    row = {Path(p).resolve(): i for i, p in enumerate(data.paths)}
    val = [m for m in range(len(case.models)) if m % every == 0]
    new_id = {m: i for i, m in enumerate(val)}
    ex_rows = [[row[Path(p).resolve()] for p in case.models[m].exemplars] for m in range(len(case.models))]
    queries, query_model = {}, {}
    for prompt in case.prompt_types:
        keep = [(row[Path(p).resolve()], new_id[m]) for p, m in zip(case.queries[prompt],
                                                                    case.query_model[prompt].tolist()) if m in new_id]
        if keep:
            queries[prompt] = data.feats[[k for k, _ in keep]]
            query_model[prompt] = np.asarray([m for _, m in keep], dtype=np.int64)
    exemplars = [r for m in val for r in ex_rows[m]]
    exemplar_model = np.asarray([new_id[m] for m in val for _ in ex_rows[m]], dtype=np.int64)
    distractors = [r for m in range(len(case.models)) if m not in new_id for r in ex_rows[m]]
    bf = BenchmarkFeatures({"val": CaseFeatures(queries, query_model, data.feats[exemplars], exemplar_model)},
                           data.feats[distractors], {})
    train_data = data
    if data.pairs is not None:
        keep = data.pair_model % every != 0
        train_data = dataclasses.replace(data, pairs=data.pairs[keep], pair_model=data.pair_model[keep])
    return bf, train_data
