"""Everything ``torch.distributed`` in one place: rank, world size, local rank, the device, and collectives.

Every other module asks this one: ``train`` and ``ada train`` (:func:`setup`, :func:`on_main`, :func:`barrier`),
the step's gathered negatives and sharded nearest-neighbour refresh (:func:`all_gather`,
:func:`all_gather_with_grad`), ``embed_images`` (:func:`rank_and_world`), ``load_encoder`` and the CLI's
``--device`` (:func:`select_device`).

Conventions (``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``):

- One process per device: on CUDA, process ``LOCAL_RANK`` drives ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``
  is called before the process group starts, as DINO's ``init_distributed_mode`` [1] does); without CUDA every
  process runs on the CPU.
- Backend: NCCL when the device is CUDA, gloo on the CPU.
- Rank 0 alone writes (run folder, checkpoints, logs, metrics); :func:`on_main` runs a step there and hands its
  result, or its exception, to every rank, so that no rank waits for a rank that has already given up.
- Nothing here starts ``torch.distributed`` in a one-process run: with ``WORLD_SIZE`` unset or 1 every
  collective is the identity and :func:`setup` only picks the device.

[1] DINO, ``utils.py`` (``init_distributed_mode``), github.com/facebookresearch/dino; MoCo v3,
    ``moco/builder.py`` (``concat_all_gather``), github.com/facebookresearch/moco-v3.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine, its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------- who am I, which device
def _dist():
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer (set by torchrun)") from None


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 outside torchrun)."""
    return _env_int("LOCAL_RANK", 0)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the started process group, else from ``RANK``/``WORLD_SIZE``, else ``(0, 1)``.

    Needs no process group: ``embed_images`` shards its work by these numbers through files alone.
    """
    if _initialized():
        dist = _dist()
        return dist.get_rank(), dist.get_world_size()
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files)."""
    return rank_and_world()[0] == 0


def select_device(device: str | torch.device = "auto") -> torch.device:
    """The device this process computes on; a CUDA device is also made current (``torch.cuda.set_device``).

    Args:
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU), ``"cuda"`` (``cuda:LOCAL_RANK``),
            ``"cuda:i"`` (that GPU), ``"cpu"``, or a ``torch.device``.

    Raises:
        ValueError: CUDA requested but not available, or ``LOCAL_RANK`` beyond the visible GPUs (more processes
            per machine than GPUs).
    """
    text = str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(text)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} (device={str(device)!r}) was requested but CUDA is not available here: "
                         "use --device cpu or --device auto")
    index = local_rank() if dev.index is None else dev.index  # torchrun: one GPU per process
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {text!r} on local rank {local_rank()} needs GPU {index}, but {count} "
                         f"{'is' if count == 1 else 'are'} visible: start at most {count} processes per machine "
                         "(torchrun --nproc_per_node) or check CUDA_VISIBLE_DEVICES")
    torch.cuda.set_device(index)  # before any collective: NCCL binds each process to its current device
    return torch.device("cuda", index)


def setup(device: str | torch.device = "auto") -> Context:
    """Pick the device and, under ``torchrun`` with ``WORLD_SIZE`` > 1, start the process group (once).

    NCCL on a CUDA device, gloo on the CPU; the group is destroyed at interpreter exit (or by :func:`cleanup`).
    Idempotent: later calls return the same numbers.
    """
    dev = select_device(device)
    world = _env_int("WORLD_SIZE", 1)
    if world > 1 and not _initialized():
        dist = _dist()
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        atexit.register(cleanup)
        barrier()  # every rank is up before any of them starts work (DINO does the same)
    rank, world = rank_and_world()
    return Context(rank, world, local_rank(), dev)


def cleanup() -> None:
    """Destroy the process group if one is running (no communication: safe after another rank failed)."""
    if _initialized():
        _dist().destroy_process_group()


# ----------------------------------------------------------------------------- synchronisation
def _active() -> bool:
    return _initialized() and _dist().get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if not _active():
        return
    dist = _dist()
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _portable(err: BaseException) -> BaseException:
    """``err`` itself when it survives pickling (it is re-raised on the other ranks), else a RuntimeError."""
    try:
        copy = pickle.loads(pickle.dumps(err))
        if type(copy) is type(err) and str(copy) == str(err):
            return err
    except Exception:  # noqa: BLE001 (any pickling failure means: send a plain description)
        pass
    return RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")


def _from_main(box: list) -> Any:
    """Broadcast ``box[0]`` from rank 0 to every rank (one picklable object)."""
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on every rank.

    The rank-0-writes helper: preparing a run folder, writing a file, deciding that a run is finished. Rank 0
    re-raises the original exception (with its traceback); the other ranks raise a copy, so a user error stays
    a one-line message everywhere and no rank is left waiting in a collective.
    """
    if not _active():
        return fn(*args, **kwargs)
    failure: BaseException | None = None
    box: list = [None]
    if is_main():
        try:
            box[0] = (True, fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 (handed to every rank, then re-raised)
            failure, box[0] = err, (False, _portable(err))
    ok, value = _from_main(box)
    if ok:
        return value
    raise failure if failure is not None else value


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a benchmark or a cache), then the other ranks run it.

    If the block fails on rank 0, the other ranks raise the same error instead of running it.
    """
    if not _active():
        yield
        return
    if is_main():
        try:
            yield
        except Exception as err:
            _from_main([(False, _portable(err))])
            raise
        _from_main([(True, None)])
    else:
        ok, err = _from_main([None])
        if not ok:
            raise err
        yield


# ----------------------------------------------------------------------------- gathering
def _sizes(x: torch.Tensor) -> list[int]:
    """First-dimension size of ``x`` on every rank."""
    dist = _dist()
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    out = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(out, n)
    return [int(s) for s in out]


def _gather_rows(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Rows of every rank, one tensor per rank (padded to the largest size for the collective, then trimmed)."""
    dist, most = _dist(), max(sizes)
    padded = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))]) if x.shape[0] < most else x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return [o if s == most else o[:s].clone() for o, s in zip(out, sizes)]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradient of every rank's copy and keeps this rank's rows.

    Each rank's loss depends on every rank's rows (as negatives), so the gradient of this rank's rows is the
    sum over ranks; DistributedDataParallel then averages parameter gradients over ranks, which makes a
    W-process step the gradient of the mean of the W per-rank losses.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, _dist().get_rank()
        return tuple(_gather_rows(x, sizes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        full = torch.cat([g.contiguous() for g in grads])
        _dist().all_reduce(full)  # sum over ranks (gloo and NCCL both have it; reduce-scatter gloo has not)
        start = sum(ctx.sizes[: ctx.rank])
        return full[start:start + ctx.sizes[ctx.rank]], None


@torch.no_grad()
def all_gather(x: torch.Tensor, *, split: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Rows of ``x`` from every rank in rank order, without gradient (MoCo v3's ``concat_all_gather``).

    Ranks may hold different numbers of rows. ``split=True`` returns one tensor per rank instead of their
    concatenation. One process: ``x`` itself (``[x]``).
    """
    if not _active():
        return [x] if split else x
    parts = _gather_rows(x, _sizes(x))
    return parts if split else torch.cat(parts)


def all_gather_with_grad(x: torch.Tensor, *, split: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Like :func:`all_gather`, but the gradient reaches this rank's rows from every rank's loss.

    ``split=True`` returns one tensor per rank; entry ``rank`` holds this rank's rows. One process: ``x`` itself.
    """
    if not _active():
        return [x] if split else x
    parts = list(_GatherWithGrad.apply(x, _sizes(x)))
    return parts if split else torch.cat(parts)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a detached copy; ``x`` itself in one process)."""
    if not _active():
        return x.detach()
    out = x.detach().clone()
    _dist().all_reduce(out)
    return out / _dist().get_world_size()
