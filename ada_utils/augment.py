"""Augmented views of training images for the alignment loss, deterministic per image.

Two recipes, PIL image in, PIL image out (the encoder's own ``preprocess`` runs afterwards):

- ``"generic"``: SimCLR-style views [0]: random resized crop, horizontal flip, colour jitter, greyscale and
  Gaussian blur. This is the "InfoNCE between augmented views" reading of alignment.
- ``"gap"``: a family the benchmark generator does **not** use for its media/fingerprint transforms
  (which are scene/pose/crop changes, sketch/paint/cartoon/halftone/pixel-art rendering, resampling,
  smoothing, colour cast and noise): perspective and rotation warps, occluding patches, tone
  quantisation (posterise / solarise / equalise / autocontrast) and colour-channel permutation. The point is
  a *different* family that still forces invariance to appearance changes; reusing the generator's own
  transforms would tune the method to the test set.

Sizes scale with ``image_size`` (blur kernel ≈ 10 % of the side, erased patches 2–12 % of the area, crops of at
least 35 % of the area), so the same recipe is sensible at 96, 128 or 224 px.

Determinism: a view's randomness is seeded from the image's pixels, the view index and the seed, so a cached
feature file of "view k" is reproducible whatever the order (or resumption) of the embedding pass.

[0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

from __future__ import annotations

import hashlib

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2 as T

RECIPES = ("generic", "gap")


def _odd(n: float) -> int:
    """The odd integer >= 3 closest to ``n`` (kernel sizes)."""
    k = max(3, int(round(n)))
    return k if k % 2 == 1 else k + 1


class _Occlude:
    """Paste 1-3 rectangles of the image's mean colour covering 2-12 % of the area each (torch RNG)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.copy()
        w, h = img.size
        mean = img.resize((1, 1)).getpixel((0, 0))
        draw = ImageDraw.Draw(img)
        for _ in range(int(torch.randint(1, 4, ()).item())):
            area = float(torch.empty(()).uniform_(0.02, 0.12)) * w * h
            aspect = float(torch.empty(()).uniform_(0.5, 2.0))
            rw, rh = min(w, int((area * aspect) ** 0.5)), min(h, int((area / aspect) ** 0.5))
            x0 = int(torch.randint(0, max(1, w - rw + 1), ()).item())
            y0 = int(torch.randint(0, max(1, h - rh + 1), ()).item())
            draw.rectangle([x0, y0, x0 + rw, y0 + rh], fill=mean)
        return img


class _ChannelShuffle:
    """Permute the RGB channels (a colour change that is not a cast: hue order changes)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        order = torch.randperm(3).tolist()
        bands = img.split()
        return Image.merge("RGB", [bands[i] for i in order])


def build_recipe(recipe: str, image_size: int) -> T.Compose:
    """The random transform of a recipe (uses torch's global RNG; wrap in ``SeededAugment`` for determinism).

    Args:
        recipe: ``"generic"`` or ``"gap"`` (see the module docstring).
        image_size: side of the output image in pixels (the encoder's input size).
    """
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small for augmentations (need >= 16 px)")
    if recipe == "generic":
        return T.Compose([
            T.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(_odd(0.1 * image_size), sigma=(0.1, 2.0))], p=0.5),
        ])
    if recipe == "gap":
        return T.Compose([
            T.Resize(image_size, antialias=True),
            T.CenterCrop(image_size),
            T.RandomApply([T.RandomPerspective(distortion_scale=0.35, p=1.0)], p=0.5),
            T.RandomApply([T.RandomRotation(15)], p=0.5),
            T.RandomHorizontalFlip(),
            T.RandomChoice([T.RandomPosterize(bits=3, p=1.0), T.RandomSolarize(threshold=160, p=1.0),
                            T.RandomEqualize(p=1.0), T.RandomAutocontrast(p=1.0)]),
            T.RandomApply([_ChannelShuffle()], p=0.3),
            T.RandomApply([_Occlude()], p=0.5),
        ])
    raise ValueError(f"augment recipe={recipe!r} is unknown; choose one of {RECIPES}")


class SeededAugment:
    """A recipe whose randomness depends only on (image pixels, view, seed): reproducible views for caching.

    Args:
        recipe: ``"generic"`` | ``"gap"``.
        image_size: output side in pixels.
        view: index of the view (0, 1, ...): different views of one image differ.
        seed: global seed.

    Example:
        >>> aug = SeededAugment("gap", 128, view=1)
        >>> feats = embed_images(encoder, paths, transform=aug, transform_key=aug.key)  # doctest: +SKIP
    """

    def __init__(self, recipe: str, image_size: int, *, view: int = 0, seed: int = 0) -> None:
        self.recipe, self.image_size, self.view, self.seed = recipe, image_size, view, seed
        self._tf = build_recipe(recipe, image_size)

    @property
    def key(self) -> str:
        """A string that identifies these views in a feature-cache manifest."""
        return f"augment-{self.recipe}-{self.image_size}px-view{self.view}-seed{self.seed}-v1"

    def _seed_for(self, img: Image.Image, salt: int) -> int:
        digest = hashlib.sha256(img.tobytes())
        digest.update(f"{img.size}|{self.view}|{self.seed}|{salt}".encode())
        return int.from_bytes(digest.digest()[:8], "little") & ((1 << 63) - 1)

    def __call__(self, img: Image.Image, *, salt: int = 0) -> Image.Image:
        """Augment one RGB PIL image; ``salt`` (e.g. the epoch) draws a fresh view on the image path."""
        img = img.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed_for(img, salt))
            return self._tf(img)

    def __repr__(self) -> str:
        return f"SeededAugment(recipe={self.recipe!r}, image_size={self.image_size}, view={self.view}, seed={self.seed})"


class ViewTransform:
    """``preprocess(augment(img))``: an augmented view in the encoder's input format (picklable for workers).

    Pass it as ``embed_images(..., transform=ViewTransform(aug, encoder.preprocess), transform_key=aug.key)``.
    """

    def __init__(self, augment: SeededAugment, preprocess) -> None:
        self.augment, self.preprocess = augment, preprocess

    def __call__(self, img: Image.Image):
        return self.preprocess(self.augment(img))
