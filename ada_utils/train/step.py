"""One training step: its inputs (cached features or images), its planned batch and its loss.

A step's batch is a pure function of ``(seed, step)`` (``_generator``): a resumed run, or a DataLoader
worker (``StepBatches``), draws exactly what the original run drew. Under ``torchrun`` the *global* batch is
drawn (rows and view picks) and process ``rank`` takes every ``world``-th item of it, so W processes see the
same global batch as one; InfoNCE scores each process's rows against the keys gathered from all of them
(``losses.gathered_info_nce_loss``), and the nearest-neighbour refresh is sharded across processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ada_utils.distributed import all_gather, all_gather_with_grad

if TYPE_CHECKING:
    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run on ``device``: None (float32) on the CPU or with ``amp=False``, else
    ``cfg.amp_dtype`` (bfloat16, or float16 with a gradient scaler)."""
    if not cfg.amp or device.type != "cuda":
        return None
    return AMP_DTYPES[cfg.amp_dtype]


def _generator(seed: int, tag: str, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, tag, step): the source of every random draw."""
    digest = hashlib.sha256(f"{seed}|{tag}|{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


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
class Step:
    """Plans the batch of a step, computes its loss; holds the nearest-neighbour table and bank.

    A step's batch is a pure function of (seed, step): the epoch's permutation and the view picks come from
    ``_generator``, so a resumed run (or a DataLoader worker) draws exactly what the original run drew.
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, rows: np.ndarray, source, *, rank: int = 0,
                 world: int = 1) -> None:
        self.cfg, self.source, self.rank, self.world = cfg, source, rank, world
        self.rows = torch.from_numpy(rows.astype(np.int64))
        self.domain = torch.from_numpy(data.domain.astype(np.int64))
        self.supervised = cfg.unit.reads_pairs
        if self.supervised:
            if data.pairs is None or data.pair_model is None:
                raise ValueError("method='supervised' needs TrainData.pairs and pair_model (training pairs)")
            self.pairs = torch.from_numpy(data.pairs.astype(np.int64))
            self.pair_model = torch.from_numpy(data.pair_model.astype(np.int64))
        self.uses_nn = cfg.uses_alignment and cfg.alignment != "views"
        self.fixed = cfg.uses_alignment and cfg.alignment == "pairs"  # positives given, never searched
        if self.fixed and data.positives is None:
            raise ValueError("alignment='pairs' trains on fixed pseudo-pairs: build TrainData with positives "
                             "(ada_utils.eval.mechanism.with_positives)")
        self.nn_table = torch.full((len(data.domain),), -1, dtype=torch.int64)
        if self.fixed:  # a positive outside the training rows has no embedding in the bank
            pos = torch.from_numpy(data.positives.astype(np.int64))
            inside = torch.zeros(len(data.domain), dtype=torch.bool)
            inside[self.rows] = True
            self.nn_table[self.rows] = torch.where(inside[pos[self.rows].clamp(min=0)] & (pos[self.rows] >= 0),
                                                   pos[self.rows], -1)
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
        items = items[pos * self.batch_size:(pos + 1) * self.batch_size]
        # Draw for the global batch, then shard: the same rows and views whatever the number of processes.
        pick_a, pick_b = self._picks(len(items), _generator(self.cfg.seed, "views", step))
        shard = slice(self.rank, None, self.world)
        items, pick_a, pick_b = items[shard], pick_a[shard], pick_b[shard]
        if not self.supervised and self.cfg.alignment in ("xdomain_nn", "pairs"):
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
        (cosine, in the current head space) and, with ``nn_symmetric``, each real row with its nearest synthetic.
        With ``alignment="pairs"`` the positives are fixed (``TrainData.positives``): only the bank is refreshed.

        Each process embeds every ``world``-th row (under autocast on CUDA) and the shares are all-gathered,
        so every process ends with the same bank and table.
        """
        from ada_utils.losses import cross_domain_nn_positives

        dtype = autocast_dtype(self.cfg, device)
        mine, out = self.rows[self.rank::self.world], []
        for part in mine.split(chunk):
            x = self.source.inputs(part, None, step).to(device)
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                out.append(model(x, self.domain[part].to(device)).float())
        z = torch.cat(out) if out else torch.zeros(0, self.bank.shape[1], device=device)
        if self.world > 1:  # shares in rank order: rows[0::W], rows[1::W], ...
            z = all_gather(z)
            mine = torch.cat([self.rows[r::self.world] for r in range(self.world)])
        self.bank[mine] = z.cpu()
        if self.fixed:  # the bank follows the head; the pairs stay
            return
        real, synth = self.rows[self.domain[self.rows] == 0], self.rows[self.domain[self.rows] == 1]
        self.nn_table[synth] = real[cross_domain_nn_positives(self.bank[synth], self.bank[real])]
        if self.cfg.nn_symmetric:
            self.nn_table[real] = synth[cross_domain_nn_positives(self.bank[real], self.bank[synth])]

    def loss(self, model: torch.nn.Module, batch: dict, w: np.ndarray, device: torch.device
             ) -> tuple[torch.Tensor, dict]:
        """Loss of a planned batch with term weights ``w`` = (w_A, w_D); returns (loss, float parts)."""
        from ada_utils import losses

        cfg = self.cfg
        dtype = autocast_dtype(cfg, device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            z = model(batch["x"].to(device, non_blocking=True), batch["domain"].to(device)).float()
        zs = z.split(batch["sizes"])
        if self.supervised:
            pair_model = self.pair_model[batch["items"]].to(device)
            if self.world == 1:
                loss = losses.pair_contrastive_loss(zs[0], zs[1], temperature=cfg.tau, model=pair_model)
            else:  # negatives (and the same-model mask) from every process, as for InfoNCE
                loss = losses.gathered_info_nce_loss(zs[1], zs[0], temperature=cfg.tau, rank=self.rank,
                                                     gather=partial(all_gather_with_grad, split=True),
                                                     model=pair_model)
            return loss, {"loss_pairs": float(loss.detach())}
        za, dom, parts, total = zs[0], batch["domain"][: batch["sizes"][0]].to(device), {}, 0.0
        if w[0] > 0:
            terms = []
            if cfg.alignment in ("views", "both"):
                terms.append(self._info_nce(za, zs[1]))
            if cfg.alignment in ("xdomain_nn", "both", "pairs"):  # NNCLR-style: the positive from the bank (no grad)
                partner = self.nn_table[batch["rows"]]
                keep = (partner >= 0).to(device)
                terms.append(self._info_nce(za[keep], self.bank[partner[partner >= 0]].to(device)))
            la = torch.stack(terms).mean()
            parts["loss_align"], total = float(la.detach()), total + w[0] * la
        if w[1] > 0:
            if cfg.gather and self.world > 1:  # global covariance across processes (documented flag)
                za, dom = all_gather_with_grad(za), all_gather(dom)
            if cfg.infomax == "gaussian":
                ld = losses.infomax_loss(za, eps=cfg.eps, mode=cfg.cov_kind, form=self.form, domain=dom,
                                         per_domain=cfg.cov_mode == "per_domain")
            else:
                ld = ica_loss(_unwrap(model).heads, za, dom, nonlinearity=cfg.ica_nonlinearity)
            parts["loss_infomax"], total = float(ld.detach()), total + w[1] * ld
        return total, parts

    def _info_nce(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """InfoNCE of the local rows; under torchrun against the keys of every process (labels offset by rank)."""
        from ada_utils import losses

        if self.world == 1:
            return losses.info_nce_loss(q, k, temperature=self.cfg.tau)
        return losses.gathered_info_nce_loss(q, k, temperature=self.cfg.tau, rank=self.rank,
                                             gather=partial(all_gather_with_grad, split=True))


def ica_loss(heads: torch.nn.Module, y: torch.Tensor, domain: torch.Tensor, *, nonlinearity: str) -> torch.Tensor:
    """Infomax-ICA loss of a batch of head outputs ``y`` (B, D) with domains ``domain`` (B,).

    A shared head has one ``W``: ``losses.infomax_ica_loss(y, W)``. Per-domain heads (CCA's A and B) have two, and
    each domain's rows are the likelihood of that domain's head: the row-weighted mean over domains of
    ``infomax_ica_loss(y_g, W_g)``, so both heads carry their own ``−log|det W_g|`` (without it a head sees only
    ``−log g′(y)``, largest at y = 0, and shrinks to nothing).
    """
    from ada_utils import losses

    if heads.shared:
        return losses.infomax_ica_loss(y, heads.real.weight, nonlinearity=nonlinearity)
    total = y.new_zeros(())
    for g in (0, 1):
        rows = domain == g
        if bool(rows.any()):
            share = rows.sum() / len(rows)
            total = total + share * losses.infomax_ica_loss(y[rows], heads.head_for(g).weight,
                                                            nonlinearity=nonlinearity)
    return total


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class StepBatches(torch.utils.data.Dataset):
    """Step ``i`` -> its planned batch; lets a DataLoader prepare image batches in worker processes."""

    def __init__(self, stepper: Step, steps: range, weights: np.ndarray) -> None:
        self.stepper, self.steps, self.weights = stepper, steps, weights

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict:
        step = self.steps[i]
        return self.stepper.batch(step, self.weights[step])
