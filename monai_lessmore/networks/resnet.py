"""torchvision's ResNet50, with a ``features`` method for the 2048-d pooled output.

Every model in this package is torchvision's own ``ResNet`` (spec section 3), so state dicts keep torchvision's key
names and load straight into ``torchvision.models.resnet50()``. It is imported through
:func:`monai_lessmore.utils.torchvision_compat.import_torchvision`, which also works with the CPU torch wheel.
"""

from __future__ import annotations

import torch

from monai_lessmore.utils.torchvision_compat import import_torchvision

__all__ = ["Bottleneck", "ResNet50"]

_resnet = import_torchvision("models.resnet")
Bottleneck = _resnet.Bottleneck


class ResNet50(_resnet.ResNet):
    """``torchvision.models.resnet50(weights=None, num_classes=num_classes)`` plus :meth:`features`.

    Args:
        num_classes: outputs of the final ``fc`` layer.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, 2048)`` pooled features the ``fc`` layer sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
