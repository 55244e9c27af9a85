"""Alignment (InfoNCE) and disentanglement (Infomax) losses, and the supervised baseline's pair loss.

Conventions: rows are samples, columns feature dimensions; ``z`` is ``(B, D)``. Every loss L2-normalises its
inputs where the docstring says so and returns a 0-dim tensor (float32, or float64 for float64 inputs) that is
computed outside autocast, so float16/bfloat16 inputs give finite values and log-dets never run in half
precision. Bad shapes, NaNs and unusable batch sizes raise ``ValueError`` naming the parameter and the fix.

References:
    [0] Unsupervised Synthetic Image Attribution: Alignment and Disentanglement, arXiv 2601.22663. Only the
        abstract is available; the losses below are the reconstruction of the book's method page (``book/method.md``).
    [1] He et al., Momentum Contrast, CVPR 2020; Chen, Xie, He, An Empirical Study of Training Self-Supervised
        Vision Transformers (MoCo v3), ICCV 2021 (github.com/facebookresearch/moco-v3, ``moco/builder.py``).
    [2] Bell & Sejnowski, An information-maximization approach to blind separation and blind deconvolution,
        Neural Computation 7(6), 1995.
    [3] Yu et al., Learning Diverse and Discriminative Representations via the Principle of Maximal Coding
        Rate Reduction (MCR²), NeurIPS 2020.
    [4] Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning (NNCLR),
        ICCV 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "info_nce_loss",
    "InfoNCELoss",
    "gathered_info_nce_loss",
    "infomax_loss",
    "InfomaxLoss",
    "infomax_ica_loss",
    "pair_contrastive_loss",
    "cross_domain_nn_positives",
]


def _check_2d(fn: str, name: str, x: Tensor, *, min_rows: int = 1) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{fn}: `{name}` must be a (B, D) tensor, got {shape}.")
    if x.shape[0] < min_rows:
        raise ValueError(f"{fn}: `{name}` needs at least {min_rows} rows, got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{fn}: `{name}` {tuple(x.shape)} contains NaN or inf; check the encoder/head and lr.")


def _check_pair(fn: str, names: tuple[str, str], a: Tensor, b: Tensor, temperature: float) -> None:
    """Shared checks of the two-view contrastive losses: two (B, D) tensors of one shape, temperature > 0."""
    _check_2d(fn, names[0], a)
    _check_2d(fn, names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"{fn}: `{names[0]}` {tuple(a.shape)} and `{names[1]}` {tuple(b.shape)} must have the "
                         "same shape.")
    if not temperature > 0:
        raise ValueError(f"{fn}: `temperature` must be > 0, got {temperature}.")


def _work_dtype(*xs: Tensor) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32 (never half precision)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


# ---------------------------------------------------------------- alignment: InfoNCE
def info_nce_loss(
    q: Tensor, k: Tensor, *, temperature: float = 0.1, symmetric: bool = True, queue: Tensor | None = None
) -> Tensor:
    r"""InfoNCE between matching rows of ``q`` and ``k`` (positives on the diagonal), MoCo style [1].

    .. math:: \mathcal{L}_{q\to k} = -\frac1B\sum_i \log
              \frac{e^{\hat q_i\cdot\hat k_i/\tau}}{\sum_j e^{\hat q_i\cdot\hat k_j/\tau}
              + \sum_m e^{\hat q_i\cdot\hat u_m/\tau}}

    with :math:`\hat{\cdot}` the L2-normalised rows and :math:`u_m` the optional ``queue`` of extra negatives.
    ``symmetric=True`` returns :math:`\tfrac12(\mathcal{L}_{q\to k} + \mathcal{L}_{k\to q})` (the queue gives
    negatives to both directions). With a momentum encoder the caller passes detached ``k``. MoCo v3's extra
    factor :math:`2\tau` is not applied (it only rescales the learning rate).

    Args:
        q: ``(B, D)`` queries (e.g. view 1 through the online encoder + predictor).
        k: ``(B, D)`` keys; row ``i`` is the positive of ``q[i]``.
        temperature: softmax temperature τ > 0.
        symmetric: average the q→k and k→q directions.
        queue: optional ``(K, D)`` bank of extra negatives (MoCo v1/v2), treated as constants.

    Returns:
        0-dim loss; ``log(B + K)`` for uninformative features, → 0 when positives dominate.
    """
    fn = "info_nce_loss"
    _check_pair(fn, ("q", "k"), q, k, temperature)
    if queue is not None:
        _check_2d(fn, "queue", queue)
        if queue.shape[1] != q.shape[1]:
            raise ValueError(f"{fn}: `queue` {tuple(queue.shape)} must have D={q.shape[1]} columns like `q`.")
    dtype = _work_dtype(q, k)
    with _no_autocast(q):
        qn, kn = F.normalize(q.to(dtype), dim=1), F.normalize(k.to(dtype), dim=1)
        un = None if queue is None else F.normalize(queue.detach().to(dtype), dim=1)
        labels = torch.arange(q.shape[0], device=q.device)

        def direction(a: Tensor, b: Tensor) -> Tensor:
            logits = a @ b.T if un is None else torch.cat([a @ b.T, a @ un.T], dim=1)
            return F.cross_entropy(logits / temperature, labels)

        loss = direction(qn, kn)
        return 0.5 * (loss + direction(kn, qn)) if symmetric else loss


def gathered_info_nce_loss(
    q: Tensor,
    k: Tensor,
    *,
    temperature: float = 0.1,
    symmetric: bool = True,
    rank: int = 0,
    gather: Callable[[Tensor], list[Tensor]] | None = None,
    model: Tensor | None = None,
) -> Tensor:
    r"""InfoNCE of this process's rows against the keys of *every* process (MoCo v3's ``contrastive_loss`` [1]).

    With W processes holding :math:`B_r` rows each (:math:`N = \sum_r B_r`), process ``rank`` scores its
    queries against all N gathered keys; the positive of its local row ``i`` sits at
    ``offset + i`` with ``offset`` = the rows of the lower ranks (``rank * B`` for equal shards), as in MoCo v3's
    ``labels = arange(N) + N * rank``. The loss of one process is

    .. math:: \mathcal{L}_r = \frac{W}{N} \sum_{i \in r} \ell_i ,

    so the mean of the W per-process losses (what DistributedDataParallel's gradient averaging optimises) is
    :func:`info_nce_loss` of the whole global batch, whatever W: adding GPUs does not remove negatives. With
    equal shards :math:`\mathcal{L}_r` is the mean over the local rows. ``symmetric=True`` also scores the local
    keys against all gathered queries. Keys are not detached: the gradient reaches the local rows through
    ``gather`` (e.g. ``ada_utils.distributed.all_gather_with_grad(x, split=True)``).

    Args:
        q: ``(B_r, D)`` local queries (``B_r`` may be 0 when other processes hold rows).
        k: ``(B_r, D)`` local keys; row ``i`` is the positive of ``q[i]``.
        temperature: softmax temperature τ > 0.
        symmetric: average the q→k and k→q directions.
        rank: this process's index; entry ``rank`` of ``gather``'s list must be its own rows.
        gather: ``x (B_r, D) -> [x_0, ..., x_{W-1}]`` rows of every process in rank order. None: one process
            (then this equals :func:`info_nce_loss`).
        model: optional ``(B_r,)`` int model ids of the local rows (gathered like the rows): pairs of one model
            other than the positive are masked out, as in :func:`pair_contrastive_loss`, which this equals in
            one process with ``q=synth, k=real`` (the supervised baseline under torchrun).

    Returns:
        0-dim loss of this process (float32, float64 for float64 inputs).
    """
    fn = "gathered_info_nce_loss"
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"{fn}: `q` and `k` must be (B, D) tensors of one shape, got "
                         f"{tuple(getattr(q, 'shape', ()))} and {tuple(getattr(k, 'shape', ()))}.")
    if not temperature > 0:
        raise ValueError(f"{fn}: `temperature` must be > 0, got {temperature}.")
    parts_q, parts_k = ([q], [k]) if gather is None else (gather(q), gather(k))
    sizes = [p.shape[0] for p in parts_q]
    if not 0 <= rank < len(sizes) or sizes[rank] != q.shape[0] or sizes != [p.shape[0] for p in parts_k]:
        raise ValueError(f"{fn}: `gather` returned rows {sizes} (queries) and {[p.shape[0] for p in parts_k]} "
                         f"(keys) for rank {rank} with {q.shape[0]} local rows; it must return every process's "
                         "rows in rank order.")
    if model is not None and (model.shape != (q.shape[0],) or model.is_floating_point()):
        raise ValueError(f"{fn}: `model` must be a ({q.shape[0]},) int tensor, got {tuple(model.shape)}.")
    q_all, k_all = torch.cat(parts_q), torch.cat(parts_k)
    n_total, world, offset = q_all.shape[0], len(sizes), sum(sizes[:rank])
    labels = offset + torch.arange(q.shape[0], device=q.device)
    mask = None
    if model is not None:  # (B_r, N): same model, not the positive
        model_all = model if gather is None else torch.cat(gather(model))
        mask = model[:, None] == model_all[None, :]
        mask[torch.arange(q.shape[0], device=q.device), labels] = False
    if n_total == 0:
        raise ValueError(f"{fn}: no rows on any process; raise the batch size.")
    for name, x in (("q", q_all), ("k", k_all)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{fn}: gathered `{name}` {tuple(x.shape)} contains NaN or inf; check the head and lr.")
    dtype = _work_dtype(q, k)
    with _no_autocast(q):
        qn, kn = F.normalize(q.to(dtype), dim=1), F.normalize(k.to(dtype), dim=1)
        qa, ka = F.normalize(q_all.to(dtype), dim=1), F.normalize(k_all.to(dtype), dim=1)

        def direction(a: Tensor, b_all: Tensor) -> Tensor:
            logits = a @ b_all.T / temperature
            logits = logits if mask is None else logits.masked_fill(mask, float("-inf"))
            ce = F.cross_entropy(logits, labels, reduction="sum")
            return ce * (world / n_total)

        loss = direction(qn, ka)
        return 0.5 * (loss + direction(kn, qa)) if symmetric else loss


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce_loss` (temperature and symmetry fixed at construction)."""

    def __init__(self, *, temperature: float = 0.1, symmetric: bool = True) -> None:
        super().__init__()
        self.temperature, self.symmetric = temperature, symmetric

    def forward(self, q: Tensor, k: Tensor, queue: Tensor | None = None) -> Tensor:
        return info_nce_loss(q, k, temperature=self.temperature, symmetric=self.symmetric, queue=queue)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"


# ---------------------------------------------------------------- disentanglement: Gaussian Infomax
def _infomax_group(z: Tensor, *, eps: float, mode: str, form: str, fn: str, where: str) -> Tensor:
    n, d = z.shape
    if n < 2:
        raise ValueError(f"{fn}: {where} has n={n} sample(s); a covariance needs at least 2 (raise the batch size).")
    if form == "logdet" and n <= d:
        raise ValueError(
            f"{fn}: {where} has n={n} <= d={d} samples, so its covariance is singular and the log-det form "
            f"only measures eps; use form='coding_rate' (defined for n < d) or a batch larger than {d}."
        )
    zc = z - z.mean(dim=0, keepdim=True)
    if mode == "corr":  # unit variance per dimension; the tiny floor keeps constant dimensions finite
        zc = zc / (zc.pow(2).mean(dim=0, keepdim=True) * n / (n - 1) + 1e-12).sqrt()
    if form == "logdet":
        cov = zc.T @ zc / (n - 1)
        mat = cov + eps * torch.eye(d, dtype=z.dtype, device=z.device)
    else:  # coding rate: det(I_d + c ZᵀZ) = det(I_n + c Z Zᵀ) (Sylvester); use the smaller side
        c = d / (n * eps**2)
        gram = zc.T @ zc if d <= n else zc @ zc.T
        mat = torch.eye(gram.shape[0], dtype=z.dtype, device=z.device) + c * gram
    chol, info = torch.linalg.cholesky_ex(mat.double())
    if info.item() != 0:
        raise ValueError(f"{fn}: {where}: the regularised matrix is not positive definite; raise `eps` (={eps}).")
    logdet = chol.diagonal().log().sum() * 2.0
    return (-0.5 * logdet).to(z.dtype)


def infomax_loss(
    z: Tensor,
    *,
    eps: float = 1e-3,
    mode: str = "cov",
    form: str = "logdet",
    domain: Tensor | None = None,
    per_domain: bool = False,
) -> Tensor:
    r"""Gaussian Infomax (disentanglement) loss on L2-normalised batch embeddings [0; book/method.md].

    ``form="logdet"`` (default):

    .. math:: \mathcal{L}_D = -\tfrac12 \log\det\big(\widehat{\mathrm{Cov}}(\hat z) + \varepsilon I_d\big),
              \qquad \hat z_n = z_n / \lVert z_n \rVert .

    For a Gaussian code this is the entropy (information) term up to constants. Because the rows are unit
    vectors, :math:`\mathrm{tr}\,\widehat{\mathrm{Cov}} = 1 - \lVert\bar{\hat z}\rVert^2 \le 1` is bounded,
    and for a fixed trace :math:`t` the sum :math:`\sum_i \log\lambda_i` is maximal (AM–GM) when every
    eigenvalue equals :math:`t/d`: the optimum is an isotropic, i.e. decorrelated and equal-variance, code —
    the whitening constraint of CCA without any pairs. ``form="coding_rate"`` is MCR²'s rate [3]

    .. math:: \mathcal{L}_D = -\tfrac12 \log\det\big(I_d + \tfrac{d}{n\varepsilon^2} Z^\top Z\big),

    (``Z`` the centred ``(n, d)`` batch), defined also when ``n <= d`` (computed on the ``min(n, d)`` side by
    Sylvester's identity); MCR² uses ε² ≈ 0.5, a small ε makes it a log pseudo-determinant.
    ``mode="corr"`` standardises every dimension first (correlation matrix: only decorrelation is rewarded).
    Log-dets use a float64 Cholesky outside autocast.

    Args:
        z: ``(B, D)`` embeddings (any float dtype; half precision is upcast).
        eps: ridge ε of the log-det form, or ε of the coding rate.
        mode: ``"cov"`` or ``"corr"``.
        form: ``"logdet"`` or ``"coding_rate"``.
        domain: ``(B,)`` int tensor {0 real, 1 synthetic}; used only with ``per_domain=True``.
        per_domain: average the loss over the domain groups (each group centred on its own mean) instead of
            one pooled covariance.

    Returns:
        0-dim loss (float32, float64 for float64 ``z``); lower = more spread-out code.
    """
    fn = "infomax_loss"
    if mode not in ("cov", "corr"):
        raise ValueError(f"{fn}: `mode` must be 'cov' or 'corr', got {mode!r}.")
    if form not in ("logdet", "coding_rate"):
        raise ValueError(f"{fn}: `form` must be 'logdet' or 'coding_rate', got {form!r}.")
    if not eps > 0:
        raise ValueError(f"{fn}: `eps` must be > 0, got {eps}.")
    _check_2d(fn, "z", z, min_rows=2)
    kw = {"eps": eps, "mode": mode, "form": form, "fn": fn}
    with _no_autocast(z):
        zn = F.normalize(z.to(_work_dtype(z)), dim=1)
        if not per_domain:
            return _infomax_group(zn, where=f"the batch {tuple(z.shape)}", **kw)
        if domain is None or domain.shape != (z.shape[0],) or domain.is_floating_point():
            got = None if domain is None else f"{tuple(domain.shape)} {domain.dtype}"
            raise ValueError(f"{fn}: per_domain=True needs `domain` as a ({z.shape[0]},) int tensor, got {got}.")
        losses = [
            _infomax_group(zn[domain == g], where=f"domain {int(g)} of the batch {tuple(z.shape)}", **kw)
            for g in torch.unique(domain)
        ]
        return torch.stack(losses).mean()


class InfomaxLoss(nn.Module):
    """Module form of :func:`infomax_loss`; ``forward(z, domain=None)``."""

    def __init__(
        self, *, eps: float = 1e-3, mode: str = "cov", form: str = "logdet", per_domain: bool = False
    ) -> None:
        super().__init__()
        self.kw = {"eps": eps, "mode": mode, "form": form, "per_domain": per_domain}

    def forward(self, z: Tensor, domain: Tensor | None = None) -> Tensor:
        return infomax_loss(z, domain=domain, **self.kw)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kw.items())


# ---------------------------------------------------------------- disentanglement: Infomax ICA
def infomax_ica_loss(y: Tensor, weight: Tensor, *, nonlinearity: str = "logistic") -> Tensor:
    r"""Bell–Sejnowski Infomax ICA loss [2] for a square linear head ``y = z Wᵀ``.

    .. math:: \mathcal{L}_{ICA} = -\log\lvert\det W\rvert - \frac1B\sum_n\sum_i \log g'(y_{ni})

    i.e. the negative log-likelihood of ``z`` under independent sources with density ``g'`` (up to a
    constant). Stable forms: logistic :math:`\log g'(y) = -\mathrm{softplus}(-y) - \mathrm{softplus}(y)`;
    tanh :math:`\log(1-\tanh^2 y) = 2(\log 2 - y - \mathrm{softplus}(-2y))` (both super-Gaussian priors).
    The ``-log|det W|`` part is the Gaussian whitening term; the nonlinearity picks the rotation whitening
    leaves free. ``slogdet`` runs in float64 outside autocast.

    Args:
        y: ``(B, D)`` head outputs ``z @ weight.T`` (a bias or input centring is allowed: it does not change
            ``det W``; not normalised: the scale is part of the model).
        weight: ``(D, D)`` square head weight ``W``.
        nonlinearity: ``"logistic"`` or ``"tanh"``.

    Returns:
        0-dim loss (float32, float64 for float64 inputs).
    """
    fn = "infomax_ica_loss"
    _check_2d(fn, "y", y)
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or weight.shape[0] != y.shape[1]:
        raise ValueError(
            f"{fn}: `weight` must be square (D, D) with D = y.shape[1]; got y {tuple(y.shape)}, weight "
            f"{tuple(weight.shape)} (Infomax ICA needs an invertible square head)."
        )
    dtype = _work_dtype(y, weight)
    with _no_autocast(y):
        yf = y.to(dtype)
        if nonlinearity == "logistic":
            log_gprime = -F.softplus(-yf) - F.softplus(yf)
        elif nonlinearity == "tanh":
            log_gprime = 2.0 * (math.log(2.0) - yf - F.softplus(-2.0 * yf))
        else:
            raise ValueError(f"{fn}: `nonlinearity` must be 'logistic' or 'tanh', got {nonlinearity!r}.")
        sign, logabsdet = torch.linalg.slogdet(weight.double())
        if sign == 0:
            raise ValueError(f"{fn}: `weight` {tuple(weight.shape)} is singular; re-initialise the head.")
        return -logabsdet.to(dtype) - log_gprime.sum(dim=1).mean()


# ---------------------------------------------------------------- supervised baseline + NN positives
def pair_contrastive_loss(
    real: Tensor,
    synth: Tensor,
    *,
    temperature: float = 0.07,
    symmetric: bool = True,
    model: Tensor | None = None,
) -> Tensor:
    r"""Supervised baseline loss (AbC's tuned features): InfoNCE over (exemplar, synthetic) pairs.

    Row ``i`` of ``real`` and ``synth`` come from the same model (concept); the other rows are negatives,
    except rows of the same model when ``model`` is given (their logits are masked out, so two images of one
    model are never pushed apart). Direction synth→real (query → exemplar, as in retrieval);
    ``symmetric=True`` averages it with real→synth. Inputs are L2-normalised.

    Args:
        real: ``(B, D)`` exemplar features (after the real-domain map).
        synth: ``(B, D)`` synthetic features (after the synthetic-domain map).
        temperature: τ > 0.
        symmetric: average both directions.
        model: optional ``(B,)`` int tensor of model ids.

    Returns:
        0-dim loss.
    """
    fn = "pair_contrastive_loss"
    _check_pair(fn, ("real", "synth"), real, synth, temperature)
    if model is not None and (model.shape != (real.shape[0],) or model.is_floating_point()):
        raise ValueError(f"{fn}: `model` must be a ({real.shape[0]},) int tensor, got {tuple(model.shape)}.")
    dtype = _work_dtype(real, synth)
    with _no_autocast(real):
        rn, sn = F.normalize(real.to(dtype), dim=1), F.normalize(synth.to(dtype), dim=1)
        logits = sn @ rn.T / temperature  # (B synth, B real)
        if model is not None:
            same = model[:, None] == model[None, :]
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(real.shape[0], device=real.device)
        loss = F.cross_entropy(logits, labels)
        return 0.5 * (loss + F.cross_entropy(logits.T, labels)) if symmetric else loss


@torch.no_grad()
def cross_domain_nn_positives(z_synth: Tensor, z_real_bank: Tensor, *, chunk_size: int = 4096) -> Tensor:
    """Index of the cosine-nearest real feature for each synthetic feature (NNCLR-style positives [4]).

    Pure and gradient-free. For the symmetric direction (nearest synthetic neighbour of each real feature)
    call ``cross_domain_nn_positives(z_real, z_synth_bank)``.

    Args:
        z_synth: ``(N, D)`` queries.
        z_real_bank: ``(M, D)`` bank.
        chunk_size: queries per block (bounds memory to ``chunk_size x M``).

    Returns:
        ``(N,)`` int64 indices into ``z_real_bank``.
    """
    fn = "cross_domain_nn_positives"
    _check_2d(fn, "z_synth", z_synth)
    _check_2d(fn, "z_real_bank", z_real_bank)
    if z_synth.shape[1] != z_real_bank.shape[1]:
        raise ValueError(f"{fn}: dims differ: z_synth {tuple(z_synth.shape)}, z_real_bank {tuple(z_real_bank.shape)}.")
    with _no_autocast(z_synth):
        bank = F.normalize(z_real_bank.float(), dim=1)
        queries = F.normalize(z_synth.float(), dim=1)
        return torch.cat([(c @ bank.T).argmax(dim=1) for c in queries.split(chunk_size)])
