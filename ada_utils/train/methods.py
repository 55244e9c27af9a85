"""The methods of a training run, one small unit each: what it fits, from what, and where its head starts.

A method (``TrainConfig.method``) is a :class:`Method`: the terms of its loss and their weights, whether it is
solved in closed form, whether the real and synthetic images get one head or two, how the heads start, and (for a
closed-form method) the fit itself. The training loop (:mod:`.loop`) and the step (:mod:`.step`) ask the unit and
never test a method's name, as MoCo v3's ``builder.py`` holds its method in one class.

=============  =======================================  ==========================================================
method         fits                                     from
=============  =======================================  ==========================================================
pretrained     nothing (identity head, no centring)     —
whiten         ZCA whitening, pooled or per domain      unlabelled training features
ica            whitening, then one FastICA rotation     unlabelled training features
align          heads by gradient: alignment InfoNCE     augmented views and/or cross-domain nearest neighbours
disentangle    heads by gradient: Infomax loss          unlabelled training features
ada            L_A + λ L_D, closed form or gradient     views / nearest neighbours, and the features' covariance
supervised     a real and a synthetic head (AbC)        labelled (exemplar, synthetic) training pairs
=============  =======================================  ==========================================================

Every fit uses training rows only (never test cells); only ``supervised`` reads ``TrainData.pairs``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ada_utils.heads import DomainHeads

if TYPE_CHECKING:
    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData

Maps = list[tuple[np.ndarray, np.ndarray]]  # one affine map (W, b) per head: real (and synthetic)

ICA_COMPONENTS = 128  # FastICA sources of the closed-form ICA control (the leading PCA-whitened coordinates)


class Method:
    """One method: its loss weights, its solver, its heads and, in closed form, its fit (defaults: a gradient run)."""

    name: ClassVar[str]
    reads_pairs: ClassVar[bool] = False  # fitted from labelled training pairs (the supervised baseline only)
    aligns: ClassVar[bool] = False  # has the unsupervised alignment term (views / nearest-neighbour positives)
    disentangles: ClassVar[bool] = False  # has the Infomax term
    centred: ClassVar[bool] = True  # inputs centred by the training means (``cfg.center``)
    whitening: ClassVar[str] = "zca"  # the whitening a whitened start uses

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        """Weights (w_A, w_D) of the alignment and disentanglement (Infomax) terms of the loss."""
        raise NotImplementedError

    def closed_form(self, cfg: TrainConfig) -> bool:
        """Fitted without gradient steps."""
        return False

    def shared(self, cfg: TrainConfig) -> bool:
        """One head for both domains (else a real and a synthetic head, CCA's A and B)."""
        return cfg.heads == "shared"

    def init(self, cfg: TrainConfig) -> str:
        """Where the heads start: "identity" or "whiten" (a closed-form fit starts from it too)."""
        return "whiten" if cfg.init == "auto" else cfg.init

    def schedule(self, cfg: TrainConfig, total_steps: int) -> np.ndarray:
        """Per-step weights (total_steps, 2) of (L_A, L_D)."""
        return np.tile(np.asarray(self.weights(cfg), dtype=np.float64), (total_steps, 1))

    def fit(self, cfg: TrainConfig, data: TrainData, rows: np.ndarray, fit: WhiteFit) -> Maps:
        """The closed-form maps, given the whitened start ``fit``: the start itself unless a method says more."""
        return fit.maps

    def check(self, cfg: TrainConfig) -> None:
        """Raise ValueError for knobs this method cannot use."""


class Pretrained(Method):
    name, centred = "pretrained", False

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        return 0.0, 0.0

    def closed_form(self, cfg: TrainConfig) -> bool:
        return True

    def shared(self, cfg: TrainConfig) -> bool:
        return True

    def init(self, cfg: TrainConfig) -> str:
        return "identity"


class Whiten(Pretrained):
    name, centred = "whiten", True

    def shared(self, cfg: TrainConfig) -> bool:
        return cfg.cov_mode != "per_domain"

    def init(self, cfg: TrainConfig) -> str:
        return "whiten"


class ICA(Whiten):
    name, whitening = "ica", "pca"

    def shared(self, cfg: TrainConfig) -> bool:
        return True

    def fit(self, cfg: TrainConfig, data: TrainData, rows: np.ndarray, fit: WhiteFit) -> Maps:
        """One FastICA rotation, fitted on the pooled whitened training features of both domains (per-domain rotations
        would order and sign the sources differently in each domain), applied to the top-k PCA-whitened coordinates
        (k = ``ICA_COMPONENTS``: FastICA on all D takes minutes on a CPU); the other coordinates pass unchanged, so
        the map stays square."""
        from ada_utils.whitening import fit_fastica

        maps = fit.maps
        k = min(ICA_COMPONENTS, maps[0][0].shape[0])
        pooled = np.concatenate([fit.xc[mask] @ w[:k].T + b[:k] for mask, (w, b) in zip(fit.masks, maps)])
        w_ica, b_ica = fit_fastica(pooled, seed=cfg.seed)
        for w, b in maps:
            w[:k], b[:k] = w_ica @ w[:k], w_ica @ b[:k] + b_ica
        return maps


class Align(Method):
    name, aligns = "align", True

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        return 1.0, 0.0


class Disentangle(Method):
    name, disentangles = "disentangle", True

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        return 0.0, 1.0


class Ada(Method):
    """L = L_A + λ L_D: solved exactly for a linear head on frozen features (``solver="closed_form"``: squared-distance
    alignment of unlabelled positive pairs under the Gaussian Infomax term, :func:`ada_utils.closed_form.ada_head`), or
    trained by gradient (InfoNCE alignment, any head, two-stage or joint schedule)."""

    name, aligns, disentangles = "ada", True, True

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        return 1.0, cfg.lam

    def closed_form(self, cfg: TrainConfig) -> bool:
        return cfg.solver == "closed_form"

    def init(self, cfg: TrainConfig) -> str:
        return "whiten" if self.closed_form(cfg) else super().init(cfg)

    def schedule(self, cfg: TrainConfig, total_steps: int) -> np.ndarray:
        w = super().schedule(cfg, total_steps)
        if cfg.schedule == "two_stage":  # alignment alone for the first stage1_frac of the steps
            w[: int(cfg.stage1_frac * total_steps), 1] = 0.0
        return w

    def check(self, cfg: TrainConfig) -> None:
        if not self.closed_form(cfg):
            return
        wrong = {k: getattr(cfg, k) for k, ok in (("head", "linear"), ("finetune", "frozen"), ("infomax", "gaussian"))
                 if getattr(cfg, k) != ok}
        if wrong or not cfg.lam > 0:
            raise ValueError(f"solver='closed_form' solves a linear head on frozen features with the Gaussian "
                             f"Infomax and lam > 0; got {wrong or {'lam': cfg.lam}}: use solver='gradient'")

    def fit(self, cfg: TrainConfig, data: TrainData, rows: np.ndarray, fit: WhiteFit) -> Maps:
        """``ada_head`` on top of the whitened start, fitted on the training rows' unlabelled positive pairs
        (``cfg.alignment``): each row with its cached augmented views, and/or mutual nearest real/synthetic
        neighbours in the whitened space, or the pool's fixed pseudo-pairs (``"pairs"``). Keeps ``ada_head``'s info in ``fit.info``."""
        from ada_utils.closed_form import ada_head, pair_scatter
        from ada_utils.pseudo_pairs import mutual_nn

        if not self.closed_form(cfg):
            return fit.maps
        u, dom, scatters = fit.whiten(data.feats[rows]), fit.dom, []
        if cfg.alignment in ("views", "both"):
            if data.views is None or len(data.views) == 0:
                raise ValueError(f"alignment={cfg.alignment!r} pairs each image with its augmented views: build "
                                 "TrainData with n_views >= 1")
            scatters.append(np.mean([pair_scatter(u, fit.whiten(v[rows])) for v in data.views], axis=0))
        if cfg.alignment == "pairs":  # fixed pseudo-pairs of the pool: (synthetic, real) rows of the fit
            pairs = _fixed_pairs(data, rows)
            scatters.append(pair_scatter(u[pairs[:, 0]], u[pairs[:, 1]]))
        if cfg.alignment in ("xdomain_nn", "both"):
            synth, real = np.flatnonzero(dom == 1), np.flatnonzero(dom == 0)
            pairs = mutual_nn(u[synth], u[real])
            if len(pairs) == 0:
                raise ValueError("alignment='xdomain_nn': no mutual nearest real/synthetic neighbours in the training "
                                 "rows")
            scatters.append(pair_scatter(u[synth[pairs[:, 0]]], u[real[pairs[:, 1]]]))
        head, fit.info = ada_head(np.mean(scatters, axis=0), cfg.lam)
        return [(head @ w, head @ b) for w, b in fit.maps]


def _fixed_pairs(data: TrainData, rows: np.ndarray) -> np.ndarray:
    """(P, 2) positions in ``rows`` of (synthetic, real) fixed positives (``TrainData.positives``) inside ``rows``."""
    if data.positives is None:
        raise ValueError("alignment='pairs' fits on fixed pseudo-pairs: build TrainData with positives "
                         "(ada_utils.eval.mechanism.with_positives)")
    where = np.full(len(data.feats), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    synth = rows[data.domain[rows] == 1]
    partner = data.positives[synth]
    ok = (partner >= 0) & (where[np.clip(partner, 0, None)] >= 0)
    if not ok.any():
        raise ValueError("alignment='pairs': no fixed pseudo-pair joins two training rows")
    return np.stack([where[synth[ok]], where[partner[ok]]], axis=1)


class Supervised(Method):
    """AbC's baseline: a real and a synthetic head, identity at the start, InfoNCE over labelled training pairs (the
    first weight of its loss; it has neither unsupervised alignment positives nor the Infomax term)."""

    name, reads_pairs = "supervised", True

    def weights(self, cfg: TrainConfig) -> tuple[float, float]:
        return 1.0, 0.0

    def shared(self, cfg: TrainConfig) -> bool:
        return False

    def init(self, cfg: TrainConfig) -> str:
        return "identity" if cfg.init == "auto" else cfg.init


UNITS: dict[str, Method] = {m.name: m for m in (Pretrained(), Whiten(), ICA(), Align(), Disentangle(), Ada(),
                                                Supervised())}


def method_of(cfg: TrainConfig) -> Method:
    """The unit of ``cfg.method``."""
    return UNITS[cfg.method]


# ----------------------------------------------------------------------------- the heads of a run
class WhiteFit:
    """The whitened start of a closed-form fit: per-head maps on the centred training rows.

    Attributes:
        xc: (n, D) float64 centred training rows; dom: (n,) their domains; masks: rows of each head;
        maps: the whitening (W, b) of each head; centers: (real, synthetic) input means; info: what a fit reports.
    """

    def __init__(self, xc: np.ndarray, dom: np.ndarray, masks: list[np.ndarray], maps: Maps,
                 centers: tuple[np.ndarray, np.ndarray]) -> None:
        self.xc, self.dom, self.masks, self.maps, self.centers = xc, dom, masks, maps, centers
        self.info: dict | None = None

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """Training rows (row order of the fit) -> whitened coordinates of their heads."""
        xc = x.astype(np.float64) - np.where(self.dom[:, None] == 1, self.centers[1], self.centers[0])
        out = np.empty_like(xc)
        for mask, (w, b) in zip(self.masks, self.maps):
            out[mask] = xc[mask] @ w.T + b
        return out


def _centers(cfg: TrainConfig, unit: Method, x: np.ndarray, dom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed input centring (real, synthetic) from training rows."""
    zero = np.zeros(x.shape[1])
    if cfg.center == "none" or not unit.centred:
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
    unit = method_of(cfg)
    torch.manual_seed(cfg.seed)
    shared = unit.shared(cfg)
    model = DomainHeads("linear" if unit.closed_form(cfg) else cfg.head, data.feats.shape[1], shared=shared)
    x, dom = data.feats[rows].astype(np.float64), data.domain[rows]
    centers = _centers(cfg, unit, x, dom)
    model.set_centers(*(torch.from_numpy(c) for c in centers))
    if unit.init(cfg) == "identity":
        return model
    xc = x - np.where(dom[:, None] == 1, centers[1], centers[0])
    groups = [(model.real, dom >= 0)] if shared else [(model.real, dom == 0), (model.synth, dom == 1)]
    shrink = "ledoit_wolf" if cfg.shrinkage < 0 else cfg.shrinkage
    start = WhiteFit(xc, dom, [mask for _, mask in groups],
                     [whitening_map(unit.whitening, shrink, xc[mask]) for _, mask in groups], centers)
    maps = unit.fit(cfg, data, rows, start) if unit.closed_form(cfg) else start.maps
    if start.info is not None:
        model.fit_info = start.info
    for (head, _), (w, b) in zip(groups, maps):
        _set_linear(head, w.astype(np.float32), b.astype(np.float32))
    return model
