"""MoCo v2 (He et al., 2020; Chen et al., 2020b) as used by Wolf et al. 2024 (paper appendix B, Table 9).

Split as in lightly: :class:`MoCoProjectionHead` (MLP 2048 -> 2048 -> 128), :class:`MoCoLoss` (InfoNCE against a
key queue, temperature 0.2), :func:`update_momentum` (the key encoder as an exponential moving average, 0.999),
:func:`shuffled_keys` (MoCo's shuffling BN) and :class:`MoCoModel` (query encoder + head, and their momentum
copies). The key queue is a :class:`~monai_lessmore.ssl.queue.FeatureQueue` (65,536 keys).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from collections.abc import Callable

from monai_lessmore.ssl.backbone import ENCODER_DIM, encoder_dim, resnet_encoder
from monai_lessmore.utils.distributed import get_rank, get_world_size, is_distributed

__all__ = ["MoCoProjectionHead", "MoCoLoss", "MoCoModel", "update_momentum", "concat_all_gather", "shuffled_keys"]


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
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    torch.distributed.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def shuffled_keys(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """``encode(x)`` computed on a shuffled batch and returned in ``x``'s order: MoCo's *shuffling BN*.

    In train mode, batch normalisation lets a query and its positive key "communicate" through shared batch
    statistics, which MoCo can exploit instead of learning (He et al. 2020, section 3.3). The official code shuffles
    the key batch across GPUs, so each key is normalised with other samples than its query. Under
    ``torch.distributed`` (world size > 1) the same is done here: every rank's ``x`` is gathered, one permutation
    (drawn on rank 0 and broadcast) assigns each rank a shuffled sub-batch, and the keys are gathered back and
    un-shuffled. In a single process the batch is permuted and encoded in ``splits`` sub-batches (as MoCo's
    single-GPU "split BN" demo), since one shuffled full batch would have the same statistics. Sub-batches hold
    at least 2 samples; ``splits=1`` is a plain ``encode(x)``.

    Args:
        encode: the key encoder (momentum backbone + head).
        x: ``(B, ...)`` the key view of this process's batch (equal ``B`` on every rank).
        splits: sub-batches in a single process.
    """
    if get_world_size() > 1:
        rank, b = get_rank(), x.shape[0]
        x_all = concat_all_gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        torch.distributed.broadcast(perm, src=0)
        k_all = concat_all_gather(encode(x_all[perm[rank * b : (rank + 1) * b]]))  # k_all[j]: key of x_all[perm[j]]
        ordered = torch.empty_like(k_all)
        ordered[perm] = k_all
        return ordered[rank * b : (rank + 1) * b]
    splits = max(1, min(int(splits), x.shape[0] // 2))
    if splits == 1:
        return encode(x)
    perm = torch.randperm(x.shape[0], device=x.device)
    k = torch.cat([encode(part) for part in torch.tensor_split(x[perm], splits)])  # sizes differ by at most 1
    ordered = torch.empty_like(k)
    ordered[perm] = k
    return ordered


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

    Args:
        hidden_dim: hidden width of the MLP head (2048).
        output_dim: feature dimension (128).
        shuffle_bn: in train mode, compute keys with :func:`shuffled_keys` (the official code's shuffling BN).
        bn_splits: sub-batches for the keys when there is a single process (see :func:`shuffled_keys`); under DDP
            each rank's share of the shuffled global batch is one sub-batch.
        backbone: the torchvision ResNet of both encoders (the paper: ``"resnet50"``).
    """

    def __init__(self, hidden_dim: int = 2048, output_dim: int = 128, shuffle_bn: bool = True, bn_splits: int = 2,
                 backbone: str = "resnet50") -> None:
        super().__init__()
        if isinstance(bn_splits, bool) or not isinstance(bn_splits, int) or bn_splits < 1:
            raise ValueError(f"bn_splits must be a positive integer, got {bn_splits!r}")
        self.shuffle_bn, self.bn_splits = bool(shuffle_bn), bn_splits
        self.backbone = resnet_encoder(backbone)
        self.projection_head = MoCoProjectionHead(encoder_dim(backbone), hidden_dim, output_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        for p in list(self.backbone_momentum.parameters()) + list(self.projection_head_momentum.parameters()):
            p.requires_grad = False

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        def encode(v: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.projection_head_momentum(self.backbone_momentum(v)), dim=1)

        if self.shuffle_bn and self.training:
            return shuffled_keys(encode, x, self.bn_splits)
        return encode(x)

    def momentum_update(self, m: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(x_q), self.key(x_k)
