"""Reading one 2-D image file: the reader behind slice folders and the classification inputs.

The paper's pre-training data are CT slices exported as images (Wolf et al., 2024, section 2.1) and its downstream
tasks are 2-D slices (section 2.3). Both are read here, so that an image gives the same values wherever it is used:

* PNG, JPEG, BMP, TIFF (Pillow): gray images keep their values, 8-bit (``L``) and 16-bit (``I;16`` and its byte
  orders) alike, and 32-bit integer or float TIFFs (``I``, ``F``) too. Other modes (RGB, palette, bilevel, with
  alpha) are converted to 8-bit gray with Pillow's ``convert("L")`` (ITU-R 601-2 luma). Pillow's own ``convert("L")``
  of a 16-bit image clips every value above 255, so it is never used on one.
* DICOM (one single-frame image): HU through :func:`monai_lessmore.io.dicom.read_dicom_file`, the series reader's
  per-file path (rescale, compressed transfer syntaxes).
* NIfTI (one slice, a singleton axis is dropped): the stored array with ``scl_slope``/``scl_inter`` applied, as
  stored (no reorientation).

:func:`read_raster` also says whether the image was 8-bit: a slice folder of 8-bit images is hashed as it is (the
authors' renderings), one holding 16-bit images is rendered to 8 bit like HU volumes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_lessmore.io.volume import VolumeReadError

__all__ = [
    "RASTER_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "image_suffix",
    "read_raster",
    "read_image_2d",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: file name endings :func:`read_image_2d` reads (files without one are read when they are DICOM)
IMAGE_SUFFIXES = (*RASTER_SUFFIXES, ".dcm", ".dicom", ".nii", ".nii.gz")

#: Pillow modes read with their own values (no conversion); ``I;16*`` are the 16-bit gray modes
_VALUE_MODES = ("L", "I", "F")


class ImageReadError(VolumeReadError):
    """A 2-D image could not be read; the message names the file and the reason."""


def image_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix of ``path``, ``".nii.gz"`` counted as one."""
    name = os.path.basename(os.fspath(path)).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a PNG/JPEG/BMP/TIFF image as ``float32`` ``(H, W)`` gray values, and whether it was 8-bit.

    Returns:
        ``(values, is_8bit)``: ``is_8bit`` is ``True`` for 8-bit gray images and for colour images (converted to
        8-bit gray), ``False`` for 16-bit and 32-bit gray images, whose values are kept.

    Raises:
        ImageReadError: the file cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in _VALUE_MODES or image.mode.startswith("I;16"):
                values = np.asarray(image, dtype=np.float32)
                return values, image.mode == "L"
            return np.asarray(image.convert("L"), dtype=np.float32), True
    except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, ValueError, SyntaxError...
        raise ImageReadError(f"{os.fspath(path)}: cannot be read ({type(err).__name__}: {err})") from err


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """Read one 2-D slice file (image, DICOM or NIfTI) as ``float32`` ``(H, W)``; see the module docstring.

    Raises:
        ImageReadError: unknown format, unreadable file, or not one 2-D slice; the message names the file.
    """
    path = Path(path)
    suffix = image_suffix(path)
    from monai_lessmore.io.dicom import is_dicom_file, read_dicom_file

    if suffix in (".dcm", ".dicom") or (suffix not in IMAGE_SUFFIXES and is_dicom_file(path)):
        try:
            array = read_dicom_file(path)
        except VolumeReadError as err:
            raise ImageReadError(str(err)) from err
    elif suffix in (".nii", ".nii.gz"):
        import nibabel as nib

        try:
            array = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
        except Exception as err:  # nibabel's header and decompression errors
            raise ImageReadError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    elif suffix in RASTER_SUFFIXES:
        array = read_raster(path)[0]
    else:
        raise ImageReadError(f"{path}: unknown image format {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ImageReadError(
            f"{path}: expected one 2-D slice, got an array of shape {array.shape}; export one slice per file"
        )
    return array
