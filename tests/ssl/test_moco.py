"""MoCo v2 pieces: the key queue, the momentum update, InfoNCE."""

from __future__ import annotations

import copy

import pytest
import torch

from monai_lessmore.ssl.moco import MoCoLoss, MoCoProjectionHead, update_momentum
from monai_lessmore.ssl.queue import FeatureQueue


def test_queue_enqueue_dequeue_fifo():
    q = FeatureQueue(size=10, dim=2)
    batches = [torch.arange(8, dtype=torch.float32).view(4, 2) + 100 * i for i in range(3)]
    q.enqueue(batches[0])
    assert int(q.num_filled) == 4 and not q.is_full
    torch.testing.assert_close(q.get(), batches[0])
    q.enqueue(batches[1])
    q.enqueue(batches[2])  # 12 keys into 10 slots: the 2 oldest are dequeued
    assert q.is_full and int(q.ptr) == 2
    torch.testing.assert_close(q.get(), torch.cat(batches)[2:])


def test_queue_larger_batch_than_queue_and_errors():
    q = FeatureQueue(size=3, dim=1)
    q.enqueue(torch.arange(5.0).view(5, 1))
    torch.testing.assert_close(q.get(), torch.tensor([[2.0], [3.0], [4.0]]))
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        q.enqueue(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(0, 3)


def test_queue_state_roundtrip():
    q = FeatureQueue(size=6, dim=3, num_queues=2, init="normal")
    for i in range(2):
        q.enqueue(torch.randn(4, 3), queue=i)
    r = FeatureQueue(size=6, dim=3, num_queues=2)
    r.load_state_dict(q.state_dict())
    torch.testing.assert_close(r.get(1), q.get(1))
    assert int(r.num_filled) == 4


def test_update_momentum_is_exponential_average():
    torch.manual_seed(0)
    net = MoCoProjectionHead(8, 8, 4)
    ema = copy.deepcopy(net)
    before = [p.clone() for p in ema.parameters()]
    for p in net.parameters():
        p.data.add_(1.0)
    update_momentum(net, ema, 0.9)
    for b, p, e in zip(before, net.parameters(), ema.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(net, ema, 1.5)


def test_infonce_matches_manual_and_prefers_positives():
    torch.manual_seed(0)
    n = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    q, k, neg = n(torch.randn(4, 8)), n(torch.randn(4, 8)), n(torch.randn(16, 8))
    loss = MoCoLoss(temperature=0.2)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.t()], 1) / 0.2
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(loss(q, k, neg), expected)
    assert loss(q, q, neg) < loss(q, k, neg)
    assert torch.isfinite(loss(q, k))  # in-batch negatives when the queue is empty
