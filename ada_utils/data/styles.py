"""Styles of the style-centric test cases (the stand-in for BAM-FG / Artchive).

A style is a small set of parameters drawn once per model: a palette applied as a gradient map (colour ramp)
mixed with the original colours, optional tone quantisation and smoothing, a stroke/texture (hatching, canvas,
stipple, brush streaks or grain) and an edge treatment (none, dark outlines, light halo, soft vignette). The same
style applied to different photographs gives a model's real exemplars and, after the generator fingerprint, its
synthetic images of other content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from ada_utils.data.render import Rng, as_float, as_image

TEXTURES = ("hatch", "canvas", "stipple", "brush", "grain")
EDGES = ("none", "outline", "halo", "soft")


@dataclass(frozen=True)
class Style:
    """Parameters of one style (all plain numbers, so that styles are JSON-serialisable and picklable)."""

    palette: tuple[tuple[float, float, float], ...]  # ramp colours, dark to light, RGB in [0, 1]
    mix: float            # weight of the palette ramp against the original colours
    levels: int           # tone quantisation levels before the ramp (0 = none)
    smooth: int           # median filter size (1 = none)
    texture: str
    angle: float          # texture direction, degrees
    period: float         # texture period, pixels
    strength: float       # texture amplitude
    edge: str
    seed: int             # seeds the fixed canvas/grain pattern of this style

    def to_dict(self) -> dict:
        """JSON-ready parameters (for the manifest)."""
        return asdict(self)


def _palette(rng: Rng, k: int) -> tuple[tuple[float, float, float], ...]:
    """``k`` colours around 1-2 base hues, luminance increasing from dark to light."""
    import colorsys

    hues = rng.uniform(0, 1, size=2)
    values = np.sort(rng.uniform(0.08, 0.98, size=k))
    values[0], values[-1] = rng.uniform(0.05, 0.2), rng.uniform(0.85, 1.0)
    cols = [colorsys.hsv_to_rgb(float(hues[i % 2] + rng.normal(0, 0.04)) % 1.0, float(rng.uniform(0.25, 0.8)),
                                float(v)) for i, v in enumerate(values)]
    return tuple(tuple(round(c, 4) for c in col) for col in cols)


def draw_style(rng: Rng) -> Style:
    """Draw a random style (each model's style, or a distractor's non-model style)."""
    return Style(palette=_palette(rng, int(rng.integers(3, 6))), mix=round(float(rng.uniform(0.45, 0.8)), 3),
                 levels=int(rng.choice([0, 0, 4, 6, 8])), smooth=int(rng.choice([1, 3, 5])),
                 texture=str(rng.choice(TEXTURES)), angle=round(float(rng.uniform(0, 180)), 1),
                 period=round(float(rng.uniform(3.0, 7.0)), 2), strength=round(float(rng.uniform(0.06, 0.14)), 3),
                 edge=str(rng.choice(EDGES)), seed=int(rng.integers(0, 2**31 - 1)))


def _ramp(lum: np.ndarray, palette: tuple) -> np.ndarray:
    """Gradient map: luminance (H, W) in [0, 1] -> (H, W, 3) colours interpolated along the palette."""
    pal = np.asarray(palette, dtype=np.float32)
    pos = np.linspace(0, 1, len(pal))
    return np.stack([np.interp(lum, pos, pal[:, c]) for c in range(3)], axis=-1)


def _texture(style: Style, size: int, rng: Rng) -> np.ndarray:
    """(size, size) texture in about [-1, 1]; a random offset per image, the pattern fixed per style."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(style.angle)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, style.period)
    if style.texture == "hatch":
        return np.sign(np.sin(2 * np.pi * u / style.period)) * 0.8
    fixed = np.random.default_rng(style.seed).normal(0, 1, size=(size, size)).astype(np.float32)
    fixed = np.roll(fixed, tuple(rng.integers(0, size, size=2)), axis=(0, 1))
    if style.texture == "canvas":
        weave = np.sin(2 * np.pi * xx / style.period) * np.sin(2 * np.pi * yy / style.period)
        return 0.6 * weave + 0.4 * ndimage.gaussian_filter(fixed, 1.0, mode="wrap")
    if style.texture == "stipple":
        return np.where(fixed > 1.2, -1.5, 0.0).astype(np.float32)
    if style.texture == "brush":  # streaks: noise smeared along the style's direction
        streak = ndimage.uniform_filter1d(fixed, size=int(4 * style.period), axis=1, mode="wrap")
        return ndimage.rotate(streak, style.angle, reshape=False, mode="wrap", order=1) * 3.0
    return fixed * 0.7  # grain


def _edges(img: Image.Image, arr: np.ndarray, style: Style) -> np.ndarray:
    if style.edge == "none":
        return arr
    size = img.width
    if style.edge == "soft":
        yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2)
        return arr * (1 - 0.35 * np.clip(np.hypot(xx, yy) - 0.5, 0, 1) ** 1.5)[..., None]
    edge = as_float(img.convert("L").filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3)).convert("RGB"))
    mask = np.clip((edge[..., :1] - 0.12) * 4, 0, 1)
    target = 0.08 if style.edge == "outline" else 0.97
    return arr * (1 - 0.8 * mask) + target * 0.8 * mask


def apply_style(img: Image.Image, style: Style, rng: Rng) -> Image.Image:
    """Render an RGB image (any content) in ``style``; ``rng`` only moves the texture's phase."""
    if style.smooth > 1:
        img = img.filter(ImageFilter.MedianFilter(style.smooth))
    arr = as_float(img)
    lum = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if style.levels:
        lum = np.round(lum * (style.levels - 1)) / (style.levels - 1)
    arr = style.mix * _ramp(lum, style.palette) + (1 - style.mix) * arr
    arr = arr * (1 + style.strength * _texture(style, img.width, rng)[..., None])
    return as_image(_edges(img, arr, style))
