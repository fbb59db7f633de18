"""Export the pre-trained encoder as a plain state dict in ``torchvision.models.resnet50()`` key names.

The file loads with ``torch.load(path, weights_only=True)`` (MONAI's ``load()``), and
``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` reports only ``fc.weight``/``fc.bias`` missing;
the classification bundle's ``pretrained_encoder`` reads it directly.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from monai_lessmore.ssl.backbone import unwrap

__all__ = ["encoder_arch", "encoder_state_dict", "export_encoder", "export_from_checkpoint"]


def _backbone(model: nn.Module) -> nn.Module:
    m = unwrap(model)
    for name in ("backbone", "encoder"):
        if hasattr(m, name):
            sub = getattr(m, name)
            return getattr(sub, "resnet", sub)
    return m


def encoder_arch(model: nn.Module) -> str:
    """The torchvision name of ``model``'s encoder (``"resnet50"`` unless it was built as another ResNet)."""
    return str(getattr(_backbone(model), "arch", "resnet50"))


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ResNet50 encoder's tensors (CPU, contiguous), without ``fc.*`` and without any head, queue or decoder."""
    sd = _backbone(model).state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items() if not k.startswith("fc.")}


def export_encoder(model: nn.Module, path: str | os.PathLike) -> str:
    """Write :func:`encoder_state_dict` of ``model`` to ``path`` atomically (rank 0 only); returns the path."""
    from monai_lessmore.ssl.handlers import atomic_torch_save
    from monai_lessmore.utils.distributed import is_rank0

    path = os.fspath(path)
    if is_rank0():
        atomic_torch_save(encoder_state_dict(model), path)
    return path


def export_from_checkpoint(checkpoint: str | os.PathLike, model: nn.Module, path: str | os.PathLike) -> str:
    """Load ``checkpoint["model"]`` (a training checkpoint of this package) into ``model`` and export its encoder."""
    ckpt: Any = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{checkpoint} is not a pre-training checkpoint of monai_lessmore (no 'model' entry)")
    unwrap(model).load_state_dict(ckpt["model"])
    return export_encoder(model, path)
