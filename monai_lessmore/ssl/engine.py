"""The pre-training engine: MONAI's ``SupervisedTrainer`` driven by a method-specific ``iteration_update``.

Following MONAI's convention the engine is customised, not rewritten: :class:`SSLTrainer` is a thin
``SupervisedTrainer`` (AMP on CUDA only, no decollation, ignite's misleading start notice dropped), and
:class:`SwAVStep`, :class:`MoCoStep` and :class:`SparKStep` are its ``iteration_update``. The bundle config builds
all of them, the loss (the trainer's ``loss_function``: :class:`~monai_lessmore.ssl.swav.SwAVLoss`,
:class:`~monai_lessmore.ssl.moco.MoCoLoss`, :class:`~monai_lessmore.ssl.spark.SparKLoss`) and every handler
(``train_handlers``: resume, checkpoints, LR schedule, prototype freezing, NaN stop, logging, export).

One step (:meth:`SSLStep.__call__`) has four phases, in this order:

1. :meth:`SSLStep.prepare` -- before the forward pass (SwAV re-normalises its prototypes);
2. :meth:`SSLStep.compute_loss` -- forward pass and ``engine.loss_function``; it changes no state and returns, beside
   the loss, what the method will store afterwards (``pending``);
3. backward (``IterationEvents.BACKWARD_COMPLETED`` fires here, with unscaled gradients under AMP: handlers such as
   :class:`~monai_lessmore.ssl.handlers.FreezePrototypes` and :class:`~monai_lessmore.ssl.handlers.ClipGradNorm`
   act on the gradients) and the optimiser step -- both skipped for a non-finite loss;
4. :meth:`SSLStep.update_state` -- **the one place where a method's own state changes**: SwAV enqueues its
   embeddings, MoCo updates its momentum encoder and enqueues its keys. It runs after the optimiser step and only
   when the step was taken.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from torch import nn

from monai_lessmore.ssl.backbone import unwrap
from monai_lessmore.utils.distributed import get_world_size, is_distributed
from monai_lessmore.ssl.queue import FeatureQueue

__all__ = ["SSLTrainer", "SSLStep", "SwAVStep", "MoCoStep", "SparKStep", "build_loader", "wrap_ddp", "as_bool",
           "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("swav", "moco", "spark")


def as_bool(value: Any) -> bool:
    """Booleans from configs and the command line (``--amp false`` arrives as the string ``"false"``)."""
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if value.strip().lower() in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (so that all ranks skip or all step together under DDP)."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if is_distributed():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item() > 0)


class SSLStep:
    """Base ``iteration_update`` of :class:`SSLTrainer` (the phases are described in the module docstring).

    Subclasses implement :meth:`compute_loss` and may override :meth:`prepare` and :meth:`update_state`. A step
    holds no tensors between iterations: the method's state (queues, momentum encoder) lives in modules that the
    checkpoint saves.
    """

    method = "base"

    def prepare(self, engine: Engine) -> None:
        """Before the forward pass."""

    def compute_loss(self, engine: Engine, views: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Forward pass and ``engine.loss_function``; returns ``(loss, pending)`` and changes no state."""
        raise NotImplementedError

    def update_state(self, engine: Engine, pending: Any) -> None:
        """After the optimiser step: store ``pending`` in the method's state (queues, momentum encoder)."""

    def __call__(self, engine: Engine, batch: Mapping[str, Any]) -> dict[str, float]:
        from monai.engines.utils import IterationEvents

        device = engine.state.device
        views = batch["views"] if isinstance(batch, Mapping) else batch
        views = [torch.as_tensor(v).to(device, non_blocking=True) for v in views]
        engine.network.train()
        self.prepare(engine)
        use_amp = bool(getattr(engine, "amp", False)) and device is not None and torch.device(device).type == "cuda"
        with torch.autocast("cuda", enabled=use_amp):
            loss, pending = self.compute_loss(engine, views)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad(set_to_none=True)
        if not _all_finite(loss):  # the weights and the method's state stay those of the last good step
            return {"loss": float(loss.detach())}
        scaler = getattr(engine, "scaler", None) if use_amp else None
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(engine.optimizer)  # handlers of BACKWARD_COMPLETED see the true gradients
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        self.update_state(engine, pending)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"loss": float(loss.detach())}


def _check_loss(engine: Engine, expected: type, method: str) -> nn.Module:
    loss = engine.loss_function
    if not isinstance(loss, expected):
        raise TypeError(f"{method} needs loss_function {expected.__name__}, got {type(loss).__name__}; set the "
                        f"config's 'loss' to {expected.__module__}.{expected.__name__}")
    return loss


class SwAVStep(SSLStep):
    """One SwAV step (the authors' ``main_swav.py`` ``train()``, with their bugs fixed); loss: ``SwAVLoss``.

    Prototype freezing is the :class:`~monai_lessmore.ssl.handlers.FreezePrototypes` handler.

    Args:
        queue: optional :class:`~monai_lessmore.ssl.queue.FeatureQueue` with one queue per assignment crop.
        queue_start_epoch: first epoch (0-based, as SwAV's ``epoch_queue_starts``) that uses the queue.
    """

    method = "swav"

    def __init__(self, queue: FeatureQueue | None = None, queue_start_epoch: int = 15) -> None:
        self.queue = queue
        self.queue_start_epoch = int(queue_start_epoch)

    def prepare(self, engine: Engine) -> None:
        unwrap(engine.network).prototypes.normalize()

    def _use_queue(self, engine: Engine) -> bool:
        return self.queue is not None and engine.state.epoch - 1 >= self.queue_start_epoch

    def compute_loss(self, engine: Engine, views: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        from monai_lessmore.ssl.swav import SwAVLoss

        loss_function = _check_loss(engine, SwAVLoss, "SwAV")
        embeddings, scores = engine.network(views)
        if not self._use_queue(engine):
            return loss_function(scores), None
        w = unwrap(engine.network).prototypes.weight.detach()
        queue_scores = [self.queue.get(i).to(w) @ w.t() if self.queue.is_full else None
                        for i in range(len(loss_function.crops_for_assign))]
        # the queue is read before this batch is added, as in the authors' code
        return loss_function(scores, queue_scores), [embeddings[c].detach().float() for c in loss_function.crops_for_assign]

    def update_state(self, engine: Engine, pending: Any) -> None:
        for i, emb in enumerate(pending or ()):
            self.queue.enqueue(emb, queue=i)


class MoCoStep(SSLStep):
    """One MoCo v2 step: query/key features of the two views, InfoNCE against the queue (loss: ``MoCoLoss``); then
    the momentum update and the enqueue of the keys (gathered from every rank under DDP, as the official code).

    The official code updates the key encoder at the start of the next forward pass; updating it right after the
    optimiser step gives the same key encoder for every key computed.

    Args:
        queue: :class:`~monai_lessmore.ssl.queue.FeatureQueue` of keys (65,536 x 128).
        momentum: key encoder momentum (0.999).
    """

    method = "moco"

    def __init__(self, queue: FeatureQueue, momentum: float = 0.999) -> None:
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.queue, self.momentum = queue, float(momentum)

    def compute_loss(self, engine: Engine, views: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        from monai_lessmore.ssl.moco import MoCoLoss

        loss_function = _check_loss(engine, MoCoLoss, "MoCo")
        if len(views) != 2:
            raise ValueError(f"MoCo needs 2 views per image, got {len(views)}; use monai_lessmore.ssl.transforms.MoCoTransform")
        q, k = engine.network(views[0], views[1])
        # the whole queue, random-initialised keys included, as the official code: a constant number of negatives
        return loss_function(q, k, self.queue.data[0].to(q)), k.detach()

    def update_state(self, engine: Engine, pending: Any) -> None:
        from monai_lessmore.ssl.moco import concat_all_gather

        unwrap(engine.network).momentum_update(self.momentum)
        self.queue.enqueue(concat_all_gather(pending.float()))


class SparKStep(SSLStep):
    """One SparK step: random patch mask, sparse encoder, light decoder (the network returns the reconstruction and
    the mask), then ``SparKLoss`` -- L2 of per-patch normalised pixels on masked patches.

    Args:
        mask_ratio: fraction of 32x32 patches masked (0.6, Table 10).
    """

    method = "spark"

    def __init__(self, mask_ratio: float = 0.6) -> None:
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)

    def compute_loss(self, engine: Engine, views: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        from monai_lessmore.ssl.spark import SparKLoss

        loss_function = _check_loss(engine, SparKLoss, "SparK")
        reconstruction, mask = engine.network(views[0], mask_ratio=self.mask_ratio, return_reconstruction=True)
        return loss_function(reconstruction, views[0], mask), None


class _DropStartNotice(logging.Filter):
    """ignite logs "Engine run resuming from iteration 0, epoch 0" at every start, because MONAI's workflow sets
    ``max_epochs`` before ``run()``; the resume handler says what was really resumed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Engine run resuming from iteration 0, epoch 0 ")


class SSLTrainer(SupervisedTrainer):
    """MONAI's ``SupervisedTrainer`` for self-supervised pre-training.

    Differences, nothing else: ``method`` names the method (checked against ``iteration_update``, and used by the
    checkpoint handlers); ``amp`` accepts config strings and is turned off outside CUDA; ``decollate`` defaults
    to False (the output is a scalar loss); ignite's "resuming from iteration 0" notice is dropped.

    Args:
        method: ``"swav"``, ``"moco"`` or ``"spark"``.
        iteration_update: the method's :class:`SSLStep`.
        loss_function: the method's loss (``SwAVLoss``, ``MoCoLoss``, ``SparKLoss``), used by the step.
        train_handlers: the handlers, attached in this order.
        kwargs: the other arguments of ``monai.engines.SupervisedTrainer``.
    """

    def __init__(self, method: str, device: str | torch.device, max_epochs: int, train_data_loader: Any,
                 network: nn.Module, optimizer: torch.optim.Optimizer, loss_function: Callable,
                 iteration_update: SSLStep, train_handlers: Sequence | None = None, amp: bool | str = False,
                 epoch_length: int | None = None, **kwargs: Any) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if getattr(iteration_update, "method", None) != method:
            raise ValueError(f"iteration_update {type(iteration_update).__name__} trains "
                             f"{getattr(iteration_update, 'method', None)!r}, but method={method!r}")
        if int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        device = torch.device(device)
        amp = as_bool(amp) and device.type == "cuda"  # mixed precision on CUDA only
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, max_epochs=int(max_epochs), train_data_loader=train_data_loader,
                         network=network, optimizer=optimizer, loss_function=loss_function,
                         iteration_update=iteration_update, train_handlers=train_handlers, amp=amp,
                         epoch_length=epoch_length, **kwargs)
        self.method = method
        self.logger.addFilter(_DropStartNotice())


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
    if not is_distributed():
        return module
    if as_bool(sync_bn):
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

    distributed = as_bool(distributed)
    world = get_world_size() if distributed else 1
    check_batch_size(len(dataset), batch_size, world)
    sampler = None
    if distributed and is_distributed():
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=int(num_workers), drop_last=True, pin_memory=pin_memory,
                      persistent_workers=int(num_workers) > 0)
