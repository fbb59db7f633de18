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

from monai_lessmore.io.dicom import is_dicom_file

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageLoadError",
    "ReadClassificationImage",
    "ReadClassificationImaged",
    "ReadClassificationImageD",
    "ReadClassificationImageDict",
    "read_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file(s) and the reason."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D slice as a float32 ``(H, W)`` array.

    Colour images are converted to grayscale (PIL mode "L"); DICOM values are rescaled with
    RescaleSlope/RescaleIntercept (HU for CT); NIfTI files must hold one slice (a singleton third axis is dropped).

    Args:
        path: image file.

    Raises:
        ImageLoadError: naming the file and the reason (unreadable, not 2-D, unknown format).
    """
    path = Path(path)
    suffix = _suffix(path)
    try:
        if suffix in (".dcm", ".dicom") or (suffix not in IMAGE_SUFFIXES and is_dicom_file(path)):
            import pydicom

            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array.astype(np.float32)
            arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
        elif suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as img:
                if img.mode not in ("L", "I", "I;16", "F"):
                    img = img.convert("L")
                arr = np.asarray(img, dtype=np.float32)
        else:
            raise ImageLoadError(f"{path}: unknown image format {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")
    except ImageLoadError:
        raise
    except Exception as e:  # any decoder failure is reported with the file name
        raise ImageLoadError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ImageLoadError(
            f"{path}: expected one 2-D slice, got an array of shape {arr.shape}; export one slice per file"
        )
    return arr


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
