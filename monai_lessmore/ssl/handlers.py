"""Small ignite handlers of the pre-training engine (one idea each, ``attach(engine)`` as MONAI's handlers), listed
in the bundle config's ``train_handlers``.

- :class:`ResumeCheckpointLoader`: MONAI's ``CheckpointLoader`` that finds ``checkpoint.pt`` by itself, refuses
  another method's checkpoint, restores the trainer (and the AMP scaler) and loads with ``weights_only=True``.
- :class:`AtomicCheckpointSaver`: every N epochs, writes ``checkpoint.pt`` atomically (temp file, fsync,
  ``os.replace``) -- running out of disk leaves the previous checkpoint intact; removes the temp files of killed
  runs at start. Rank 0 writes.
- :class:`LRScheduleHandler` / :class:`WeightDecayScheduleHandler`: per-iteration values from an array.
- :class:`FreezePrototypes`: SwAV's prototypes get no update for the first iterations.
- :class:`ClipGradNorm`: the global gradient norm is clipped before the optimiser step (SparK).
- :class:`StopOnNonFiniteLoss`: raises with a message naming the last good checkpoint when the loss is NaN/Inf.
- :class:`EpochLossHistory`: mean loss per epoch in ``engine.state.loss_history`` and a JSON file that never
  claims an epoch beyond the checkpoint's after a resume.
- :class:`ProgressBar`: ignite's bar, with the log lines of the run written through it (no garbled lines).
- :class:`ExportEncoder`: the encoder in torchvision key names at the end of the run; the path is logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader

from monai_lessmore.utils.distributed import is_rank0

__all__ = ["ParamScheduleHandler", "LRScheduleHandler", "WeightDecayScheduleHandler", "AtomicCheckpointSaver",
           "ResumeCheckpointLoader", "StopOnNonFiniteLoss", "EpochLossHistory", "FreezePrototypes", "ClipGradNorm",
           "ProgressBar", "ExportEncoder", "every", "atomic_torch_save", "is_rank0"]

logger = logging.getLogger(__name__)



def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def _temp_name(path: str, pid: int) -> str:
    return f"{path}.tmp{pid}"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` to ``<path>.tmp<PID>`` beside ``path``, fsync, then ``os.replace``: never a half-written file.

    On failure (e.g. ``OSError: No space left on device``) the temporary file is removed and the file previously at
    ``path`` is untouched; the temporary of a killed process is recognised by the PID in its name and removed by
    :func:`monai_lessmore.utils.files.remove_stale_temps` (the saver calls it at start).
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_name(path, os.getpid())
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


def every(n: int) -> Callable[[Engine, int], bool]:
    """An ignite event filter true every ``n`` events (``StatsHandler(iteration_log=every(10))``)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"log interval must be >= 1, got {n}")

    def _filter(engine: Engine, event: int) -> bool:
        return event % n == 0

    return _filter


class ParamScheduleHandler:
    """Set an optimiser hyper-parameter of every parameter group to ``schedule[iteration - 1]`` at
    ``ITERATION_STARTED``.

    The schedule is a function of ``engine.state.iteration``, so a resumed run continues it exactly (nothing to
    save; ignite's ``ParamScheduler`` family would need its own state in the checkpoint).

    Args:
        optimizer: the optimiser.
        schedule: per-iteration values (e.g. :func:`~monai_lessmore.ssl.optim.warmup_cosine_schedule`); iterations
            past its end keep the last value.
        param_name: the ``param_groups`` key (``"lr"``, ``"weight_decay"``).
        skip_zero: leave the groups whose value is 0 at construction at 0 (the bias/norm group's weight decay).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Sequence[float], param_name: str = "lr",
                 skip_zero: bool = False) -> None:
        self.optimizer, self.param_name = optimizer, str(param_name)
        self.schedule = np.asarray(schedule, dtype=np.float64)
        if self.schedule.ndim != 1 or self.schedule.size == 0:
            raise ValueError(f"schedule must be a non-empty 1-D sequence of {param_name} values, got shape {self.schedule.shape}")
        missing = [i for i, g in enumerate(optimizer.param_groups) if param_name not in g]
        if missing:
            raise ValueError(f"optimizer {type(optimizer).__name__} has no {param_name!r} in parameter groups {missing}")
        # indices, not the group dicts: optimizer.load_state_dict (a resume) replaces the dicts
        self.groups = [i for i, g in enumerate(optimizer.param_groups) if not (skip_zero and float(g[param_name]) == 0.0)]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(self.schedule[min(engine.state.iteration - 1, self.schedule.size - 1)])
        for i in self.groups:
            self.optimizer.param_groups[i][self.param_name] = value
        engine.state.metrics[self.param_name] = value


class LRScheduleHandler(ParamScheduleHandler):
    """:class:`ParamScheduleHandler` of the learning rate (warm-up + cosine, per iteration)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Sequence[float]) -> None:
        super().__init__(optimizer, schedule, "lr")


class WeightDecayScheduleHandler(ParamScheduleHandler):
    """:class:`ParamScheduleHandler` of the weight decay (SparK anneals it 0.04 -> 0.2); the groups created without
    weight decay (biases, norms) keep none."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Sequence[float]) -> None:
        super().__init__(optimizer, schedule, "weight_decay", skip_zero=True)


class FreezePrototypes:
    """SwAV's prototypes get no update during the first ``num_iterations`` iterations (313, Table 8): their
    gradients are dropped after the backward pass, as the authors' code does (``p.grad = None``, so neither
    momentum nor weight decay moves them). Counted in **iterations**; the authors' code compared the epoch.

    Dropping the gradients after backward, rather than switching ``requires_grad`` as lightly's
    ``SwaVPrototypes(n_steps_frozen_prototypes=...)`` does, keeps ``DistributedDataParallel`` happy.

    Args:
        num_iterations: iterations without prototype updates.
        module: attribute of the (unwrapped) network holding the prototypes.
    """

    def __init__(self, num_iterations: int = 313, module: str = "prototypes") -> None:
        if int(num_iterations) < 0:
            raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
        self.num_iterations, self.module = int(num_iterations), str(module)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration - 1 < self.num_iterations:
            for p in getattr(_unwrap(engine.network), self.module).parameters():
                p.grad = None


class ClipGradNorm:
    """Clip the global gradient norm of the network before the optimiser step (``torch.nn.utils.clip_grad_norm_``);
    SparK clips at 5.0. The norm before clipping is in ``engine.state.metrics["grad_norm"]``.

    Args:
        max_norm: the largest allowed global norm. norm_type: the norm (2).
    """

    def __init__(self, max_norm: float = 5.0, norm_type: float = 2.0) -> None:
        if not float(max_norm) > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        params = [p for p in engine.network.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        engine.state.metrics["grad_norm"] = float(norm)


def _state_objects(engine: Engine, objects: Mapping[str, Any]) -> dict[str, Any]:
    """``objects`` plus the trainer itself (epoch, iteration) and its AMP scaler when used."""
    out = {k: _unwrap(v) for k, v in objects.items()}
    out["trainer"] = engine
    if getattr(engine, "scaler", None) is not None:
        out["scaler"] = engine.scaler
    return out


class AtomicCheckpointSaver:
    """Write ``{name: obj.state_dict(), "trainer": ..., "method": method}`` to ``save_dir/filename`` every
    ``save_interval`` epochs (and at the last epoch), atomically; at start, remove the temp files of killed runs.

    MONAI's ``CheckpointSaver`` names files by epoch and has no method tag, and ignite's ``DiskSaver(atomic=True)``
    leaves unnamed temp files behind a kill; a resume needs one fixed, tagged file.

    Args:
        save_dir: output folder.
        save_dict: objects with ``state_dict`` (model, optimizer, queue, loss history ...); the trainer it is attached
            to and its AMP scaler are added.
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
        engine.add_event_handler(Events.STARTED, self.clean)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def clean(self, engine: Engine | None = None) -> list:
        """Remove the temporaries of dead processes in ``save_dir`` (a checkpoint write interrupted by a kill)."""
        from monai_lessmore.utils.files import remove_stale_temps

        removed = remove_stale_temps(self.save_dir) if is_rank0() else []
        if removed:
            logger.info("removed %d temporary file(s) of killed runs: %s", len(removed), ", ".join(map(str, removed)))
        return removed

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
        obj = {k: v.state_dict() for k, v in _state_objects(engine, self.save_dict).items()}
        obj["method"] = self.method
        try:
            atomic_torch_save(obj, self.path)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write checkpoint {self.path} at epoch {epoch} ({exc.strerror or exc}); "
                                     f"the previous checkpoint there is intact") from exc
        engine.state.last_checkpoint = self.path
        logger.info("epoch %d: checkpoint written to %s", epoch, self.path)


#: the strings a command line gives for "no checkpoint" (MONAI's bundle CLI parses values with python-fire, which
#: turns ``None`` into ``None`` but leaves JSON's ``null`` a string)
_NO_RESUME = frozenset({"null", "none"})


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for resuming: at ``STARTED``, restore ``load_dict``, the trainer (epoch,
    iteration) and the AMP scaler from ``load_path`` (``"auto"``: ``save_dir/checkpoint.pt`` if present).

    What it adds: the file is looked up at start (``"auto"``, or nothing to do for a fresh run), a checkpoint of
    another method is refused, the trainer and scaler need not be in the config (they are the engine's), and the
    file is read with ``torch.load(weights_only=True)`` whatever MONAI's version does.

    Args:
        load_path: checkpoint file, ``"auto"``, or ``None``/``""`` for a fresh run (also the strings ``"null"`` and
            ``"None"``, unless a file of that name exists).
        load_dict: objects with ``load_state_dict`` (the same keys as the saver's ``save_dict``).
        method: this run's method; a checkpoint written by another method is refused with a ``ValueError``.
        save_dir: folder searched by ``"auto"``. filename: the checkpoint's name there.
        map_location: device for the loaded tensors.
    """

    def __init__(self, load_path: str | None, load_dict: Mapping[str, Any], method: str, save_dir: str | None = None,
                 filename: str = "checkpoint.pt", map_location: str | torch.device = "cpu") -> None:
        super().__init__(load_path=load_path or "", load_dict=dict(load_dict), name=__name__, map_location=map_location)
        self.load_path, self.method = load_path, str(method)
        self.save_dir, self.filename = save_dir, filename

    def resolve(self) -> str | None:
        if not self.load_path:
            return None
        if str(self.load_path).lower() in _NO_RESUME and not os.path.isfile(self.load_path):
            return None  # ``--resume null`` on MONAI's command line arrives as the string "null"
        if self.load_path == "auto":
            if self.save_dir is None:
                raise ValueError("resume='auto' needs save_dir")
            path = os.path.join(self.save_dir, self.filename)
            return path if os.path.isfile(path) else None
        if not os.path.isfile(self.load_path):
            raise FileNotFoundError(f"resume checkpoint {self.load_path!r} does not exist; pass an existing file, 'auto', "
                                    f"or None for a fresh run (on the command line: --resume None)")
        return self.load_path

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
        to_load = _state_objects(engine, self.load_dict)
        if "scaler" in to_load and "scaler" not in ckpt:
            to_load.pop("scaler")  # AMP turned on for a run that started without: a fresh scaler
        missing = [k for k in to_load if k not in ckpt]
        if missing:
            raise ValueError(f"resume checkpoint {path!r} lacks {missing}; it was written with different settings")
        prior_max = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint={k: ckpt[k] for k in to_load}, strict=self.strict)
        if prior_max is not None and engine.state.epoch > prior_max:
            raise ValueError(f"checkpoint {path!r} is at epoch {engine.state.epoch}, beyond max_epochs={prior_max}; raise max_epochs to continue")
        engine.state.max_epochs = prior_max
        engine.state.resumed_from = engine.state.last_checkpoint = path
        engine.state.resumed_epoch = engine.state.epoch
        self.logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)


class StopOnNonFiniteLoss:
    """Raise ``FloatingPointError`` when ``engine.state.output[output_key]`` is NaN or infinite.

    The training step skips the optimiser update for a non-finite loss, so the weights in memory and the last
    checkpoint on disk stay those of the last good step; the message names that checkpoint. (ignite's
    ``TerminateOnNan`` ends the run quietly, as if it had finished.)
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
    """Mean training loss per epoch in ``engine.state.loss_history`` and ``engine.state.metrics["epoch_loss"]``,
    and, on rank 0, in ``output_file`` (JSON ``{"epoch_loss": [...], "epoch": N}``).

    Attach it before the checkpoint saver, so the checkpoint holds the epoch just finished. The file is written at
    the start of each epoch and at the end of the run -- after the checkpoint handlers of the previous epoch --
    so a run killed while writing a checkpoint leaves a file that claims no epoch beyond the last checkpoint; a
    resumed run rewrites it from the checkpoint's history (truncated to the checkpoint's epoch).
    """

    def __init__(self, output_key: str = "loss", output_file: str | None = None) -> None:
        self.output_key, self.output_file = output_key, output_file
        self.history: list[float] = []
        self._sum, self._n = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self._sum, self._n = 0.0, 0
        # the restored history of a resumed run is that of the checkpoint's epoch: drop anything beyond it
        del self.history[max(engine.state.epoch - 1, 0):]
        self.write(engine)

    def _update(self, engine: Engine) -> None:
        self._sum += float(engine.state.output[self.output_key])
        self._n += 1

    def _complete(self, engine: Engine) -> None:
        self.history.append(self._sum / max(self._n, 1))
        engine.state.loss_history = list(self.history)
        engine.state.metrics["epoch_loss"] = self.history[-1]

    def write(self, engine: Engine) -> None:
        if self.output_file and is_rank0():
            from monai_lessmore.utils.files import atomic_write_json

            atomic_write_json(self.output_file, {"epoch_loss": self.history, "epoch": len(self.history)})

    def state_dict(self) -> dict:
        return {"history": torch.tensor(self.history, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [float(x) for x in state["history"]]


class ProgressBar:
    """ignite's ``ProgressBar`` with ``output_key`` of the step output beside it (rank 0 only when listed so).

    While the run lasts, the console log handlers (``StreamHandler`` on stdout/stderr, e.g. MONAI's
    ``StatsHandler`` lines) write through ``tqdm.write``, so a log line never lands in the middle of the bar.
    List it before ``StatsHandler``: the first ``EXCEPTION_RAISED`` handler that re-raises ends the chain, and this
    one restores the log handlers before it does.

    Args:
        output_key: key of the step's output dict shown beside the bar (``"loss"``).
        persist: keep the bar of finished epochs.
        tqdm_kwargs: passed to ``tqdm`` (e.g. ``file``).
    """

    def __init__(self, output_key: str = "loss", persist: bool = False, **tqdm_kwargs: Any) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.output_key = output_key
        self.bar = IgniteProgressBar(persist=persist, **tqdm_kwargs)
        self._redirect: contextlib.ExitStack | None = None

    def attach(self, engine: Engine) -> None:
        key = self.output_key
        self.bar.attach(engine, output_transform=lambda out: {key: out[key]})
        engine.add_event_handler(Events.STARTED, self._start_redirect)
        engine.add_event_handler(Events.COMPLETED, self._stop_redirect)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stop_redirect_on_error)

    @staticmethod
    def _console_loggers() -> list[logging.Logger]:
        loggers = [logging.getLogger()]
        loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
        return [lg for lg in loggers if any(type(h) is logging.StreamHandler for h in lg.handlers)]

    def _start_redirect(self, engine: Engine) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._stop_redirect(engine)
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm(loggers=self._console_loggers()))

    def _stop_redirect(self, engine: Engine) -> None:
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def _stop_redirect_on_error(self, engine: Engine, exc: BaseException) -> None:
        self._stop_redirect(engine)
        raise exc


class ExportEncoder:
    """At ``COMPLETED``, write the network's encoder (torchvision ResNet50 key names,
    :func:`~monai_lessmore.ssl.export.export_encoder`) to ``path`` on rank 0, and log where.

    Args:
        network: the pre-training network (``SwAVModel``, ``MoCoModel``, ``SparKModel``; DDP-wrapped or not).
        path: output file (the bundle's ``models/model.pt`` for SwAV, ``model_moco.pt`` / ``model_spark.pt``).
    """

    def __init__(self, network: torch.nn.Module, path: str | os.PathLike) -> None:
        self.network, self.path = network, os.fspath(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_lessmore.ssl.export import export_encoder

        export_encoder(self.network, self.path)
        engine.state.exported_encoder = self.path
        if is_rank0():
            logger.info("encoder (torchvision ResNet50 key names) exported to %s", os.path.abspath(self.path))
