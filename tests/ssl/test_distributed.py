"""Distributed pieces on two CPU processes (gloo): Sinkhorn over ranks equals Sinkhorn over the whole batch, and
MoCo's key gathering."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_lessmore.ssl.moco import concat_all_gather
from monai_lessmore.ssl.swav import sinkhorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, scores: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = scores.shape[0] // world
        q = sinkhorn(scores[rank * half : (rank + 1) * half], epsilon=0.05, iterations=3)
        gathered = concat_all_gather(q)
        if rank == 0:
            torch.save(gathered, os.path.join(out_dir, "q.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_sinkhorn_matches_global_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    scores = z @ c.t()
    mp.spawn(_worker, args=(2, _free_port(), scores, str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "q.pt", weights_only=True)
    torch.testing.assert_close(distributed, sinkhorn(scores, epsilon=0.05, iterations=3, distributed=False))
