"""A first-in-first-out feature queue, used by SwAV (queued embeddings) and MoCo v2 (the key dictionary).

It is an ``nn.Module`` whose state lives in buffers, so it is saved and restored with a checkpoint (resume
continues with the same queue). It is deliberately kept *outside* any ``DistributedDataParallel`` wrapper: DDP
would broadcast rank 0's buffers to every rank at each forward, while SwAV keeps one queue per rank.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureQueue"]


class FeatureQueue(nn.Module):
    """``num_queues`` ring buffers of ``size`` feature vectors of width ``dim``.

    Args:
        size: number of vectors each queue holds (SwAV: 3840 in the authors' code; MoCo v2: 65,536).
        dim: feature width (128 for both methods here).
        num_queues: independent queues (SwAV: one per crop used for assignment; MoCo: 1).
        init: ``"zeros"`` or ``"normal"`` (MoCo initialises its keys with L2-normalised Gaussian noise).
    """

    def __init__(self, size: int, dim: int, num_queues: int = 1, init: str = "zeros") -> None:
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
