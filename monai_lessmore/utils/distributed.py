"""Rank and world size of the current process, from :mod:`ignite.distributed` (serial runs: rank 0 of 1).

ignite picks up a ``torch.distributed`` process group however it was started (``torchrun`` + the bundle's
``init_process_group``, ``idist.Parallel``, a test's own group). The helpers ask ``torch.distributed`` first whether
a group exists, so they stay right when a group is destroyed and another one created in the same process.
"""

from __future__ import annotations

import ignite.distributed as idist
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_rank0"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (even one of a single process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank; 0 outside a process group."""
    return idist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 outside a process group."""
    return idist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    """True outside a process group or on rank 0 (the process that writes files and logs)."""
    return get_rank() == 0
