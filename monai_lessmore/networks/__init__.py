"""The package's ResNet50 (torchvision's, ``num_classes=0`` for the encoder; the other torchvision depths by name),
the loading of its weights, and its ImageNet conventions.

Submodules: ``resnet`` (the network), ``weights`` (reading and validating weights), ``imagenet`` (normalisation,
cached ImageNet weights). The names below are imported on first use, so ``import monai_lessmore.networks.imagenet``
does not import torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ENCODER_DIM": "resnet", "Bottleneck": "resnet", "ResNet50": "resnet", "resnet50_encoder": "resnet",
    "ARCHITECTURES": "resnet", "BasicBlock": "resnet", "ResNet": "resnet", "encoder_dim": "resnet",
    "resnet_encoder": "resnet",
    "EncoderLoadError": "weights", "head_classes": "weights", "load_encoder_weights": "weights",
    "load_pretrained": "weights", "read_state_dict": "weights",
    "IMAGENET_MEAN": "imagenet", "IMAGENET_STD": "imagenet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"monai_lessmore.networks.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'monai_lessmore.networks' has no attribute {name!r}")
