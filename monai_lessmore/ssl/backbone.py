"""The ResNet50 encoder shared by every pre-training method, and the module inside a data-parallel wrapper.

The encoder is the package's one ResNet50 (:func:`monai_lessmore.networks.resnet50_encoder`: torchvision's ResNet50
with an identity head), so its ``state_dict`` keeps torchvision's key names (``conv1.weight``,
``layer1.0.bn1.running_mean`` ...) and loads straight into ``torchvision.models.resnet50()`` missing only
``fc.weight``/``fc.bias``.
"""

from __future__ import annotations

from torch import nn

from monai_lessmore.networks.resnet import ENCODER_DIM, encoder_dim, resnet50_encoder, resnet_encoder

__all__ = ["resnet50_encoder", "resnet_encoder", "encoder_dim", "ENCODER_DIM", "unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``module`` itself)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module
