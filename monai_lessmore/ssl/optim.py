"""Optimisers and learning-rate schedules of the three pre-training methods (paper appendices A-C).

- :class:`LARS` -- layer-wise adaptive rate scaling as SwAV runs it (apex ``LARC(SGD, trust_coefficient=0.001,
  clip=False)``): momentum SGD whose per-tensor learning rate is scaled by
  ``trust * ||w|| / (||g|| + weight_decay * ||w||)``; biases and normalisation parameters (1-D tensors) are
  excluded from the adaptation and from weight decay (``exclude_bias_and_norm``). As in apex LARC, a tensor whose
  gradient or weight norm is 0 gets neither weight decay nor adaptation (its update is the momentum alone).
- :class:`LAMB` -- You et al. 2019, in the NVIDIA/timm variant that SparK's reference code runs (``timm.optim.Lamb``
  v0.5.4 with ``max_grad_norm=5.0``): optional clipping of the global gradient norm, Adam moments with bias
  correction, L2 weight decay added to the update, and the per-tensor trust ratio -- skipped for groups marked
  ``exclude_from_adaptation`` (as timm skips groups without weight decay). None of this project's dependencies
  ships one (``torch.optim`` and ``monai.optimizers`` have no LAMB), so it is implemented here and tested against
  timm's ``Lamb``.
- :func:`spark_lr_wd_schedule` -- SparK's per-iteration learning rate and weight decay (``lr_wd_annealing``).
- :func:`warmup_cosine_schedule` -- per-iteration values: linear warm-up from ``start_lr`` to ``base_lr`` then
  cosine decay to ``final_lr`` (SwAV's schedule, honouring start/final lr -- the authors' code ignored them).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["LARS", "LAMB", "warmup_cosine_schedule", "spark_lr_wd_schedule", "param_groups_exclude_bias_and_norm"]


def param_groups_exclude_bias_and_norm(
    model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str] = ()
) -> list[dict]:
    """Two parameter groups: weights (weight decay, layer adaptation) and the rest (neither): 1-D tensors (biases,
    norm layers) and parameters whose name contains one of ``no_decay_keys`` (SparK's ``nowd_keys``: its mask tokens,
    ``(1, C, 1, 1)`` tensors, are ``["mask_token"]``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            excluded = p.ndim <= 1 or any(k in name for k in no_decay_keys)
            (no_decay if excluded else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "exclude_from_adaptation": True},
    ]


class LARS(Optimizer):
    """LARS as in SwAV's training (apex LARC with ``clip=False`` around ``SGD(momentum=0.9, weight_decay=1e-6)``).

    Args:
        params: parameters or groups (a group may set ``exclude_from_adaptation``).
        lr: base learning rate (0.15 in Table 8; usually set per iteration by the schedule).
        momentum: 0.9. weight_decay: 1e-6 (Table 8). trust_coefficient: 0.001 (SwAV).
        exclude_bias_and_norm: skip adaptation and weight decay for 1-D parameters (biases, norm layers).
        eps: added to the denominator.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.15,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = True,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, trust_coefficient > 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, trust_coefficient={trust_coefficient}"
            )
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        exclude_bias_and_norm=exclude_bias_and_norm, exclude_from_adaptation=False, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                excluded = group["exclude_from_adaptation"] or (group["exclude_bias_and_norm"] and p.ndim <= 1)
                if not excluded:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    wd = group["weight_decay"]
                    trust = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    # apex LARC: a tensor with zero weight or gradient norm gets neither weight decay nor adaptation
                    active = (w_norm > 0) & (g_norm > 0)
                    g = torch.where(active, (g + wd * p) * trust, g)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


class LAMB(Optimizer):
    """LAMB (You et al., 2019), the optimiser of SparK (paper appendix C, Table 10), as timm's ``Lamb``.

    Per step: when ``max_grad_norm`` is set, all gradients are scaled by ``min(1, max_grad_norm / ||g||_global)``
    (the norm over every parameter of every group); ``m, v`` are Adam moments with bias correction; the update
    ``r = m_hat / (sqrt(v_hat) + eps) + wd * w`` is scaled per tensor by the trust ratio ``||w|| / ||r||`` (1 when
    either norm is 0), except in groups with ``exclude_from_adaptation`` (biases and norm layers as
    :func:`param_groups_exclude_bias_and_norm` marks them), whose update is ``r`` itself.

    Args:
        params: parameters or groups (a group may set ``exclude_from_adaptation``). lr: learning rate.
        betas: (0.9, 0.999); SparK uses (0.9, 0.95) for ResNets. eps: 1e-6.
        weight_decay: L2 weight decay added to the update (SparK anneals it per iteration, 0.04 -> 0.2).
        max_grad_norm: clip the global gradient norm to this value (SparK: 5.0); None does not clip.
            ``p.grad`` is left unmodified.
    """

    def __init__(self, params: Iterable, lr: float = 2.5e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, max_grad_norm: float | None = None) -> None:
        if lr < 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LAMB needs lr >= 0, eps > 0, weight_decay >= 0, betas in [0, 1); got lr={lr}, eps={eps}, "
                             f"weight_decay={weight_decay}, betas={betas}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"LAMB max_grad_norm must be > 0 or None (no clipping), got {max_grad_norm}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      exclude_from_adaptation=False))
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)

    @torch.no_grad()
    def _clip_scale(self) -> torch.Tensor | None:
        """``min(1, max_grad_norm / global_norm)`` over all gradients, or None without clipping."""
        if self.max_grad_norm is None:
            return None
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))
        return 1.0 / torch.clamp(norm / self.max_grad_norm, min=1.0)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = self._clip_scale()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if scale is None else p.grad * scale.to(p.grad.dtype)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    r = r + group["weight_decay"] * p
                if not group["exclude_from_adaptation"]:
                    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
                    r = r * torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
                p.add_(r, alpha=-group["lr"])
        return loss


def warmup_cosine_schedule(
    *, base_lr: float, final_lr: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0, start_lr: float = 0.0
) -> np.ndarray:
    """Learning rate for every iteration: linear warm-up then cosine decay (SwAV's ``main_swav.py``).

    ``linspace(start_lr, base_lr, warmup_epochs * iters_per_epoch)`` followed by
    ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t / T)) / 2`` for the remaining ``T`` iterations.
    Paper/SwAV defaults: base 0.15, warm-up 10 epochs, final 0.00015 (``start_lr`` 0 in SwAV's ImageNet runs).

    Returns:
        ``(epochs * iters_per_epoch,)`` float64 array.
    """
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and iters_per_epoch >= 1, got epochs={epochs}, iters_per_epoch={iters_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in 0..epochs ({epochs}), got {warmup_epochs}")
    n_warm = warmup_epochs * iters_per_epoch
    n_cos = (epochs - warmup_epochs) * iters_per_epoch
    warm = np.linspace(start_lr, base_lr, n_warm, endpoint=True) if n_warm else np.zeros(0)
    t = np.arange(n_cos)
    cos = final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(math.pi * t / max(n_cos, 1)))
    return np.concatenate([warm, cos])


def spark_lr_wd_schedule(
    *, peak_lr: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 40, weight_decay: float = 0.04,
    weight_decay_end: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """SparK's learning rate and weight decay for every iteration (reference code ``utils/lr_control.py``).

    With ``W`` warm-up and ``T`` total iterations, the learning rate rises linearly from ``0.005 * peak_lr``
    (``0.005 * peak + 0.995 * peak * it / W``), then follows a cosine from ``peak_lr`` to ``0.001 * peak_lr``,
    reached at the last iteration (ratio ``(it - W) / (T - 1 - W)``). The weight decay follows one cosine over
    the whole run from ``weight_decay`` to ``weight_decay_end`` (ratio ``it / (T - 1)``); SparK applies it to
    weights only (biases, 1-D parameters and mask tokens get none). SparK's peak lr is ``2e-4 * batch / 256``.

    Returns:
        ``(lr, weight_decay)``, two ``(epochs * iters_per_epoch,)`` float64 arrays.
    """
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and iters_per_epoch >= 1, got epochs={epochs}, iters_per_epoch={iters_per_epoch}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup_epochs must be in 0..epochs - 1 ({epochs - 1}), got {warmup_epochs}")
    total, warm = epochs * iters_per_epoch, round(warmup_epochs * iters_per_epoch)
    it = np.arange(total, dtype=np.float64)
    cos_ratio = (it - warm) / max(total - 1 - warm, 1)
    lr = np.where(
        it < warm,
        0.005 * peak_lr + 0.995 * peak_lr * it / max(warm, 1),
        0.001 * peak_lr + 0.999 * peak_lr * (0.5 + 0.5 * np.cos(np.pi * cos_ratio)),
    )
    wd = weight_decay_end + (weight_decay - weight_decay_end) * (0.5 + 0.5 * np.cos(np.pi * it / max(total - 1, 1)))
    return lr, wd
