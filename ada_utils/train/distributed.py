"""Everything ``torch.distributed`` in one place: process-group start-up under ``torchrun`` and gathering.

Nothing here runs in a one-process notebook: with ``WORLD_SIZE`` unset or 1, :func:`init_distributed` returns
``(0, 1)`` without touching ``torch.distributed``, and callers gather only when the world is larger than one.
"""

from __future__ import annotations

import os

import torch


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed only under torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process, keeping the gradient of the local part."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x))
