"""Small, safe file I/O: JSON written atomically, file hashes, and the run folders notebooks hand off through."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ada_utils.project import runs_dir


def _to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths so that ``json`` can write them."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_atomic(path: str | Path, write: Any, *, mode: str = "wb") -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a private temporary file beside it, which then replaces
    ``path`` in one rename (a crash never leaves half a file; two writers never share a temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys, atomically (:func:`write_atomic`)."""
    def dump(fh: Any) -> None:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_to_jsonable)
        fh.write("\n")

    return write_atomic(path, dump, mode="w")


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda fh: np.save(fh, array))


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def run_dir(notebook: str, variant: str, seed: int) -> Path:
    """``runs/<notebook>/<variant>-seed<seed>/``, created on demand (the notebooks' hand-off folder)."""
    path = runs_dir() / notebook / f"{variant}-seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path
