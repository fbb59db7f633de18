"""Readers: volumes (NIfTI, DICOM series, NRRD/MetaImage through ITK, the authors' slice folders) and 2-D images.

Every volume reader returns a :class:`Volume` whose ``array`` is ``(S, H, W)`` ``float32`` with the axial slices
inferior -> superior, each slice in the LPS view of a standard axial DICOM (rows anterior -> posterior, columns
patient right -> left). See :mod:`monai_lessmore.io.orientation` for the convention. :func:`read_image_2d` reads one
2-D image (PNG/JPEG/BMP/TIFF, DICOM, NIfTI) for the classification tasks with the same per-format rules.
"""

from __future__ import annotations

import importlib
from typing import Any

from monai_lessmore.io.image2d import IMAGE_SUFFIXES, ImageReadError, read_image_2d, read_raster
from monai_lessmore.io.load import SUPPORTED_FORMATS, detect_volume_kind, load_volume, read_slice
from monai_lessmore.io.volume import LazyVolume, Volume, VolumeReadError

# Imported on first use (PEP 562): pydicom is slow to import and a NIfTI-only run never needs it.
_LAZY = {
    "dicom_series_files": "dicom",
    "is_dicom_file": "dicom",
    "load_dicom_series": "dicom",
    "read_dicom_slice": "dicom",
    "discover_volumes": "discover",
    "load_itk": "itk_reader",
    "load_nifti": "nifti",
    "read_nifti_slice": "nifti",
    "load_slice_volume": "slice_folder",
    "read_slice_volume_slice": "slice_folder",
    "scan_slice_folder": "slice_folder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"monai_lessmore.io.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Volume",
    "LazyVolume",
    "VolumeReadError",
    "load_volume",
    "read_slice",
    "discover_volumes",
    "detect_volume_kind",
    "SUPPORTED_FORMATS",
    "load_nifti",
    "read_nifti_slice",
    "load_dicom_series",
    "read_dicom_slice",
    "dicom_series_files",
    "is_dicom_file",
    "load_itk",
    "load_slice_volume",
    "read_slice_volume_slice",
    "scan_slice_folder",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "read_image_2d",
    "read_raster",
]
