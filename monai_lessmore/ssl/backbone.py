"""The ResNet50 encoder shared by every pre-training method (spec section 3).

The encoder is torchvision's own ResNet50 (:class:`monai_lessmore.networks.resnet.ResNet50`, imported through the
package's torchvision compatibility shim) with its classifier replaced by an identity, so its
``state_dict`` keeps torchvision's key names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...) and loads
straight into ``torchvision.models.resnet50()`` missing only ``fc.weight``/``fc.bias``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet50_encoder", "ENCODER_DIM", "unwrap"]

#: width of the pooled ResNet50 feature (input of every projection head).
ENCODER_DIM = 2048


def resnet50_encoder(zero_init_residual: bool = False) -> nn.Module:
    """A randomly initialised ResNet50 (torchvision's init) without its classifier (never downloads weights).

    Args:
        zero_init_residual: zero-initialise the last BN of each residual block (torchvision option).

    Returns:
        A ResNet50 whose ``fc`` is :class:`torch.nn.Identity`: ``(B, 3, H, W) -> (B, 2048)``.
    """
    from monai_lessmore.networks.resnet import Bottleneck, ResNet50

    net = ResNet50()
    net.fc = nn.Identity()
    if zero_init_residual:
        for m in net.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
    return net


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``module`` itself)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def _is_dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
