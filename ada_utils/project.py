"""Project paths, seeding and the provenance facts every result records.

Paths are resolved from the repository root (the folder holding ``pyproject.toml``), so notebooks opened in
JupyterLab from ``notebooks/``, papermill runs from the root and the CLI all read and write the same folders.
"""

from __future__ import annotations

import os
import platform
import random
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def repo_root() -> Path:
    """The repository root: the closest folder upwards (from cwd, then from this file) with ``pyproject.toml``.

    ``ADA_ROOT`` overrides it, for users who install the package elsewhere and keep data in another folder.
    """
    if os.environ.get("ADA_ROOT"):
        return Path(os.environ["ADA_ROOT"]).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file() and (folder / "ada_utils").is_dir():
                return folder
    return Path.cwd()


def work_dir() -> Path:
    """Where generated data, feature caches and runs go: the repo root, or ``ADA_WORK`` when set.

    The test suite sets ``ADA_WORK`` to a temporary folder so that smoke runs never overwrite the book's runs.
    """
    return Path(os.environ["ADA_WORK"]).resolve() if os.environ.get("ADA_WORK") else repo_root()


def shared_dir() -> Path:
    """Where the generated benchmarks and feature caches go: ``ADA_CACHE`` when set, else :func:`work_dir`.

    Only a user who asks shares them across clones (``ADA_CACHE=~/.cache/ada make book``: a second clone neither
    rebuilds the benchmark nor embeds an image again); runs and executed notebooks stay in each clone, and a clean
    clone without it computes everything, as a newcomer's does. Two builds must not fill one shared cache at once.
    """
    return Path(os.environ["ADA_CACHE"]).expanduser().resolve() if os.environ.get("ADA_CACHE") else work_dir()


def cache_dir() -> Path:
    """Feature caches (gitignored)."""
    return shared_dir() / "cache"


def photos_dir() -> Path:
    """Fetched photo packages: always under the repo's ``cache/photos`` (large; shared by tests and book)."""
    return repo_root() / "cache" / "photos"


def runs_dir() -> Path:
    """Hand-off folder between notebooks: ``runs/<notebook>/<variant>-seed<k>/`` (gitignored)."""
    return work_dir() / "runs"


def data_dir() -> Path:
    """Generated benchmarks (gitignored)."""
    return shared_dir() / "data"


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hardware() -> str:
    """A one-line description of the compute that produced a result (recorded beside every metric)."""
    import torch

    cpu = f"CPU: {os.cpu_count()} cores {platform.machine()}, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}; {cpu}"
    return cpu


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numerical results."""
    names = ["ada-utils", "torch", "torchvision", "timm", "numpy", "scikit-learn", "faiss-cpu", "papermill"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
