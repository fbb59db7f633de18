"""MoCo v2 (He et al., 2020; Chen et al., 2020b) as used by Wolf et al. 2024 (paper appendix B, Table 9).

Split as in lightly: :class:`MoCoProjectionHead` (MLP 2048 -> 2048 -> 128), :class:`MoCoLoss` (InfoNCE against a
key queue, temperature 0.2), :func:`update_momentum` (the key encoder as an exponential moving average, 0.999) and
:class:`MoCoModel` (query encoder + head, and their momentum copies). The key queue is a
:class:`~monai_lessmore.ssl.queue.FeatureQueue` (65,536 keys).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from monai_lessmore.ssl.backbone import ENCODER_DIM, _is_dist, resnet50_encoder

__all__ = ["MoCoProjectionHead", "MoCoLoss", "MoCoModel", "update_momentum", "concat_all_gather"]


class MoCoProjectionHead(nn.Module):
    """MoCo v2's MLP head: ``Linear(2048, 2048) -> ReLU -> Linear(2048, 128)``."""

    def __init__(self, input_dim: int = ENCODER_DIM, hidden_dim: int = 2048, output_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """``ema = m * ema + (1 - m) * model`` for every parameter (MoCo eq. 2); buffers (BN statistics) are left to
    the momentum encoder's own forward passes, as in the official code."""
    if not 0 <= m <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    for p_ema, p in zip(model_ema.parameters(), model.parameters()):
        p_ema.mul_(m).add_(p.detach(), alpha=1 - m)


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every rank concatenated along dim 0 (``x`` itself outside ``torch.distributed``)."""
    if not _is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCoLoss(nn.Module):
    """InfoNCE (paper appendix B): ``-log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))``.

    Args:
        temperature: 0.2 (MoCo v2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            q: ``(B, D)`` normalised queries. k: ``(B, D)`` normalised positive keys.
            negatives: ``(N, D)`` normalised queued keys (none: the other keys of the batch serve as negatives).
        """
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
        q, k = q.float(), k.float()
        if negatives is None or negatives.numel() == 0:
            logits = q @ k.t() / self.temperature
            labels = torch.arange(q.shape[0], device=q.device)
        else:
            pos = (q * k).sum(dim=1, keepdim=True)
            neg = q @ negatives.float().t()
            logits = torch.cat([pos, neg], dim=1) / self.temperature
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return nn.functional.cross_entropy(logits, labels)


class MoCoModel(nn.Module):
    """Query encoder (ResNet50 + :class:`MoCoProjectionHead`) and its momentum copy (no gradients).

    ``forward(x_q, x_k)`` returns the L2-normalised query ``(B, 128)`` and key ``(B, 128)`` features.
    """

    def __init__(self, hidden_dim: int = 2048, output_dim: int = 128) -> None:
        super().__init__()
        self.backbone = resnet50_encoder()
        self.projection_head = MoCoProjectionHead(ENCODER_DIM, hidden_dim, output_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        for p in list(self.backbone_momentum.parameters()) + list(self.projection_head_momentum.parameters()):
            p.requires_grad = False

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head_momentum(self.backbone_momentum(x)), dim=1)

    def momentum_update(self, m: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(x_q), self.key(x_k)
