"""Handlers: atomic checkpoints (out of disk), resume refusing another method, NaN stop, LR schedule."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from ignite.engine import Engine, Events

import monai_lessmore.ssl.handlers as H


def _engine(outputs):
    it = iter(outputs)
    return Engine(lambda e, b: {"loss": next(it)})


def test_atomic_save_out_of_disk_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    H.atomic_torch_save({"v": torch.tensor(1)}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(H.torch, "save", full_disk)
    net = torch.nn.Linear(2, 2)
    saver = H.AtomicCheckpointSaver(str(tmp_path), {"model": net}, "swav")
    engine = _engine([1.0])
    saver.attach(engine)
    with pytest.raises(OSError, match="previous checkpoint there is intact"):
        engine.run([0], max_epochs=1)
    monkeypatch.setattr(H.torch, "save", real_save)
    assert torch.load(path, weights_only=True)["v"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left behind


def test_saver_interval_and_method_tag(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = H.AtomicCheckpointSaver(str(tmp_path), {"model": net}, "moco", save_interval=2)
    engine = _engine([1.0] * 3)
    saver.attach(engine)
    saved = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append(os.path.exists(saver.path)))
    engine.run([0], max_epochs=3)
    assert saved == [False, True, True]  # epoch 2 (interval) and the last epoch
    assert torch.load(saver.path, weights_only=True)["method"] == "moco"
    with pytest.raises(ValueError, match="save_interval"):
        H.AtomicCheckpointSaver(str(tmp_path), {}, "x", save_interval=0)


def test_resume_refuses_other_method_and_restores_epoch(tmp_path):
    net = torch.nn.Linear(2, 2)
    first = _engine([1.0] * 2)
    H.AtomicCheckpointSaver(str(tmp_path), {"model": net, "trainer": first}, "moco").attach(first)
    first.run([0], max_epochs=2)
    other = _engine([1.0])
    H.ResumeCheckpointLoader("auto", {"model": net, "trainer": other}, "swav", save_dir=str(tmp_path)).attach(other)
    with pytest.raises(ValueError, match="written by method 'moco', but this run trains 'swav'"):
        other.run([0], max_epochs=3)
    same = _engine([1.0] * 5)
    epochs = []
    H.ResumeCheckpointLoader("auto", {"model": net, "trainer": same}, "moco", save_dir=str(tmp_path)).attach(same)
    same.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    same.run([0], max_epochs=3)
    assert epochs == [3]  # continues after the saved epoch 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        H.ResumeCheckpointLoader(str(tmp_path / "nope.pt"), {}, "swav").resolve()


def test_stop_on_nan_names_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    H.atomic_torch_save({"v": 1}, ckpt)
    engine = _engine([1.0, float("nan")])
    H.StopOnNonFiniteLoss("loss", str(ckpt)).attach(engine)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 1, iteration 2.*last good checkpoint is"):
        engine.run([0, 1], max_epochs=1)


def test_lr_schedule_handler_sets_each_iteration():
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    seen = []
    engine = Engine(lambda e, b: seen.append(opt.param_groups[0]["lr"]) or {"loss": 0.0})
    H.LRScheduleHandler(opt, [0.1, 0.2, 0.3]).attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert seen == [0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError, match="non-empty"):
        H.LRScheduleHandler(opt, [])


def test_epoch_loss_history(tmp_path):
    engine = _engine([1.0, 3.0, 2.0, 2.0])
    h = H.EpochLossHistory(output_file=str(tmp_path / "h.json"))
    h.attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert engine.state.loss_history == [2.0, 2.0]
    r = H.EpochLossHistory()
    r.load_state_dict(h.state_dict())
    assert r.history == [2.0, 2.0]
