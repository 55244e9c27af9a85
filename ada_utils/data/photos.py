"""Real pixels for the embedded benchmark: photo packages fetched without root, plus the user's own folders.

Sources (Debian packages, scikit-image, scikit-learn and matplotlib; the book's data chapter lists them):

* object cut-outs: ``tuxpaint-stamps-default`` (PNG with alpha, labelled by folder; ``symbols`` and mirrored
  duplicates are excluded, cartoon/road-sign/flag folders are used only after the photo-like ones run out);
* background photos: ``mate-backgrounds`` (nature set), the photographic ``plasma-workspace-wallpapers``,
  ``darknet`` sample photos, ``palapeli-data`` puzzle photos, ``skimage.data`` colour photos and scikit-learn's
  sample images (written once as PNG so that every source is a file).

``fetch_photos`` runs ``apt-get download`` + ``dpkg-deb -x`` into the repository's ``cache/photos``
(``project.photos_dir``, shared by the tests and the book; no root, idempotent, a marker file once complete).
Users without apt give ``--photos DIR`` (any photos) and ``--objects DIR`` (PNG cut-outs with alpha in one
folder per category).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ada_utils.project import photos_dir
from ada_utils.data.images import load_image
from ada_utils.files import save_npy

PACKAGES = ("tuxpaint-stamps-default", "mate-backgrounds", "plasma-workspace-wallpapers", "darknet",
            "palapeli-data")
MARKER = ".complete.json"
STAMPS = "usr/share/tuxpaint/stamps"
# Photographs among the plasma wallpapers (the others are illustrations or abstract renders).
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "MilkyWay", "OneStandsOut", "Path", "Volna", "summer_1am")
DARKNET_PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
# Stamp folders that are drawings rather than photos: used only when the photo-like cut-outs run out.
DRAWN_FOLDERS = {"cartoon", "roadsigns", "flags"}
MIN_CUTOUT_SIDE = 48
PREPARED_MAX_SIDE = 1024
HELP = (f"Photo sources are missing. Either let `ada data fetch-photos` fetch them (needs `apt-get`; no root: "
        f"`apt-get download {' '.join(PACKAGES)}` then `dpkg-deb -x FILE.deb DEST`; on a fresh machine run "
        f"`apt-get update` once), or pass your own folders: `--photos DIR` (>= 20 photographs, any format) and "
        f"`--objects DIR` (>= 100 PNG cut-outs with transparency, one sub-folder per category).")


class PhotoSourceError(RuntimeError):
    """The photo sources the generator needs are absent and could not be fetched."""


@dataclass(frozen=True)
class Cutout:
    """An object photo with transparency: file, category (folder path) and tier (0 photo-like, 1 drawn)."""

    path: Path
    category: str
    tier: int


@dataclass(frozen=True)
class Sources:
    """Everything the generator draws pixels from, in a fixed (sorted) order."""

    photos: list[Path]
    cutouts: list[Cutout]
    description: dict


def photos_available(dest: Path | None = None) -> bool:
    """Whether :func:`fetch_photos` has completed into ``dest``."""
    return ((dest or photos_dir()) / MARKER).is_file()


def _run(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise PhotoSourceError(f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()[-600:]}\n"
                               f"{HELP}")


def _write_python_photos(dest: Path) -> list[str]:
    """Write skimage / scikit-learn sample photos as PNG under ``dest/python``; return their names."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = dest / "python"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"skimage_{n}": getattr(skimage.data, n)() for n in SKIMAGE_PHOTOS}
    arrays = {k: (v[0] if isinstance(v, tuple) else v) for k, v in arrays.items()}
    sample = load_sample_images()
    arrays.update({f"sklearn_{Path(f).stem}": im for f, im in zip(sample.filenames, sample.images)})
    for name, arr in arrays.items():
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(out / f"{name}.png")
    return sorted(arrays)


def fetch_photos(dest: Path | None = None, *, force: bool = False) -> Path:
    """Download and extract the photo packages into ``dest`` (default ``cache/photos``) without root.

    Idempotent: returns at once when the marker file exists (unless ``force``). Raises
    :class:`PhotoSourceError` saying which packages or folders to provide when apt is unavailable.
    """
    dest = Path(dest or photos_dir())
    if photos_available(dest) and not force:
        return dest
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise PhotoSourceError(f"{', '.join(missing)} not found on this machine. {HELP}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".debs-") as tmp:
        _run(["apt-get", "download", *PACKAGES], Path(tmp))
        debs = sorted(Path(tmp).glob("*.deb"))
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(dest)], Path(tmp))
        names = [d.name for d in debs]
    python_photos = _write_python_photos(dest)
    (dest / MARKER).write_text(json.dumps({"debs": names, "python": python_photos}, indent=2) + "\n")
    return dest


def _package_photos(root: Path) -> list[Path]:
    share = root / "usr/share"
    files = sorted((share / "backgrounds/mate/nature").glob("*.jpg"))
    for name in PLASMA_PHOTOS:
        images = list((share / "wallpapers" / name / "contents/images").glob("*x*.*"))
        area = lambda p: int(p.stem.split("x")[0]) * int(p.stem.split("x")[1])  # noqa: E731  (WxH file names)
        files += sorted(images, key=lambda p: (-area(p), p.name))[:1]
    files += [share / f"darknet/data/{n}.jpg" for n in DARKNET_PHOTOS]
    files += sorted((share / "palapeli/collection").glob("*.jpg"))
    files += sorted((root / "python").glob("*.png"))
    return [f for f in files if f.is_file()]


def _is_cutout(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            return has_alpha and max(im.size) >= MIN_CUTOUT_SIDE
    except OSError:
        return False


def _cutouts(folder: Path, *, package: bool) -> list[Cutout]:
    out = []
    for path in sorted(folder.rglob("*.png")):
        parts = path.relative_to(folder).parts[:-1]
        if package and (not parts or parts[0] == "symbols" or path.stem.endswith("_mirror")):
            continue
        if not _is_cutout(path):
            continue
        kept = [p for p in parts if p not in DRAWN_FOLDERS]
        category = "/".join(kept[:2]) if package else "/".join(parts) or "object"
        out.append(Cutout(path, category, int(package and bool(DRAWN_FOLDERS & set(parts)))))
    return out


def _user_photos(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def gather_sources(*, photos: Path | None = None, objects: Path | None = None, fetch: bool = True) -> Sources:
    """Collect the photo and cut-out files (packages, fetched on demand, plus the user's folders).

    Without apt the user's ``photos`` and ``objects`` folders must both be given; otherwise this raises
    :class:`PhotoSourceError` naming the packages and folders to provide (also under ``CI=true``: never skipped).
    """
    root, desc = photos_dir(), {}
    try:
        if fetch:
            fetch_photos(root)
        elif not photos_available(root):
            raise PhotoSourceError(f"{root}: photo packages not fetched. {HELP}")
    except PhotoSourceError:
        if photos is None or objects is None:
            raise
        root = None
    photo_files = _package_photos(root) if root else []
    cutouts = _cutouts(root / STAMPS, package=True) if root else []
    desc["packages"] = json.loads((root / MARKER).read_text()) if root else None
    if photos is not None:
        photo_files += _user_photos(Path(photos))
        desc["user_photos"] = str(photos)
    if objects is not None:
        cutouts += _cutouts(Path(objects), package=False)
        desc["user_objects"] = str(objects)
    if len(photo_files) < 5 or len(cutouts) < 20:
        raise PhotoSourceError(f"only {len(photo_files)} photos and {len(cutouts)} cut-outs found. {HELP}")
    desc.update(n_photos=len(photo_files), n_cutouts=len(cutouts),
                n_cutouts_photo_like=sum(c.tier == 0 for c in cutouts))
    return Sources(photo_files, cutouts, desc)


def _prepared_path(path: Path) -> Path:
    ident = f"{path.parent.name}/{path.name}:{path.stat().st_size}:{PREPARED_MAX_SIDE}"
    key = hashlib.sha1(ident.encode()).hexdigest()[:16]
    return photos_dir() / "prepared" / f"{key}.npy"


@lru_cache(maxsize=128)
def prepared_photo(path: Path) -> np.ndarray:
    """A photo as (H, W, 3) uint8, downscaled to at most 1024 px (cached as .npy: big PNGs decode slowly)."""
    cached = _prepared_path(path)
    if cached.is_file():
        return np.load(cached)
    img = load_image(path)
    img.thumbnail((PREPARED_MAX_SIDE, PREPARED_MAX_SIDE), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    save_npy(cached, arr)
    return arr


@lru_cache(maxsize=64)
def prepared_cutout(path: Path, *, max_side: int = 320) -> Image.Image:
    """A cut-out as RGBA cropped to its opaque pixels and downscaled to at most ``max_side`` px."""
    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    rgba = rgba.crop(bbox) if bbox else rgba
    rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgba
