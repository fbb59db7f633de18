"""The package's ResNet50 (torchvision's, ``num_classes=0`` for the encoder) and the loading of its weights."""

from __future__ import annotations

from monai_lessmore.networks.resnet import ENCODER_DIM, Bottleneck, ResNet50, resnet50_encoder
from monai_lessmore.networks.weights import (
    EncoderLoadError,
    head_classes,
    load_encoder_weights,
    load_pretrained,
    read_state_dict,
)

__all__ = [
    "ENCODER_DIM", "Bottleneck", "ResNet50", "resnet50_encoder", "EncoderLoadError", "head_classes",
    "load_encoder_weights", "load_pretrained", "read_state_dict",
]
