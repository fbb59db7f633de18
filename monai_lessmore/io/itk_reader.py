"""Reader for NRRD, MetaImage and other single-file formats ITK can read (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``).

ITK gives the voxels as a ``(z, y, x)`` array with a direction matrix, spacing and origin in LPS world coordinates.
They are turned into a RAS affine of the ``(x, y, z)`` grid and reoriented exactly like NIfTI
(:mod:`monai_lessmore.io.orientation`): the slice axis is the voxel axis closest to inferior-superior, slices run
inferior -> superior, and each slice has rows anterior -> posterior and columns patient right -> left (the LPS view
of a standard axial DICOM). The same voxels written as NIfTI with the matching affine give an identical array.

Values are the stored values (ITK applies no intensity scaling to these formats) as ``float32``. ``lazy=True``
keeps ITK's buffer in its stored dtype and order (:class:`~monai_lessmore.io.volume.LazyVolume`, the NIfTI
reader's path): orientation is a view of it, the reducer renders it slice by slice, and the float32 ``array`` --
equal to the eager one -- is made only if something asks for it.

``itk`` takes seconds to import, so it is imported inside :func:`load_itk`. ITK files are read whole (no
per-slice reading from disk).

``meta`` keys: those of the NIfTI reader (``spacing``, ``affine``, ``original_affine`` of the ``(x, y, z)`` grid,
``orientation``, ``slice_axis``, ``slice_axis_flipped``, ``ornt_transform``, ``original_shape``), plus
``direction`` (ITK's LPS direction matrix), ``origin`` (LPS), ``stored_dtype`` and ``nonfinite_voxels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation
from monai_lessmore.io.volume import LazyVolume, Volume, VolumeReadError

__all__ = ["ITK_SUFFIXES", "is_itk_path", "itk_volume_name", "lps_grid_to_ras_affine", "load_itk"]

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk_path(path: str | os.PathLike) -> bool:
    """Whether the file name ends in one of :data:`ITK_SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def itk_volume_name(path: str | os.PathLike) -> str:
    """File name without its extension."""
    return Path(path).stem


def lps_grid_to_ras_affine(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4x4 RAS affine of an ITK ``(x, y, z)`` voxel grid given its LPS direction matrix, spacing and origin."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag(np.asarray(spacing, dtype=np.float64))
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


class _ImageBuffer:
    """ITK's pixel buffer for :func:`numpy.asarray`, holding the image: every array made from it, and every view of
    those, keeps the buffer alive (numpy's views of ITK's own array view do not, they point past it)."""

    def __init__(self, image: object, view: np.ndarray) -> None:
        self.__array_interface__ = view.__array_interface__
        self._keep = (image, view)


def load_itk(path: str | os.PathLike, *, lazy: bool = False) -> Volume:
    """Read a 3D scalar image with ITK as an axial ``(S, H, W)`` ``float32`` stack (see the module docstring).

    Args:
        path: a ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
        lazy: keep the voxels in ITK's buffer, in their stored dtype and order
            (:class:`~monai_lessmore.io.volume.LazyVolume`): no whole-volume float32 or reoriented copy until
            ``array`` is used. The values are the same.

    Raises:
        VolumeReadError: unreadable file, not 3D, or not a scalar image.
    """
    import itk  # slow to import: only when an ITK file is actually read

    from monai_lessmore.reduction.preprocess import StoredStack

    path = os.fspath(path)
    try:
        image = itk.imread(path)
    except Exception as err:  # ITK raises RuntimeError with its own message for every failure
        raise VolumeReadError(
            f"{path}: ITK could not read the file ({type(err).__name__}: {str(err).strip()[:300]}); check that it is "
            "complete (for .mhd/.nhdr also the data file it points to) or convert it to NIfTI"
        ) from err
    if image.GetImageDimension() != 3:
        raise VolumeReadError(
            f"{path}: is a {image.GetImageDimension()}D image, but a 3D volume is expected; pass a 3D image"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT volume is expected"
        )
    zyx = np.asarray(_ImageBuffer(image, itk.array_view_from_image(image)))  # ITK's buffer, no copy
    direction = np.asarray(image.GetDirection(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    xyz = zyx.transpose(2, 1, 0)
    try:
        orientation = axial_orientation(lps_grid_to_ras_affine(direction, spacing, origin), xyz.shape, source=path)
    except ValueError as err:
        raise VolumeReadError(str(err)) from err
    # the stored values are the real values: integers of up to 16 bits render straight from the buffer (offset 0)
    stack = StoredStack(apply_axial_orientation(xyz, orientation), scale=None, offset=0)
    meta = dict(orientation)
    meta.update(
        direction=direction,
        origin=origin,
        stored_dtype=str(zyx.dtype),
        nonfinite_voxels=stack.count_nonfinite(),
    )
    kwargs = dict(name=itk_volume_name(path), source=path, kind="itk", meta=meta)
    if lazy:
        return LazyVolume(stack=stack, **kwargs)
    return Volume(array=stack.to_array(), **kwargs)
