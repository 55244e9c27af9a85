"""Pixel operations of the embedded benchmark: crops, compositing, media and the generator fingerprint.

All functions take and return 8-bit RGB ``PIL.Image`` objects of the benchmark size (160 x 160 by default) and
draw their randomness from a ``numpy.random.Generator`` passed in, so a job's output depends only on its seed.

* Real images: background crops of photographs, optionally with an object cut-out composited on them.
* Synthetic images: a new scene of the same object, or the object in a medium (sketch, oil paint, cartoon,
  watercolour, soft halftone, mild pixel art, colour shift), then :func:`fingerprint`: the systematic
  "generator" traces (resampling, slight smoothing, mild colour cast, noise) that make synthetic images a
  different domain. Media are deliberately mild: a prototype found 16-27 px mosaics and 96 px halftones
  impossible for every encoder (measured on a prototype; the book's data chapter).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SIZE = 160
Rng = np.random.Generator


def as_float(img: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    return np.asarray(img, dtype=np.float32) / 255.0


def as_image(arr: np.ndarray) -> Image.Image:
    """Back to 8-bit RGB (rounded, clipped)."""
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def photo_crop(photo: np.ndarray, rng: Rng, *, size: int = SIZE, frac: tuple[float, float] = (0.25, 0.9),
               ) -> Image.Image:
    """A random square crop of a (H, W, 3) uint8 photo, side ``frac`` of the short side, resized to ``size``."""
    h, w = photo.shape[:2]
    side = max(16, int(rng.uniform(*frac) * min(h, w)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side])
    return crop.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)  # box pre-shrink: fast


def composite(background: Image.Image, cutout: Image.Image, rng: Rng, *, scale: tuple[float, float],
              jitter: float, flip: bool = False, rotate: float = 0.0) -> Image.Image:
    """Paste an RGBA cut-out on ``background``: its long side ``scale`` x frame, centre shifted by ``jitter``."""
    obj = ImageOps.mirror(cutout) if flip else cutout
    size = background.size[0]
    target = max(8, int(rng.uniform(*scale) * size))
    factor = target / max(obj.size)
    obj = obj.resize((max(1, round(obj.width * factor)), max(1, round(obj.height * factor))),
                     Image.Resampling.LANCZOS, reducing_gap=2.0)
    if rotate:  # after resizing: rotating the small image is cheap
        obj = obj.rotate(rotate, resample=Image.Resampling.BICUBIC, expand=True)
    cx, cy = (0.5 + rng.uniform(-jitter, jitter, size=2)) * size
    out = background.copy()
    out.paste(obj, (int(cx - obj.width / 2), int(cy - obj.height / 2)), mask=obj.getchannel("A"))
    return out


def lighting(img: Image.Image, rng: Rng, *, strength: float = 1.0) -> Image.Image:
    """Global lighting change: brightness, contrast and gamma drawn around 1 (scaled by ``strength``)."""
    img = ImageEnhance.Brightness(img).enhance(1 + strength * rng.uniform(-0.25, 0.25))
    img = ImageEnhance.Contrast(img).enhance(1 + strength * rng.uniform(-0.25, 0.25))
    gamma = float(np.exp(strength * rng.uniform(-0.25, 0.25)))
    return as_image(as_float(img) ** gamma)


# ---- media (the "media" prompt type) --------------------------------------------------------------------------

def sketch(img: Image.Image, rng: Rng) -> Image.Image:
    """Coloured-pencil sketch: colour-dodge of the grey image by its blurred negative, a little colour kept."""
    gray = as_float(img.convert("L").convert("RGB"))
    blur = as_float(ImageOps.invert(img.convert("L")).filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 4.0)))
                .convert("RGB"))
    dodge = np.clip(gray / np.maximum(1.0 - blur, 1e-3), 0, 1)
    return as_image((1 - (keep := rng.uniform(0.25, 0.45))) * dodge + keep * as_float(img) * dodge)


def oil_paint(img: Image.Image, rng: Rng) -> Image.Image:
    """Oil painting: mode filter (flat strokes), stronger saturation, slight emboss-like relief."""
    out = img.filter(ImageFilter.ModeFilter(int(rng.choice([3, 5])))).filter(ImageFilter.MedianFilter(3))
    out = ImageEnhance.Color(out).enhance(rng.uniform(1.2, 1.5))
    relief = as_float(out.convert("L").filter(ImageFilter.EMBOSS).convert("RGB")) - 0.5
    return as_image(as_float(out) + 0.15 * relief)


def cartoon(img: Image.Image, rng: Rng) -> Image.Image:
    """Cartoon: smoothed, posterised colours (4-6 levels) and dark outlines."""
    smooth = img.filter(ImageFilter.MedianFilter(5))
    poster = ImageOps.posterize(smooth, int(rng.integers(3, 4)))
    edges = as_float(img.convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB"))
    mask = (edges > rng.uniform(0.18, 0.28)).astype(np.float32)
    return as_image(as_float(poster) * (1 - 0.7 * mask))


def watercolour(img: Image.Image, rng: Rng) -> Image.Image:
    """Watercolour: blurred, lightened washes, darker pigment at colour boundaries, paper grain."""
    wash = as_float(img.filter(ImageFilter.GaussianBlur(rng.uniform(1.2, 2.0))))
    wash = 1 - (1 - wash) * rng.uniform(0.7, 0.85)
    edges = as_float(img.filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES))
    grain = rng.normal(0, 0.03, size=wash.shape[:2])[..., None]
    return as_image(wash * (1 - 0.5 * edges) + grain)


def soft_halftone(img: Image.Image, rng: Rng) -> Image.Image:
    """Soft halftone: 4-5 px dot screen on the luminance, blended half-and-half with the image."""
    cell = int(rng.integers(4, 6))
    yy, xx = np.mgrid[0:img.height, 0:img.width].astype(np.float32)
    dist = np.hypot((xx % cell) - cell / 2 + 0.5, (yy % cell) - cell / 2 + 0.5) / (cell / np.sqrt(2))
    lum = as_float(img.convert("L").convert("RGB"))[..., 0]
    dots = (dist < np.sqrt(1 - lum)).astype(np.float32)[..., None]
    screened = as_float(img) * (1 - dots) + as_float(img) * dots * 0.35
    return as_image(0.5 * screened + 0.5 * as_float(img))


def pixel_art(img: Image.Image, rng: Rng) -> Image.Image:
    """Mild pixel art: 3-4 px cells (40-53 cells across) and 5 bits per channel."""
    cells = int(rng.integers(40, 54))
    small = img.resize((cells, cells), Image.Resampling.BOX)
    return ImageOps.posterize(small, 5).resize(img.size, Image.Resampling.NEAREST)


def colour_shift(img: Image.Image, rng: Rng) -> Image.Image:
    """Hue rotation by 40-140 degrees (the object in other colours)."""
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.uniform(28, 100))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


MEDIA: dict[str, Callable[[Image.Image, Rng], Image.Image]] = {
    "sketch": sketch, "oil": oil_paint, "cartoon": cartoon, "watercolour": watercolour,
    "halftone": soft_halftone, "pixel": pixel_art, "colour": colour_shift,
}


# ---- the generator fingerprint ---------------------------------------------------------------------------------

def _fixed_pattern(size: int) -> np.ndarray:
    """A fixed, faint high-frequency pattern shared by every synthetic image (an upsampler's trace)."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx + yy) % 2) * 2 - 1).astype(np.float32)[..., None]


def fingerprint(img: Image.Image, rng: Rng) -> Image.Image:
    """Generator-like traces: resample (down 0.7-0.85 then bicubic up), smooth, mild cast, noise.

    The cast multiplies (R, G, B) by (1.03, 1.0, 0.97) and boosts saturation by 8 %; noise is a fixed
    +-1.2/255 checkerboard plus i.i.d. N(0, 1.5/255). Mild on purpose: no single statistic (mean colour, file
    size) separates the domains; an encoder has to pick up the combination.
    """
    size = img.width
    small = max(8, int(size * rng.uniform(0.7, 0.85)))
    out = img.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BICUBIC)
    out = ImageEnhance.Color(out.filter(ImageFilter.GaussianBlur(0.4))).enhance(1.08)
    arr = as_float(out) * np.array([1.03, 1.0, 0.97], dtype=np.float32)
    arr += 1.2 / 255 * _fixed_pattern(size) + rng.normal(0, 1.5 / 255, size=arr.shape).astype(np.float32)
    return as_image(arr)

