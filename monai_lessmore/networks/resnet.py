"""The package's ResNets: torchvision's own ``ResNet``, with an identity head for the pooled features.

Pre-training, fine-tuning, the pre-trained bundle and the DeepNet similarity all build their network here, so
every state dict keeps torchvision's key names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ... ``fc.bias``)
and loads straight into ``torchvision.models.resnet50()`` (Wolf et al. 2024 use torchvision's ResNet50
throughout). The other torchvision depths (``resnet18`` ... ``resnet152``, :data:`ARCHITECTURES`) are there for
budgets where a ResNet50 cannot train long enough; their weights load into the torchvision model of that name.
torchvision is imported through :func:`monai_lessmore.utils.torchvision_compat.import_torchvision`, which also
works with the CPU torch wheel.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_lessmore.utils.torchvision_compat import import_torchvision

__all__ = ["ARCHITECTURES", "BasicBlock", "Bottleneck", "ENCODER_DIM", "ResNet", "ResNet50", "encoder_dim",
           "resnet_encoder", "resnet50_encoder"]

_resnet = import_torchvision("models.resnet")
BasicBlock, Bottleneck = _resnet.BasicBlock, _resnet.Bottleneck

#: torchvision's ResNets by name: residual block and blocks per stage (``torchvision.models.resnet18`` ...)
ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

#: width of the pooled ResNet50 feature (input of every projection head and linear classifier)
ENCODER_DIM = 2048


def _check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"backbone must be one of torchvision's ResNets {sorted(ARCHITECTURES)}, got {arch!r}")
    return arch


def encoder_dim(arch: str = "resnet50") -> int:
    """Width of the pooled features of ``arch``: 512 for ``resnet18``/``resnet34``, 2048 for the deeper ones."""
    return 512 * ARCHITECTURES[_check_arch(arch)][0].expansion


class ResNet(_resnet.ResNet):
    """``torchvision.models.<arch>(weights=None, num_classes=num_classes)``; ``num_classes=0`` gives the encoder.

    With ``num_classes=0`` the ``fc`` layer is :class:`torch.nn.Identity`: ``forward`` returns the ``(B, D)``
    pooled features (:func:`encoder_dim`) and the state dict is exactly the encoder's (torchvision's keys without
    ``fc.*``). Otherwise ``fc`` is one ``Linear(D, num_classes)``. Weights are torchvision's random
    initialisation; load trained ones with :func:`monai_lessmore.networks.weights.load_encoder_weights`.

    Args:
        arch: a name of :data:`ARCHITECTURES` (torchvision's builder of that name).
        num_classes: outputs of the final linear layer, or 0 for the pooled features.
        zero_init_residual: zero-initialise the last BatchNorm of each residual block (torchvision option).
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = the pooled features), got {num_classes!r}")
        block, layers = ARCHITECTURES[_check_arch(arch)]
        # the encoder is built with torchvision's default head and then stripped, so a seeded encoder draws the
        # same random numbers as torchvision.models.<arch>()
        super().__init__(block, list(layers), num_classes=num_classes or 1000, zero_init_residual=zero_init_residual)
        self.arch, self.num_classes = arch, num_classes
        if num_classes == 0:
            self.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, D)`` pooled features the ``fc`` layer sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class ResNet50(ResNet):
    """``torchvision.models.resnet50(weights=None, num_classes=num_classes)``: :class:`ResNet` of the paper's depth.

    Args:
        num_classes: outputs of the final linear layer, or 0 for the 2048-d features.
        zero_init_residual: zero-initialise the last BatchNorm of each residual block (torchvision option).
    """

    def __init__(self, num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        super().__init__("resnet50", num_classes=num_classes, zero_init_residual=zero_init_residual)


def resnet_encoder(arch: str = "resnet50", zero_init_residual: bool = False) -> ResNet:
    """A randomly initialised encoder ``(B, 3, H, W) -> (B, encoder_dim(arch))``: ``ResNet(arch, num_classes=0)``."""
    if arch == "resnet50":
        return ResNet50(num_classes=0, zero_init_residual=zero_init_residual)
    return ResNet(arch, num_classes=0, zero_init_residual=zero_init_residual)


def resnet50_encoder(zero_init_residual: bool = False) -> ResNet50:
    """A randomly initialised ResNet50 encoder, ``(B, 3, H, W) -> (B, 2048)``: ``ResNet50(num_classes=0)``."""
    return ResNet50(num_classes=0, zero_init_residual=zero_init_residual)
