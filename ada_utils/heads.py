"""Heads trained on top of (frozen or fine-tuned) encoder features.

Conventions: rows are samples; a head maps features ``(N, D)`` float32 to embeddings ``(N, D_out)`` float32.
Every head starts as the identity map (linear: ``W = I``, ``b = 0``; MLP: a residual branch whose last layer is
zero), so step 0 of training reproduces the pretrained features exactly, as AbC's tuned linear maps do [1].

A fixed, non-trainable input centring (``center`` buffer, from unlabelled *training* features) can be set
per domain: ``DomainHeads`` subtracts the real mean from real images and the synthetic mean from synthetic
ones before the map, which removes the first-order real-vs-synthetic shift without any pair labels.

[1] Wang et al., "Evaluating Data Attribution for Text-to-Image Models", ICCV 2023 (AbC); code
    github.com/PeterWang512/GenDataAttribution.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_KINDS = ("linear", "mlp")


class LinearHead(nn.Module):
    """``y = W x + b`` with ``W`` initialised to the (rectangular) identity and ``b = 0``.

    Args:
        dim: input dimension D.
        out_dim: output dimension (default D); the identity is ``eye(out_dim, dim)``.
        bias: learn an offset.
    """

    def __init__(self, dim: int, *, out_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.linear = nn.Linear(dim, out_dim, bias=bias)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(out_dim, dim))
            if bias:
                self.linear.bias.zero_()

    @property
    def weight(self) -> torch.Tensor:
        """The square (or rectangular) matrix ``W`` (out_dim, dim), used by the Infomax-ICA loss."""
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, out_dim)."""
        return self.linear(x)


class MLPHead(nn.Module):
    """Residual MLP ``y = W0 x + W2 gelu(W1 x)``: ``W0 = I``, ``W2 = 0`` at init, so it starts as the identity.

    Args:
        dim: input and output dimension D.
        hidden: hidden width (default D).
    """

    def __init__(self, dim: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = dim if hidden is None else hidden
        self.skip = LinearHead(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The linear skip matrix (D, D): the square part the ICA log-det term acts on."""
        return self.skip.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D)."""
        return self.skip(x) + self.fc2(nn.functional.gelu(self.fc1(x)))


def make_head(kind: str, dim: int, *, hidden: int | None = None) -> nn.Module:
    """Build a head by name: ``"linear"`` or ``"mlp"`` (both identity at init)."""
    if kind == "linear":
        return LinearHead(dim)
    if kind == "mlp":
        return MLPHead(dim, hidden=hidden)
    raise ValueError(f"head={kind!r} is not a head kind; choose one of {HEAD_KINDS}")


class DomainHeads(nn.Module):
    """One head shared by both domains (``shared=True``, the unsupervised method) or a real and a synthetic head.

    Domain flags follow the training pool (``ada_utils.data.pools``): 0 = real, 1 = synthetic. Each domain has a
    fixed centring buffer (zeros unless ``set_centers`` is called with training-split means).

    Args:
        kind: ``"linear"`` | ``"mlp"``.
        dim: feature dimension D.
        shared: one head for both domains; else two (AbC's supervised baseline: real map and synthetic map).
        hidden: hidden width of an MLP head.
    """

    def __init__(self, kind: str, dim: int, *, shared: bool = True, hidden: int | None = None) -> None:
        super().__init__()
        self.kind, self.dim, self.shared = kind, dim, shared
        self.real = make_head(kind, dim, hidden=hidden)
        self.synth = self.real if shared else make_head(kind, dim, hidden=hidden)
        self.register_buffer("center", torch.zeros(2, dim))

    def set_centers(self, real_mean: torch.Tensor, synth_mean: torch.Tensor) -> None:
        """Fix the input centring per domain: rows (real, synthetic) of shape (D,) each."""
        with torch.no_grad():
            self.center.copy_(torch.stack([real_mean, synth_mean]).to(self.center))

    def head_for(self, domain: int) -> nn.Module:
        """The head applied to domain 0 (real) or 1 (synthetic)."""
        return self.synth if domain == 1 else self.real

    def forward_domain(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """Map features (N, D) that all come from one domain."""
        return self.head_for(domain)(x - self.center[domain])

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Map a mixed batch: ``x`` (N, D) float, ``domain`` (N,) int in {0, 1} -> (N, D_out)."""
        if x.ndim != 2 or domain.shape != x.shape[:1]:
            raise ValueError(f"DomainHeads: expected x (N, D) and domain (N,), got {tuple(x.shape)} and "
                             f"{tuple(domain.shape)}")
        is_synth = (domain == 1).unsqueeze(1)
        if self.shared:
            return self.real(x - self.center[domain.long()])
        return torch.where(is_synth, self.forward_domain(x, 1), self.forward_domain(x, 0))


class EncoderWithHeads(nn.Module):
    """``heads(encoder(x), domain)``: one module, so DistributedDataParallel sees a single forward per step.

    Args:
        heads: the ``DomainHeads`` of the run.
        encoder: a module mapping preprocessed images (B, 3, H, W) to features (B, D), or None when the inputs
            already are (cached) features.
    """

    def __init__(self, heads: DomainHeads, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.encoder = encoder

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images or (B, D) features, domain (B,) -> (B, D_out) float32."""
        feats = x if self.encoder is None else self.encoder(x)
        return self.heads(feats.float(), domain)

    @property
    def center(self) -> torch.Tensor:
        """The heads' centring buffer (its device is the model's)."""
        return self.heads.center

    def forward_domain(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """Inputs that all come from one domain -> (N, D_out), as ``DomainHeads.forward_domain``."""
        feats = x if self.encoder is None else self.encoder(x)
        return self.heads.forward_domain(feats.float(), domain)
