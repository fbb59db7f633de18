"""``monai_lessmore.ssl.throughput``: the step timer on a fake clock (exact, no timing), and one real bundle run."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from monai_lessmore.ssl import throughput as T


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_step_timer_counts_wait_step_and_slices_after_the_warm_up(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(T.time, "perf_counter", clock)

    class Loader:  # each batch takes 1 s to arrive, each step 3 s
        def __iter__(self):
            for i in range(4):
                clock.now += 1.0
                yield {"views": [torch.zeros(2 + i, 1, 4, 4), torch.zeros(2 + i, 1, 2, 2)]}

    def step(engine, batch):
        clock.now += 3.0
        return {"loss": float(engine.state.iteration)}

    engine = Engine(step)
    timer = T.StepTimer(warmup=1)
    timer.attach(engine)
    engine.run(Loader(), max_epochs=1)
    r = timer.result()
    assert r["iterations"] == 3 and r["losses"] == [2.0, 3.0, 4.0]
    assert r["slices"] == 3 + 4 + 5  # the first view's batch dimension, warm-up left out
    assert r["seconds"] == pytest.approx(12.0) and r["data_wait_fraction"] == pytest.approx(0.25)
    assert r["images_per_s"] == pytest.approx(12 / 12.0) and r["loss_finite"]


def test_step_timer_reports_a_run_shorter_than_its_warm_up_and_bad_arguments():
    engine = Engine(lambda e, b: {"loss": 1.0})
    timer = T.StepTimer(warmup=5, batch_key="image")
    timer.attach(engine)
    engine.run([{"image": torch.zeros(2, 1)}] * 3, max_epochs=1)
    with pytest.raises(RuntimeError, match="within the 5 warm-up iterations"):
        timer.result()
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        T.StepTimer(warmup=-1)
    with pytest.raises(ValueError, match="method must be one of"):
        T.config_files("simclr")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        T.measure_training("swav", {}, steps=0, warmup=0)


def test_a_non_finite_loss_is_reported():
    engine = Engine(lambda e, b: {"loss": float("nan") if e.state.iteration == 2 else 1.0})
    timer = T.StepTimer()
    timer.attach(engine)
    engine.run([{"views": [torch.zeros(1, 1)]}] * 2, max_epochs=1)
    assert not timer.result()["loss_finite"]


def test_measure_training_runs_the_bundles_trainer_for_its_iterations(tmp_path):
    from monai_lessmore.phantom import write_phantom_dataset

    data = tmp_path / "ct"
    write_phantom_dataset(str(data), n_volumes=1, slices=(12, 12), size=32, seed=0)
    r = T.measure_training("moco", {
        "dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "export_path": str(tmp_path / "enc.pt"),
        "reduction_method": "none", "reduction_cache_dir": str(tmp_path / "cache"), "num_workers": 0,
        "progress_bar": False, "tensorboard": False, "resume": None, "device": "$torch.device('cpu')",
        "max_epochs": 1, "input_size": 32, "batch_size": 2, "crop_size": 32, "amp": True, "backbone": "resnet18",
    }, steps=2, warmup=1)
    assert r["iterations"] == 2 and r["slices"] == 4 and r["batch_size"] == 2
    # the LR schedule is built for the 3 iterations run, not for the loader's 6 batches
    assert r["iterations_per_epoch"] == 3
    assert r["amp"] is False and r["device"] == "cpu" and r["peak_gpu_memory_mib"] is None  # AMP is CUDA-only
    assert all(math.isfinite(x) for x in r["losses"])
