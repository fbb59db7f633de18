"""Deprecated location of :mod:`monai_lessmore.networks.resnet` (torchvision's ResNet50); kept while callers move."""

from __future__ import annotations

from monai_lessmore.networks.resnet import Bottleneck, ResNet50

__all__ = ["Bottleneck", "ResNet50"]
