"""Readers: volumes (NIfTI, DICOM series, NRRD/MetaImage through ITK, the authors' slice folders) and 2-D images.

Every volume reader returns a :class:`Volume` whose ``array`` is ``(S, H, W)`` ``float32`` with the axial slices
inferior -> superior, each slice in the LPS view of a standard axial DICOM (rows anterior -> posterior, columns
patient right -> left). See :mod:`monai_lessmore.io.orientation` for the convention. :func:`read_image_2d` reads one
2-D image (PNG/JPEG/BMP/TIFF, DICOM, NIfTI) for the classification tasks with the same per-format rules.
"""

from __future__ import annotations

from monai_lessmore.io.dicom import dicom_series_files, is_dicom_file, load_dicom_series, read_dicom_slice
from monai_lessmore.io.discover import discover_volumes
from monai_lessmore.io.image2d import IMAGE_SUFFIXES, ImageReadError, read_image_2d, read_raster
from monai_lessmore.io.itk_reader import load_itk
from monai_lessmore.io.load import SUPPORTED_FORMATS, detect_volume_kind, load_volume, read_slice
from monai_lessmore.io.nifti import load_nifti, read_nifti_slice
from monai_lessmore.io.slice_folder import load_slice_volume, read_slice_volume_slice, scan_slice_folder
from monai_lessmore.io.volume import Volume, VolumeReadError

__all__ = [
    "Volume",
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
