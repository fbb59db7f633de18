"""The pre-training engine: MONAI's ``SupervisedTrainer`` driven by a method-specific ``iteration_update``.

Following MONAI's convention the engine is customised, not subclassed: :class:`SwAVStep`, :class:`MoCoStep` and
:class:`SparKStep` are the ``iteration_update`` callables (one training step each: forward, loss, backward,
optimiser, method hooks), and everything else -- learning-rate schedule, checkpoints, resume, NaN stop, logging,
progress bar -- is a handler (:mod:`monai_lessmore.ssl.handlers`, MONAI's ``StatsHandler`` /
``TensorBoardStatsHandler``, ignite's ``ProgressBar``). :func:`build_trainer` assembles them; the bundle configs
call it so the recipe stays readable.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine
from torch import nn

from monai_lessmore.ssl.backbone import _is_dist, unwrap
from monai_lessmore.ssl.queue import FeatureQueue

__all__ = ["SSLStep", "SwAVStep", "MoCoStep", "SparKStep", "build_trainer", "build_loader", "wrap_ddp", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("swav", "moco", "spark")


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (so that all ranks skip or all step together under DDP)."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if _is_dist():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item() > 0)


class SSLStep:
    """Base ``iteration_update``: move views to the device, forward under autocast (CUDA + ``engine.amp`` only),
    backward, optimiser step -- skipped for a non-finite loss so the weights stay the last good ones.

    Subclasses implement :meth:`loss` and may override :meth:`before_forward`, :meth:`before_step`,
    :meth:`after_step`. ``state_dict`` holds nothing: the method's state (queues, momentum encoder) lives in
    modules saved by the checkpoint.
    """

    method = "base"

    def loss(self, engine: Engine, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def before_forward(self, engine: Engine) -> None:
        pass

    def before_step(self, engine: Engine) -> None:
        pass

    def after_step(self, engine: Engine) -> None:
        pass

    def __call__(self, engine: Engine, batch: Mapping[str, Any]) -> dict[str, float]:
        device = engine.state.device
        views = batch["views"] if isinstance(batch, Mapping) else batch
        views = [torch.as_tensor(v).to(device, non_blocking=True) for v in views]
        engine.network.train()
        self.before_forward(engine)
        use_amp = bool(getattr(engine, "amp", False)) and device is not None and torch.device(device).type == "cuda"
        with torch.autocast("cuda", enabled=use_amp):
            loss = self.loss(engine, views)
        engine.optimizer.zero_grad(set_to_none=True)
        if not _all_finite(loss):
            return {"loss": float(loss.detach())}
        scaler = getattr(engine, "scaler", None) if use_amp else None
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(engine.optimizer)
            self.before_step(engine)
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            self.before_step(engine)
            engine.optimizer.step()
        self.after_step(engine)
        return {"loss": float(loss.detach())}


class SwAVStep(SSLStep):
    """One SwAV step (the authors' ``main_swav.py`` ``train()``, with their bugs fixed).

    Args:
        loss_function: a :class:`~monai_lessmore.ssl.swav.SwAVLoss`.
        queue: optional :class:`~monai_lessmore.ssl.queue.FeatureQueue` with one queue per assignment crop.
        queue_start_epoch: first epoch (0-based, as SwAV's ``epoch_queue_starts``) that uses the queue.
        freeze_prototypes_niters: the prototypes get no update during the first N **iterations** (313, Table 8 --
            the authors' code compared it with the epoch instead).
    """

    method = "swav"

    def __init__(self, loss_function: nn.Module, queue: FeatureQueue | None = None, queue_start_epoch: int = 15,
                 freeze_prototypes_niters: int = 313) -> None:
        self.loss_function, self.queue = loss_function, queue
        self.queue_start_epoch, self.freeze_prototypes_niters = int(queue_start_epoch), int(freeze_prototypes_niters)

    def before_forward(self, engine: Engine) -> None:
        unwrap(engine.network).prototypes.normalize()

    def loss(self, engine: Engine, views: list[torch.Tensor]) -> torch.Tensor:
        embeddings, scores = engine.network(views)
        queue_scores = None
        use_queue = self.queue is not None and engine.state.epoch - 1 >= self.queue_start_epoch
        if use_queue:
            w = unwrap(engine.network).prototypes.weight.detach()
            queue_scores = [self.queue.get(i).to(w) @ w.t() if self.queue.is_full else None
                            for i in range(len(self.loss_function.crops_for_assign))]
        loss = self.loss_function(scores, queue_scores)
        if use_queue:
            for i, c in enumerate(self.loss_function.crops_for_assign):
                self.queue.enqueue(embeddings[c].detach().float(), queue=i)
        return loss

    def before_step(self, engine: Engine) -> None:
        if engine.state.iteration - 1 < self.freeze_prototypes_niters:
            for p in unwrap(engine.network).prototypes.parameters():
                p.grad = None


class MoCoStep(SSLStep):
    """One MoCo v2 step: query/key features of the two views, InfoNCE against the queue, momentum update, enqueue
    (keys gathered from every rank under DDP, as the official code).

    Args:
        loss_function: a :class:`~monai_lessmore.ssl.moco.MoCoLoss`.
        queue: :class:`~monai_lessmore.ssl.queue.FeatureQueue` of keys (65,536 x 128).
        momentum: key encoder momentum (0.999).
    """

    method = "moco"

    def __init__(self, loss_function: nn.Module, queue: FeatureQueue, momentum: float = 0.999) -> None:
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.loss_function, self.queue, self.momentum = loss_function, queue, float(momentum)

    def loss(self, engine: Engine, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"MoCo needs 2 views per image, got {len(views)}; use monai_lessmore.ssl.transforms.MoCoTransform")
        q, k = engine.network(views[0], views[1])
        # the whole queue, random-initialised keys included, as the official code: a constant number of negatives
        negatives = self.queue.data[0].to(q)
        loss = self.loss_function(q, k, negatives)
        self._keys = k.detach()
        return loss

    def after_step(self, engine: Engine) -> None:
        from monai_lessmore.ssl.moco import concat_all_gather

        unwrap(engine.network).momentum_update(self.momentum)
        self.queue.enqueue(concat_all_gather(self._keys.float()))


class SparKStep(SSLStep):
    """One SparK step: random patch mask, sparse encoder, light decoder, normalised-pixel L2 on masked patches.

    Args:
        mask_ratio: fraction of 32x32 patches masked (0.6, Table 10).
    """

    method = "spark"

    def __init__(self, mask_ratio: float = 0.6) -> None:
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)

    def loss(self, engine: Engine, views: list[torch.Tensor]) -> torch.Tensor:
        return engine.network(views[0], mask_ratio=self.mask_ratio)


def _loss_of(output: Mapping[str, float]) -> float:
    return output["loss"]


def _as_bool(value: Any) -> bool:
    """Booleans from configs and the command line (``--amp false`` arrives as the string ``"false"``)."""
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if value.strip().lower() in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _convert_plain_bn_to_sync(module: nn.Module) -> nn.Module:
    """``SyncBatchNorm`` for the plain BatchNorm layers only: SparK's ``SparseBatchNorm2d`` (statistics over
    visible positions) is left as is -- ``convert_sync_batchnorm`` would silently replace it by a dense one."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync.to(next(child.buffers(), torch.empty(0)).device))
        else:
            _convert_plain_bn_to_sync(child)
    return module


def wrap_ddp(module: nn.Module, device: str | torch.device, sync_bn: bool = False) -> nn.Module:
    """Move ``module`` to ``device`` and, when a process group is initialised, wrap it in
    ``DistributedDataParallel`` (optionally converting BatchNorm to ``SyncBatchNorm`` first, CUDA only).

    Outside ``torch.distributed`` the module is returned as is, so one config serves both cases.
    """
    device = torch.device(device)
    module = module.to(device)
    if not _is_dist():
        return module
    if _as_bool(sync_bn):
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); set --sync_bn false on CPU/gloo")
        if getattr(module, "shuffle_bn", False):
            warnings.warn(
                "sync_bn with MoCo's shuffling BN: synchronised batch statistics are global, so shuffling the keys "
                "across ranks no longer keeps a query's and its key's statistics apart; the official MoCo uses "
                "per-GPU BN (--sync_bn false)",
                stacklevel=2,
            )
        module = _convert_plain_bn_to_sync(module)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def build_loader(dataset: Any, batch_size: int, *, num_workers: int = 0, shuffle: bool = True,
                 distributed: bool = False, seed: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """MONAI ``DataLoader`` with ``drop_last`` (BN and Sinkhorn need full batches); a ``DistributedSampler``
    under DDP. Raises when the batch is larger than the (per-process) dataset."""
    from monai.data import DataLoader

    from monai_lessmore.ssl.data import check_batch_size

    distributed = _as_bool(distributed)
    world = torch.distributed.get_world_size() if distributed and _is_dist() else 1
    check_batch_size(len(dataset), batch_size, world)
    sampler = None
    if distributed and _is_dist():
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=int(num_workers), drop_last=True, pin_memory=pin_memory,
                      persistent_workers=int(num_workers) > 0)


def build_trainer(
    *,
    method: str,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    step: SSLStep,
    max_epochs: int,
    lr_schedule: Sequence[float] | None,
    output_dir: str,
    device: str | torch.device = "cpu",
    extra_state: Mapping[str, Any] | None = None,
    resume: str | None = "auto",
    save_interval: int = 1,
    amp: bool = False,
    progress_bar: bool = True,
    tensorboard: bool = True,
    log_every: int = 10,
    epoch_length: int | None = None,
) -> Engine:
    """Assemble the ``SupervisedTrainer`` and its handlers.

    Handlers, in order: resume (STARTED), LR schedule (ITERATION_STARTED), NaN stop, epoch loss history,
    atomic checkpoint every ``save_interval`` epochs (rank 0), stats + TensorBoard + progress bar (rank 0).
    Checkpoint content: ``model``, ``optimizer``, ``trainer`` (epoch, iteration), ``loss_history``, ``extra_state``
    (queues ...), the AMP scaler when used, and the method tag.
    """
    from monai.engines import SupervisedTrainer
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    from monai_lessmore.ssl.handlers import (
        AtomicCheckpointSaver, EpochLossHistory, LRScheduleHandler, ResumeCheckpointLoader, StopOnNonFiniteLoss, is_rank0,
    )

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if step.method != method:
        raise ValueError(f"step {type(step).__name__} trains {step.method!r}, but method={method!r}")
    if int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    device = torch.device(device)
    amp = _as_bool(amp) and device.type == "cuda"
    progress_bar, tensorboard = _as_bool(progress_bar), _as_bool(tensorboard)
    trainer = SupervisedTrainer(
        device=device, max_epochs=int(max_epochs), train_data_loader=train_loader, network=network, optimizer=optimizer,
        loss_function=getattr(step, "loss_function", None) or (lambda *a: None), iteration_update=step, amp=amp,
        decollate=False, epoch_length=epoch_length,
    )
    history = EpochLossHistory(output_file=os.path.join(output_dir, "loss_history.json"))
    state = {"model": network, "optimizer": optimizer, "trainer": trainer, "loss_history": history}
    state.update(dict(extra_state or {}))
    if amp and trainer.scaler is not None:
        state["scaler"] = trainer.scaler
    saver = AtomicCheckpointSaver(output_dir, state, method, save_interval=save_interval)
    handlers: list = [ResumeCheckpointLoader(resume, state, method, save_dir=output_dir, map_location=device)]
    if lr_schedule is not None:
        handlers.append(LRScheduleHandler(optimizer, lr_schedule))
    handlers += [StopOnNonFiniteLoss("loss", saver.path), history, saver]
    if is_rank0():
        handlers.append(StatsHandler(name="lessmore.ssl", tag_name="loss", output_transform=_loss_of,
                                     iteration_log=max(1, int(log_every))))
        if tensorboard:
            handlers.append(TensorBoardStatsHandler(log_dir=os.path.join(output_dir, "tensorboard"), tag_name="loss",
                                                    output_transform=_loss_of))
    for h in handlers:
        h.attach(trainer)
    if progress_bar and is_rank0():
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": out["loss"]})
    trainer.checkpoint_path = saver.path
    trainer.loss_history = history
    return trainer
