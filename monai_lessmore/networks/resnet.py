"""The package's one ResNet50: torchvision's own ``ResNet``, with an identity head for the 2048-d features.

Pre-training, fine-tuning, the pre-trained bundle and the DeepNet similarity all build their network here, so
every state dict keeps torchvision's key names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ... ``fc.bias``)
and loads straight into ``torchvision.models.resnet50()`` (Wolf et al. 2024 use torchvision's ResNet50
throughout). torchvision is imported through :func:`monai_lessmore.utils.torchvision_compat.import_torchvision`,
which also works with the CPU torch wheel.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_lessmore.utils.torchvision_compat import import_torchvision

__all__ = ["Bottleneck", "ResNet50", "resnet50_encoder", "ENCODER_DIM"]

_resnet = import_torchvision("models.resnet")
Bottleneck = _resnet.Bottleneck

#: width of the pooled ResNet50 feature (input of every projection head and linear classifier)
ENCODER_DIM = 2048


class ResNet50(_resnet.ResNet):
    """``torchvision.models.resnet50(weights=None, num_classes=num_classes)``; ``num_classes=0`` gives the encoder.

    With ``num_classes=0`` the ``fc`` layer is :class:`torch.nn.Identity`: ``forward`` returns the ``(B, 2048)``
    pooled features and the state dict is exactly the encoder's (torchvision's keys without ``fc.*``). Otherwise
    ``fc`` is one ``Linear(2048, num_classes)``. Weights are torchvision's random initialisation; load trained
    ones with :func:`monai_lessmore.networks.weights.load_encoder_weights`.

    Args:
        num_classes: outputs of the final linear layer, or 0 for the 2048-d features.
        zero_init_residual: zero-initialise the last BatchNorm of each residual block (torchvision option).
    """

    def __init__(self, num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = 2048-d features), got {num_classes!r}")
        # the encoder is built with torchvision's default head and then stripped, so a seeded encoder draws the
        # same random numbers as torchvision.models.resnet50()
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes or 1000,
                         zero_init_residual=zero_init_residual)
        self.num_classes = num_classes
        if num_classes == 0:
            self.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, 2048)`` pooled features the ``fc`` layer sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet50_encoder(zero_init_residual: bool = False) -> ResNet50:
    """A randomly initialised ResNet50 encoder, ``(B, 3, H, W) -> (B, 2048)``: ``ResNet50(num_classes=0)``."""
    return ResNet50(num_classes=0, zero_init_residual=zero_init_residual)
