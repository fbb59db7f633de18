"""Throughput of a pre-training run built from the bundle's own configs: slices per second, the fraction of step
time spent waiting for data, peak GPU memory and the loss of every timed iteration.

The measurement is an ignite handler (:class:`StepTimer`) on the bundle's real trainer, so it times the exact steps
of a run (data loading, reduction, the method's views, model, optimiser, AMP, the config's handlers). It is shared
by ``scripts/bench_pretrain.py`` (ignite loop against a bare PyTorch loop) and ``scripts/gpu_check.py`` (the paper's
settings on a GPU).

One *slice* is one image of the dataset; SwAV makes 8 crops of it (2 x 224 + 6 x 96 px), MoCo v2 2, SparK 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["METHOD_CONFIGS", "config_files", "bundle_parser", "StepTimer", "measure_training",
           "shutdown_loader_workers"]

#: config files of each method, merged in this order (``train.json`` is SwAV; the others override only what differs)
METHOD_CONFIGS: dict[str, tuple[str, ...]] = {
    "swav": ("train.json",),
    "moco": ("train.json", "train_moco.json"),
    "spark": ("train.json", "train_spark.json"),
}


def config_files(method: str, *extra: str, bundle_root: str | Path | None = None) -> list[Path]:
    """The bundle config files of ``method`` (plus ``extra`` file names of the same ``configs/`` folder).

    Args:
        method: ``"swav"``, ``"moco"`` or ``"spark"``.
        extra: more file names to merge last, e.g. ``"multi_gpu_train.json"``.
        bundle_root: the bundle folder; default the ``lessmore_ssl_pretrain`` template shipped with the package.

    Raises:
        ValueError: an unknown method.
    """
    if method not in METHOD_CONFIGS:
        raise ValueError(f"method must be one of {sorted(METHOD_CONFIGS)}, got {method!r}")
    if bundle_root is None:
        from monai_lessmore.resources import bundle_template

        bundle_root = bundle_template("lessmore_ssl_pretrain")
    configs = Path(bundle_root) / "configs"
    return [configs / name for name in (*METHOD_CONFIGS[method], *extra)]


def bundle_parser(method: str, overrides: Mapping[str, Any] | None = None, *, extra: tuple[str, ...] = ()) -> Any:
    """A ``monai.bundle.ConfigParser`` holding ``method``'s merged configs with ``overrides`` applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files(method, *extra)])
    parser.update(dict(overrides or {}))
    return parser


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimer:
    """Ignite handler: step time, time spent waiting for batches, slices and losses of the iterations that follow
    the first ``warmup`` ones.

    The time of an iteration runs from ``GET_BATCH_STARTED`` (the loader's ``next``) to the end of
    ``ITERATION_COMPLETED``; attach the timer last, so that its own ``ITERATION_COMPLETED`` call follows every other
    handler's and the GPU is synchronised there. Epoch-level events (validation, checkpoints) fall between
    iterations and are not counted. The wait of an iteration is its time from ``GET_BATCH_STARTED`` to
    ``GET_BATCH_COMPLETED``.

    Args:
        warmup: iterations left out of the figures (start-up of the loader workers, the first launch of each CUDA
            kernel).
        batch_key: the batch entry whose first dimension counts the slices (the bundle's views: ``"views"``, a
            list of tensors; a tensor entry such as ``"image"`` works too).
        output_key: the engine output's loss entry.
    """

    def __init__(self, warmup: int = 0, batch_key: str = "views", output_key: str = "loss") -> None:
        if int(warmup) < 0:
            raise ValueError(f"warmup must be >= 0 iterations, got {warmup}")
        self.warmup, self.batch_key, self.output_key = int(warmup), batch_key, output_key
        self.seconds = 0.0
        self.wait = 0.0
        self.slices = 0
        self.losses: list[float] = []
        self._seen = 0  # iterations started since the timer was attached
        self._tb: float | None = None

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _batch_started(self, engine: Any) -> None:
        self._seen += 1
        self._tb = None
        if self._seen > self.warmup:
            _synchronize()
            self._tb = time.perf_counter()

    def _batch_completed(self, engine: Any) -> None:
        if self._tb is not None:
            self.wait += time.perf_counter() - self._tb
            batch = engine.state.batch[self.batch_key]
            self.slices += int((batch[0] if isinstance(batch, (list, tuple)) else batch).shape[0])

    def _iteration_completed(self, engine: Any) -> None:
        if self._tb is not None:
            output = engine.state.output
            loss = output[self.output_key] if isinstance(output, Mapping) else output
            self.losses.append(float(loss))
            _synchronize()
            self.seconds += time.perf_counter() - self._tb

    def result(self) -> dict[str, Any]:
        """``{"iterations", "seconds", "slices", "images_per_s", "data_wait_fraction", "losses", "loss_finite"}``.

        Raises:
            RuntimeError: no iteration after the warm-up was timed (the run was shorter than ``warmup + 1``).
        """
        if not self.losses or self.seconds <= 0:
            raise RuntimeError(f"no iteration was timed: the run ended within the {self.warmup} warm-up iterations; "
                               "run more iterations (epoch_length) or lower warmup")
        return {"iterations": len(self.losses), "seconds": self.seconds, "slices": self.slices,
                "images_per_s": self.slices / self.seconds, "data_wait_fraction": self.wait / self.seconds,
                "losses": list(self.losses), "loss_finite": all(math.isfinite(x) for x in self.losses)}


def shutdown_loader_workers(loader: Any) -> None:
    """Stop the persistent worker processes of a ``DataLoader`` now (they otherwise live as long as the loader)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


def measure_training(method: str, overrides: Mapping[str, Any], *, steps: int, warmup: int,
                     seed: int = 0) -> dict[str, Any]:
    """Run ``method``'s bundle trainer for ``warmup + steps`` iterations and time the last ``steps``.

    The trainer is the config's ``trainer`` with every handler of the config (resume, checkpoints, logging...);
    set ``resume`` to null and ``output_dir`` to a scratch folder in ``overrides`` for a measurement.

    Args:
        method: ``"swav"``, ``"moco"`` or ``"spark"``.
        overrides: config overrides (data, sizes, device, ...); the iterations per epoch are set here: the config's
            ``epoch_length`` where it has one (the bundles' LR schedule follows it), else ``trainer#epoch_length``.
        steps: timed iterations.
        warmup: iterations run first and left out.
        seed: ``monai.utils.set_determinism`` seed, as the bundle's ``initialize`` does.

    Returns:
        :meth:`StepTimer.result` plus ``peak_gpu_memory_mib`` / ``peak_gpu_reserved_mib`` (None off CUDA),
        ``batch_size``, ``amp`` (whether the trainer really used it), ``device`` and ``iterations_per_epoch`` (the
        config's, which its LR schedule uses; None where it has none).
    """
    from monai.utils import set_determinism

    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    set_determinism(seed)
    parser = bundle_parser(method, overrides)
    # the bundle's own ``epoch_length`` where it has one: its LR schedule (``iterations_per_epoch``) follows it too
    parser["epoch_length" if "epoch_length" in parser else "trainer#epoch_length"] = int(steps) + int(warmup)
    trainer = parser.get_parsed_content("trainer")
    timer = StepTimer(warmup)
    timer.attach(trainer)
    device = torch.device(trainer.state.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer.run()
    finally:
        shutdown_loader_workers(trainer.data_loader)
    out = timer.result()
    out.update({
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None,
        "batch_size": int(parser.get_parsed_content("batch_size")), "amp": bool(trainer.amp), "device": str(device),
        "iterations_per_epoch": (int(parser.get_parsed_content("iterations_per_epoch"))
                                 if "iterations_per_epoch" in parser else None),
    })
    return out
