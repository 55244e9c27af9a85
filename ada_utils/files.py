"""Small, safe file I/O: files written atomically (a full disk named, never half a file), records of what was
written (size and SHA-256) checked before a file is trusted again, and the run folders notebooks hand off through."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


class NoSpaceError(OSError):
    """A write that the file system refused for lack of space (or a file-size limit); the message names the folder,
    the bytes needed where known, and the bytes free (``str`` is the message alone, ``errno`` the system's code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


# Errors of a write that more space would cure: no space, a quota, a file-size limit (``ulimit -f``).
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _umask() -> int:
    """The process's umask (read once: setting it is the only way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files the tool writes get the permissions of any file the user creates (0644 under the usual umask), not
# mkstemp's private 0600: a cache shared through ADA_CACHE must be readable by a colleague in full.
FILE_MODE = 0o666 & ~_umask()


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | Path) -> int:
    """Bytes free to this user on the file system of ``folder`` (its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


# Room kept free beyond what a write needs (metadata, the JSON files written after it).
SPACE_MARGIN = 16 << 20


def ensure_space(folder: str | Path, nbytes: int, what: str) -> None:
    """Raise :class:`NoSpaceError` before a large write (``nbytes``) that the file system of ``folder`` cannot hold."""
    free = free_bytes(folder)
    if free < nbytes + SPACE_MARGIN:
        raise NoSpaceError(errno.ENOSPC, f"{folder}: {what} needs {human_bytes(nbytes)} but only "
                           f"{human_bytes(free)} are free there: free some space, or write elsewhere (ADA_CACHE for "
                           "caches, --out for runs)")


def _space_error(path: Path, err: OSError) -> NoSpaceError:
    return NoSpaceError(err.errno, f"{path.parent}: cannot write {path.name}: {os.strerror(err.errno)} "
                        f"({human_bytes(free_bytes(path.parent))} free): free some space or raise the limit, or "
                        "write elsewhere (ADA_CACHE for caches, --out for runs); nothing finished was lost")


@contextmanager
def space_errors(path: str | Path) -> Iterator[None]:
    """Writes to ``path`` in the block that fail for lack of space raise :class:`NoSpaceError` naming it."""
    try:
        yield
    except OSError as err:
        if err.errno in _SPACE_ERRNOS and not isinstance(err, NoSpaceError):
            raise _space_error(Path(path), err) from err
        raise


def write_atomic(path: str | Path, write: Any, *, mode: str = "wb") -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a private temporary file beside it, which then replaces
    ``path`` in one rename (a crash never leaves half a file; two writers never share a temporary name).

    Raises:
        NoSpaceError: the disk is full or a size limit was hit (the temporary file is removed, ``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with space_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, mode) as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes reach the disk before the name does (a power cut never shows
            os.replace(tmp, path)      # the new name with missing content)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None, *,
                     record: bool = False) -> Path:
    """``safetensors.torch.save_file`` atomically (:func:`write_atomic`): a full disk names the file. With
    ``record``, through :func:`write_recorded` (a file the tool trusts later)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    return write_recorded(path, data) if record else write_atomic(path, lambda fh: fh.write(data))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys, atomically (:func:`write_atomic`)."""
    def dump(fh: Any) -> None:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_to_jsonable)
        fh.write("\n")

    return write_atomic(path, dump, mode="w")


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` atomically (:func:`write_atomic`), the bytes through Python's ``write``: numpy's own ``tofile``
    reports a full disk as a short write without its errno, which could not be told from other failures."""
    array = np.ascontiguousarray(array)

    def write(fh: Any) -> None:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        fh.write(array.tobytes())

    return write_atomic(path, write)


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


class DamagedFileError(ValueError):
    """A file the tool wrote no longer matches the record (size, SHA-256) taken when it was written."""


_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256, this process


def file_record(path: str | Path) -> dict[str, Any]:
    """What :func:`check_record` compares later: the file's size, SHA-256 and modification time. The file is known
    to match its record in this process, so the next check of the same file state does not hash it again (a run
    checks its last checkpoint before each new one)."""
    return known_record(path, sha256_file(path))


def known_record(path: str | Path, sha256: str) -> dict[str, Any]:
    """:func:`file_record` of a file whose SHA-256 the writer computed while writing it (no second read)."""
    path = Path(path)
    st = path.stat()
    _VERIFIED[(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)] = sha256
    return {"bytes": st.st_size, "sha256": sha256, "mtime_ns": st.st_mtime_ns}


def check_record(path: str | Path, record: dict[str, Any] | None, *, content: bool = True) -> str | None:
    """Why ``path`` no longer matches ``record`` (:func:`file_record`), or None when it does (or has no record).

    The size is compared first (a truncated file costs nothing to detect); then, unless ``content`` is False, the
    SHA-256, once per process for each state of the file, so that a damaged file of the right size is caught too.
    """
    if not record:
        return None
    path = Path(path)
    if not path.is_file():
        return f"{path}: missing"
    st = path.stat()
    if st.st_size != record["bytes"]:
        return f"{path}: {st.st_size} bytes, but {record['bytes']} were written (truncated or replaced)"
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if content and _VERIFIED.get(key) != record["sha256"]:
        if sha256_file(path) != record["sha256"]:
            return f"{path}: its content differs from what was written (SHA-256 mismatch: damaged on disk)"
        _VERIFIED[key] = record["sha256"]
    return None


CHECKSUMS = "checksums.json"  # a run folder's records of the files it trusts later: {name: file_record}


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    index = folder / CHECKSUMS
    return read_json(index) if index.is_file() else {}


def _set_record(folder: Path, name: str, record: dict[str, Any]) -> None:
    """``name``'s record becomes ``record``; the state it had stays accepted (``was``) until the next write, so a
    process killed between recording a write and making it leaves the file's old, intact state trusted."""
    records = _records(folder)
    old = records.get(name)
    records[name] = {**record, "was": {k: old[k] for k in ("bytes", "sha256")} if old else None}
    write_json(folder / CHECKSUMS, records)


def write_recorded(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with its size + SHA-256 record in ``checksums.json`` beside it (one
    writer per folder: rank 0). The record is written first, from the bytes in memory: a kill at any moment leaves
    the file at a state its record accepts (the old one or the new one), never one that looks damaged."""
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    _set_record(path.parent, path.name, {"bytes": len(data), "sha256": digest})
    write_atomic(path, lambda fh: fh.write(data))
    known_record(path, digest)
    return path


def copy_record(folder: str | Path, name: str, to: str | Path) -> None:
    """``to`` gets ``name``'s record (a hard link or a copy of it is about to take ``to``'s place)."""
    record = _records(Path(folder)).get(name)
    if record is not None:
        _set_record(Path(folder), str(to), {k: record[k] for k in ("bytes", "sha256")})


def matches_record_of(path: str | Path, name: str) -> bool:
    """Whether ``path`` matches the record that ``checksums.json`` beside it holds for the file ``name``."""
    path = Path(path)
    record = _records(path.parent).get(name)
    return record is not None and check_record(path, record) is None


def recorded_damage(path: str | Path) -> str | None:
    """Why ``path`` no longer matches its record in ``checksums.json`` beside it (None: intact, or no record)."""
    path = Path(path)
    record = _records(path.parent).get(path.name)
    if record is None:
        return None
    damage = check_record(path, record)
    return damage if damage is None or not record.get("was") or check_record(path, record["was"]) else None


@contextmanager
def locked(target: str | Path, *, shared: bool = False, waiting: str = "", refuse: str = "") -> Iterator[bool]:
    """Hold an advisory lock on ``target`` (a folder or file; the lock is ``.<name>.lock`` beside it) while the
    block runs; yields whether another process held it first (this one waited for it).

    ``shared``: several holders at once (ranks of one torchrun job writing their own chunks); exclusive excludes
    every other holder. ``waiting`` is printed (one line, stderr) when the lock is busy, before waiting for it;
    with ``refuse``, a busy lock raises :class:`FileExistsError` with that message instead of waiting.
    The lock is ``flock``'s: released by the kernel when its process dies, so a killed run never leaves it held.
    Lock files stay (deleting one while another process opens it would split the lock in two).
    """
    import fcntl
    import sys

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            if refuse:
                raise FileExistsError(refuse) from None
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, mode)
            waited = True
        yield waited
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def run_dir(notebook: str, variant: str, seed: int) -> Path:
    """``runs/<notebook>/<variant>-seed<seed>/``, created on demand (the notebooks' hand-off folder)."""
    path = runs_dir() / notebook / f"{variant}-seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path
