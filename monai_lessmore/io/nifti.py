"""NIfTI reader (``.nii``, ``.nii.gz``) via nibabel.

Convention (spec section 2: "the slice axis is the axial one, taken from the image orientation, not assumed"):

* The slice axis is the stored voxel axis whose orientation code (:func:`nibabel.aff2axcodes` of the affine) is
  ``S`` or ``I``: for a non-axial-dominant acquisition, the axis closest to the inferior-superior direction. It is
  never assumed to be the last axis (e.g. ``invesalius_cranium_head_ct`` is stored ``(x, y, z)`` 256x256x108 and
  gives 108 slices; a file stored ``(z, y, x)`` gives the same stack).
* The array is reoriented (flips and transposes only, no resampling) to the LPS view of DICOM/ITK: each slice
  has rows anterior -> posterior and columns patient right -> left, the same view as a standard axial DICOM's
  ``pixel_array``; slices are ordered inferior -> superior. See :mod:`monai_lessmore.io.orientation`.
* Values are the stored values with ``scl_slope``/``scl_inter`` applied (nibabel does), as ``float32``.
* Size-1 dimensions after the third (e.g. ``(X, Y, Z, 1)``) are dropped; more than one time point or component
  is an error. A 3D file with one slice (``(X, Y, 1)``) is a one-slice volume; a 2D file is an error.
* NaN/Inf voxels are kept and counted in ``meta["nonfinite_voxels"]``: the reducer decides what to do.

``meta`` keys: ``spacing`` (mm along ``(S, H, W)``), ``affine`` (RAS affine of the returned array),
``original_affine``, ``orientation`` (stored axis codes, e.g. ``("R", "A", "S")``), ``slice_axis`` (stored axis
that became the slice axis), ``slice_axis_flipped``, ``ornt_transform`` (nibabel orientation transform),
``original_shape``, ``stored_dtype``, ``nonfinite_voxels``.

:func:`read_nifti_slice` reads one slice through nibabel's array proxy (only that slice of the stored slice axis)
and applies the same flips and transposes, so it equals ``load_nifti(path).array[index]`` exactly.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation, source_slice_index
from monai_lessmore.io.volume import Volume, VolumeReadError

__all__ = ["NIFTI_SUFFIXES", "is_nifti_path", "load_nifti", "read_nifti_slice", "nifti_volume_name"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# What a truncated or corrupt file raises while its data is read (gzip: EOFError/zlib.error; plain: ValueError/OSError).
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_volume_name(path: str | os.PathLike) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open(path: str) -> tuple[Any, tuple[int, ...]]:
    """Load the header and check the shape; returns the image and the index of extra (size-1) dimensions."""
    try:
        img = nib.load(path)
    except _READ_ERRORS as err:
        raise VolumeReadError(
            f"{path}: not a readable NIfTI file ({type(err).__name__}: {err}); check that the file is complete and "
            "really NIfTI (re-download or re-export it)"
        ) from err
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise VolumeReadError(
            f"{path}: is a 2D image of shape {shape}, but a volume (3 spatial dimensions) is expected; a single "
            "slice must be stored as shape (X, Y, 1) with its affine, or pass a folder of 2D slices instead"
        )
    if any(n == 0 for n in shape[:3]):
        raise VolumeReadError(f"{path}: has an empty spatial dimension, shape {shape}; the file holds no voxels")
    extra = shape[3:]
    if any(n != 1 for n in extra):
        raise VolumeReadError(
            f"{path}: has shape {shape} with {int(np.prod(extra))} time points/components after the 3 spatial "
            "dimensions; pass one 3D volume, e.g. save img.slicer[..., t] for time point t with nibabel"
        )
    return img, (0,) * len(extra)


def _read(img: Any, index: tuple[Any, ...], path: str) -> np.ndarray:
    try:
        return np.asarray(img.dataobj[index])
    except _READ_ERRORS as err:
        raise VolumeReadError(
            f"{path}: the voxel data could not be read ({type(err).__name__}: {err}); the file is truncated or "
            "corrupt: re-download or re-export it"
        ) from err


def load_nifti(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file as an axial ``(S, H, W)`` ``float32`` stack (see the module docstring for the convention).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        :class:`Volume` with ``kind="nifti"``.

    Raises:
        VolumeReadError: unreadable/truncated file, 2D image, more than one time point, degenerate affine.
    """
    path = os.fspath(path)
    img, extra = _open(path)
    orientation = _orientation(img, path)
    data = _read(img, (slice(None),) * 3 + extra, path)
    array = np.ascontiguousarray(apply_axial_orientation(data, orientation), dtype=np.float32)
    meta = dict(orientation)
    meta["stored_dtype"] = str(img.get_data_dtype())
    meta["nonfinite_voxels"] = int(array.size - np.count_nonzero(np.isfinite(array)))
    return Volume(name=nifti_volume_name(path), source=path, array=array, kind="nifti", meta=meta)


def read_nifti_slice(path: str | os.PathLike, index: int) -> np.ndarray:
    """Read slice ``index`` (negative counts from the end) of :func:`load_nifti`'s stack, and only that slice.

    Raises:
        IndexError: when ``index`` is outside the ``S`` slices.
        VolumeReadError: as :func:`load_nifti`.
    """
    path = os.fspath(path)
    img, extra = _open(path)
    orientation = _orientation(img, path)
    axis = orientation["slice_axis"]
    num = orientation["original_shape"][axis]
    if not -num <= index < num:
        raise IndexError(f"slice index {index} is out of range for {path}, which has {num} slices")
    stored = source_slice_index(index % num, orientation)
    key: list[Any] = [slice(None)] * 3
    key[axis] = slice(stored, stored + 1)
    block = _read(img, tuple(key) + extra, path)
    return np.ascontiguousarray(apply_axial_orientation(block, orientation)[0], dtype=np.float32)


def _orientation(img: Any, path: str) -> dict[str, Any]:
    try:
        return axial_orientation(img.affine, img.shape[:3], source=path)
    except ValueError as err:
        raise VolumeReadError(str(err)) from err
