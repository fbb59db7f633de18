"""SwAV (Caron et al., 2020) as used by Wolf et al. 2024 (paper appendix A, Table 8).

Split as in lightly: :func:`sinkhorn` (the equal-partition constraint, distributed under DDP),
:class:`SwAVProjectionHead` (MLP 2048 -> 2048 -> 128), :class:`SwAVPrototypes` (500 normalised prototypes),
:class:`SwAVLoss` (swapped prediction over the crops) and :class:`SwAVModel` (encoder + head + prototypes,
forwarding the multi-crop views grouped by resolution as the authors' code does).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from monai_lessmore.ssl.backbone import ENCODER_DIM, encoder_dim, resnet_encoder
from monai_lessmore.utils.distributed import get_world_size, is_distributed

__all__ = ["sinkhorn", "SwAVProjectionHead", "SwAVPrototypes", "SwAVLoss", "SwAVModel"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, epsilon: float = 0.05, iterations: int = 3, distributed: bool | None = None) -> torch.Tensor:
    """Soft cluster assignments ``Q`` from prototype scores by the Sinkhorn-Knopp algorithm (SwAV eq. 3).

    ``Q = Diag(u) exp(C^T Z / epsilon) Diag(v)`` is alternately scaled so that, over the whole (global) batch of
    ``B`` samples and ``K`` prototypes, the returned ``(B, K)`` matrix has rows summing to 1 (one distribution per
    sample; exact, the last normalisation) and columns summing to ``B / K`` (equal partition of the batch among the
    prototypes; approximate, closer with more iterations).
    Under ``torch.distributed`` the sums run over all ranks (``all_reduce``), as in the authors'
    ``distributed_sinkhorn``.

    Args:
        scores: ``(B, K)`` prototype scores (cosine similarities) of one crop.
        epsilon: entropy regularisation (0.05, Table 8 / SwAV).
        iterations: Sinkhorn iterations (3, Table 8).
        distributed: all-reduce over ranks; ``None`` = when a process group is initialised.

    Returns:
        ``(B, K)`` assignment probabilities (float32).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (batch, prototypes), got shape {tuple(scores.shape)}")
    if iterations < 1 or epsilon <= 0:
        raise ValueError(f"need iterations >= 1 and epsilon > 0, got iterations={iterations}, epsilon={epsilon}")
    distributed = is_distributed() if distributed is None else distributed
    world = get_world_size() if distributed else 1
    # subtract the global max before exp: same Q (it cancels in the normalisations), no overflow in fp32
    s = scores.float() / epsilon
    m = s.max()
    if distributed:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    q = torch.exp(s - m).t()  # K x B
    b = q.shape[1] * world
    k = q.shape[0]
    total = q.sum()
    if distributed:
        dist.all_reduce(total)
    q /= total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


class SwAVProjectionHead(nn.Module):
    """MLP ``2048 -> hidden (BN, ReLU) -> 128`` (Table 8: size MLP 2048, output dimension 128)."""

    def __init__(self, input_dim: int = ENCODER_DIM, hidden_dim: int = 2048, output_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwAVPrototypes(nn.Module):
    """``num_prototypes`` prototype vectors (500, Table 8); scores are dot products with L2-normalised features.

    Call :meth:`normalize` before each step (the authors' code): the prototypes then stay on the unit sphere and
    the scores are cosine similarities.
    """

    def __init__(self, input_dim: int = 128, num_prototypes: int = 500) -> None:
        super().__init__()
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2, got {num_prototypes}")
        self.layers = nn.Linear(input_dim, num_prototypes, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.layers.weight

    @torch.no_grad()
    def normalize(self) -> None:
        self.layers.weight.copy_(nn.functional.normalize(self.layers.weight, dim=1, p=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwAVLoss(nn.Module):
    """Swapped prediction loss over multi-crop views (SwAV eq. 1-2; paper appendix A).

    For each crop used for assignment (the two large crops), codes ``q`` come from :func:`sinkhorn` on its scores
    (optionally prefixed by the queue's scores); every *other* crop predicts ``q`` through
    ``softmax(scores / temperature)``; the cross-entropies are averaged over crops and assignment crops.

    Args:
        temperature: softmax temperature (0.1, Table 8 / SwAV).
        sinkhorn_epsilon: 0.05. sinkhorn_iterations: 3 (Table 8).
        crops_for_assign: indices of the crops whose codes are targets (``[0, 1]``: the 224 px crops).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.epsilon = float(sinkhorn_epsilon)
        self.iterations = int(sinkhorn_iterations)
        self.crops_for_assign = [int(c) for c in crops_for_assign]

    def forward(self, scores: Sequence[torch.Tensor], queue_scores: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Args:
            scores: one ``(B, K)`` score tensor per crop, in crop order.
            queue_scores: per assignment crop, ``(Q, K)`` scores of queued embeddings to prepend for Sinkhorn, or None.
        """
        n = len(scores)
        if n < 2:
            raise ValueError(f"SwAV needs at least 2 crops, got {n}")
        bad = [c for c in self.crops_for_assign if not 0 <= c < n]
        if bad:
            raise ValueError(f"crops_for_assign {self.crops_for_assign} refers to crops {bad}, but only {n} crops were given")
        loss = scores[0].new_zeros(())
        for i, c in enumerate(self.crops_for_assign):
            with torch.no_grad():
                out = scores[c].detach()
                bs = out.shape[0]
                extra = None if queue_scores is None else queue_scores[i]
                if extra is not None and extra.numel():
                    out = torch.cat([extra.detach(), out])
                q = sinkhorn(out, epsilon=self.epsilon, iterations=self.iterations)[-bs:]
            sub = scores[0].new_zeros(())
            for v in range(n):
                if v == c:
                    continue
                logp = nn.functional.log_softmax(scores[v].float() / self.temperature, dim=1)
                sub = sub - torch.mean(torch.sum(q * logp, dim=1))
            loss = loss + sub / (n - 1)
        return loss / len(self.crops_for_assign)


class SwAVModel(nn.Module):
    """ResNet50 encoder (or another torchvision ResNet, ``backbone``) + :class:`SwAVProjectionHead` +
    :class:`SwAVPrototypes`.

    ``forward(crops)`` takes the list of crop batches (2 x 224 px then 6 x 96 px), runs consecutive crops of the same
    resolution through the encoder together, and returns ``(embeddings, scores)``: lists per crop of the
    L2-normalised ``(B, 128)`` embeddings and ``(B, K)`` prototype scores.
    """

    def __init__(self, hidden_dim: int = 2048, output_dim: int = 128, num_prototypes: int = 500,
                 backbone: str = "resnet50") -> None:
        super().__init__()
        self.backbone = resnet_encoder(backbone)
        self.projection_head = SwAVProjectionHead(encoder_dim(backbone), hidden_dim, output_dim)
        self.prototypes = SwAVPrototypes(output_dim, num_prototypes)

    def forward(self, crops: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        z = nn.functional.normalize(self.projection_head(torch.cat(feats)), dim=1, p=2)
        p = self.prototypes(z)
        sizes = [c.shape[0] for c in crops]
        return list(torch.split(z, sizes)), list(torch.split(p, sizes))
