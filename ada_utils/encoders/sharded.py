"""Embedding at training-set scale: inputs in shards, features out in shards, any number of processes and nodes.

``embed_shards`` writes one output shard per input shard: webdataset tars as img2dataset writes them (each
sample's key is its id), or a list of image files cut into shards of ``shard_size``. A finished shard is
``emb/<name>.npy`` (rows x D, float16 by default: half the disk, and a cosine moves by about 1e-3) and
``ids/<name>.json`` (its ids, the samples skipped, the record of its array), each written atomically, the ids
file last: a shard is done exactly when its ids file exists, so a killed job resumes shard by shard.

Processes share the work through the file system alone (no collective): each takes the next shard nobody holds
(a lock per shard), so the ranks of a torchrun job (``--nnodes`` with a shared folder), a job array, or two
jobs started by hand divide the shards between them, and a shard's features never depend on who embedded it.
The process that finds every shard done writes ``manifest.json``. The folder reads back with
:func:`open_shards` as numpy memory maps, or with embedding-reader (``EmbeddingReader(folder + "/emb",
file_format="npy")``), which reads a folder of ``.npy`` files in name order as this module writes them.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ada_utils.data.images import OnError, decode_image, load_image
from ada_utils.data.shards import list_shards, read_shard
from ada_utils.encoders.embed import _check_finite, _eval_mode, _padded, auto_batch_size, encoder_key
from ada_utils.files import DamagedFileError, check_record, file_record, locked, read_json, save_npy, write_json

FORMAT = 1
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ShardInput:
    """One input shard: a tar (``tar``) or a slice of an image list (``files`` with their ids)."""

    name: str
    tar: Path | None = None
    files: tuple[Path, ...] = ()
    ids: tuple[str, ...] = ()

    def images(self, on_error: OnError) -> Iterator[tuple[str, Any]]:
        """``(id, RGB image or None)`` per sample (None: undecodable, with ``on_error="skip"``)."""
        if self.tar is not None:
            for key, data in read_shard(self.tar, on_error=on_error):
                yield key, decode_image(data, f"{self.tar}:{key}", on_error=on_error)
        else:
            for id_, path in zip(self.ids, self.files):
                yield id_, load_image(path, on_error=on_error)

    def expected(self) -> int | None:
        """The sample count, where known before reading (img2dataset's ``<name>_stats.json``, or the list)."""
        if self.tar is None:
            return len(self.files)
        stats = self.tar.with_name(f"{self.tar.stem}_stats.json")
        return int(read_json(stats).get("successes", 0)) or None if stats.is_file() else None


def shard_inputs(items: Sequence[str | Path], *, shard_size: int = 10_000) -> list[ShardInput]:
    """Tar shards (``.tar`` files, or folders holding them) or image files and folders cut into ``shard_size``."""
    items = [Path(i) for i in items]
    tars = [i for i in items if i.suffix == ".tar" or (i.is_dir() and any(i.glob("*.tar")))]
    if tars:
        if len(tars) != len(items):
            raise ValueError("give either tar shards (or folders of them) or image files and folders, not both")
        return [ShardInput(t.stem, tar=t) for t in list_shards(items)]
    from ada_utils.eval.attribute import image_files

    files = image_files(items)
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: must be at least 1")
    return [ShardInput(f"{i // shard_size:05d}", files=tuple(files[i:i + shard_size]),
                       ids=tuple(p.as_posix() for p in files[i:i + shard_size]))
            for i in range(0, len(files), shard_size)]


def embed_shards(encoder: nn.Module, inputs: Sequence[ShardInput], out: str | Path, *, dtype: str = "float16",
                 batch_size: int | None = None, on_error: OnError = "raise", rank: int = 0,
                 progress: bool = True, timeout: float = 7 * 24 * 3600) -> Path:
    """Embed every input shard into ``out`` (see the module docstring); returns ``out`` once all are done.

    Each process starts at shard ``rank`` and takes every shard that is neither done nor held by another process,
    then waits for those held elsewhere. Raises ``ValueError`` when ``out`` holds shards of another encoder,
    preprocessing or dtype.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    out, started = Path(out), time.time()
    plan = {**encoder_key(encoder), "dtype": dtype, "format": FORMAT, "shards": [s.name for s in inputs]}
    _start(out, plan)
    order = list(inputs[rank % len(inputs):]) + list(inputs[:rank % len(inputs)])
    take = functools.partial(_take, encoder, out=out, plan=plan, batch_size=batch_size, on_error=on_error, rank=rank,
                             progress=progress, since=started)
    busy = [s for s in order if not take(s, wait=False)]
    for shard in busy:  # held by another process: wait for its lock, then it is done (or resumed here)
        take(shard, wait=True)
    _finish(out, plan, inputs, timeout)
    return out


def _start(out: Path, plan: dict) -> None:
    """Create ``out`` with its plan, or check that the plan found there is this one."""
    found = out / "plan.json"
    if found.is_file():
        old = read_json(found)
        for key in ("encoder", "encoder_state_sha256", "layout", "transform", "dtype", "shards"):
            if old.get(key) != plan[key]:
                raise ValueError(f"{out}: holds shards embedded with another {key} ({old.get(key)!r} vs "
                                 f"{plan[key]!r}): choose another output folder, or delete this one")
        return
    (out / "emb").mkdir(parents=True, exist_ok=True)
    (out / "ids").mkdir(exist_ok=True)
    with locked(found):
        if not found.is_file():
            write_json(found, plan)


def shard_done(out: Path, name: str, since: float | None = None) -> bool:
    """Whether shard ``name`` is finished in ``out`` and its array matches its record: by size alone when it was
    finished at or after ``since`` (by another process of this run, written atomically moments ago: each of many
    ranks would otherwise hash every other rank's shards), by size and SHA-256 when it was there before."""
    ids = out / "ids" / f"{name}.json"
    if not ids.is_file():
        return False
    fresh = since is not None and ids.stat().st_mtime >= since
    damage = check_record(out / "emb" / f"{name}.npy", read_json(ids)["emb"], content=not fresh)
    if damage:
        print(f"{damage}: this shard is embedded again", file=sys.stderr)
        ids.unlink()
    return damage is None


def _take(encoder: nn.Module, shard: ShardInput, *, out: Path, plan: dict, batch_size: int | None,
          on_error: OnError, rank: int, progress: bool, since: float, wait: bool) -> bool:
    """Embed ``shard`` unless it is done; False when another process holds it (and ``wait`` is False)."""
    emb = out / "emb" / f"{shard.name}.npy"
    try:
        with locked(emb, refuse="" if wait else "held"):
            if not shard_done(out, shard.name, since):
                _embed_one(encoder, shard, out, plan, batch_size, on_error, rank, progress)
    except FileExistsError:
        return False
    return True


def _embed_one(encoder: nn.Module, shard: ShardInput, out: Path, plan: dict, batch_size: int | None,
               on_error: OnError, rank: int, progress: bool) -> None:
    """Embed one shard and write its array, then its ids file (the mark that it is done)."""
    from tqdm.auto import tqdm

    batch_size = batch_size or auto_batch_size(encoder)
    device = next(encoder.parameters()).device
    layout = torch.channels_last if plan["layout"] == "channels_last" else torch.contiguous_format
    ids, skipped, rows, pending = [], [], [], []
    encoder.to(memory_format=layout)

    def flush() -> None:
        x = torch.stack([t for _, t in pending])
        with torch.inference_mode():
            feats = encoder(_padded(x, batch_size).to(device).contiguous(memory_format=layout))[:len(x)]
        feats = feats.float().cpu().numpy()
        _check_finite(encoder, feats, np.zeros(len(feats), dtype=bool), [i for i, _ in pending])
        rows.append(feats.astype(plan["dtype"]))
        ids.extend(i for i, _ in pending)
        pending.clear()

    start = time.perf_counter()
    with tqdm(total=shard.expected(), desc=f"[rank {rank}] {shard.name}", unit="img", position=rank,
              disable=not progress, leave=False) as bar, _eval_mode(encoder):
        for id_, img in shard.images(on_error):
            if img is None:
                skipped.append(id_)
                continue
            pending.append((id_, encoder.preprocess(img)))
            if len(pending) == batch_size:
                flush()
                bar.update(batch_size)
        if pending:
            bar.update(len(pending))
            flush()
    feats = np.concatenate(rows) if rows else np.zeros((0, encoder.dim), dtype=plan["dtype"])
    write_shard(out, shard.name, feats, ids, skipped=skipped, seconds=time.perf_counter() - start, rank=rank,
                tar=shard.tar)


def write_shard(out: Path, name: str, feats: np.ndarray, ids: list[str], *, skipped: list[str] = (),
                seconds: float = 0.0, rank: int = 0, tar: Path | None = None) -> None:
    """Write one finished shard: its array, then its ids file (the mark that it is done; ``tar``: the input tar
    its ids are keys of, so that its images can be shown later)."""
    if len(feats) != len(ids):
        raise ValueError(f"shard {name}: {len(feats)} rows for {len(ids)} ids")
    emb = save_npy(out / "emb" / f"{name}.npy", feats)
    write_json(out / "ids" / f"{name}.json", {"ids": list(ids), "skipped": list(skipped), "emb": file_record(emb),
                                              "seconds": round(seconds, 3), "rank": rank,
                                              "tar": None if tar is None else str(Path(tar).resolve())})


def write_feature_shards(out: str | Path, arrays: Iterable[np.ndarray], ids: Iterable[Sequence[str]], *,
                         source: dict[str, Any], dtype: str = "float16", count: int | None = None) -> Path:
    """A shard folder of features computed elsewhere (drawn vectors for a benchmark, another tool's embeddings):
    ``source`` stands for the encoder key in the plan (it names where the vectors come from). ``arrays`` and ``ids``
    may be generators of ``count`` shards, read one shard at a time (a gallery larger than memory)."""
    out = Path(out)
    names = [f"{i:05d}" for i in range(len(arrays) if count is None else count)]
    plan = {"encoder": source, "encoder_state_sha256": None, "layout": None, "transform": None, "dtype": dtype,
            "format": FORMAT, "shards": names}
    _start(out, plan)
    for name, arr, shard_ids in zip(names, arrays, ids):
        if not (out / "ids" / f"{name}.json").is_file():
            write_shard(out, name, np.asarray(arr, dtype=dtype), list(shard_ids))
    _finish(out, plan, [ShardInput(n) for n in names], timeout=0)
    return out


def _finish(out: Path, plan: dict, inputs: Sequence[ShardInput], timeout: float) -> None:
    """Once every shard is done (other processes may still write theirs): ``manifest.json``, once."""
    deadline = time.monotonic() + timeout
    while not all((out / "ids" / f"{s.name}.json").is_file() for s in inputs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{out}: waited {timeout:.0f} s for the other processes' shards")
        time.sleep(0.5)
    manifest = out / "manifest.json"
    with locked(manifest):
        if manifest.is_file():
            return
        shards = []
        for s in inputs:
            info = read_json(out / "ids" / f"{s.name}.json")
            shards.append({"name": s.name, "rows": len(info["ids"]), "skipped": len(info["skipped"])})
        first = out / "emb" / f"{inputs[0].name}.npy"
        dim = int(np.load(first, mmap_mode="r" if shards[0]["rows"] else None).shape[1])  # (an empty file: no map)
        write_json(manifest, {**plan, "dim": dim, "rows": sum(s["rows"] for s in shards), "shards": shards})


class ShardIds(Sequence):
    """The ids of a shard folder in row order, read one shard's ids file at a time when asked for (a gallery of
    a billion keys is not held in memory; the last few shards read stay cached)."""

    def __init__(self, folder: Path, names: list[str], counts: list[int]) -> None:
        self.folder, self.names = folder, names
        self.starts = np.cumsum([0] + counts)
        self._shard = functools.lru_cache(maxsize=8)(self._read)

    def _read(self, s: int) -> list[str]:
        return read_json(self.folder / "ids" / f"{self.names[s]}.json")["ids"]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        row = int(row) + len(self) if int(row) < 0 else int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} of a gallery of {len(self):,}")
        s = int(np.searchsorted(self.starts, row, side="right") - 1)
        return self._shard(s)[row - int(self.starts[s])]


@dataclass
class ShardedFeatures:
    """A finished shard folder: ``ids`` in shard order (read per shard), ``arrays`` one read-only memory map per
    shard."""

    path: Path
    ids: ShardIds
    arrays: list[np.ndarray]
    manifest: dict

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, int(self.arrays[0].shape[1])

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``lo:hi`` across shards in their dtype (what :func:`ada_utils.retrieval.abc_metrics` reads per
        block: a shard folder is a distractor gallery as it stands)."""
        lo, hi, step = rows.indices(self.rows)
        if step != 1:
            raise ValueError("shard folders are read in contiguous row ranges")
        parts, start = [], 0
        for arr in self.arrays:
            a, b = max(lo - start, 0), min(hi - start, len(arr))
            if a < b:
                parts.append(arr[a:b])
            start += len(arr)
        return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), dtype=self.arrays[0].dtype)

    def rows_at(self, index: np.ndarray) -> np.ndarray:
        """Float32 rows at global positions ``index`` (any order), read from the memory maps."""
        index = np.asarray(index, dtype=np.int64)
        starts = np.cumsum([0] + [len(a) for a in self.arrays])
        shard = np.searchsorted(starts, index, side="right") - 1
        out = np.empty((len(index), self.arrays[0].shape[1]), dtype=np.float32)
        for s in np.unique(shard):
            hit = shard == s
            out[hit] = self.arrays[s][index[hit] - starts[s]]
        return out


def shard_images(feats: ShardedFeatures, rows: Sequence[int]) -> dict[str, Any]:
    """The images of gallery ``rows`` embedded from tars, by id, read back from those tars (streamed, each read up to
    its last wanted key); rows embedded from image files are left out (their ids are the images' paths)."""
    by_shard: dict[int, set[str]] = {}
    for row in rows:
        by_shard.setdefault(int(np.searchsorted(feats.ids.starts, row, side="right") - 1), set()).add(feats.ids[row])
    found = {}
    for s, wanted in by_shard.items():
        tar = read_json(feats.path / "ids" / f"{feats.ids.names[s]}.json").get("tar")
        if tar is None:
            continue
        if not Path(tar).is_file():
            raise FileNotFoundError(f"{tar}: the tar shard {feats.ids.names[s]} was embedded from is not there, and "
                                    "the contact sheet shows its images: put it back, or leave out --sheet")
        for key, data in read_shard(tar):
            if key in wanted:
                found[key] = decode_image(data, f"{tar}:{key}")
                if wanted <= found.keys():
                    break
    return found


def open_shards(folder: str | Path) -> ShardedFeatures:
    """Open a finished shard folder (its arrays checked against their records by size; SHA-256 on request by
    :func:`verify_shards`)."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.json: not a finished shard folder (ada embed --shards "
                                "writes it once every shard is done; re-run that command to finish it)")
    manifest = read_json(manifest_path)
    arrays = [_open_emb(folder / "emb" / f"{shard['name']}.npy", shard["rows"]) for shard in manifest["shards"]]
    names, counts = [s["name"] for s in manifest["shards"]], [s["rows"] for s in manifest["shards"]]
    return ShardedFeatures(folder, ShardIds(folder, names, counts), arrays, manifest)


def _open_emb(emb: Path, rows: int) -> np.ndarray:
    """One shard's array, memory-mapped, checked against the manifest's row count and its own header's size."""
    damaged = DamagedFileError(f"{emb}: missing or of another size than written: re-run the ada embed --shards "
                               "command (it embeds this shard again)")
    try:
        arr = np.load(emb, mmap_mode="r" if rows else None)  # (an empty file: no map)
    except (OSError, ValueError):
        raise damaged from None
    size = arr.offset + arr.nbytes if rows else emb.stat().st_size
    if len(arr) != rows or emb.stat().st_size != size:
        raise damaged
    return arr


def verify_shards(folder: str | Path) -> list[str]:
    """The shards of ``folder`` whose ids file is missing or whose array no longer matches its SHA-256 record
    (empty: all intact)."""
    folder = Path(folder)
    bad = []
    for shard in read_json(folder / "manifest.json")["shards"]:
        ids = folder / "ids" / f"{shard['name']}.json"
        if not ids.is_file() or check_record(folder / "emb" / f"{shard['name']}.npy", read_json(ids)["emb"]):
            bad.append(shard["name"])
    return bad
