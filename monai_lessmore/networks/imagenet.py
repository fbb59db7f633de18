"""ImageNet conventions of torchvision's ResNet50: input normalisation and the cached weights file (never downloaded).

Kept apart from :mod:`monai_lessmore.networks.resnet` so that view transforms and the DeepNet measure can use them
without importing torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_WEIGHTS_URL", "imagenet_weights_path"]

#: per-channel normalisation of torchvision's ImageNet-trained models, applied to inputs scaled to [0, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's ResNet50_Weights.IMAGENET1K_V1 (acc@1 76.13); the file name is what torch.hub caches it as
IMAGENET_WEIGHTS_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def imagenet_weights_path() -> Path:
    """Where torch hub caches the ImageNet weights: ``torch.hub.get_dir()/checkpoints/resnet50-0676ba61.pth``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_WEIGHTS_URL)
