"""The training steps inside MONAI's SupervisedTrainer (``SSLTrainer``): prototype freezing by iteration (a
handler), the MoCo momentum encoder and queue, SparK with its own loss object, state updated only after a step
that was taken, the checks of the trainer, and the absence of ignite's misleading start notice."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events

from monai_lessmore.ssl.engine import MoCoStep, SparKStep, SSLTrainer, SwAVStep
from monai_lessmore.ssl.export import encoder_state_dict, export_encoder
from monai_lessmore.ssl.handlers import AtomicCheckpointSaver, FreezePrototypes, ResumeCheckpointLoader
from monai_lessmore.ssl.moco import MoCoLoss, MoCoModel
from monai_lessmore.ssl.optim import LARS
from monai_lessmore.ssl.queue import FeatureQueue
from monai_lessmore.ssl.spark import SparKLoss, SparKModel
from monai_lessmore.ssl.swav import SwAVLoss, SwAVModel


def _loader(n_views: int, size: int, n: int = 4, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    data = [{"views": [torch.randn(3, size, size, generator=g) for _ in range(n_views)]} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)


def _trainer(method, net, opt, loss, step, loader, max_epochs=1, handlers=()):
    return SSLTrainer(method=method, device="cpu", max_epochs=max_epochs, train_data_loader=loader, network=net,
                      optimizer=opt, loss_function=loss, iteration_update=step, train_handlers=list(handlers))


def test_swav_prototypes_frozen_for_first_iterations():
    torch.manual_seed(0)
    net = SwAVModel(hidden_dim=32, output_dim=16, num_prototypes=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    snapshots = []
    trainer = _trainer("swav", net, opt, SwAVLoss(), SwAVStep(), _loader(2, 32, n=8), handlers=[FreezePrototypes(2)])
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
    opt = LARS(net.parameters())
    saver = AtomicCheckpointSaver(str(tmp_path), {"queue": queue}, "swav")
    trainer = _trainer("swav", net, opt, SwAVLoss(), SwAVStep(queue=queue, queue_start_epoch=1), _loader(2, 32),
                       max_epochs=2, handlers=[saver])
    filled = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: filled.append(int(queue.num_filled)))
    trainer.run()
    assert filled == [0, 4]  # epoch 0 (0-based) before queue_start_epoch; then 2 batches of 2
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert "queue" in ckpt and ckpt["trainer"]["iteration"] == 4  # the saver adds the trainer itself


def test_moco_step_momentum_and_queue():
    torch.manual_seed(0)
    net = MoCoModel(hidden_dim=32, output_dim=8)
    queue = FeatureQueue(16, 8, 1, "normal")
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    key_before = [p.clone() for p in net.backbone_momentum.parameters()]
    keys = []
    orig = queue.enqueue
    queue.enqueue = lambda f, queue=0: (keys.append(f.clone()), orig(f, queue))  # record what is enqueued
    trainer = _trainer("moco", net, opt, MoCoLoss(), MoCoStep(queue, momentum=0.9), _loader(2, 32, n=2))
    trainer.run()
    for b, q, k in zip(key_before, net.backbone.parameters(), net.backbone_momentum.parameters()):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * q.detach())  # key = momentum average of query after the step
    assert int(queue.num_filled) == 2 and len(keys) == 1
    torch.testing.assert_close(queue.get(), keys[0])
    torch.testing.assert_close(keys[0].norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        MoCoStep(queue, momentum=2)


def test_state_not_updated_when_loss_is_not_finite():
    """A non-finite loss skips the optimiser step and the method's state update (no NaN keys in the queue)."""
    torch.manual_seed(0)
    net = MoCoModel(hidden_dim=32, output_dim=8)
    queue = FeatureQueue(16, 8, 1, "normal")
    before = queue.data.clone()
    loss = MoCoLoss()
    loss.forward = lambda q, k, n=None: (q.sum() * float("nan"))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    w = net.backbone.conv1.weight.detach().clone()
    trainer = _trainer("moco", net, opt, loss, MoCoStep(queue, momentum=0.9), _loader(2, 32, n=2))
    trainer.run()
    assert trainer.state.output["loss"] != trainer.state.output["loss"]  # nan
    assert torch.equal(queue.data, before) and int(queue.num_filled) == 0
    assert torch.equal(net.backbone.conv1.weight, w)


def test_spark_step_uses_its_loss_object_and_exports(tmp_path):
    torch.manual_seed(0)
    net = SparKModel(decoder_width=32)
    from monai_lessmore.ssl.optim import LAMB

    calls = []

    class CountingLoss(SparKLoss):
        def forward(self, reconstruction, target, mask):
            calls.append(reconstruction.shape)
            return super().forward(reconstruction, target, mask)

    trainer = _trainer("spark", net, LAMB(net.parameters(), lr=1e-3), CountingLoss(32), SparKStep(0.6), _loader(1, 64))
    trainer.run()
    assert len(calls) == 2 and calls[0] == (2, 3, 64, 64)  # the trainer's loss_function computed every loss
    assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    path = export_encoder(net, tmp_path / "enc.pt")
    sd = torch.load(path, weights_only=True)
    from monai_lessmore.networks.resnet import ResNet50

    res = ResNet50().load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    assert sd.keys() == encoder_state_dict(net).keys()


def test_trainer_checks():
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1)
    with pytest.raises(ValueError, match="method must be one of"):
        _trainer("simclr", net, opt, SparKLoss(), SparKStep(), [])
    with pytest.raises(ValueError, match="trains 'spark', but method='swav'"):
        _trainer("swav", net, opt, SparKLoss(), SparKStep(), [])
    trainer = _trainer("spark", net, opt, MoCoLoss(), SparKStep(), _loader(1, 32))
    with pytest.raises(TypeError, match="SparK needs loss_function SparKLoss, got MoCoLoss"):
        trainer.run()
    assert _trainer("spark", net, opt, SparKLoss(), SparKStep(), [], ).amp is False
    assert SSLTrainer(method="spark", device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=opt,
                      loss_function=SparKLoss(), iteration_update=SparKStep(), amp="true").amp is False  # CPU: no AMP


class _TinySparK(torch.nn.Module):
    """Reconstruction = a 1x1 conv of the input, a random mask: enough to drive SparKStep cheaply."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, mask_ratio=0.6, return_reconstruction=True):
        from monai_lessmore.ssl.spark import random_patch_mask

        return self.conv(x), random_patch_mask(x.shape[0], (x.shape[-2] // 32, x.shape[-1] // 32), mask_ratio)


def test_no_ignite_start_notice_and_one_resume_message(tmp_path, caplog):
    """ignite logs "Engine run resuming from iteration 0, epoch 0" at every MONAI start; only our own resume
    message may remain."""
    def run(max_epochs):
        net = _TinySparK()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        state = {"model": net, "optimizer": opt}
        handlers = [ResumeCheckpointLoader("auto", state, "spark", save_dir=str(tmp_path)),
                    AtomicCheckpointSaver(str(tmp_path), state, "spark")]
        return _trainer("spark", net, opt, SparKLoss(32), SparKStep(), _loader(1, 64), max_epochs, handlers).run()

    with caplog.at_level(logging.INFO):
        run(1)
        run(2)
    text = [r.getMessage() for r in caplog.records]
    assert not [t for t in text if "resuming from iteration 0" in t], text
    assert len([t for t in text if t.startswith("resumed from") and "at epoch 1 (iteration 2)" in t]) == 1, text


def test_sync_bn_conversion_keeps_sparse_bn():
    from monai_lessmore.ssl.engine import _convert_plain_bn_to_sync
    from monai_lessmore.ssl.spark import SparseBatchNorm2d

    m = SparKModel(decoder_width=32)
    keys = list(m.state_dict())
    _convert_plain_bn_to_sync(m)
    assert list(m.state_dict()) == keys
    assert isinstance(m.encoder.resnet.bn1, SparseBatchNorm2d)  # sparse statistics kept
    assert isinstance(m.decoder.densify_norms[0], SparseBatchNorm2d)  # SparK densifies with a sparse BN too
    assert isinstance(m.decoder.blocks[0].conv[1], torch.nn.SyncBatchNorm)  # the U-Net's dense BNs are converted
