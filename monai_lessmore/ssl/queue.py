"""A first-in-first-out feature queue, used by SwAV (queued embeddings) and MoCo v2 (the key dictionary).

It is an ``nn.Module`` whose state lives in buffers, so it is saved and restored with a checkpoint (resume
continues with the same queue). It is deliberately kept *outside* any ``DistributedDataParallel`` wrapper: DDP
would broadcast rank 0's buffers to every rank at each forward, while SwAV keeps one queue per rank. Such a
``per_rank`` queue is gathered from every rank into rank 0's checkpoint (:meth:`FeatureQueue.gather_ranks`) and
each rank gets its own back on resume.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from monai_lessmore.utils.distributed import get_rank, get_world_size

_RANK_KEYS = ("rank_data", "rank_ptr", "rank_num_filled")


def _dist_world() -> tuple[int, int]:
    """``(world size, rank)``, ``(1, 0)`` outside ``torch.distributed``."""
    return get_world_size(), get_rank()

__all__ = ["FeatureQueue"]


class FeatureQueue(nn.Module):
    """``num_queues`` ring buffers of ``size`` feature vectors of width ``dim``.

    Args:
        size: number of vectors each queue holds (SwAV: 3840 in the authors' code; MoCo v2: 65,536).
        dim: feature width (128 for both methods here).
        num_queues: independent queues (SwAV: one per crop used for assignment; MoCo: 1).
        init: ``"zeros"`` or ``"normal"`` (MoCo initialises its keys with L2-normalised Gaussian noise).
        per_rank: under DDP every rank holds different contents (SwAV's queue of its own embeddings); MoCo's queue,
            filled with keys gathered from all ranks, is the same everywhere (False).
    """

    def __init__(self, size: int, dim: int, num_queues: int = 1, init: str = "zeros", per_rank: bool = False) -> None:
        super().__init__()
        if int(size) < 1 or int(dim) < 1 or int(num_queues) < 1:
            raise ValueError(f"queue size, dim and num_queues must be >= 1, got size={size}, dim={dim}, num_queues={num_queues}")
        if init not in ("zeros", "normal"):
            raise ValueError(f"init must be 'zeros' or 'normal', got {init!r}")
        data = torch.zeros(num_queues, size, dim)
        if init == "normal":
            data = nn.functional.normalize(torch.randn(num_queues, size, dim), dim=-1)
        self.register_buffer("data", data)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))
        self.per_rank = bool(per_rank)
        self._gathered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def gather_ranks(self) -> None:
        """Collective (call on every rank before rank 0 takes ``state_dict()``): for a ``per_rank`` queue under DDP,
        gather every rank's contents, so the next ``state_dict()`` also holds ``rank_data`` ``(world, Q, size,
        dim)``, ``rank_ptr`` and ``rank_num_filled``. A no-op otherwise."""
        world, rank = _dist_world()
        if not self.per_rank or world == 1:
            self._gathered = None
            return
        gathered = []
        for t in (self.data, self.ptr.view(1), self.num_filled.view(1)):
            parts = [torch.empty_like(t) for _ in range(world)]
            torch.distributed.all_gather(parts, t.contiguous())
            gathered.append(torch.stack(parts))
        # only rank 0 writes checkpoints; the others drop their copy at once
        self._gathered = (gathered[0], gathered[1].view(world), gathered[2].view(world)) if rank == 0 else None

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: D102 - nn.Module hook
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._gathered is not None:
            for key, value in zip(_RANK_KEYS, self._gathered):
                destination[prefix + key] = value
            self._gathered = None  # a later state_dict() without a new gather must not hold stale contents

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: D102 - nn.Module hook
        if prefix + _RANK_KEYS[0] in state_dict:
            data, ptr, filled = (state_dict.pop(prefix + k) for k in _RANK_KEYS)
            world, rank = _dist_world()
            if data.shape[0] == world:  # each rank resumes with its own queue
                state_dict[prefix + "data"], state_dict[prefix + "ptr"] = data[rank], ptr[rank]
                state_dict[prefix + "num_filled"] = filled[rank]
            else:
                # another number of ranks: another per-rank queue size too (queue_length // world_size), and no
                # rank's contents belong to this rank; the queue refills within a few iterations
                warnings.warn(
                    f"the checkpoint holds the queues of {data.shape[0]} ranks but this run has {world}: the queue "
                    "starts empty",
                    stacklevel=2,
                )
                state_dict[prefix + "data"] = torch.zeros_like(self.data)
                state_dict[prefix + "ptr"] = torch.zeros_like(self.ptr)
                state_dict[prefix + "num_filled"] = torch.zeros_like(self.num_filled)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def size(self) -> int:
        return self.data.shape[1]

    @property
    def is_full(self) -> bool:
        return int(self.num_filled) >= self.size

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, queue: int = 0) -> None:
        """Insert ``features`` ``(N, dim)`` into queue ``queue``, overwriting the oldest entries.

        All queues share one write pointer, which advances after ``queue == num_queues - 1`` is written.
        """
        feats = features.detach().to(self.data.dtype)
        n = feats.shape[0]
        if feats.ndim != 2 or feats.shape[1] != self.data.shape[2]:
            raise ValueError(f"features must be (N, {self.data.shape[2]}), got {tuple(features.shape)}")
        if n > self.size:
            feats, n = feats[-self.size :], self.size
        idx = (int(self.ptr) + torch.arange(n, device=self.data.device)) % self.size
        self.data[queue, idx] = feats
        if queue == self.data.shape[0] - 1:
            self.ptr.fill_((int(self.ptr) + n) % self.size)
            self.num_filled.fill_(min(self.size, int(self.num_filled) + n))

    def get(self, queue: int = 0) -> torch.Tensor:
        """The filled entries of queue ``queue``, oldest first ``(num_filled, dim)``."""
        filled = int(self.num_filled)
        if filled < self.size:
            return self.data[queue, :filled]
        p = int(self.ptr)
        return torch.cat([self.data[queue, p:], self.data[queue, :p]])
