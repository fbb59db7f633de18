"""Small ignite handlers of the pre-training engine (one idea each, ``attach(engine)`` as MONAI's handlers).

- :class:`LRScheduleHandler`: sets the learning rate from a per-iteration array (warm-up + cosine).
- :class:`AtomicCheckpointSaver`: every N epochs, writes ``checkpoint.pt`` atomically (temp file, fsync,
  ``os.replace``) -- running out of disk leaves the previous checkpoint intact. Rank 0 only.
- :class:`ResumeCheckpointLoader`: at start, restores model / optimizer / queue / trainer state from a checkpoint,
  refusing one written by another method.
- :class:`StopOnNonFiniteLoss`: raises with a message naming the last good checkpoint when the loss is NaN/Inf.
- :class:`EpochLossHistory`: mean loss per epoch in ``engine.state.loss_history`` and a JSON file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["LRScheduleHandler", "AtomicCheckpointSaver", "ResumeCheckpointLoader", "StopOnNonFiniteLoss",
           "EpochLossHistory", "atomic_torch_save", "is_rank0"]

logger = logging.getLogger(__name__)


def is_rank0() -> bool:
    """True outside ``torch.distributed`` or on rank 0."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``: never a half-written file.

    On failure (e.g. ``OSError: No space left on device``) the temporary file is removed and the file previously at
    ``path`` is untouched.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


class LRScheduleHandler:
    """Set every parameter group's learning rate to ``schedule[iteration - 1]`` at ``ITERATION_STARTED``.

    The schedule is a function of ``engine.state.iteration``, so a resumed run continues it exactly.

    Args:
        optimizer: the optimiser.
        schedule: per-iteration learning rates (e.g. :func:`~monai_lessmore.ssl.optim.warmup_cosine_schedule`);
            iterations past its end keep the last value.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Sequence[float]) -> None:
        self.optimizer = optimizer
        self.schedule = np.asarray(schedule, dtype=np.float64)
        if self.schedule.ndim != 1 or self.schedule.size == 0:
            raise ValueError(f"schedule must be a non-empty 1-D sequence of learning rates, got shape {self.schedule.shape}")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        lr = float(self.schedule[min(engine.state.iteration - 1, self.schedule.size - 1)])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        engine.state.metrics["lr"] = lr


class AtomicCheckpointSaver:
    """Write ``{name: obj.state_dict(), "method": method}`` to ``save_dir/filename`` every ``save_interval`` epochs.

    Args:
        save_dir: output folder.
        save_dict: objects with ``state_dict`` (model, optimizer, queue, trainer ...).
        method: tag stored in the checkpoint so a resume can refuse another method's checkpoint.
        save_interval: epochs between checkpoints (the last epoch is always saved).
        filename: checkpoint file name.
    """

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], method: str, save_interval: int = 1,
                 filename: str = "checkpoint.pt") -> None:
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be >= 1 epoch, got {save_interval}")
        bad = [k for k, v in save_dict.items() if not hasattr(v, "state_dict")]
        if bad:
            raise TypeError(f"save_dict entries {bad} have no state_dict()")
        self.save_dir, self.save_dict, self.method = str(save_dir), dict(save_dict), str(method)
        self.save_interval, self.filename = int(save_interval), filename

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.save_interval and epoch != engine.state.max_epochs:
            return
        for v in self.save_dict.values():  # collective, every rank: per-rank state (SwAV's queues) to rank 0
            gather = getattr(v, "gather_ranks", None)
            if callable(gather):
                gather()
        if not is_rank0():
            return
        obj = {k: (v.module if isinstance(v, torch.nn.parallel.DistributedDataParallel) else v).state_dict()
               for k, v in self.save_dict.items()}
        obj["method"] = self.method
        try:
            atomic_torch_save(obj, self.path)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write checkpoint {self.path} at epoch {epoch} ({exc.strerror or exc}); "
                                     f"the previous checkpoint there is intact") from exc
        engine.state.last_checkpoint = self.path
        logger.info("epoch %d: checkpoint written to %s", epoch, self.path)


class ResumeCheckpointLoader:
    """At ``STARTED``, restore ``load_dict`` from ``load_path`` (``"auto"``: ``save_dir/checkpoint.pt`` if present).

    Args:
        load_path: checkpoint file, ``"auto"``, or ``None``/``""`` for a fresh run.
        load_dict: objects with ``load_state_dict`` (the same keys as the saver's ``save_dict``).
        method: this run's method; a checkpoint written by another method is refused with a ``ValueError``.
        save_dir: folder searched by ``"auto"``. map_location: device for the loaded tensors.
    """

    def __init__(self, load_path: str | None, load_dict: Mapping[str, Any], method: str, save_dir: str | None = None,
                 filename: str = "checkpoint.pt", map_location: str | torch.device = "cpu") -> None:
        self.load_path, self.load_dict, self.method = load_path, dict(load_dict), str(method)
        self.save_dir, self.filename, self.map_location = save_dir, filename, map_location

    def resolve(self) -> str | None:
        if not self.load_path:
            return None
        if self.load_path == "auto":
            if self.save_dir is None:
                raise ValueError("resume='auto' needs save_dir")
            path = os.path.join(self.save_dir, self.filename)
            return path if os.path.isfile(path) else None
        if not os.path.isfile(self.load_path):
            raise FileNotFoundError(f"resume checkpoint {self.load_path!r} does not exist; pass an existing file, 'auto' or null")
        return self.load_path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint

        path = self.resolve()
        if path is None:
            return
        ckpt = torch.load(path, map_location=self.map_location, weights_only=True)
        found = ckpt.get("method") if isinstance(ckpt, dict) else None
        if found != self.method:
            raise ValueError(
                f"resume checkpoint {path!r} was written by method {found!r}, but this run trains {self.method!r}; "
                f"resume with the same method's config or start fresh (resume=null / another output_dir)"
            )
        missing = [k for k in self.load_dict if k not in ckpt]
        if missing:
            raise ValueError(f"resume checkpoint {path!r} lacks {missing}; it was written with different settings")
        prior_max = engine.state.max_epochs
        to_load = {k: (v.module if isinstance(v, torch.nn.parallel.DistributedDataParallel) else v) for k, v in self.load_dict.items()}
        Checkpoint.load_objects(to_load=to_load, checkpoint={k: ckpt[k] for k in to_load})
        if prior_max is not None and engine.state.epoch > prior_max:
            raise ValueError(f"checkpoint {path!r} is at epoch {engine.state.epoch}, beyond max_epochs={prior_max}; raise max_epochs to continue")
        engine.state.max_epochs = prior_max
        engine.state.resumed_from = path
        engine.state.resumed_epoch = engine.state.epoch
        logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)


class StopOnNonFiniteLoss:
    """Raise ``FloatingPointError`` when ``engine.state.output[output_key]`` is NaN or infinite.

    The training step skips the optimiser update for a non-finite loss, so the weights in memory and the last
    checkpoint on disk stay those of the last good step; the message names that checkpoint.
    """

    def __init__(self, output_key: str = "loss", checkpoint_path: str | None = None) -> None:
        self.output_key, self.checkpoint_path = output_key, checkpoint_path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.output[self.output_key])
        if math.isfinite(value):
            return
        last = getattr(engine.state, "last_checkpoint", None) or self.checkpoint_path
        kept = f"the last good checkpoint is {last}" if last and os.path.isfile(last) else "no checkpoint had been written yet"
        raise FloatingPointError(
            f"loss became {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; training stopped "
            f"and {kept}. Lower the learning rate or disable AMP, then resume from it."
        )


class EpochLossHistory:
    """Mean training loss per epoch in ``engine.state.loss_history`` (and ``output_file`` as JSON, rank 0)."""

    def __init__(self, output_key: str = "loss", output_file: str | None = None) -> None:
        self.output_key, self.output_file = output_key, output_file
        self.history: list[float] = []
        self._sum, self._n = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Engine) -> None:
        self._sum, self._n = 0.0, 0

    def _update(self, engine: Engine) -> None:
        self._sum += float(engine.state.output[self.output_key])
        self._n += 1

    def _complete(self, engine: Engine) -> None:
        self.history.append(self._sum / max(self._n, 1))
        engine.state.loss_history = list(self.history)
        engine.state.metrics["epoch_loss"] = self.history[-1]
        if self.output_file and is_rank0():
            os.makedirs(os.path.dirname(os.path.abspath(self.output_file)), exist_ok=True)
            with open(self.output_file, "w") as f:
                json.dump({"epoch_loss": self.history, "epoch": engine.state.epoch}, f)

    def state_dict(self) -> dict:
        return {"history": torch.tensor(self.history, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [float(x) for x in state["history"]]
