"""Reader for the authors' slice folders: one 8-bit PNG/JPG per slice, named ``<volume>_<index>.<ext>``.

The paper's authors exported every CT slice as its own 8-bit image (Wolf et al., 2024, section 2.1). A folder may hold many
volumes (``covid19_ct_seg`` holds 20): the volume id is the file name up to the last ``_`` and the index is the
integer after it (``Data-1_coronacases_org_001_17.jpg`` -> volume ``Data-1_coronacases_org_001``, index 17).
Extensions ``.png``, ``.jpg``, ``.jpeg`` (any case); other files are ignored.

* ``order="index"`` (default) sorts slices by the integer index (``_9`` before ``_10``): anatomical order.
  ``order="filename"`` reproduces the authors' plain string sort of the file names (``_10`` before ``_9``), for
  exact reproduction of their released data.
* Images are read by :func:`monai_lessmore.io.image2d.read_raster`, the reader of every 2-D image in this package,
  as ``float32`` gray values (colour converted with Pillow's ``convert("L")``). A volume of 8-bit images is marked
  ``is_uint8_rendered=True`` (already min-max rendered by the authors: hash as is). 16-bit gray images keep their
  values (Pillow's ``convert("L")`` would clip them at 255); a volume holding one is not marked, so the reducer
  renders it to 8 bit like an HU volume.
* Gaps in the indices are allowed but reported: ``meta["missing_indices"]`` and a warning naming the volume.
  A repeated index (``a_1.png`` and ``a_01.png``) is an error.
* Images of one volume may differ in size (every slice of ``covid19_ct_seg`` is cropped to its own bounding box,
  e.g. 320x235 next to 320x236). They are zero-padded at the bottom and right to the largest height and width of
  the volume so that ``array`` stays ``(S, H, W)``; ``meta["slice_shapes"]`` holds each slice's own ``(h, w)`` and
  :meth:`~monai_lessmore.io.volume.Volume.original_slice` crops the padding off again (``array[i, :h, :w]``), e.g.
  to hash the authors' images exactly as they were.
* A volume is addressed as ``"<folder>/<volume id>"``; a folder holding exactly one volume may be passed directly.

``meta`` keys: ``folder``, ``volume_id``, ``order``, ``indices`` (per slice, in array order),
``missing_indices``, ``slice_shapes`` (per slice, in array order), ``padded`` (whether any slice was padded),
``spacing`` and ``affine`` (``None``: 8-bit exports carry no geometry), ``nonfinite_voxels`` (0).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from monai_lessmore.io.image2d import ImageReadError, read_raster
from monai_lessmore.io.volume import Volume, VolumeReadError

__all__ = [
    "SLICE_SUFFIXES",
    "SLICE_ORDERS",
    "SLICE_NAME_PATTERN",
    "SliceFile",
    "validate_order",
    "scan_slice_folder",
    "resolve_slice_volume",
    "slice_volume_files",
    "read_slice_image",
    "load_slice_volume",
    "read_slice_volume_slice",
]

SLICE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the ``order`` argument of the readers: ``"index"`` (anatomical: numeric slice index, DICOM position), ``"filename"``
#: (slice folders: the authors' string sort of file names) and ``"instance"`` (DICOM: InstanceNumber, the order of
#: the authors' released data; in slice folders the same as ``"index"``, the number in the name)
SLICE_ORDERS = ("index", "filename", "instance")
SLICE_NAME_PATTERN = re.compile(r"^(?P<volume>.+)_(?P<index>\d+)\.(?:png|jpe?g)$", re.IGNORECASE)
_PATTERN_TEXT = "<volume>_<index>.png|.jpg|.jpeg (e.g. case01_17.png)"
_MAX_LISTED = 5


@dataclass(frozen=True)
class SliceFile:
    """One slice image: its path, file name and integer index."""

    path: str
    name: str
    index: int


def validate_order(order: str) -> str:
    """Check the ``order`` argument of the readers (one of :data:`SLICE_ORDERS`)."""
    if order not in SLICE_ORDERS:
        raise ValueError(
            f"order must be 'index' (anatomical: numeric slice index, DICOM slice position), 'filename' (slice "
            f"folders: the authors' string sort of file names) or 'instance' (DICOM: InstanceNumber), got {order!r}"
        )
    return order


@functools.lru_cache(maxsize=64)
def _scan_cached(folder: str, mtime_ns: int) -> tuple[tuple[str, tuple[SliceFile, ...]], ...]:
    del mtime_ns  # cache key only
    volumes: dict[str, list[SliceFile]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = SLICE_NAME_PATTERN.match(entry.name)
            if match and entry.is_file():
                volumes.setdefault(match["volume"], []).append(SliceFile(entry.path, entry.name, int(match["index"])))
    return tuple((vid, tuple(sorted(files, key=lambda f: f.name))) for vid, files in sorted(volumes.items()))


def scan_slice_folder(folder: str | os.PathLike) -> dict[str, list[SliceFile]]:
    """Group the slice images directly in ``folder`` by volume id (``{}`` when there are none).

    Cached per folder and modification time; files within a volume are listed in file-name order.
    """
    folder = os.fspath(folder)
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return {}
    if not os.path.isdir(folder):
        return {}
    return {vid: list(files) for vid, files in _scan_cached(folder, mtime)}


@functools.lru_cache(maxsize=256)
def _sizes_cached(folder: str, mtime_ns: int, volume_id: str) -> dict[str, tuple[int, int]]:
    del mtime_ns  # cache key only
    sizes = {}
    for slice_file in scan_slice_folder(folder).get(volume_id, []):
        try:
            with Image.open(slice_file.path) as image:  # reads the header only
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise _unreadable(slice_file.path, err) from err
        sizes[slice_file.name] = (height, width)
    return sizes


def _volume_shape(folder: str, volume_id: str) -> tuple[int, int]:
    """Largest ``(height, width)`` over the volume's images, from their headers (cached per folder mtime)."""
    sizes = _sizes_cached(folder, os.stat(folder).st_mtime_ns, volume_id).values()
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def _pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape == shape:
        return image
    out = np.zeros(shape, dtype=np.float32)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def _unreadable(path: str, err: Exception) -> VolumeReadError:
    return VolumeReadError(
        f"{path}: not a readable PNG/JPEG image ({type(err).__name__}: {err}); re-export or remove the file"
    )


def _few(ids: list[str]) -> str:
    more = f", ... ({len(ids)} in all)" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def resolve_slice_volume(path: str | os.PathLike) -> tuple[str, str] | None:
    """Turn a slice-volume address into ``(folder, volume id)``; ``None`` when ``path`` is not one.

    ``path`` is either ``"<folder>/<volume id>"`` (not on disk, its parent holds slice images) or a folder holding
    slice images of exactly one volume.

    Raises:
        VolumeReadError: a folder with several volumes, or an id the parent folder does not hold.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        volumes = scan_slice_folder(path)
        if not volumes:
            return None
        if len(volumes) > 1:
            raise VolumeReadError(
                f"{path}: holds {len(volumes)} slice volumes ({_few(sorted(volumes))}); pass one volume as "
                f"'<folder>/<volume id>' (e.g. {os.path.join(path, sorted(volumes)[0])}) or list them all with "
                "discover_volumes()"
            )
        return path, next(iter(volumes))
    if os.path.exists(path):
        return None
    parent, vid = os.path.split(path.rstrip("/\\"))
    volumes = scan_slice_folder(parent)
    if not volumes:
        return None
    if vid not in volumes:
        raise VolumeReadError(
            f"{path}: no slice volume {vid!r} in {parent} (expected files {vid}_<index>.png|.jpg); it holds "
            f"{_few(sorted(volumes))}"
        )
    return parent, vid


def slice_volume_files(folder: str, volume_id: str, order: str = "index") -> tuple[list[SliceFile], list[int]]:
    """The volume's slice files in the chosen order, and the indices missing between the first and last.

    Raises:
        VolumeReadError: when the volume has no files or an index appears twice.
    """
    validate_order(order)
    files = scan_slice_folder(folder).get(volume_id)
    if not files:
        raise VolumeReadError(
            f"{os.path.join(folder, volume_id)}: no slice images found; expected files named {_PATTERN_TEXT} in "
            f"{folder}"
        )
    by_index = sorted(files, key=lambda f: (f.index, f.name))
    for a, b in zip(by_index, by_index[1:]):
        if a.index == b.index:
            raise VolumeReadError(
                f"{b.path}: slice index {b.index} of volume {volume_id!r} appears twice ({a.name} and {b.name}); "
                "remove one of them"
            )
    present = {f.index for f in files}
    missing = [i for i in range(by_index[0].index, by_index[-1].index + 1) if i not in present]
    ordered = sorted(files, key=lambda f: f.name) if order == "filename" else by_index
    return ordered, missing


def _read_image(path: str) -> tuple[np.ndarray, bool]:
    try:
        return read_raster(path)
    except ImageReadError as err:
        raise _unreadable(path, err.__cause__ or err) from err


def read_slice_image(path: str) -> np.ndarray:
    """One slice image as ``float32`` ``(H, W)`` gray values (:func:`~monai_lessmore.io.image2d.read_raster`)."""
    return _read_image(path)[0]


def load_slice_volume(folder: str | os.PathLike, volume_id: str, *, order: str = "index") -> Volume:
    """Read one volume of a slice folder as an ``(S, H, W)`` ``float32`` stack of 8-bit values.

    Args:
        folder: the folder holding ``<volume_id>_<index>.<ext>`` files.
        volume_id: the volume's id.
        order: ``"index"`` (numeric, default) or ``"filename"`` (the authors' string sort).

    Images of different sizes are zero-padded at the bottom/right to the largest (see the module docstring).

    Raises:
        VolumeReadError: no files, repeated index, unreadable image.
    """
    folder = os.fspath(folder)
    files, missing = slice_volume_files(folder, volume_id, order)
    if missing:
        warnings.warn(
            f"slice volume {volume_id!r} in {folder} has {len(missing)} missing slice indices, first: "
            f"{missing[:_MAX_LISTED]}; they are skipped",
            stacklevel=2,
        )
    read = [_read_image(f.path) for f in files]
    images = [image for image, _ in read]
    shape = (max(im.shape[0] for im in images), max(im.shape[1] for im in images))
    array = np.zeros((len(images), *shape), dtype=np.float32)
    for i, image in enumerate(images):
        array[i, : image.shape[0], : image.shape[1]] = image
    slice_shapes = [tuple(int(n) for n in im.shape) for im in images]
    meta: dict[str, Any] = {
        "folder": folder,
        "volume_id": volume_id,
        "order": order,
        "indices": [f.index for f in files],
        "missing_indices": missing,
        "slice_shapes": slice_shapes,
        "padded": any(sh != shape for sh in slice_shapes),
        "spacing": None,
        "affine": None,
        "nonfinite_voxels": 0,
    }
    return Volume(
        name=volume_id,
        source=os.path.join(folder, volume_id),
        array=array,
        kind="slices",
        is_uint8_rendered=all(is_8bit for _, is_8bit in read),
        slice_sources=[f.path for f in files],
        meta=meta,
    )


def read_slice_volume_slice(
    folder: str | os.PathLike, volume_id: str, index: int, *, order: str = "index"
) -> np.ndarray:
    """Read slice ``index`` (negative counts from the end) of :func:`load_slice_volume`'s stack from its one file.

    The padded size comes from the other images' headers (cached), so the result equals the loaded slice exactly.

    Raises:
        IndexError: when ``index`` is outside the volume.
        VolumeReadError: as :func:`load_slice_volume`.
    """
    folder = os.fspath(folder)
    files, _ = slice_volume_files(folder, volume_id, order)
    if not -len(files) <= index < len(files):
        raise IndexError(
            f"slice index {index} is out of range for {os.path.join(folder, volume_id)}, which has {len(files)} slices"
        )
    return _pad(read_slice_image(files[index].path), _volume_shape(folder, volume_id))
