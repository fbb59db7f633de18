"""The training steps inside MONAI's SupervisedTrainer: prototype freezing by iteration, the MoCo momentum
encoder and queue, SparK, export."""

from __future__ import annotations


import pytest
import torch

from monai_lessmore.ssl.engine import MoCoStep, SparKStep, SwAVStep, build_trainer
from monai_lessmore.ssl.export import encoder_state_dict, export_encoder
from monai_lessmore.ssl.moco import MoCoLoss, MoCoModel
from monai_lessmore.ssl.optim import LARS
from monai_lessmore.ssl.queue import FeatureQueue
from monai_lessmore.ssl.spark import SparKModel
from monai_lessmore.ssl.swav import SwAVLoss, SwAVModel


def _loader(n_views: int, size: int, n: int = 4, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    data = [{"views": [torch.randn(3, size, size, generator=g) for _ in range(n_views)]} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)


def _trainer(method, net, opt, step, loader, tmp_path, **kw):
    return build_trainer(method=method, network=net, optimizer=opt, train_loader=loader, step=step, max_epochs=kw.pop("max_epochs", 1),
                         lr_schedule=None, output_dir=str(tmp_path), progress_bar=False, tensorboard=False, resume=None, **kw)


def test_swav_prototypes_frozen_for_first_iterations(tmp_path):
    torch.manual_seed(0)
    net = SwAVModel(hidden_dim=32, output_dim=16, num_prototypes=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    snapshots = []
    step = SwAVStep(SwAVLoss(), freeze_prototypes_niters=2)
    trainer = _trainer("swav", net, opt, step, _loader(2, 32, n=8), tmp_path, max_epochs=1)
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.append(net.prototypes.weight.detach().clone()))
    w0 = torch.nn.functional.normalize(net.prototypes.weight.detach().clone(), dim=1)
    trainer.run()
    assert len(snapshots) == 4
    torch.testing.assert_close(snapshots[0], w0)  # iteration 1: frozen (only normalised)
    torch.testing.assert_close(snapshots[1], w0)  # iteration 2: frozen
    assert not torch.allclose(snapshots[2], snapshots[1])  # iteration 3: learning


def test_swav_queue_filled_from_start_epoch(tmp_path):
    torch.manual_seed(0)
    net = SwAVModel(hidden_dim=32, output_dim=16, num_prototypes=8)
    queue = FeatureQueue(4, 16, 2)
    step = SwAVStep(SwAVLoss(), queue=queue, queue_start_epoch=1, freeze_prototypes_niters=0)
    trainer = _trainer("swav", net, LARS(net.parameters()), step, _loader(2, 32), tmp_path, max_epochs=2,
                       extra_state={"queue": queue})
    filled = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: filled.append(int(queue.num_filled)))
    trainer.run()
    assert filled == [0, 4]  # epoch 0 (0-based) before queue_start_epoch; then 2 batches of 2
    assert "queue" in torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def test_moco_step_momentum_and_queue(tmp_path):
    torch.manual_seed(0)
    net = MoCoModel(hidden_dim=32, output_dim=8)
    queue = FeatureQueue(16, 8, 1, "normal")
    step = MoCoStep(MoCoLoss(), queue, momentum=0.9)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    key_before = [p.clone() for p in net.backbone_momentum.parameters()]
    keys = []
    orig = queue.enqueue
    queue.enqueue = lambda f, queue=0: (keys.append(f.clone()), orig(f, queue))  # record what is enqueued
    trainer = _trainer("moco", net, opt, step, _loader(2, 32, n=2), tmp_path, max_epochs=1)
    trainer.run()
    for b, q, k in zip(key_before, net.backbone.parameters(), net.backbone_momentum.parameters()):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * q.detach())  # key = momentum average of query after the step
    assert int(queue.num_filled) == 2 and len(keys) == 1
    torch.testing.assert_close(queue.get(), keys[0])
    torch.testing.assert_close(keys[0].norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        MoCoStep(MoCoLoss(), queue, momentum=2)


def test_spark_step_and_export(tmp_path):
    torch.manual_seed(0)
    net = SparKModel(decoder_width=32)
    from monai_lessmore.ssl.optim import LAMB

    trainer = _trainer("spark", net, LAMB(net.parameters(), lr=1e-3), SparKStep(0.6), _loader(1, 64), tmp_path)
    trainer.run()
    assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    path = export_encoder(net, tmp_path / "enc.pt")
    sd = torch.load(path, weights_only=True)
    from monai_lessmore.networks.resnet import ResNet50

    res = ResNet50().load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    assert sd.keys() == encoder_state_dict(net).keys()


def test_build_trainer_checks(tmp_path):
    net = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="method must be one of"):
        build_trainer(method="simclr", network=net, optimizer=torch.optim.SGD(net.parameters(), lr=1), train_loader=[],
                      step=SparKStep(), max_epochs=1, lr_schedule=None, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="trains 'spark', but method='swav'"):
        build_trainer(method="swav", network=net, optimizer=torch.optim.SGD(net.parameters(), lr=1), train_loader=[],
                      step=SparKStep(), max_epochs=1, lr_schedule=None, output_dir=str(tmp_path))


def test_sync_bn_conversion_keeps_sparse_bn():
    from monai_lessmore.ssl.engine import _convert_plain_bn_to_sync
    from monai_lessmore.ssl.spark import SparseBatchNorm2d

    m = SparKModel(decoder_width=32)
    keys = list(m.state_dict())
    _convert_plain_bn_to_sync(m)
    assert list(m.state_dict()) == keys
    assert isinstance(m.encoder.resnet.bn1, SparseBatchNorm2d)  # sparse statistics kept
    assert isinstance(m.decoder.densify_norms[0], torch.nn.SyncBatchNorm)
