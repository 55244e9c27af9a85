"""Robust image decoding and the one codec the embedded benchmark writes.

Every reader in the project goes through :func:`load_image`, so grayscale, palette, CMYK, 16-bit, alpha and
EXIF-rotated files all become the same thing: an 8-bit RGB ``PIL.Image`` in display orientation. Transparent
pixels are composited on white (what a browser shows). A corrupt or truncated file raises
:class:`ImageDecodeError` naming the file, or is skipped and reported when ``on_error="skip"``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

OnError = Literal["raise", "skip"]

# The single codec of the embedded benchmark (book/reproduce.md): real and synthetic images alike.
JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 2  # 4:2:0, Pillow's default at this quality; fixed so quantisation and layout never vary.


class ImageDecodeError(OSError):
    """An image file that cannot be decoded (corrupt, truncated or not an image); the message names it."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float single-channel images to 8-bit ``L`` by scaling their full range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float64) / 65535.0 * 255.0
    elif img.mode == "F":
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any decoded PIL image to 8-bit RGB; alpha is composited on ``background`` (white)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        base = Image.new("RGB", img.size, background)
        base.paste(img, mask=img.getchannel("A"))
        return base
    return img.convert("RGB")


def load_image(path: str | Path, *, on_error: OnError = "raise") -> Image.Image | None:
    """Decode one image file to an 8-bit RGB ``PIL.Image`` (EXIF orientation applied, alpha on white).

    Args:
        path: image file (any format Pillow reads).
        on_error: ``"raise"`` raises :class:`ImageDecodeError` naming the file; ``"skip"`` returns ``None``.

    Returns:
        The RGB image (fully loaded; the file is closed), or ``None`` for an unreadable file with ``"skip"``.
    """
    return _decode(Path(path), Path(path), on_error)


def decode_image(data: bytes, name: str, *, on_error: OnError = "raise") -> Image.Image | None:
    """:func:`load_image` of an image held in memory (a sample of a tar shard); ``name`` is what errors cite."""
    import io

    return _decode(io.BytesIO(data), name, on_error)


def _decode(source: Any, name: str | Path, on_error: OnError) -> Image.Image | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large images: handled below
            with Image.open(source) as img:
                _draft_large(img, name)
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except Image.DecompressionBombError as err:
        if on_error == "skip":
            return None
        raise ImageDecodeError(f"{name}: {err.args[0].split(' exceeds')[0]} exceeds the decoder's memory bound of "
                               f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels; downscale the file first") from err
    except (OSError, ValueError, SyntaxError) as err:
        if on_error == "skip":
            return None
        raise ImageDecodeError(f"{name}: cannot decode image ({type(err).__name__}: {err}); "
                               f"re-download or delete the file") from err


# Above this many pixels a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, JPEG's own DCT scaling) to at most
# about this size: a 12000 x 12000 photo would otherwise take 430 MB as RGB (2.5 GB in the transforms), for an
# encoder that sees 224 px. Smaller images decode in full, so their features never change.
LARGE_PIXELS = 32_000_000


def _draft_large(img: Image.Image, path: str | Path) -> None:
    """Ask the JPEG decoder for the mildest reduction (1/2, 1/4, 1/8) that brings ``img`` to at most
    :data:`LARGE_PIXELS` (one line says so); smaller images and other formats are left alone."""
    w, h = img.size
    if w * h <= LARGE_PIXELS or img.format != "JPEG":
        return
    scale = next((s for s in (2, 4, 8) if (w // s) * (h // s) <= LARGE_PIXELS), 8)
    img.draft("RGB", (w // scale, h // scale))  # Pillow takes the scale as w // size: exact for any w
    print(f"{path}: {w}x{h} px decoded at {img.size[0]}x{img.size[1]} (JPEG scaling) to bound memory",
          file=sys.stderr)


def load_images(paths: Sequence[str | Path], *, on_error: OnError = "raise",
                ) -> tuple[list[Image.Image], list[Path]]:
    """Decode many files; with ``on_error="skip"`` also return the list of files that failed."""
    images, failed = [], []
    for path in paths:
        img = load_image(path, on_error=on_error)
        if img is None:
            failed.append(Path(path))
        else:
            images.append(img)
    return images, failed


def save_jpeg(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` with the benchmark's codec: baseline JPEG, quality 95, 4:2:0, no metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING,
                            optimize=False, progressive=False)
    return path


class ImageListDataset:
    """A torch-style ``Dataset`` over image files: ``ds[i]`` is ``transform(load_image(paths[i]))``.

    Args:
        paths: image files, in the order the features should come out.
        transform: callable applied to the RGB ``PIL.Image`` (e.g. an encoder's ``preprocess``); identity if None.
        on_error: ``"raise"`` (an undecodable file raises :class:`ImageDecodeError`) or ``"skip"`` (its item is
            the transform of a blank image filled with NaN, so that the row can be recognised and left out).
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable[[Image.Image], Any] | None = None, *,
                 on_error: OnError = "raise"):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        img = load_image(self.paths[index], on_error=self.on_error)
        if img is None:  # skipped: a NaN image of the right shape marks the row (embedding turns it into a NaN row)
            blank = self.transform(Image.new("RGB", (32, 32))) if self.transform is not None else None
            return blank * float("nan") if blank is not None else None
        return self.transform(img) if self.transform is not None else img
