"""Batched, cached, resumable feature extraction: any encoder over a list of images.

A cache folder holds ``feats.npy`` ((N, D) float32, rows in the order of ``paths``), ``ids.json`` (N strings)
and ``manifest.json`` (encoder spec and a hash of its parameters, transform key, count, dim, dtype and a hash
of the image list). The manifest is written last, so its presence means "complete". Work in progress lives in
``chunks/NNNNNN.npy`` (one file per ``chunk_size`` images, written atomically) beside ``progress.json``: an
interrupted run resumes at the first missing chunk; partial caches of *other* image lists (a run that failed on a
bad image, then ran on a corrected list) are removed once idle for six hours (:func:`remove_abandoned`). Under
``torchrun`` (``RANK``/``WORLD_SIZE``, read through ``ada_utils.distributed``) every rank embeds chunks
``rank, rank + world_size, ...`` into the same (shared) folder and rank 0 merges them; the ranks meet through files
only, so no process group is needed.
Several processes on one folder (a job array, two notebooks): a ``flock`` lock beside it (:func:`ada_utils.files.locked`)
admits one writer, or the ranks of one torchrun job together; a second process waits, then reuses the finished cache
(and says so) or resumes the chunks of one that stopped. The manifest records the size and SHA-256 of ``feats.npy``
and ``ids.json``; a cache whose files no longer match is named and embedded again. The merge checks the free space
first and writes as a stream (a full disk is an error naming the folder, never a signal in a memory map).
Each image is embedded once per encoder + preprocessing (the book's reproducibility page: how the CPU book fits):
a complete cache of the default tree also stores ``sources.json`` (each row's resolved file, size and modification
time), and a new image list under the same encoder and plain preprocessing copies the rows that a sibling cache
already holds instead of embedding them again (seeded views are not shared: view i of a list is seeded by i).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ada_utils.data import ImageDecodeError, ImageListDataset
from ada_utils.data.abc import listed
from ada_utils.data.images import OnError
from ada_utils.files import (DamagedFileError, check_record, ensure_space, file_record, known_record, locked,
                             read_json, save_npy, write_atomic, write_json)

FORMAT = 1  # manifest format version


@dataclass
class Features:
    """Cached features: ``feats`` (N, D) float32 (memory-mapped), row-aligned ``ids``, the manifest, the folder."""

    feats: np.ndarray
    ids: list[str]
    manifest: dict[str, Any]
    path: Path

    @property
    def skipped(self) -> list[str]:
        """Ids of the images that did not decode (``on_error="skip"``); their rows are NaN."""
        return list(self.manifest.get("skipped", []))

    def decoded(self) -> tuple[np.ndarray, list[str]]:
        """Rows and ids without the skipped images (the memory map itself when none was skipped)."""
        if not self.skipped:
            return self.feats, self.ids
        bad = set(self.skipped)
        keep = [i for i, name in enumerate(self.ids) if name not in bad]
        return np.asarray(self.feats[keep]), [self.ids[i] for i in keep]


def encoder_key(encoder: nn.Module, *, transform_key: str | None = None, seed: int = 0) -> dict[str, Any]:
    """What the features depend on besides the images: spec, a hash of the actual parameters, the transform.

    The parameter hash catches fine-tuned or randomly initialised encoders whose spec is unchanged.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"encoder": encoder.spec, "encoder_state_sha256": digest.hexdigest(), "layout": memory_layout(encoder),
            "transform": transform_key or "preprocess", "seed": seed if transform_key else None}


def memory_layout(encoder: nn.Module) -> str:
    """``"channels_last"`` for a convolutional encoder on the CPU, else ``"contiguous"``.

    Channels-last convolutions run EfficientNet-Lite0 forward passes 1.3x faster on the 2-core CPU (measured on
    16 images at 128 px, one run: 162 vs 121 img/s) and move features by about 1e-6 (max 7e-6 of values up to
    4.7), so the layout is part of the cache key: features of the two layouts never mix.
    """
    device = next(encoder.parameters()).device
    conv = any(isinstance(m, nn.Conv2d) for m in encoder.modules())
    return "channels_last" if device.type == "cpu" and conv else "contiguous"


def list_hash(paths: Sequence[str | Path], ids: Sequence[str]) -> str:
    """SHA-256 of the id list and each file's size and modification time (a rebuilt file is re-embedded)."""
    digest = hashlib.sha256()
    for path, id_ in zip(paths, ids, strict=True):
        st = os.stat(path)
        digest.update(f"{id_}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def embed_images(encoder: nn.Module, paths: Sequence[str | Path], *, cache: str | Path | None = None,
                 ids: Sequence[str] | None = None, transform: Callable | None = None,
                 transform_key: str | None = None, seed: int = 0, batch_size: int | None = None,
                 num_workers: int = 0, chunk_size: int | None = None, progress: bool = True, rank: int | None = None,
                 world_size: int | None = None, timeout: float = 24 * 3600, on_error: OnError = "raise",
                 streams: int | None = None) -> Features:
    """Embed every image once (or load the cache): features (N, D) float32 in the order of ``paths``.

    Args:
        encoder: ``nn.Module`` mapping (B, 3, H, W) to (B, D), with ``.preprocess`` (PIL -> (3, H, W) tensor),
            ``.spec`` (JSON-able dict) and ``.dim`` (see ``ada_utils.encoders.backbones.load_encoder``).
        paths: image files.
        cache: cache folder. Default ``cache_dir()/features/<encoder+transform hash>/<list hash>``.
        ids: one string per image for ``ids.json`` (default: the paths as given).
        transform: replaces ``encoder.preprocess`` (e.g. augmented views); needs ``transform_key``.
        transform_key: names the transform in the manifest and the cache key.
        seed: with a transform, image i is transformed under ``torch.manual_seed(seed + i)`` (resumable,
            independent of workers and ranks).
        batch_size: images per forward pass (None: :func:`auto_batch_size`).
        num_workers: DataLoader workers.
        chunk_size: images per resumable chunk (default: a sixteenth of the list, between 64 and 1024, so that an
            interrupted run of any length keeps most of what it embedded).
        progress: tqdm bar over images.
        rank, world_size: this process's share (default: the process group's, else ``RANK``/``WORLD_SIZE``,
            else 0 and 1).
        timeout: seconds a rank waits for the others' chunks (rank 0) or the merged manifest (others).
        on_error: ``"raise"``: an image that does not decode stops the run, naming the file. ``"skip"``: its row
            is NaN and its id is listed in the manifest's ``skipped`` (:attr:`Features.skipped`); the caller
            leaves it out.
        streams: chunks embedded at once on a CPU, each in its own thread with one torch thread, so that every
            core decodes and runs the model (None: one per torch thread; always 1 on a GPU). One torch thread
            gives the same features, bit for bit, as several (tests/test_embed.py).

    Returns:
        :class:`Features`; ``feats`` is a read-only memory map of ``feats.npy``.

    Raises:
        ValueError: the folder's manifest (or progress file) was written for another encoder, transform or
            image list (the message names the file).
    """
    if (transform is None) != (transform_key is None):
        raise ValueError("transform and transform_key go together: name the transform so caches stay distinct")
    if not len(paths):
        raise ValueError("paths: no images to embed")
    ids = [Path(p).as_posix() for p in paths] if ids is None else [str(i) for i in ids]
    if len(ids) != len(paths):
        raise ValueError(f"ids: {len(ids)} ids for {len(paths)} paths")
    chunk_size = chunk_size or min(1024, max(64, -(-len(paths) // 16)))
    if rank is None or world_size is None:
        from ada_utils.distributed import rank_and_world

        env_rank, env_world = rank_and_world()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    key = encoder_key(encoder, transform_key=transform_key, seed=seed)
    plan = {**key, "count": len(paths), "list_sha256": list_hash(paths, ids), "dtype": "float32",
            "chunk_size": chunk_size}
    default_cache = cache is None
    if default_cache:
        from ada_utils.project import cache_dir

        cache = cache_dir() / "features" / _short_hash(key) / plan["list_sha256"][:16]
    folder = Path(cache)
    if (folder / "manifest.json").is_file():  # a finished cache: no lock needed to read it
        found = _verified(folder, plan, on_error, on_damage="defer")
        if found is not None:
            return found
    run = _Embedding(encoder, paths, ids, folder, plan, chunk_size, rank, world_size, transform, seed, on_error,
                     sources=_sources(paths) if default_cache and transform is None else None)
    waiting = (f"[embed] another process is embedding into {folder}: waiting for it, then reusing its features "
               "(or resuming its chunks if it stopped)")
    with locked(folder, shared=world_size > 1, waiting=waiting) as waited:
        if (folder / "manifest.json").is_file():
            found = _verified(folder, plan, on_error, on_damage="repair" if world_size == 1 else "raise")
            if found is not None:
                if waited:
                    print(f"[embed] reusing the features the other process finished in {folder}", file=sys.stderr)
                return found
        run.embed_mine(batch_size=batch_size, num_workers=num_workers, progress=progress, streams=streams)
        if world_size == 1:
            run.merge()
    if world_size > 1:
        run.meet(timeout)
    if default_cache and rank == 0:  # the project's cache tree: clear what failed runs left beside this one
        remove_abandoned(folder.parent, keep=folder)
    return _checked_skips(_load(folder, plan), on_error)


class _Embedding:
    """One process's part of filling a cache folder: its chunks, then (rank 0) the merge."""

    def __init__(self, encoder: nn.Module, paths: Sequence[str | Path], ids: list[str], folder: Path, plan: dict,
                 chunk_size: int, rank: int, world_size: int, transform: Callable | None, seed: int,
                 on_error: OnError, *, sources: list[str] | None) -> None:
        self.encoder, self.paths, self.ids, self.folder, self.plan = encoder, paths, ids, folder, plan
        self.rank, self.world, self.sources = rank, world_size, sources
        self.copied = 0  # rows copied from sibling caches instead of embedded (recorded in the manifest)
        self.chunk_dir = folder / "chunks"
        self.n_chunks = -(-len(paths) // chunk_size)
        self.rows = {c: range(c * chunk_size, min((c + 1) * chunk_size, len(paths))) for c in range(self.n_chunks)}
        self.dataset = _SeededDataset(ImageListDataset(paths, transform or encoder.preprocess, on_error=on_error),
                                      seed if transform else None)

    def chunk_file(self, c: int) -> Path:
        return self.chunk_dir / f"{c:06d}.npy"

    def embed_mine(self, *, batch_size: int | None, num_workers: int, progress: bool, streams: int | None) -> None:
        """Embed this rank's missing chunks (``rank, rank + world_size, ...``), each saved atomically."""
        folder, plan, encoder = self.folder, self.plan, self.encoder
        folder.mkdir(parents=True, exist_ok=True)
        progress_path = folder / "progress.json"
        if progress_path.is_file():
            _check(progress_path, read_json(progress_path), plan)
        else:
            write_json(progress_path, plan)
        self.chunk_dir.mkdir(exist_ok=True)
        mine = [c for c in range(self.rank, self.n_chunks, self.world) if not self.chunk_file(c).is_file()]
        done = _embedded_elsewhere(folder, self.sources) if self.sources and mine else {}
        self.copied = len(done)
        batch_size = batch_size or auto_batch_size(encoder)
        layout = torch.channels_last if plan["layout"] == "channels_last" else torch.contiguous_format
        encoder.to(memory_format=layout)  # once, before any stream runs

        def embed_chunk(c: int, bar: tqdm) -> None:
            new = [r for r in self.rows[c] if r not in done]
            fresh = _embed_rows(encoder, self.dataset, new, batch_size=batch_size, num_workers=num_workers, bar=bar,
                                layout=layout)
            save_npy(self.chunk_file(c), _fill(self.rows[c], new, fresh, done))

        with tqdm(total=sum(r not in done for c in mine for r in self.rows[c]), desc="embedding", unit="img",
                  disable=not progress) as bar, _eval_mode(encoder):
            n_streams = _stream_count(streams, encoder, len(mine), num_workers)
            _in_streams(mine, lambda c: embed_chunk(c, bar), n_streams)

    def merge(self) -> None:
        """Concatenate the chunks into the finished cache (the caller holds the folder's exclusive lock)."""
        chunk_files = [self.chunk_file(c) for c in range(self.n_chunks)]
        _merge(self.folder, chunk_files, self.ids, {**self.plan, "rows_from_other_lists": self.copied},
               self.sources)

    def meet(self, timeout: float) -> None:
        """Under torchrun: rank 0 waits for every chunk, then merges under the exclusive lock (after any other
        job's writers); the other ranks wait for the manifest."""
        manifest = self.folder / "manifest.json"
        if self.rank != 0:
            _wait(manifest.is_file, timeout, f"rank 0 to write {manifest}")
            return
        files = [self.chunk_file(c) for c in range(self.n_chunks)]
        _wait(lambda: manifest.is_file() or all(f.is_file() for f in files), timeout,
              f"the chunks of the other ranks in {self.chunk_dir}")
        with locked(self.folder):
            if not manifest.is_file():
                self.merge()


def _verified(folder: Path, plan: dict, on_error: OnError, *, on_damage: str) -> Features | None:
    """The finished cache in ``folder`` once its files match their records, else None (``on_damage="defer"``: the
    caller checks again under the lock; ``"repair"``: the caller holds the exclusive lock, so the manifest is removed
    and the cache embedded again) or :class:`DamagedFileError` (``"raise"``: under torchrun, where ranks cannot
    agree to re-embed; the message says what to delete)."""
    manifest = read_json(folder / "manifest.json")
    _check(folder / "manifest.json", manifest, plan)
    damage = cache_damage(folder, manifest)
    if damage is None:
        return _checked_skips(load_features(folder), on_error)
    if on_damage == "raise":
        raise DamagedFileError(f"{damage}: delete {folder} and run again to embed it anew")
    if on_damage == "repair":
        print(f"[embed] {damage}: embedding {folder} again", file=sys.stderr)
        (folder / "manifest.json").unlink()
    return None


def cache_damage(folder: Path, manifest: dict) -> str | None:
    """Why a finished cache's files no longer match the records its manifest took when they were written (None:
    intact; caches written before records were kept are checked by shape only, in :func:`load_features`)."""
    for name, record in manifest.get("checks", {}).items():
        reason = check_record(folder / name, record)
        if reason:
            return reason
    return None


def _checked_skips(features: Features, on_error: OnError) -> Features:
    """A cache made with ``on_error="skip"`` read with ``"raise"`` names its undecodable images; one where no image
    decoded is an error either way (nothing is left to compute with)."""
    if features.skipped and len(features.skipped) == len(features.ids):
        raise ImageDecodeError(f"{features.path}: none of the {len(features.ids)} images decoded "
                               f"({listed(features.skipped, most=3, sep=', ')}): check the files or the folder")
    if features.skipped and on_error == "raise":
        raise ImageDecodeError(f"{features.path}: {len(features.skipped)} image(s) did not decode "
                               f"({listed(features.skipped, most=5, sep=', ')}): replace them, or pass "
                               "--on-error skip (on_error='skip') to leave them out")
    return features


# A partial cache untouched for this long belongs to a run that failed or was abandoned (a live run writes a chunk
# every few minutes even on a CPU).
ABANDONED_S = 6 * 3600


def remove_abandoned(parent: Path, *, keep: Path, idle_s: float = ABANDONED_S) -> list[Path]:
    """Delete the partial caches beside ``keep`` (same encoder, other image lists) idle for ``idle_s`` seconds.

    A partial cache (``progress.json`` without ``manifest.json``) of the *same* image list is resumed by the next
    run; one of another list (a run that failed on a bad image, then ran on a corrected list) would otherwise stay
    on disk for ever. Returns the removed folders.
    """
    removed, now = [], time.time()
    for folder in parent.iterdir():
        if folder == keep or not folder.is_dir() or (folder / "manifest.json").exists():
            continue
        if not (folder / "progress.json").is_file():
            continue
        try:
            with locked(folder, refuse="in use"):  # held while deleting: no process resumes it meanwhile
                if now - max(p.stat().st_mtime for p in folder.rglob("*")) > idle_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        except FileExistsError:  # a live process writes there
            continue
    return removed


SOURCES = "sources.json"  # one "resolved path<TAB>size<TAB>mtime_ns" per row (plain preprocessing only)


def _sources(paths: Sequence[str | Path]) -> list[str]:
    """What identifies each file for reuse across image lists: its resolved path, size and modification time."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append(f"{Path(path).resolve()}\t{st.st_size}\t{st.st_mtime_ns}")
    return out


def _embedded_elsewhere(folder: Path, sources: list[str]) -> dict[int, np.ndarray]:
    """Rows of this list (by index) that a complete sibling cache (same encoder and preprocessing) already holds."""
    want = {s: i for i, s in enumerate(sources)}
    found: dict[int, np.ndarray] = {}
    for other in sorted(folder.parent.iterdir()):
        if other == folder or not (other / "manifest.json").is_file() or not (other / SOURCES).is_file():
            continue
        feats = None
        for j, source in enumerate(read_json(other / SOURCES)):
            i = want.get(source)
            if i is not None and i not in found:
                if feats is None:
                    try:
                        feats = load_features(other).feats
                    except DamagedFileError as err:  # its rows are not trusted: embed them here instead
                        print(f"[embed] not reusing {other}: {err}", file=sys.stderr)
                        break
                found[i] = feats[j]
    return found


def _fill(rows: range, new: list[int], fresh: np.ndarray | None, done: dict[int, np.ndarray]) -> np.ndarray:
    """One chunk's rows: the freshly embedded ones (``new``, in order) and the others copied from ``done``."""
    parts = dict(zip(new, fresh)) if fresh is not None else {}
    return np.stack([parts[r] if r in parts else np.asarray(done[r]) for r in rows]).astype(np.float32, copy=False)


def auto_batch_size(encoder: nn.Module) -> int:
    """Images per forward pass when the caller names none: 16 on a CPU, 64 on an accelerator.

    On a CPU a small batch keeps a convolution's activations in the processor's cache: EfficientNet-Lite0 at
    128 px, 1,024 benchmark images through :func:`embed_images`, ran 1.8x faster at 16 images than at 64 on the
    project's 2-core machine, with the same features bit for bit (the kernels treat each image alike from 16
    images up, and :func:`_padded` fills short batches; tests/test_encoders.py checks it). An accelerator wants
    large batches.
    """
    return 16 if next(encoder.parameters()).device.type == "cpu" else 64


def _stream_count(streams: int | None, encoder: nn.Module, n_chunks: int, num_workers: int) -> int:
    """How many chunks run at once: ``streams`` (default: the torch thread count on a CPU; 1 on a GPU, and with
    DataLoader workers, which already decode in parallel)."""
    if next(encoder.parameters()).device.type != "cpu" or num_workers > 0:
        return 1
    return max(1, min(n_chunks, torch.get_num_threads() if streams is None else streams))


def _in_streams(chunks: list[int], work: Callable[[int], None], streams: int) -> None:
    """``work(c)`` for every chunk, ``streams`` at a time with one torch thread each (in order when 1).

    On an error or an interruption the chunks not started are dropped; those running finish and are kept.
    """
    if streams == 1:
        for c in chunks:
            work(c)
        return
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="embed") as pool:
            futures = [pool.submit(work, c) for c in chunks]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _eval_mode(encoder: nn.Module) -> Iterator[None]:
    """The encoder in eval mode for the whole embedding (restored after), not per chunk: chunks run concurrently."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


class _SeededDataset(torch.utils.data.Dataset):
    """Item i transformed under ``manual_seed(seed + i)`` (when seed is not None), without touching global RNG.

    The seeded transform holds a lock: the generator it forks is global, and chunks run in concurrent threads.
    """

    def __init__(self, base: ImageListDataset, seed: int | None):
        self.base, self.seed, self.lock = base, seed, threading.Lock()

    def __getstate__(self) -> dict:  # DataLoader workers get a copy without the lock
        return {"base": self.base, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["base"], state["seed"])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.seed is None:
            return self.base[index]
        with self.lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + index)
            return self.base[index]


@torch.inference_mode()
def _embed_rows(encoder: nn.Module, dataset: _SeededDataset, rows: Sequence[int], *, batch_size: int,
                num_workers: int, bar: tqdm, layout: torch.memory_format = torch.contiguous_format
                ) -> np.ndarray | None:
    """(len(rows), D) float32 features of ``rows`` in order (None for no rows); NaN rows for undecodable images."""
    if not len(rows):
        return None
    device = next(encoder.parameters()).device
    # Its own generator: a DataLoader draws a base seed, which must not come from the global generator that a
    # concurrent chunk's seeded transform is using.
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False, generator=torch.Generator())
    out, out_rows = [], 0
    for batch in loader:
        x = _padded(batch, batch_size).to(device).contiguous(memory_format=layout)
        feats = encoder(x)[:len(batch)].float().cpu().numpy()
        if feats.ndim != 2 or feats.shape[1] != encoder.dim:
            raise ValueError(f"encoder {encoder.spec.get('name')!r} returned shape {feats.shape}, "
                             f"expected (B, {encoder.dim})")
        skipped = ~torch.isfinite(batch).flatten(1).all(1).numpy()  # images that did not decode (NaN inputs)
        _check_finite(encoder, feats, skipped, [dataset.base.paths[r] for r in rows[out_rows:out_rows + len(batch)]])
        feats[skipped] = np.nan
        out.append(feats)
        out_rows += len(batch)
        bar.update(len(batch))
    return np.concatenate(out).astype(np.float32, copy=False)


class NonFiniteFeaturesError(ValueError):
    """The encoder returned NaN/Inf for images that decoded: its weights or its arithmetic, not the images."""


def _check_finite(encoder: nn.Module, feats: np.ndarray, skipped: np.ndarray, paths: list[Path]) -> None:
    """Raise :class:`NonFiniteFeaturesError` for non-finite features of decoded images (NaN rows mark the images
    that did not decode, so such rows must never be taken for them)."""
    bad = ~np.isfinite(feats).all(1) & ~skipped
    if not bad.any():
        return
    spec = encoder.spec
    weights = getattr(encoder, "weights_path", None) or spec.get("weights")
    raise NonFiniteFeaturesError(
        f"encoder {spec.get('name')!r} (weights {weights}) gave NaN/Inf features for {int(bad.sum())} "
        f"of {len(feats)} decoded images in a batch (first: {paths[int(np.flatnonzero(bad)[0])]}): the images are "
        "fine, the weights hold NaN/Inf or the activations overflow: check or replace the weights file (or run in "
        "float32)")


def _padded(batch: torch.Tensor, size: int) -> torch.Tensor:
    """A short batch (a chunk's last) filled up to ``size`` rows with copies of its last image.

    Every forward pass then has one shape, so an image's features do not depend on where it falls in the list:
    a CPU convolution on one thread takes another code path below 16 images (last digits differ).
    """
    if len(batch) >= size:
        return batch
    return torch.cat([batch, batch[-1:].expand(size - len(batch), *batch.shape[1:])])


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def _merge(folder: Path, chunk_files: list[Path], ids: list[str], plan: dict, sources: list[str] | None) -> None:
    """Concatenate the chunks into ``feats.npy`` (written as a stream, after a check that the disk holds it: a full
    disk is an error naming the folder, never a signal in a memory map); ``sources.json`` (reuse by later lists) and
    the manifest, with the records (size, SHA-256) of what it lists, last; clean up."""
    dim = int(np.load(chunk_files[0], mmap_mode="r").shape[1])
    ensure_space(folder, len(ids) * dim * 4, f"the merged feature cache ({len(ids):,} x {dim} float32)")
    skipped: list[str] = []
    digest = hashlib.sha256()  # of the bytes as they are written: the record needs no second read

    def write(fh: Any) -> None:
        out = _Hashing(fh, digest)
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (len(ids), dim)})
        row = 0
        for f in chunk_files:
            chunk = np.load(f)
            skipped.extend(ids[row + i] for i in np.flatnonzero(~np.isfinite(chunk).all(1)))
            out.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
            row += len(chunk)
        if row != len(ids):
            raise ValueError(f"{folder / 'chunks'}: the chunks hold {row} rows for {len(ids)} images; delete {folder} "
                             "and run again")

    write_atomic(folder / "feats.npy", write)
    write_json(folder / "ids.json", ids)
    if sources is not None:
        write_json(folder / SOURCES, sources)
    checks = {"feats.npy": known_record(folder / "feats.npy", digest.hexdigest()),
              "ids.json": file_record(folder / "ids.json")}
    write_json(folder / "manifest.json", {**plan, "format": FORMAT, "dim": dim, "skipped": skipped, "checks": checks,
                                          "files": {"feats": "feats.npy", "ids": "ids.json"}})
    shutil.rmtree(chunk_files[0].parent)  # with any temporary file a killed writer left (no writer holds the lock)
    (folder / "progress.json").unlink(missing_ok=True)


class _Hashing:
    """A binary file's ``write`` that also feeds ``digest``."""

    def __init__(self, fh: Any, digest: Any) -> None:
        self.fh, self.digest = fh, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def _check(path: Path, found: dict, plan: dict) -> None:
    """Raise if a manifest/progress file was written for another encoder, transform, image list or chunking."""
    for field in ("encoder", "encoder_state_sha256", "transform", "seed"):
        if found.get(field) != plan[field]:
            raise ValueError(f"{path}: feature cache written for another encoder or transform ({field}: "
                             f"{found.get(field)!r} there, {plan[field]!r} now); pass another cache= or delete "
                             f"{path.parent}")
    # A finished cache is valid for any chunk size; an unfinished one resumes only with its own.
    for field in ("count", "list_sha256") + (("chunk_size",) if path.name == "progress.json" else ()):
        if found.get(field) != plan[field]:
            raise ValueError(f"{path}: feature cache written for another image list or chunking ({field}: "
                             f"{found.get(field)!r} there, {plan[field]!r} now); pass another cache= or delete "
                             f"{path.parent}")


def load_features(folder: str | Path) -> Features:
    """Open a complete cache folder (``feats.npy``, ``ids.json``, ``manifest.json``) after checking its files
    against the manifest's records (:func:`cache_damage`).

    Raises:
        DamagedFileError: a file truncated, damaged, or disagreeing with the manifest (the message names it).
    """
    folder = Path(folder)
    manifest = read_json(folder / "manifest.json")
    damage = cache_damage(folder, manifest)
    if damage:
        raise DamagedFileError(f"{damage}: delete {folder} and run again to embed it anew")
    path = folder / manifest["files"]["feats"]
    try:
        feats = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise DamagedFileError(f"{path}: cannot be read as an array ({err}): delete {folder} and run again to embed "
                               "it anew") from err
    ids = read_json(folder / manifest["files"]["ids"])
    if feats.shape != (manifest["count"], manifest["dim"]) or len(ids) != manifest["count"]:
        raise DamagedFileError(f"{folder}: feats.npy {feats.shape} / ids.json ({len(ids)}) disagree with "
                               f"manifest.json: delete {folder} and run again to embed it anew")
    return Features(feats, ids, manifest, folder)


def _load(folder: Path, plan: dict) -> Features:
    _check(folder / "manifest.json", read_json(folder / "manifest.json"), plan)
    return load_features(folder)
