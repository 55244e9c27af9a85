"""An encoder split before its last ``k`` blocks: the frozen prefix, whose activations are cached once, and the
trainable tail, which training runs from those activations.

Fine-tuning the last blocks of an encoder (``finetune="last_k"``) recomputes the frozen layers for every image of
every step. On a CPU that is the whole cost. Yet the frozen layers' output for a fixed image (or a fixed augmented
view) never changes, so it can be computed once: :class:`PrefixEncoder` maps an image to the flattened input of
``blocks[-k]`` (an ``embed_images``-compatible encoder, so the activations are cached like features), and
:class:`Tail` maps those activations through ``blocks[-k:]``, the layers after them and the pooling, to the
encoder's features. ``Tail(PrefixEncoder(x)) == encoder(x)`` and both share the encoder's parameters: training the
tail fine-tunes the encoder, and gradients equal those of the image path (``tests/test_split.py``).

Families: timm's EfficientNet (``conv_stem``, ``bn1``, stages in ``blocks``, ``conv_head``, ``bn2``) and Vision
Transformer (``patch_embed``, position embedding, ``blocks``, ``norm``): the project's backbones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Per family: the modules forward_features applies before and after ``blocks``.
_AFTER = {"efficientnet": ("conv_head", "bn2"), "vit": ("norm",)}


def family(backbone: nn.Module) -> str:
    """``"efficientnet"`` or ``"vit"`` from the backbone's modules (ValueError for any other)."""
    if all(hasattr(backbone, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return "efficientnet"
    if all(hasattr(backbone, n) for n in ("patch_embed", "_pos_embed", "blocks", "norm")):
        return "vit"
    raise ValueError(f"the cached last-block path knows EfficientNet and ViT backbones; {type(backbone).__name__} "
                     "is neither: fine-tune it from images (finetune_from='images')")


def _check_k(backbone: nn.Module, k: int) -> None:
    if not 1 <= k < len(backbone.blocks):
        raise ValueError(f"k_blocks={k}: the backbone has {len(backbone.blocks)} blocks; the cached path needs "
                         f"1 <= k_blocks < {len(backbone.blocks)}")


def prefix_forward(backbone: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The input of ``blocks[-k]`` for preprocessed images ``x`` (B, 3, H, W)."""
    if family(backbone) == "efficientnet":
        x = backbone.bn1(backbone.conv_stem(x))
    else:
        x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(x))))
    for block in list(backbone.blocks)[:-k]:
        x = block(x)
    return x


class PrefixEncoder(nn.Module):
    """An encoder's frozen layers before ``blocks[-k]``: images (B, 3, H, W) -> flattened activations (B, dim).

    It has what :func:`ada_utils.encoders.embed.embed_images` reads (``preprocess``, ``spec``, ``dim``,
    ``image_size``), so the activations of a pool and its views are embedded and cached exactly as features are
    (the spec names the split, so the caches never mix). ``shape`` is one image's activation shape.
    """

    def __init__(self, encoder: nn.Module, k: int) -> None:
        super().__init__()
        _check_k(encoder.backbone, k)
        self.encoder, self.k = encoder, k
        self.preprocess, self.image_size, self.name = encoder.preprocess, encoder.image_size, encoder.name
        was_training = encoder.training
        encoder.eval()  # the probe must not move BatchNorm statistics
        with torch.no_grad():
            probe = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=next(encoder.parameters()).device)
            self.shape = tuple(prefix_forward(encoder.backbone, probe, k).shape[1:])
        encoder.train(was_training)
        self.dim = math.prod(self.shape)
        self.spec = {**encoder.spec, "output": f"input of blocks[-{k}]", "shape": list(self.shape), "dim": self.dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prefix_forward(self.encoder.backbone, x, self.k).flatten(1).float()


class Tail(nn.Module):
    """``blocks[-k:]``, the layers after them and the pooling head of an encoder: flattened prefix activations
    (B, dim) -> features (B, D). Its modules are the encoder's own (shared parameters), so its state dict holds the
    trainable tail alone and training it fine-tunes the encoder."""

    def __init__(self, encoder: nn.Module, k: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        backbone = encoder.backbone
        _check_k(backbone, k)
        self.shape, self.k = tuple(shape), k
        self.blocks = nn.ModuleList(list(backbone.blocks)[-k:])
        self.after = nn.ModuleList([getattr(backbone, n) for n in _AFTER[family(backbone)]])
        names = [n for n, _ in backbone.named_children()]
        # The pooling head's modules (forward_head reads them from the backbone): registered, so that the tail's
        # state dict is exactly what finetune="last_k" trains (every module after blocks[-k:]).
        self.pool = nn.ModuleList([getattr(backbone, n) for n in names[names.index("blocks") + 1:]
                                   if n not in _AFTER[family(backbone)]])
        self._backbone = [backbone]  # not registered: the backbone's other modules stay out of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), *self.shape)
        for module in (*self.blocks, *self.after):
            x = module(x)
        return self._backbone[0].forward_head(x).float()
