"""Reorientation of a voxel grid with a world affine to the package's axial slice stack.

The convention (shared by the NIfTI and ITK readers, and matching a standard axial DICOM series):

* the array is ``(S, H, W)``: axis 0 is the voxel axis closest to the patient's inferior-superior direction (the
  axis whose orientation code, :func:`nibabel.aff2axcodes`, is ``S`` or ``I``), taken from the affine and never
  assumed to be the last; slices run inferior -> superior;
* each slice is shown in the LPS view of DICOM/ITK: rows run anterior -> posterior and columns run patient right ->
  left, the same view as the ``pixel_array`` of a standard axial DICOM (ImageOrientationPatient ``1,0,0,0,1,0``).

For an oblique or non-axial-dominant acquisition each voxel axis goes to the world axis it is closest to
(:func:`nibabel.orientations.io_orientation`); only flips and transposes are applied, never resampling, so voxel
values are unchanged. This makes the slice axis the one taken from the image orientation, not assumed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

__all__ = ["AXIAL_LPS_CODES", "axial_orientation", "apply_axial_orientation", "source_slice_index"]

# Orientation codes of the output axes (S, H, W): towards superior, posterior, (patient) left.
AXIAL_LPS_CODES = ("S", "P", "L")


def axial_orientation(affine: np.ndarray, shape: tuple[int, ...], *, source: str = "<array>") -> dict[str, Any]:
    """Work out how to turn a voxel grid with a RAS ``affine`` into the ``(S, H, W)`` axial LPS stack.

    Args:
        affine: 4x4 voxel-to-RAS affine of the stored array (nibabel convention).
        shape: the stored array's 3D shape.
        source: file name used in error messages.

    Returns:
        dict with ``"ornt_transform"`` (nibabel orientation transform, 3x2), ``"slice_axis"`` (stored axis that
        becomes axis 0), ``"slice_axis_flipped"`` (whether it was reversed), ``"orientation"`` (stored axis codes),
        ``"original_affine"``, ``"affine"`` (RAS affine of the reoriented array), ``"spacing"`` (mm along
        ``(S, H, W)``) and ``"original_shape"``.

    Raises:
        ValueError: when the affine is degenerate (a zero or repeated direction).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{source}: the voxel-to-world affine must be a finite 4x4 matrix, got {affine.tolist()}")
    start = io_orientation(affine)
    if np.isnan(start).any():
        raise ValueError(
            f"{source}: the voxel-to-world affine is degenerate (a zero or repeated axis direction): "
            f"{affine.round(4).tolist()}; fix the header (e.g. re-save it with a valid qform/sform)"
        )
    transform = ornt_transform(start, axcodes2ornt(AXIAL_LPS_CODES))
    slice_axis = int(np.flatnonzero(transform[:, 0] == 0)[0])
    new_affine = affine @ inv_ornt_aff(transform, tuple(int(n) for n in shape[:3]))
    return {
        "ornt_transform": transform,
        "slice_axis": slice_axis,
        "slice_axis_flipped": bool(transform[slice_axis, 1] < 0),
        "orientation": tuple(aff2axcodes(affine)),
        "original_affine": affine,
        "affine": new_affine,
        "spacing": tuple(float(v) for v in np.linalg.norm(new_affine[:3, :3], axis=0)),
        "original_shape": tuple(int(n) for n in shape[:3]),
    }


def apply_axial_orientation(data: np.ndarray, orientation: dict[str, Any]) -> np.ndarray:
    """Flip/transpose a stored 3D array (or a one-slice block of it) into ``(S, H, W)``; returns a view."""
    return apply_orientation(data, orientation["ornt_transform"])


def source_slice_index(index: int, orientation: dict[str, Any]) -> int:
    """Index along the stored slice axis of output slice ``index`` (``0 <= index < S``)."""
    n = orientation["original_shape"][orientation["slice_axis"]]
    return n - 1 - index if orientation["slice_axis_flipped"] else index
