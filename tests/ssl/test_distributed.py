"""Distributed pieces on two CPU processes (gloo): Sinkhorn over ranks equals Sinkhorn over the whole batch, and
MoCo's key gathering."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_lessmore.ssl.moco import concat_all_gather, shuffled_keys
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


def _shuffle_worker(rank: int, world: int, port: int, x_all: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different on each rank: only rank 0's permutation may be used
        b = x_all.shape[0] // world
        keys = shuffled_keys(lambda v: v - v.mean(dim=0, keepdim=True), x_all[rank * b : (rank + 1) * b])
        torch.save(keys, os.path.join(out_dir, f"keys{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_shuffling_bn_across_ranks(tmp_path):
    """MoCo's batch shuffle under DDP: each rank encodes a share of one global permutation (rank 0's), and gets
    back the keys of its own samples, in order."""
    x_all = torch.arange(16.0).view(8, 2) ** 2
    mp.spawn(_shuffle_worker, args=(2, _free_port(), x_all, str(tmp_path)), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / f"keys{r}.pt", weights_only=True) for r in range(2)])
    torch.manual_seed(0)
    perm = torch.randperm(8)
    expected = torch.empty_like(x_all)
    for share in perm.chunk(2):
        expected[share] = x_all[share] - x_all[share].mean(dim=0, keepdim=True)
    torch.testing.assert_close(got, expected)


def _queue_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from types import SimpleNamespace

    from monai_lessmore.ssl.handlers import AtomicCheckpointSaver
    from monai_lessmore.ssl.queue import FeatureQueue

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue = FeatureQueue(size=5, dim=2, num_queues=2, per_rank=True)
        for i in range(rank + 2):  # different contents and fill levels per rank
            queue.enqueue(torch.full((2, 2), 10.0 * rank + i), queue=0)
            queue.enqueue(torch.full((2, 2), -10.0 * rank - i), queue=1)
        engine = SimpleNamespace(state=SimpleNamespace(epoch=1, max_epochs=1), state_dict=lambda: {})  # the trainer
        AtomicCheckpointSaver(out_dir, {"queue": queue}, method="swav")(engine)  # gathers on every rank, rank 0 writes
        dist.barrier()
        resumed = FeatureQueue(size=5, dim=2, num_queues=2, per_rank=True)
        resumed.load_state_dict(torch.load(os.path.join(out_dir, "checkpoint.pt"), weights_only=True)["queue"])
        for k in ("data", "ptr", "num_filled"):
            assert torch.equal(getattr(resumed, k), getattr(queue, k)), (rank, k)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_per_rank_queues_are_checkpointed_and_restored_per_rank(tmp_path):
    """SwAV keeps one queue per rank: the checkpoint (written by rank 0) holds every rank's, each rank resumes with
    its own; a run with another world size starts with an empty queue, with a warning."""
    from monai_lessmore.ssl.queue import FeatureQueue

    mp.spawn(_queue_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["queue"]
    assert state["rank_data"].shape == (2, 2, 5, 2) and state["rank_num_filled"].tolist() == [4, 5]
    # one process now: queue_length // world_size gives another per-rank size, and no rank's contents are its own
    single = FeatureQueue(size=10, dim=2, num_queues=2, per_rank=True)
    single.enqueue(torch.ones(3, 2), queue=1)
    with pytest.warns(UserWarning, match="queues of 2 ranks but this run has 1: the queue starts empty"):
        single.load_state_dict(state)
    assert int(single.num_filled) == 0 and int(single.ptr) == 0 and not single.data.any()
    assert "rank_data" not in single.state_dict()  # a plain state_dict outside DDP
