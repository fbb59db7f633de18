"""Reading one 2-D slice for classification: PNG/JPG (PIL), DICOM (pydicom), NIfTI (nibabel) or an array.

The downstream tasks of Wolf et al. (2024, section 2.3) are 2-D CT slices: COVID-CT ships PNG/JPG, MedMNIST ships
arrays, user tasks may ship DICOM or NIfTI slices. Each is read as a float32 ``(1, H, W)`` channel-first image;
intensity scaling, resizing to 224x224 and the 3-channel replication are MONAI transforms in the bundle config.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from monai_lessmore.io.image2d import IMAGE_SUFFIXES
from monai_lessmore.io.image2d import ImageReadError as ImageLoadError
from monai_lessmore.io.image2d import read_image_2d as read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageLoadError",
    "ReadClassificationImage",
    "ReadClassificationImaged",
    "ReadClassificationImageD",
    "ReadClassificationImageDict",
    "read_image",
]


class ReadClassificationImage(Transform):
    """Read a slice (file path or 2-D array) as a float32 channel-first ``(1, H, W)`` tensor.

    Arrays (MedMNIST) pass through; ``(H, W, 3)`` RGB arrays are averaged to grayscale, because the model input is
    one grayscale slice replicated to three channels (section 2.3).
    """

    def __call__(self, img: str | Path | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(img, (str, Path)):
            arr = read_image(img)
        else:
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = arr[..., :3].mean(axis=-1)
            arr = np.squeeze(arr)
            if arr.ndim != 2:
                raise ImageLoadError(f"expected a 2-D slice array, got shape {arr.shape}")
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[None]


class ReadClassificationImaged(MapTransform):
    """Dictionary wrapper of :class:`ReadClassificationImage`."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = ReadClassificationImage()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reader(d[key])
        return d


ReadClassificationImageD = ReadClassificationImageDict = ReadClassificationImaged
