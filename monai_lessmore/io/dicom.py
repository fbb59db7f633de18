"""DICOM series reader (one series per folder) via pydicom.

Convention:

* Every regular file in the folder is considered, with or without a ``.dcm`` extension; a file is DICOM when it has
  the ``DICM`` magic after its 128-byte preamble (:func:`is_dicom_file`), or ends in ``.dcm``. Other files
  (``LICENSE.txt``, ``Citations.txt``...) and DICOM objects without an image (no ``Rows``) are ignored and listed
  in ``meta["ignored_files"]``.
* Values are Hounsfield units: ``pixel_array * RescaleSlope + RescaleIntercept`` (1 and 0 when absent), per file.
  A CT series without these tags is read as stored with a warning: some scanners store HU + 1024, and such a series
  would then be 1024 too high everywhere.
* Compressed pixel data (JPEG lossless, JPEG 2000, JPEG-LS, RLE...) is decoded by pydicom when one of its decoders
  handles the transfer syntax (RLE natively, JPEG 2000 and baseline JPEG through Pillow, more with pylibjpeg or
  python-gdcm installed), and otherwise by the GDCM library inside ITK, a dependency of this package, which
  applies the rescale itself. So the compressed series of public collections (e.g. TCIA's JPEG-lossless CT) read
  on a plain install.
* Each slice keeps the orientation of its ``pixel_array`` (no flips); for a standard axial series
  (ImageOrientationPatient ``1,0,0,0,1,0``) that is rows anterior -> posterior, columns patient right -> left, the
  view the NIfTI and ITK readers reorient to.
* Slices are sorted by ImagePositionPatient projected onto the slice normal (cross product of the row and column
  direction cosines of ImageOrientationPatient), ascending. When the normal points inferior (negative z in LPS,
  i.e. an unusual ImageOrientationPatient) the order is reversed so that slices still run inferior -> superior.
  Without position/orientation tags the order is InstanceNumber ascending, and without those the file name.
  ``order="instance"`` sorts by InstanceNumber instead (ties by file name), the order the paper's authors iterated
  their released data in; in many series it runs superior -> inferior, so the leader algorithm starts at the other
  end. Every file then needs an InstanceNumber.
* A gap in the slice positions (a step over 1.5 times the median of the three steps on either side: a missing
  file; a series whose spacing changes from one region to the next has no gap there) is reported in a
  warning and in ``meta["position_gaps"]``; the volume is still read.
* One series per folder: several SeriesInstanceUIDs, mixed slice shapes, multi-frame files and pixel data that no
  installed decoder can handle are errors (:class:`VolumeReadError`) that say how to fix them.

``meta`` keys: ``spacing`` (mm along ``(S, H, W)``: slice step from positions, then PixelSpacing),
``affine`` (RAS affine of the returned array's indices ``(s, row, column)``, ``None`` without geometry tags),
``series_instance_uid``, ``transfer_syntax``, ``image_orientation``, ``slice_positions`` (the sort key per slice,
mm), ``sort_key`` (``"position"``, ``"instance_number"`` or ``"filename"``), ``duplicate_positions``,
``ignored_files``, ``position_gaps`` (``(after slice, step mm, about how many slices missing)`` in position order),
``rescale_missing`` (files without RescaleSlope/RescaleIntercept), ``warnings`` (the messages also given as
:class:`UserWarning`), ``nonfinite_voxels`` (always 0).

:func:`load_dicom_series` with ``lazy=True`` keeps the stored pixels (e.g. uint16) of a series whose files share one
stored dtype and one RescaleSlope/Intercept, as a :class:`~monai_lessmore.reduction.preprocess.StoredStack`: the
reducer renders it slice by slice with the same values as the float32 HU array (an integer intercept with slope 1
goes straight to the compiled rendering). ``num_threads`` decodes the files in a bounded thread pool, in slice order.

:func:`read_dicom_slice` reads only the one file it needs; the sorted file list comes from the headers alone
(``stop_before_pixels=True``) and is cached per folder, keyed by ``(folder, mtime)``.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from monai_lessmore.io.volume import LazyVolume, Volume, VolumeReadError
from monai_lessmore.utils.cpus import available_cpus

__all__ = [
    "DICOM_ORDERS",
    "is_dicom_file",
    "looks_like_dicom",
    "list_dicom_candidates",
    "folder_has_dicom",
    "dicom_series_files",
    "load_dicom_series",
    "auto_dicom_threads",
    "read_dicom_slice",
    "read_dicom_file",
]

#: ``order`` values of the DICOM reader: ``"position"`` (along the slice normal, inferior -> superior) and
#: ``"instance"`` (InstanceNumber ascending). :func:`~monai_lessmore.io.load.load_volume` maps its ``"index"`` and
#: ``"filename"`` to ``"position"``.
DICOM_ORDERS = ("position", "instance")

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
_DECODE_HINT = (
    "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm) or convert "
    "the series to NIfTI with dcm2niix"
)
#: a step between neighbouring positions this many times the local step counts as a gap (missing slices)
_GAP_FACTOR = 1.5
#: steps on either side of a step whose median is its local step
_GAP_WINDOW = 3


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file with the ``DICM`` magic after the 128-byte preamble (reads 132 bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MAGIC_OFFSET + len(_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == _MAGIC


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is taken as a DICOM file: a ``.dcm`` name, or the ``DICM`` magic (:func:`is_dicom_file`)."""
    return os.fspath(path).lower().endswith(".dcm") or is_dicom_file(path)


def _regular_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_file() and not e.name.startswith("."))


def list_dicom_candidates(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Split the files directly in ``folder`` into DICOM candidates and others (both sorted by name)."""
    dicom, other = [], []
    for path in _regular_files(os.fspath(folder)):
        (dicom if looks_like_dicom(path) else other).append(path)
    return dicom, other


def folder_has_dicom(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` directly holds at least one DICOM file (stops at the first one)."""
    try:
        return any(looks_like_dicom(p) for p in _regular_files(os.fspath(folder)))
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
    modality: str | None
    has_rescale: bool


@dataclass(frozen=True)
class _Series:
    files: tuple[str, ...]
    headers: tuple[_Header, ...]
    positions: tuple[float, ...] | None  # the position sort key of each slice, in array order
    normal: tuple[float, float, float] | None
    sort_key: str
    ignored: tuple[str, ...]
    gaps: tuple[tuple[int, float, int], ...]  # (after slice k in position order, step mm, slices missing)
    warnings: tuple[str, ...]
    monotonic: bool  # positions monotonic in array order: an affine describes the stack


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() == ""


def _read_header(path: str) -> _Header:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not is_dicom_file(path))
        rows, cols = ds.get("Rows"), ds.get("Columns")
        frames = int(ds.get("NumberOfFrames") or 1)
        instance = ds.get("InstanceNumber")
        uid = ds.get("SeriesInstanceUID")
        header = _Header(
            path=path,
            series_uid=None if _blank(uid) else str(uid),  # absent and empty are the same: no UID
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            instance=None if _blank(instance) else int(instance),
            shape=None if rows is None or cols is None else (int(rows), int(cols)),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            thickness=None if _blank(ds.get("SliceThickness")) else float(ds.SliceThickness),
            transfer_syntax=None if "TransferSyntaxUID" not in ds.file_meta else str(ds.file_meta.TransferSyntaxUID),
            modality=None if _blank(ds.get("Modality")) else str(ds.Modality).upper(),
            has_rescale=not (_blank(ds.get("RescaleSlope")) or _blank(ds.get("RescaleIntercept"))),
        )
        sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        image_class = sop_class is not None and "Image Storage" in getattr(sop_class, "name", "")
    except Exception as err:  # pydicom's failure modes on corrupt files are many (struct.error, KeyError, ...)
        raise VolumeReadError(
            f"{path}: corrupt or unreadable DICOM file ({type(err).__name__}: {_one_line(err)}); remove it from the "
            "series folder or re-export the series"
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


def _position_keys(headers: list[_Header]) -> tuple[list[float], np.ndarray] | None:
    """Each header's position along the slice normal (sign chosen so that ascending is inferior -> superior)."""
    if not all(h.position is not None and h.orientation is not None for h in headers):
        return None
    iop = np.asarray(headers[0].orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    # Ascending along the normal; reversed when the normal points inferior so the stack runs inferior->superior.
    sign = -1.0 if normal[2] < -1e-6 else 1.0
    return [sign * float(np.dot(h.position, normal)) for h in headers], normal  # type: ignore[arg-type]


def _sort(headers: list[_Header], order: str) -> tuple[list[int], str]:
    """Indices of ``headers`` in array order, and the sort key's name."""
    keyed = _position_keys(headers)
    if order == "instance":
        lacking = [h.path for h in headers if h.instance is None]
        if lacking:
            raise VolumeReadError(
                f"{lacking[0]}: has no InstanceNumber ({len(lacking)} of {len(headers)} files lack one), so the "
                "series cannot be read in InstanceNumber order; use the default order (by position)"
            )
        return sorted(range(len(headers)), key=lambda i: (headers[i].instance, headers[i].path)), "instance_number"
    if keyed is not None:
        keys = keyed[0]
        return sorted(range(len(headers)), key=lambda i: (keys[i], headers[i].instance or 0, headers[i].path)), "position"
    if all(h.instance is not None for h in headers):
        return sorted(range(len(headers)), key=lambda i: (headers[i].instance, headers[i].path)), "instance_number"
    return sorted(range(len(headers)), key=lambda i: headers[i].path), "filename"


def _gaps(sorted_keys: list[float]) -> tuple[list[tuple[int, float, int]], float]:
    """Steps between ascending positions over ``_GAP_FACTOR`` times the local step, and the first gap's local step.

    The local step of a step is the median of the :data:`_GAP_WINDOW` steps on either side of it (not itself), so
    a series whose spacing changes along its length (e.g. 2.5 mm through one region, 5 mm through the next) has no
    gap at the change, and a missing slice is found in either region. Each gap is ``(k, step mm, slices
    missing)``: the step from slice ``k`` to ``k + 1`` in position order.
    """
    steps = np.diff(np.asarray(sorted_keys, dtype=np.float64))
    where = np.flatnonzero(steps > 1e-3)  # repeated positions are counted elsewhere (duplicate_positions)
    moving = steps[where]
    if len(moving) < 2:
        return [], float("nan")
    gaps = []
    first_local = float("nan")
    for t, k in enumerate(where):
        local = float(np.median(np.concatenate([moving[max(0, t - _GAP_WINDOW):t], moving[t + 1:t + 1 + _GAP_WINDOW]])))
        if moving[t] > _GAP_FACTOR * local:
            if not gaps:
                first_local = local
            gaps.append((int(k), float(moving[t]), max(1, int(round(moving[t] / local)) - 1)))
    return gaps, first_local


def _series_warnings(
    folder: str,
    headers: list[_Header],
    sorted_paths: list[str],
    gaps: list[tuple[int, float, int]],
    median: float,
    order: str,
) -> list[str]:
    out = []
    if gaps:
        k, step, missing = gaps[0]
        more = f" ({len(gaps)} gaps, {sum(g[2] for g in gaps)} slices in all)" if len(gaps) > 1 else ""
        out.append(
            f"{folder}: about {missing} slice(s) missing: the slice positions jump {step:.4g} mm between "
            f"{os.path.basename(sorted_paths[k])} and {os.path.basename(sorted_paths[k + 1])} where the series "
            f"steps {median:.4g} mm{more}; the volume is read without them (check that the export is complete)"
        )
    lacking = [h for h in headers if not h.has_rescale and h.modality in (None, "CT")]
    if lacking:
        out.append(
            f"{folder}: {len(lacking)} of {len(headers)} files (first: {os.path.basename(lacking[0].path)}) have no "
            "RescaleSlope/RescaleIntercept: their stored values are taken as HU unchanged (slope 1, intercept 0). "
            "If this scanner stores HU + 1024 (air near 0 instead of -1000) every value is 1024 too high: add the "
            "tags (e.g. RescaleIntercept -1024) or convert the series with dcm2niix"
        )
    instances = Counter(h.instance for h in headers if h.instance is not None)
    repeated = sorted(n for n, c in instances.items() if c > 1)
    if repeated and order == "instance":
        out.append(
            f"{folder}: InstanceNumber {repeated[0]} appears in {instances[repeated[0]]} files"
            f"{f' ({len(repeated)} numbers repeated)' if len(repeated) > 1 else ''}; files with equal numbers are "
            "ordered by file name in InstanceNumber order"
        )
    return out


def _uid_label(uid: str | None) -> str:
    return uid if uid is not None else "<no SeriesInstanceUID>"


@functools.lru_cache(maxsize=128)
def _headers_cached(folder: str, mtime_ns: int) -> tuple[tuple[_Header, ...], tuple[str, ...]]:
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
        listing = ", ".join(f"{_uid_label(uid)} ({n} files)" for uid, n in sorted(
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
    return tuple(headers), tuple(sorted(ignored))


@functools.lru_cache(maxsize=128)
def _series_cached(folder: str, mtime_ns: int, order: str) -> _Series:
    headers, ignored = _headers_cached(folder, mtime_ns)
    headers = list(headers)
    order_idx, key = _sort(headers, order)
    keyed = _position_keys(headers)
    positions = normal = None
    gaps: list[tuple[int, float, int]] = []
    median = float("nan")
    by_position = order_idx
    monotonic = False
    if keyed is not None:
        keys, normal_arr = keyed
        normal = tuple(float(v) for v in normal_arr)
        positions = tuple(keys[i] for i in order_idx)
        by_position = order_idx if order == "position" else _sort(headers, "position")[0]
        gaps, median = _gaps([keys[i] for i in by_position])
        steps = np.diff(np.asarray(positions))
        monotonic = bool(np.all(steps >= 0) or np.all(steps <= 0))  # always so in position order
    return _Series(
        files=tuple(headers[i].path for i in order_idx),
        headers=tuple(headers[i] for i in order_idx),
        positions=positions,
        normal=normal,  # type: ignore[arg-type]
        sort_key=key,
        ignored=ignored,
        gaps=tuple(gaps),
        warnings=tuple(_series_warnings(folder, headers, [headers[i].path for i in by_position], gaps, median, order)),
        monotonic=monotonic,
    )


def _validate_dicom_order(order: str) -> str:
    if order not in DICOM_ORDERS:
        raise ValueError(f"order of a DICOM series must be one of {DICOM_ORDERS}, got {order!r}")
    return order


def _series(folder: str | os.PathLike, order: str = "position") -> _Series:
    folder = os.fspath(folder)
    _validate_dicom_order(order)
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError as err:
        raise VolumeReadError(f"{folder}: cannot read the DICOM series folder ({err})") from err
    return _series_cached(folder, mtime, order)


def dicom_series_files(folder: str | os.PathLike, order: str = "position") -> list[str]:
    """The series' DICOM files in slice order (headers only; cached per folder and modification time).

    Args:
        folder: the series folder.
        order: ``"position"`` (default) or ``"instance"``, see :data:`DICOM_ORDERS`.
    """
    return list(_series(folder, order).files)


def _one_line(err: BaseException) -> str:
    """An exception's text on one line (decoder messages list their plugins on several lines)."""
    return re.sub(r"\s+", " ", str(err)).strip()


def _syntax_text(uid: pydicom.uid.UID | None) -> str:
    if uid is None:
        return "<no transfer syntax>"
    return f"{uid.name} ({uid})" if uid.name != str(uid) else f"{uid} (not a transfer syntax pydicom knows)"


def _compressed(uid: pydicom.uid.UID | None) -> bool:
    try:
        return uid is not None and bool(uid.is_compressed)
    except ValueError:  # not a known transfer syntax
        return False


def _decoder_available(uid: pydicom.uid.UID) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(uid).is_available)
    except Exception:  # unknown syntax or an older pydicom without pydicom.pixels
        return False


#: ITK's lazy module loading and GDCM are not known to be safe from several threads at once: one GDCM read at a time
_ITK_LOCK = threading.Lock()


def _read_hu_itk(path: str) -> np.ndarray:
    """Decode one file with the GDCM library inside ITK: ``(H, W)`` float64, RescaleSlope/Intercept applied."""
    import itk

    with _ITK_LOCK:
        array = np.asarray(itk.array_from_image(itk.imread(path, itk.D, imageio=itk.GDCMImageIO.New())), np.float64)
    return array[0] if array.ndim == 3 and len(array) == 1 else array


@dataclass(frozen=True)
class _Rescale:
    """``stored * slope + intercept`` in float64, the HU of a DICOM file's stored pixels (per voxel, so a chunk of
    slices that share the tags scales exactly as each file alone)."""

    slope: float
    intercept: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.float64) * self.slope + self.intercept

    @property
    def offset(self) -> int | None:
        """The integer intercept when the slope is 1 (HU = stored + intercept, exact), else ``None``."""
        if self.slope == 1.0 and np.isfinite(self.intercept) and float(self.intercept).is_integer():
            return int(self.intercept)
        return None


def _decode(path: str, shape: tuple[int, int] | None) -> tuple[np.ndarray, _Rescale | None]:
    """One file's pixels: ``(stored pixels, rescale)``, or ``(HU float64, None)`` when GDCM (through ITK) decoded
    them and applied the rescale itself. ``shape`` is the series' slice shape to check against."""
    try:
        ds = pydicom.dcmread(path, force=not is_dicom_file(path))
    except Exception as err:
        raise VolumeReadError(f"{path}: corrupt or unreadable DICOM file ({type(err).__name__}: {_one_line(err)})") from err
    if "PixelData" not in ds:
        raise VolumeReadError(f"{path}: has no pixel data; remove it from the series folder")
    if shape is None:
        shape = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    uid = ds.file_meta.get("TransferSyntaxUID")
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    rescale: _Rescale | None = _Rescale(1.0 if _blank(slope) else float(slope),
                                        0.0 if _blank(intercept) else float(intercept))
    pixels: np.ndarray | None = None
    pydicom_error: Exception | None = None
    if not _compressed(uid) or _decoder_available(uid):
        try:
            pixels = ds.pixel_array
        except Exception as err:
            pydicom_error = err
    if pixels is None and _compressed(uid):  # no pydicom decoder, or its decoder failed: GDCM through ITK
        try:
            pixels, rescale = _read_hu_itk(path), None
        except Exception as err:
            first = (
                f"pydicom: {type(pydicom_error).__name__}: {_one_line(pydicom_error)}; " if pydicom_error else
                "pydicom has no decoder for it installed; "
            )
            raise VolumeReadError(
                f"{path}: the pixel data could not be decoded, transfer syntax {_syntax_text(uid)} ({first}ITK/GDCM: "
                f"{type(err).__name__}: {_one_line(err)}); the file may be truncated or corrupt, or no installed "
                f"decoder handles this syntax: {_DECODE_HINT}"
            ) from err
    if pixels is None:
        raise VolumeReadError(
            f"{path}: the pixel data could not be decoded, transfer syntax {_syntax_text(uid)} "
            f"({type(pydicom_error).__name__}: {_one_line(pydicom_error)}); the file may be truncated or corrupt, "
            f"or the transfer syntax is not one any installed decoder handles: {_DECODE_HINT}"
        ) from pydicom_error
    if pixels.shape != shape:
        raise VolumeReadError(
            f"{path}: pixel data of shape {pixels.shape} where a {shape[0]}x{shape[1]} grayscale slice was expected "
            "(colour or multi-frame images are not CT slices); remove it from the series folder"
        )
    return pixels, rescale


def _to_hu(pixels: np.ndarray, rescale: _Rescale | None) -> np.ndarray:
    """``float32`` HU of what :func:`_decode` returned."""
    return (pixels if rescale is None else rescale(pixels)).astype(np.float32)


def _read_hu(path: str, shape: tuple[int, int] | None) -> np.ndarray:
    """One file's pixels in HU as ``float32`` ``(H, W)``; ``shape`` is the series' slice shape to check against."""
    return _to_hu(*_decode(path, shape))


def read_dicom_file(path: str | os.PathLike) -> np.ndarray:
    """Read one single-frame DICOM image file as ``(H, W)`` ``float32`` HU (the series reader's per-file path).

    Raises:
        VolumeReadError: not a single-frame grayscale image, corrupt file, undecodable pixel data.
    """
    path = os.fspath(path)
    header = _read_header(path)
    if header.shape is None:
        raise VolumeReadError(f"{path}: is a DICOM file without an image (no Rows/Columns)")
    return _read_hu(path, header.shape)


def _affine(series: _Series) -> np.ndarray | None:
    first = series.headers[0]
    if series.positions is None or first.orientation is None or first.pixel_spacing is None or not series.monotonic:
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


def _meta(series: _Series, extra_warnings: list[str]) -> dict[str, Any]:
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
        "position_gaps": [list(g) for g in series.gaps],
        "rescale_missing": sum(not h.has_rescale for h in series.headers),
        "ignored_files": list(series.ignored),
        "warnings": [*series.warnings, *extra_warnings],
        "nonfinite_voxels": 0,
    }


def auto_dicom_threads() -> int:
    """Threads ``num_threads=None`` of :func:`load_dicom_series` means: the CPUs this process may use
    (:func:`~monai_lessmore.utils.cpus.available_cpus`), at most :data:`MAX_DICOM_THREADS`."""
    return min(MAX_DICOM_THREADS, available_cpus())


#: most threads :func:`auto_dicom_threads` picks
MAX_DICOM_THREADS = 4


def _validate_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return auto_dicom_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None (one per CPU, at most "
                         f"{MAX_DICOM_THREADS}), got {num_threads!r}")
    return int(num_threads)


def _ordered_map(fn: Any, items: list[str], threads: int) -> Any:
    """``map(fn, items)`` run in up to ``threads`` threads, results in input order, at most ``2 * threads`` ahead
    of the consumer. The first item's error (in input order) is raised, and nothing queued runs after it."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lessmore-dicom")
    pending: deque = deque()
    rest = iter(items)
    try:
        for item in itertools.islice(rest, 2 * threads):
            pending.append(pool.submit(fn, item))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(rest, 1):
                pending.append(pool.submit(fn, item))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stack(series: _Series, num_threads: int) -> Any:
    """Decode the series' files into a :class:`~monai_lessmore.reduction.preprocess.StoredStack` when they share
    one stored dtype and one RescaleSlope/Intercept (CT series almost always do), else into a ``float32`` HU array.
    The first file is decoded alone (it loads the decoders), the rest in ``num_threads`` threads."""
    from monai_lessmore.reduction.preprocess import StoredStack

    files = list(series.files)
    shape = series.headers[0].shape
    first, common = _decode(files[0], shape)  # type: ignore[arg-type]
    raw: np.ndarray | None = None
    hu: np.ndarray | None = None
    if common is not None:
        raw = np.empty((len(files), *first.shape), dtype=first.dtype)
        raw[0] = first
    else:
        hu = np.empty((len(files), *first.shape), dtype=np.float32)
        hu[0] = _to_hu(first, None)
    decoded = _ordered_map(lambda path: _decode(path, shape), files[1:], num_threads)
    for i, (pixels, rescale) in enumerate(decoded, start=1):
        if raw is not None and (rescale != common or pixels.dtype != raw.dtype):
            # the tags or the stored dtype change within the series: HU per file, as float32
            hu = np.empty(raw.shape, dtype=np.float32)
            hu[:i] = _to_hu(raw[:i], common)
            raw = None
        if raw is not None:
            raw[i] = pixels
        else:
            hu[i] = _to_hu(pixels, rescale)  # type: ignore[index]
    if raw is None:
        return hu
    identity = common.slope == 1.0 and common.intercept == 0.0  # type: ignore[union-attr]
    return StoredStack(raw, scale=None if identity else common, offset=common.offset)  # type: ignore[union-attr]


def load_dicom_series(
    folder: str | os.PathLike, *, order: str = "position", lazy: bool = False, num_threads: int | None = 1
) -> Volume:
    """Read a folder holding one DICOM series as an ``(S, H, W)`` ``float32`` HU stack.

    Args:
        folder: the series folder (files with or without ``.dcm``; non-DICOM files are ignored).
        order: ``"position"`` (default: along the slice normal, inferior -> superior) or ``"instance"``
            (InstanceNumber ascending, the order of the paper's released data).
        lazy: keep the stored pixels (e.g. int16/uint16) with the series' RescaleSlope/Intercept
            (:class:`~monai_lessmore.io.volume.LazyVolume`): no whole-volume float32 copy until ``array`` is used.
            The values are the same. A series whose files differ in those tags or in their stored dtype is read
            as ``float32`` either way.
        num_threads: threads that decode the files (``None``: :func:`auto_dicom_threads`). The default, one by
            one, is the fastest where pydicom decodes: parsing a file is Python that holds the GIL (uncompressed
            data), and so is Pillow's JPEG 2000 decoder; more threads only add contention there (see
            ``docs/benchmarks.md``). The result is the same with any number.

    Returns:
        :class:`Volume` with ``kind="dicom"`` and one file per slice in ``slice_sources``. Gaps in the slice
        positions, missing rescale tags and repeated instance numbers are given as :class:`UserWarning` and in
        ``meta["warnings"]``.

    Raises:
        VolumeReadError: no DICOM images, several series, mixed shapes, corrupt files, undecodable pixel data,
            ``order="instance"`` without InstanceNumber.
        ValueError: unknown ``order``, bad ``num_threads``.
    """
    from monai_lessmore.reduction.preprocess import StoredStack

    folder = os.fspath(folder)
    threads = _validate_threads(num_threads)
    series = _series(folder, order)
    stack = _stack(series, threads)
    extra = []
    if order == "instance" and series.positions is not None and not series.monotonic:
        extra.append(
            f"{folder}: the slice positions do not run monotonically in InstanceNumber order, so the stack has no "
            "affine (meta['affine'] is None)"
        )
    meta = _meta(series, extra)
    for message in meta["warnings"]:
        warnings.warn(message, UserWarning, stacklevel=2)
    kwargs = dict(name=Path(folder).name, source=folder, kind="dicom", slice_sources=list(series.files), meta=meta)
    if not isinstance(stack, StoredStack):
        return Volume(array=stack, **kwargs)
    if lazy:
        return LazyVolume(stack=stack, **kwargs)
    return Volume(array=stack.to_array(), **kwargs)


def read_dicom_slice(folder: str | os.PathLike, index: int, *, order: str = "position") -> np.ndarray:
    """Read slice ``index`` (negative counts from the end) of :func:`load_dicom_series`'s stack from its one file.

    Raises:
        IndexError: when ``index`` is outside the series.
        VolumeReadError: as :func:`load_dicom_series`.
    """
    series = _series(folder, order)
    num = len(series.files)
    if not -num <= index < num:
        raise IndexError(f"slice index {index} is out of range for {os.fspath(folder)}, which has {num} slices")
    return _read_hu(series.files[index], series.headers[0].shape)  # type: ignore[arg-type]
