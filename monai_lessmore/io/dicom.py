"""DICOM series reader (one series per folder) via pydicom.

Convention:

* Every regular file in the folder is considered, with or without a ``.dcm`` extension; a file is DICOM when it has
  the ``DICM`` magic after its 128-byte preamble (:func:`is_dicom_file`), or ends in ``.dcm``. Other files
  (``LICENSE.txt``, ``Citations.txt``...) and DICOM objects without an image (no ``Rows``) are ignored and listed
  in ``meta["ignored_files"]``.
* Values are Hounsfield units: ``pixel_array * RescaleSlope + RescaleIntercept`` (1 and 0 when absent), per file.
* Each slice keeps the orientation of its ``pixel_array`` (no flips); for a standard axial series
  (ImageOrientationPatient ``1,0,0,0,1,0``) that is rows anterior -> posterior, columns patient right -> left, the
  view the NIfTI and ITK readers reorient to.
* Slices are sorted by ImagePositionPatient projected onto the slice normal (cross product of the row and column
  direction cosines of ImageOrientationPatient), ascending. When the normal points inferior (negative z in LPS,
  i.e. an unusual ImageOrientationPatient) the order is reversed so that slices still run inferior -> superior.
  Without position/orientation tags the order is InstanceNumber ascending, and without those the file name.
* One series per folder: several SeriesInstanceUIDs, mixed slice shapes, multi-frame files and pixel data that no
  installed decoder can handle are errors (:class:`VolumeReadError`) that say how to fix them.

``meta`` keys: ``spacing`` (mm along ``(S, H, W)``: slice step from positions, then PixelSpacing),
``affine`` (RAS affine of the returned array's indices ``(s, row, column)``, ``None`` without geometry tags),
``series_instance_uid``, ``transfer_syntax``, ``image_orientation``, ``slice_positions`` (the sort key per slice,
mm), ``sort_key`` (``"position"``, ``"instance_number"`` or ``"filename"``), ``duplicate_positions``,
``ignored_files``, ``nonfinite_voxels`` (always 0).

:func:`read_dicom_slice` reads only the one file it needs; the sorted file list comes from the headers alone
(``stop_before_pixels=True``) and is cached per folder, keyed by ``(folder, mtime)``.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from monai_lessmore.io.volume import Volume, VolumeReadError

__all__ = [
    "is_dicom_file",
    "list_dicom_candidates",
    "folder_has_dicom",
    "dicom_series_files",
    "load_dicom_series",
    "read_dicom_slice",
]

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
_DECODE_HINT = (
    "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg; pylibjpeg-openjpeg for JPEG 2000) or convert the "
    "series to NIfTI with dcm2niix"
)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file with the ``DICM`` magic after the 128-byte preamble (reads 132 bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MAGIC_OFFSET + len(_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == _MAGIC


def _is_candidate(path: str) -> bool:
    return path.lower().endswith(".dcm") or is_dicom_file(path)


def _regular_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_file() and not e.name.startswith("."))


def list_dicom_candidates(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Split the files directly in ``folder`` into DICOM candidates and others (both sorted by name)."""
    dicom, other = [], []
    for path in _regular_files(os.fspath(folder)):
        (dicom if _is_candidate(path) else other).append(path)
    return dicom, other


def folder_has_dicom(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` directly holds at least one DICOM file (stops at the first one)."""
    try:
        return any(_is_candidate(p) for p in _regular_files(os.fspath(folder)))
    except OSError:
        return False


@dataclass(frozen=True)
class _Header:
    path: str
    series_uid: str | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    shape: tuple[int, int] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    transfer_syntax: str | None


@dataclass(frozen=True)
class _Series:
    files: tuple[str, ...]
    headers: tuple[_Header, ...]
    positions: tuple[float, ...] | None
    normal: tuple[float, float, float] | None
    sort_key: str
    ignored: tuple[str, ...]


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _read_header(path: str) -> _Header:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not is_dicom_file(path))
        rows, cols = ds.get("Rows"), ds.get("Columns")
        frames = int(ds.get("NumberOfFrames") or 1)
        instance = ds.get("InstanceNumber")
        header = _Header(
            path=path,
            series_uid=None if "SeriesInstanceUID" not in ds else str(ds.SeriesInstanceUID),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            instance=None if instance in (None, "") else int(instance),
            shape=None if rows is None or cols is None else (int(rows), int(cols)),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            thickness=None if ds.get("SliceThickness") in (None, "") else float(ds.SliceThickness),
            transfer_syntax=None if "TransferSyntaxUID" not in ds.file_meta else str(ds.file_meta.TransferSyntaxUID),
        )
        sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        image_class = sop_class is not None and "Image Storage" in getattr(sop_class, "name", "")
    except Exception as err:  # pydicom's failure modes on corrupt files are many (struct.error, KeyError, ...)
        raise VolumeReadError(
            f"{path}: corrupt or unreadable DICOM file ({type(err).__name__}: {err}); remove it from the series "
            "folder or re-export the series"
        ) from err
    if header.shape is None and image_class:  # pydicom stops quietly at the end of a truncated file
        raise VolumeReadError(
            f"{path}: DICOM file of class {sop_class.name} without Rows/Columns: it is truncated or corrupt; "
            "remove it from the series folder or re-export the series"
        )
    if frames > 1:
        raise VolumeReadError(
            f"{path}: is a multi-frame DICOM ({frames} frames in one file); only series of single-frame files are "
            "read: convert it to NIfTI with dcm2niix"
        )
    return header


def _sort(headers: list[_Header]) -> tuple[list[_Header], tuple[float, ...] | None, tuple[float, ...] | None, str]:
    if all(h.position is not None and h.orientation is not None for h in headers):
        iop = np.asarray(headers[0].orientation, dtype=np.float64)
        normal = np.cross(iop[:3], iop[3:])
        # Ascending along the normal; reversed when the normal points inferior so the stack runs inferior->superior.
        sign = -1.0 if normal[2] < -1e-6 else 1.0
        keys = [sign * float(np.dot(h.position, normal)) for h in headers]  # type: ignore[arg-type]
        order = sorted(range(len(headers)), key=lambda i: (keys[i], headers[i].instance or 0, headers[i].path))
        return [headers[i] for i in order], tuple(keys[i] for i in order), tuple(float(v) for v in normal), "position"
    if all(h.instance is not None for h in headers):
        return sorted(headers, key=lambda h: (h.instance, h.path)), None, None, "instance_number"
    return sorted(headers, key=lambda h: h.path), None, None, "filename"


@functools.lru_cache(maxsize=128)
def _series_cached(folder: str, mtime_ns: int) -> _Series:
    del mtime_ns  # part of the cache key only: a changed folder is read again
    candidates, ignored = list_dicom_candidates(folder)
    headers = []
    for path in candidates:
        header = _read_header(path)
        if header.shape is None:  # DICOMDIR, structured reports, RT structures: not an image slice
            ignored.append(path)
        else:
            headers.append(header)
    if not headers:
        raise VolumeReadError(
            f"{folder}: holds no DICOM image files (looked for files with the 'DICM' magic or a .dcm extension); "
            "pass a folder with one DICOM series"
        )
    series = Counter(h.series_uid for h in headers)
    if len(series) > 1:
        listing = ", ".join(f"{uid if uid is not None else '<no SeriesInstanceUID>'} ({n} files)" for uid, n in sorted(
            series.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        raise VolumeReadError(
            f"{folder}: holds {len(series)} DICOM series: {listing}; pass one series folder at a time (move each "
            "series into its own folder, e.g. sort them by SeriesInstanceUID)"
        )
    shapes = Counter(h.shape for h in headers)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(h for h in headers if h.shape != common)
        rows, cols = odd.shape  # type: ignore[misc]
        raise VolumeReadError(
            f"{folder}: mixed slice shapes in one series: {odd.path} is {rows}x{cols} but "
            f"{shapes[common]} files are {common[0]}x{common[1]}; remove the odd file or re-export the series"
        )
    ordered, positions, normal, key = _sort(headers)
    return _Series(
        files=tuple(h.path for h in ordered),
        headers=tuple(ordered),
        positions=positions,
        normal=normal,  # type: ignore[arg-type]
        sort_key=key,
        ignored=tuple(sorted(ignored)),
    )


def _series(folder: str | os.PathLike) -> _Series:
    folder = os.fspath(folder)
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError as err:
        raise VolumeReadError(f"{folder}: cannot read the DICOM series folder ({err})") from err
    return _series_cached(folder, mtime)


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The series' DICOM files in slice order (headers only; cached per folder and modification time)."""
    return list(_series(folder).files)


def _read_hu(path: str, shape: tuple[int, int]) -> np.ndarray:
    """One file's pixels in HU as ``float32`` ``(H, W)``."""
    try:
        ds = pydicom.dcmread(path, force=not is_dicom_file(path))
    except Exception as err:
        raise VolumeReadError(f"{path}: corrupt or unreadable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise VolumeReadError(f"{path}: has no pixel data; remove it from the series folder")
    try:
        pixels = ds.pixel_array
    except Exception as err:
        uid = ds.file_meta.get("TransferSyntaxUID")
        syntax = f"{uid.name} ({uid})" if uid is not None else "<no transfer syntax>"
        if uid is not None and uid.is_compressed and not _decoder_available(uid):
            raise VolumeReadError(
                f"{path}: pydicom cannot decode its pixel data, transfer syntax {syntax}: no decoder for it is "
                f"installed; {_DECODE_HINT}"
            ) from err
        raise VolumeReadError(
            f"{path}: the pixel data could not be decoded (transfer syntax {syntax}; {type(err).__name__}: {err}); "
            f"the file may be truncated or corrupt; if it is compressed, {_DECODE_HINT}"
        ) from err
    if pixels.shape != shape:
        raise VolumeReadError(
            f"{path}: pixel data of shape {pixels.shape} where a {shape[0]}x{shape[1]} grayscale slice was expected "
            "(colour or multi-frame images are not CT slices); remove it from the series folder"
        )
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _decoder_available(uid: pydicom.uid.UID) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(uid).is_available)
    except Exception:  # unknown syntax or an older pydicom without pydicom.pixels
        return False


def _affine(series: _Series) -> np.ndarray | None:
    first = series.headers[0]
    if series.positions is None or first.orientation is None or first.pixel_spacing is None:
        return None
    iop = np.asarray(first.orientation, dtype=np.float64)
    row_spacing, col_spacing = first.pixel_spacing
    if len(series.files) > 1:
        step = (np.asarray(series.headers[-1].position) - np.asarray(first.position)) / (len(series.files) - 1)
    else:
        step = np.asarray(series.normal) * (first.thickness or 1.0)
    lps = np.eye(4)
    # Array indices (s, row, column): a column step moves along the row cosines IOP[:3] by PixelSpacing[1].
    lps[:3, 0] = step
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = iop[:3] * col_spacing
    lps[:3, 3] = first.position  # type: ignore[assignment]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _meta(series: _Series) -> dict[str, Any]:
    first = series.headers[0]
    affine = _affine(series)
    if affine is not None:
        spacing: tuple[float, ...] | None = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    elif first.pixel_spacing is not None:
        spacing = (float(first.thickness or 1.0), *first.pixel_spacing)
    else:
        spacing = None
    positions = series.positions
    return {
        "spacing": spacing,
        "affine": affine,
        "series_instance_uid": first.series_uid,
        "transfer_syntax": first.transfer_syntax,
        "image_orientation": first.orientation,
        "slice_positions": None if positions is None else list(positions),
        "sort_key": series.sort_key,
        "duplicate_positions": 0 if positions is None else len(positions) - len(set(positions)),
        "ignored_files": list(series.ignored),
        "nonfinite_voxels": 0,
    }


def load_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read a folder holding one DICOM series as an ``(S, H, W)`` ``float32`` HU stack.

    Args:
        folder: the series folder (files with or without ``.dcm``; non-DICOM files are ignored).

    Returns:
        :class:`Volume` with ``kind="dicom"`` and one file per slice in ``slice_sources``.

    Raises:
        VolumeReadError: no DICOM images, several series, mixed shapes, corrupt files, undecodable pixel data.
    """
    folder = os.fspath(folder)
    series = _series(folder)
    shape = series.headers[0].shape
    array = np.empty((len(series.files), *shape), dtype=np.float32)  # type: ignore[misc]
    for i, path in enumerate(series.files):
        array[i] = _read_hu(path, shape)  # type: ignore[arg-type]
    return Volume(
        name=Path(folder).name,
        source=folder,
        array=array,
        kind="dicom",
        slice_sources=list(series.files),
        meta=_meta(series),
    )


def read_dicom_slice(folder: str | os.PathLike, index: int) -> np.ndarray:
    """Read slice ``index`` (negative counts from the end) of :func:`load_dicom_series`'s stack from its one file.

    Raises:
        IndexError: when ``index`` is outside the series.
        VolumeReadError: as :func:`load_dicom_series`.
    """
    series = _series(folder)
    num = len(series.files)
    if not -num <= index < num:
        raise IndexError(f"slice index {index} is out of range for {os.fspath(folder)}, which has {num} slices")
    return _read_hu(series.files[index], series.headers[0].shape)  # type: ignore[arg-type]
