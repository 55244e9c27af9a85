"""Soft attribution: AbC's calibrated, truncated softmax over gallery scores, its loss and fit, and the measures
of a calibrated distribution.

Form (AbC's released ``Calibrator``): for the cosine scores ``s`` of one query over its gallery,

    t_j = relu(exp(κ (s_j − max_k s_k)) + g b),      p_j = t_j / Σ_k t_k,

with ``κ = inv_tau`` and ``b = bias`` the two fitted parameters and ``g = 10⁻³`` a fixed gain. A negative bias
gives every item whose exponential term falls below ``−g b`` exactly zero probability (the truncation); the
best-scoring item always keeps ``1 + g b > 0``. Fitting replaces ``relu`` by ``softplus`` with β = 100, as AbC
does, so that items below the cut still pass gradients. The loss of one query with true exemplars ``G`` is
AbC's

    L = log Σ_j t_j − (1/|G|) Σ_{g∈G} log t_g,

the mean negative log-probability of the true exemplars under the softplus form; it is also the NLL measure
reported here (it stays finite when ``relu`` would give a true exemplar zero probability).

``valid`` masks let one score matrix hold per-query galleries (AbC's protocol ranks each query against the
distractors plus its own model's exemplars only): masked items get no probability. The measures
(:func:`query_measures`, :func:`expected_calibration_error`, :func:`reliability`, :func:`auroc`) read the
benchmark's labels and are for evaluation only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

BIAS_GAIN = 1e-3
SOFTPLUS_BETA = 100.0


def _check(scores: Tensor, *masks: Tensor | None) -> None:
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"calibration: scores must be (queries, gallery) with a non-empty gallery, "
                         f"got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("calibration: scores contain NaN or infinite values (features of an undecoded image?)")
    for m in masks:
        if m is not None and m.shape != scores.shape:
            raise ValueError(f"calibration: a mask of shape {tuple(m.shape)} for scores {tuple(scores.shape)}")


class Calibrator(nn.Module):
    """AbC's calibrated, truncated softmax; ``state_dict()`` has AbC's keys (``inv_tau``, ``bias``)."""

    def __init__(self, inv_tau: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.inv_tau = nn.Parameter(torch.tensor(float(inv_tau)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    @property
    def cut(self) -> Tensor:
        """``g · bias``: added to every exponential term before the threshold."""
        return self.bias * BIAS_GAIN

    def terms(self, scores: Tensor, valid: Tensor | None = None, *, smooth: bool = False) -> Tensor:
        """Unnormalised ``t`` (relu, or softplus with ``smooth``); masked items are 0."""
        _check(scores, valid)
        return _terms(scores, valid, self.inv_tau, self.cut, smooth=smooth)

    def forward(self, scores: Tensor, valid: Tensor | None = None) -> Tensor:
        """(Q, N) scores -> (Q, N) probabilities: non-negative, rows sum to 1, exact zeros below the cut."""
        if float(self.cut.detach()) <= -1:
            raise ValueError(f"calibrator bias {float(self.bias.detach()):.4g} cuts every item, the best one included "
                             f"(bias must exceed {-1 / BIAS_GAIN:g})")
        t = self.terms(scores, valid)
        return t / t.sum(dim=1, keepdim=True)

    def loss(self, scores: Tensor, positive: Tensor, valid: Tensor | None = None) -> Tensor:
        """(Q,) AbC's loss per query: mean negative log-probability of its true exemplars (softplus form)."""
        _check(scores, positive, valid)
        if valid is not None and (positive & ~valid).any():
            raise ValueError("calibration: a true exemplar lies outside its query's gallery (positive but not valid)")
        return _loss(self.terms(scores, valid, smooth=True), positive)

    def extra_repr(self) -> str:
        return f"inv_tau={float(self.inv_tau.detach()):.4g}, bias={float(self.bias.detach()):.4g}"


def fixed_temperature(tau: float) -> Calibrator:
    """The uncalibrated control: a plain softmax at temperature ``tau`` (no cut)."""
    if not tau > 0:
        raise ValueError(f"tau={tau}: the temperature must be positive")
    return Calibrator(inv_tau=1.0 / tau, bias=0.0)


def fit_calibrator(scores: Tensor, positive: Tensor, valid: Tensor | None = None, *, init_tau: float = 0.1,
                   max_iter: int = 200) -> Calibrator:
    """The calibrator minimising the mean :meth:`Calibrator.loss` over the queries (full-batch L-BFGS).

    ``inv_tau`` is fitted through its logarithm (it stays positive); ``bias`` starts at 0 (no cut), ``inv_tau``
    at ``1 / init_tau``. Deterministic: no sampling.
    """
    scores, positive = scores.double(), positive.bool()
    Calibrator().loss(scores, positive, valid)  # checks shapes, finiteness and that every query has an exemplar
    log_k = torch.tensor(float(np.log(1.0 / init_tau)), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_k, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        t = _terms(scores, valid, log_k.exp(), bias * BIAS_GAIN, smooth=True)
        loss = _loss(t, positive).mean()
        loss.backward()
        return loss

    opt.step(closure)
    if not (torch.isfinite(log_k) and torch.isfinite(bias)):
        raise FloatingPointError("fit_calibrator: the fit diverged (non-finite parameters)")
    return Calibrator(float(log_k.detach().exp()), float(bias.detach()))


def _terms(scores: Tensor, valid: Tensor | None, inv_tau: Tensor, cut: Tensor, *, smooth: bool) -> Tensor:
    if valid is not None:
        scores = scores.masked_fill(~valid, -torch.inf)
    z = torch.exp(inv_tau * (scores - scores.max(dim=1, keepdim=True).values)) + cut
    t = nn.functional.softplus(z, beta=SOFTPLUS_BETA) if smooth else torch.relu(z)
    return t if valid is None else t * valid


def _loss(t: Tensor, positive: Tensor) -> Tensor:
    count = positive.sum(dim=1)
    if (count == 0).any():
        raise ValueError(f"calibration: {int((count == 0).sum())} queries have no true exemplar in the gallery")
    log_t = torch.log(torch.where(positive, t, torch.ones_like(t)))
    return torch.log(t.sum(dim=1)) - log_t.sum(dim=1) / count


@torch.no_grad()
def query_measures(cal: Calibrator, scores: Tensor, positive: Tensor, valid: Tensor | None = None
                   ) -> dict[str, np.ndarray]:
    """Per query (Q,): ``mass`` on the true exemplars, ``nll`` (:meth:`Calibrator.loss`), ``top1`` probability
    and whether the top-1 item is a true exemplar (``hit``; ties go to the lower index)."""
    p = cal(scores, valid)
    best = p.argmax(dim=1)
    rows = torch.arange(len(p))
    return {"mass": (p * positive).sum(dim=1).numpy(), "nll": cal.loss(scores, positive, valid).numpy(),
            "top1": p[rows, best].numpy(), "hit": positive[rows, best].numpy()}


def reliability(conf: np.ndarray, hit: np.ndarray, *, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of the top-1 probability: ``edges`` (bins+1), per bin ``count``, mean ``confidence``
    and ``accuracy`` (NaN in empty bins)."""
    conf, hit = np.asarray(conf, dtype=np.float64), np.asarray(hit, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        confidence = np.bincount(which, conf, minlength=bins) / count
        accuracy = np.bincount(which, hit, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(conf: np.ndarray, hit: np.ndarray, *, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / n) |accuracy_b − confidence_b| over equal-width bins of the top-1 probability."""
    r = reliability(conf, hit, bins=bins)
    used = r["count"] > 0
    gap = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((r["count"][used] * gap).sum() / r["count"].sum())


def auroc(conf: np.ndarray, hit: np.ndarray) -> float:
    """Area under the ROC curve of ``conf`` separating hits from misses (scikit-learn's ``roc_auc_score``; ties
    count half); NaN when all queries are hits or all are misses."""
    from sklearn.metrics import roc_auc_score

    conf, hit = np.asarray(conf, dtype=np.float64), np.asarray(hit, dtype=bool)
    if hit.all() or not hit.any():
        return float("nan")
    return float(roc_auc_score(hit, conf))
