"""Handlers: atomic checkpoints (out of disk, killed writes), resume refusing another method, a loss history that
stays consistent with the checkpoint, NaN stop, LR and weight-decay schedules, gradient clipping, the progress bar
and log lines on one stream."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine, Events

import monai_lessmore.ssl.handlers as H
from tests.conftest import REPO_ROOT


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
    H.AtomicCheckpointSaver(str(tmp_path), {"model": net}, "moco").attach(first)  # the trainer is added by the saver
    first.run([0], max_epochs=2)
    other = _engine([1.0])
    H.ResumeCheckpointLoader("auto", {"model": net}, "swav", save_dir=str(tmp_path)).attach(other)
    with pytest.raises(ValueError, match="written by method 'moco', but this run trains 'swav'"):
        other.run([0], max_epochs=3)
    same = _engine([1.0] * 5)
    epochs = []
    H.ResumeCheckpointLoader("auto", {"model": net}, "moco", save_dir=str(tmp_path)).attach(same)
    same.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    same.run([0], max_epochs=3)
    assert epochs == [3]  # continues after the saved epoch 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        H.ResumeCheckpointLoader(str(tmp_path / "nope.pt"), {"model": net}, "swav").resolve()
    from monai.handlers import CheckpointLoader

    assert isinstance(H.ResumeCheckpointLoader(None, {"model": net}, "swav"), CheckpointLoader)


def test_resume_null_from_the_command_line_is_a_fresh_run(tmp_path, monkeypatch):
    """MONAI's bundle CLI (python-fire) passes ``--resume null`` as the string "null": a fresh run, not a file."""
    net = torch.nn.Linear(2, 2)
    for spelling in ("null", "None", "NONE"):
        assert H.ResumeCheckpointLoader(spelling, {"model": net}, "swav").resolve() is None
    monkeypatch.chdir(tmp_path)
    torch.save({"model": net.state_dict()}, "null")  # a checkpoint that is really called "null" is still read
    assert H.ResumeCheckpointLoader("null", {"model": net}, "swav").resolve() == "null"
    with pytest.raises(FileNotFoundError, match=r"--resume None"):
        H.ResumeCheckpointLoader("nul", {"model": net}, "swav").resolve()


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
    assert json.loads((tmp_path / "h.json").read_text()) == {"epoch_loss": [2.0, 2.0], "epoch": 2}
    r = H.EpochLossHistory()
    r.load_state_dict(h.state_dict())
    assert r.history == [2.0, 2.0]


def test_weight_decay_schedule_leaves_no_decay_group_and_lr_alone():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [net.weight], "weight_decay": 0.04}, {"params": [net.bias], "weight_decay": 0.0}], lr=0.5)
    seen = []
    engine = Engine(lambda e, b: seen.append([g["weight_decay"] for g in opt.param_groups]) or {"loss": 0.0})
    H.WeightDecayScheduleHandler(opt, [0.04, 0.1, 0.2]).attach(engine)
    opt.load_state_dict(opt.state_dict())  # as a resume does: new group dicts, the handler must still reach them
    engine.run([0, 1, 2], max_epochs=1)
    assert seen == [[0.04, 0.0], [0.1, 0.0], [0.2, 0.0]]
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    with pytest.raises(ValueError, match="has no 'momentum_x'"):
        H.ParamScheduleHandler(opt, [1.0], "momentum_x")


def test_clip_grad_norm_matches_torch():
    from monai.engines.utils import IterationEvents

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    ref.load_state_dict(net.state_dict())
    x = torch.randn(16, 4) * 100
    for m in (net, ref):
        (m(x) ** 2).mean().backward()
    total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
    assert total > 5.0  # the clip acts
    engine = Engine(lambda e, b: e.fire_event(IterationEvents.BACKWARD_COMPLETED))
    engine.register_events(*IterationEvents)
    engine.network = net
    H.ClipGradNorm(5.0).attach(engine)
    engine.run([0], max_epochs=1)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert engine.state.metrics["grad_norm"] == pytest.approx(float(total))
    with pytest.raises(ValueError, match="max_norm"):
        H.ClipGradNorm(0)


@pytest.mark.slow
def test_stale_temp_files_of_dead_processes_removed_live_kept(tmp_path):
    """A real kill during a checkpoint write leaves checkpoint.pt.tmp<PID>; the next start removes it, and keeps the
    temp file of a process that is still alive."""
    target = tmp_path / "checkpoint.pt"
    script = (
        "import os, sys, time, torch\n"
        "from monai_lessmore.ssl.handlers import atomic_torch_save\n"
        "def slow_save(obj, f, *a, **k):\n"
        "    f.write(b'partial' * 1000); f.flush(); print('writing', flush=True); time.sleep(600)\n"
        "torch.save = slow_save\n"
        "atomic_torch_save({'x': 1}, sys.argv[1])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "writing"  # both are inside the write
        killed, alive = procs
        killed.kill()
        killed.wait(timeout=30)
        assert (tmp_path / f"checkpoint.pt.tmp{killed.pid}").exists()
        removed = H.AtomicCheckpointSaver(str(tmp_path), {}, "swav").clean()  # what the saver does at start
        assert removed == [tmp_path / f"checkpoint.pt.tmp{killed.pid}"]
        assert os.listdir(tmp_path) == [f"checkpoint.pt.tmp{alive.pid}"]  # a live writer's file is left alone
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


_KILLED_RUN = """
import os, signal, sys, torch
from ignite.engine import Engine
import monai_lessmore.ssl.handlers as H
out = sys.argv[1]
net = torch.nn.Linear(2, 2)
losses = iter([1.0, 3.0, 5.0, 7.0])
engine = Engine(lambda e, b: {"loss": next(losses)})
history = H.EpochLossHistory(output_file=os.path.join(out, "loss_history.json"))
history.attach(engine)
H.AtomicCheckpointSaver(out, {"model": net, "loss_history": history}, "swav").attach(engine)
real_save, calls = torch.save, []
def dying_save(obj, f, *a, **k):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: killed half-way through the write
        f.write(b"half a checkpoint"); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *a, **k)
torch.save = dying_save
engine.run([0, 1], max_epochs=3)
"""


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_history_consistent(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    temps = [f for f in os.listdir(tmp_path) if f.startswith("checkpoint.pt.tmp")]
    assert len(temps) == 1
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2  # epoch 1
    # the history claims no epoch beyond the checkpoint's, although epoch 2 had finished when the kill came
    assert json.loads((tmp_path / "loss_history.json").read_text()) == {"epoch_loss": [2.0], "epoch": 1}

    net = torch.nn.Linear(2, 2)
    losses = iter([10.0, 20.0, 30.0, 40.0])
    engine = Engine(lambda e, b: {"loss": next(losses)})
    history = H.EpochLossHistory(output_file=str(tmp_path / "loss_history.json"))
    state = {"model": net, "loss_history": history}
    H.ResumeCheckpointLoader("auto", state, "swav", save_dir=str(tmp_path)).attach(engine)
    history.attach(engine)
    H.AtomicCheckpointSaver(str(tmp_path), state, "swav").attach(engine)
    engine.run([0, 1], max_epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "loss_history.json"]  # the killed run's temp file is gone
    assert json.loads((tmp_path / "loss_history.json").read_text()) == {"epoch_loss": [2.0, 15.0, 35.0], "epoch": 3}


def test_progress_bar_and_log_lines_do_not_garble(capsys):
    """Bar and per-iteration log lines on one stream: every log line starts a line of its own."""
    import logging

    from monai.handlers import StatsHandler

    log = logging.getLogger("lessmore.test_progress")
    log.handlers[:] = [logging.StreamHandler(sys.stdout)]
    log.handlers[0].setFormatter(logging.Formatter("LOG %(message)s"))
    log.propagate = False
    engine = _engine([float(i) for i in range(6)])
    bar = H.ProgressBar(file=sys.stdout, mininterval=0)
    bar.attach(engine)
    StatsHandler(name="lessmore.test_progress", tag_name="loss", iteration_log=True,
                 output_transform=lambda out: out["loss"]).attach(engine)
    engine.run(list(range(3)), max_epochs=2)
    out = capsys.readouterr().out
    assert "it/s" in out or "/3" in out  # the bar was drawn
    log_lines = [seg for line in out.split("\n") for seg in line.split("\r") if "LOG " in seg]
    assert len(log_lines) >= 6
    assert all(seg.startswith("LOG ") for seg in log_lines), log_lines  # never after bar text on the same line
    assert log.handlers and type(log.handlers[0]) is logging.StreamHandler  # handlers restored after the run
