"""One entry point for every format: :func:`load_volume` and :func:`read_slice` pick the reader from the path.

Supported inputs: NIfTI files (``.nii``, ``.nii.gz``, :mod:`~monai_lessmore.io.nifti`), NRRD and
MetaImage files (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, :mod:`~monai_lessmore.io.itk_reader`), DICOM series
folders (:mod:`~monai_lessmore.io.dicom`) and the authors' slice folders (:mod:`~monai_lessmore.io.slice_folder`),
whose volumes are addressed as ``"<folder>/<volume id>"``. Every reader returns the same
:class:`~monai_lessmore.io.volume.Volume` layout: ``(S, H, W)`` ``float32``, slices inferior -> superior.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from monai_lessmore.io.itk_reader import is_itk_path, load_itk
from monai_lessmore.io.nifti import is_nifti_path, load_nifti, read_nifti_slice
from monai_lessmore.io.slice_folder import (
    SLICE_NAME_PATTERN,
    load_slice_volume,
    read_slice_volume_slice,
    resolve_slice_volume,
    validate_order,
)
from monai_lessmore.io.volume import Volume, VolumeReadError

__all__ = ["SUPPORTED_FORMATS", "SLICE_STORE_SUFFIX", "detect_volume_kind", "load_volume", "read_slice", "read_stored_slice"]

SUPPORTED_FORMATS = (
    "NIfTI files (.nii, .nii.gz); NRRD/MetaImage files (.nrrd, .nhdr, .mha, .mhd); a folder holding one DICOM "
    "series; a folder of slice images (8- or 16-bit) named <volume>_<index>.png|.jpg (one volume addressed as "
    "<folder>/<volume id>)"
)

_Kind = Literal["nifti", "itk", "dicom", "slices"]


def _dicom() -> Any:
    """:mod:`monai_lessmore.io.dicom`, imported when a path is not NIfTI/ITK: pydicom takes a while to import,
    and ``lessmore reduce`` on NIfTI files never needs it."""
    from monai_lessmore.io import dicom

    return dicom


def detect_volume_kind(path: str | os.PathLike) -> tuple[_Kind, tuple[str, str] | None]:
    """Which reader handles ``path``: ``(kind, (folder, volume id) for slice volumes else None)``.

    Raises:
        VolumeReadError: nonexistent path, unsupported extension, single DICOM/slice file, empty folder, folder
            with several slice volumes.
    """
    p = os.fspath(path)
    if os.path.isfile(p):
        if is_nifti_path(p):
            return "nifti", None
        if is_itk_path(p):
            return "itk", None
        name = os.path.basename(p)
        parent = os.path.dirname(p) or "."
        if p.lower().endswith(".dcm") or _dicom().is_dicom_file(p):
            raise VolumeReadError(
                f"{p}: is a single DICOM file; pass the folder holding its whole series instead ({parent})"
            )
        match = SLICE_NAME_PATTERN.match(name)
        if match:
            raise VolumeReadError(
                f"{p}: is a single slice image; pass its volume as {os.path.join(parent, match['volume'])} "
                "(or read one slice with read_slice)"
            )
        raise VolumeReadError(f"{p}: unsupported file type; supported: {SUPPORTED_FORMATS}")
    if os.path.isdir(p):
        if _dicom().folder_has_dicom(p):
            return "dicom", None
        address = resolve_slice_volume(p)
        if address is not None:
            return "slices", address
        with os.scandir(p) as entries:
            names = [e.name for e in entries if not e.name.startswith(".")]
        if not names:
            raise VolumeReadError(f"{p}: the folder is empty; pass a volume file or a folder holding one volume")
        raise VolumeReadError(
            f"{p}: the folder holds no volume directly (no DICOM files and no slices named <volume>_<index>.png|.jpg); "
            f"to find volumes in its subfolders use discover_volumes(); supported: {SUPPORTED_FORMATS}"
        )
    address = resolve_slice_volume(p)
    if address is not None:
        return "slices", address
    raise VolumeReadError(f"{p}: no such file or folder (nor a '<slice folder>/<volume id>' address)")


def load_volume(
    path: str | os.PathLike, *, order: str = "index", lazy: bool = False, num_threads: int | None = 1
) -> Volume:
    """Read a CT volume as an axial ``(S, H, W)`` ``float32`` stack, slices inferior -> superior.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a DICOM series folder, a slice-folder volume
            ``"<folder>/<volume id>"`` or a slice folder holding one volume.
        order: ``"index"`` (default): the anatomical order of every format (slice folders by the numeric index,
            DICOM by position along the slice normal). For exact reproduction of the paper's released data:
            ``"filename"``, slice folders in the authors' plain string sort of file names (``_10`` before ``_9``),
            and ``"instance"``, DICOM series by InstanceNumber. An order that does not apply to a format leaves it
            in its anatomical order (NIfTI/NRRD/MetaImage have only that one).
        lazy: NIfTI, NRRD/MetaImage files and DICOM series keep their voxels in the stored dtype and order until
            ``array`` is used (:class:`~monai_lessmore.io.volume.LazyVolume`; the reducer renders them slice by
            slice, :meth:`~monai_lessmore.io.volume.Volume.take` scales only the slices asked for). Same values.
        num_threads: threads that decode a DICOM series' files (default one by one; ``None``: one per CPU, see
            :func:`~monai_lessmore.io.dicom.load_dicom_series`); other formats ignore it. Same values.

    Returns:
        :class:`~monai_lessmore.io.volume.Volume`.

    Raises:
        VolumeReadError: the path cannot be read as a volume; the message names the file, the problem and the fix.
        ValueError: ``order`` is not ``"index"``, ``"filename"`` or ``"instance"``; bad ``num_threads``.
    """
    validate_order(order)
    kind, address = detect_volume_kind(path)
    if kind == "nifti":
        return load_nifti(path, lazy=lazy)
    if kind == "itk":
        return load_itk(path, lazy=lazy)
    if kind == "dicom":
        return _dicom().load_dicom_series(path, order=_dicom_order(order), lazy=lazy, num_threads=num_threads)
    folder, volume_id = address  # type: ignore[misc]
    return load_slice_volume(folder, volume_id, order=order)


def read_slice(path: str | os.PathLike, index: int, *, order: str = "index") -> np.ndarray:
    """Read one slice, equal to ``load_volume(path, order=order).array[index]``, reading only what it needs.

    NIfTI: one slice of the stored slice axis through nibabel's array proxy. DICOM: the one file (the sorted file
    list comes from headers only and is cached per folder). Slice folders: the one image. NRRD/MetaImage files
    are read whole.

    Args:
        path: as :func:`load_volume`.
        index: slice index; negative counts from the end.
        order: as :func:`load_volume`.

    Returns:
        ``(H, W)`` ``float32``.

    Raises:
        IndexError: ``index`` is outside the volume.
        VolumeReadError: as :func:`load_volume`.
    """
    validate_order(order)
    index = _as_index(index)
    if os.fspath(path).endswith(SLICE_STORE_SUFFIX):
        return read_stored_slice(path, index)
    kind, address = detect_volume_kind(path)
    if kind == "nifti":
        return read_nifti_slice(path, index)
    if kind == "dicom":
        return _dicom().read_dicom_slice(path, index, order=_dicom_order(order))
    if kind == "itk":
        return load_itk(path, lazy=True).take([index])[0]  # read whole, but only this slice converted
    folder, volume_id = address  # type: ignore[misc]
    return read_slice_volume_slice(folder, volume_id, index, order=order)


#: file suffix of a slice store: the kept slices of one volume as one uncompressed ``(K, H, W)`` float32 ``.npy``
#: (written by :class:`monai_lessmore.data.SliceReductionFilter` with ``slice_store_dir``)
SLICE_STORE_SUFFIX = ".slices.npy"


def read_stored_slice(path: str | os.PathLike, index: int) -> np.ndarray:
    """Slice ``index`` of a slice store file: one memory-mapped read, no decompression."""
    try:
        stack = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise VolumeReadError(f"{os.fspath(path)}: unreadable slice store ({err}); delete it to have it rewritten") from err
    if stack.ndim != 3 or not -len(stack) <= index < len(stack):
        raise IndexError(f"slice index {index} is out of range for {os.fspath(path)}, which holds {len(stack)} slices")
    return np.array(stack[index], dtype=np.float32)


def _dicom_order(order: str) -> str:
    return "instance" if order == "instance" else "position"


def _as_index(index: int) -> int:
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an integer slice index, got {index!r} ({type(index).__name__})")
    return int(index)
