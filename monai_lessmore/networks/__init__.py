"""Networks shared by the bundles: torchvision's ResNet50 with a feature method."""

from __future__ import annotations

from monai_lessmore.networks.resnet import Bottleneck, ResNet50

__all__ = ["Bottleneck", "ResNet50"]
