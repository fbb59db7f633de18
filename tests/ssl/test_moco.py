"""MoCo v2 pieces: the key queue, the momentum update, InfoNCE."""

from __future__ import annotations

import copy

import pytest
import torch

from monai_lessmore.ssl.moco import MoCoLoss, MoCoModel, MoCoProjectionHead, shuffled_keys, update_momentum
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


def _batch_centred(v: torch.Tensor) -> torch.Tensor:
    """A stand-in for a train-mode BN encoder: each output depends on the statistics of the batch it is in."""
    return v - v.mean(dim=0, keepdim=True)


def test_shuffled_keys_use_other_batch_statistics_and_keep_order():
    x = torch.arange(12.0).view(6, 2) ** 2
    torch.manual_seed(3)
    got = shuffled_keys(_batch_centred, x, splits=2)
    torch.manual_seed(3)
    perm = torch.randperm(6)
    expected = torch.empty_like(x)
    for part in perm.chunk(2):  # each key normalised with the sub-batch it was shuffled into, returned in x's order
        expected[part] = _batch_centred(x[part])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, _batch_centred(x))
    # uneven batches: sub-batch sizes differ by at most one (7 in 3: 3, 2, 2 -- never a 1-sample BN batch)
    x7 = x[:5].repeat(2, 1)[:7] + torch.arange(7.0)[:, None]
    torch.manual_seed(4)
    got7 = shuffled_keys(_batch_centred, x7, splits=3)
    torch.manual_seed(4)
    perm7 = torch.randperm(7)
    expected7 = torch.empty_like(x7)
    for part, size in zip(torch.tensor_split(perm7, 3), (3, 2, 2)):
        assert len(part) == size
        expected7[part] = _batch_centred(x7[part])
    torch.testing.assert_close(got7, expected7)
    # sub-batches keep at least 2 samples; splits=1 is the plain encoder
    torch.testing.assert_close(shuffled_keys(_batch_centred, x[:3], splits=4), _batch_centred(x[:3]))
    torch.testing.assert_close(shuffled_keys(_batch_centred, x, splits=1), _batch_centred(x))


def test_moco_model_shuffle_bn_only_in_train_mode():
    torch.manual_seed(0)
    model = MoCoModel(hidden_dim=32, output_dim=8, bn_splits=2)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    keys_eval = model.key(x)
    model.shuffle_bn = False
    torch.testing.assert_close(model.key(x), keys_eval)  # eval: running statistics, shuffling changes nothing
    model.train()
    no_shuffle = model.key(x)
    model.shuffle_bn = True
    assert not torch.allclose(model.key(x), no_shuffle, atol=1e-3)  # train: each half normalised on its own
    with pytest.raises(ValueError, match="bn_splits must be a positive integer"):
        MoCoModel(hidden_dim=32, output_dim=8, bn_splits=0)
