"""NIfTI reader (``.nii``, ``.nii.gz``) via nibabel.

Convention (the slice axis is the axial one, taken from the image orientation, not assumed):

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

:func:`load_nifti` reads the stored voxels itself in one pass (nibabel's header, offset, dtype and order; gzip
decompressed with ISA-L's ``isal.igzip`` when installed, byte-identical to the standard library's ``gzip``, which
is the fallback) into one buffer of the stored dtype. ``lazy=True`` returns them as they are
(:class:`LazyNiftiVolume`): the reducer renders them slice by slice (:class:`~monai_lessmore.reduction.preprocess.
StoredStack`), and the float32 ``array`` -- equal to the eager one -- is made only if something asks for it. For a
``.nii.gz``, ``lazy=True`` also returns at once: a background thread inflates the file into the buffer (ISA-L and
zlib release the GIL) while the caller renders and hashes the slices that have arrived, and a second thread
computes the file's SHA-256 from the compressed bytes read (kept by :func:`monai_lessmore.utils.files.
remember_file_digest`, so that ``lessmore reduce`` records the digest of the bytes it reduced without reading the
file a second time); see :mod:`monai_lessmore.utils.gzstream`. Where ``lessmore reduce`` has already started
inflating the file while it imported (:mod:`monai_lessmore.cli.readahead`), the reader takes that thread over,
but only if the offset, byte count and the file's stat match. ``LESSMORE_STREAM_GZIP=0`` reads everything first;
the voxels are the same either way. The header of a ``.nii.gz`` is read through ISA-L too
(:func:`_gz_header_image`): ``nib.load`` opens the file twice, and with ``indexed_gzip`` installed each first read
inflates a whole buffer (about 50 ms per file, measured, against about 1 ms).

``meta`` keys: ``spacing`` (mm along ``(S, H, W)``), ``affine`` (RAS affine of the returned array),
``original_affine``, ``orientation`` (stored axis codes, e.g. ``("R", "A", "S")``), ``slice_axis`` (stored axis
that became the slice axis), ``slice_axis_flipped``, ``ornt_transform`` (nibabel orientation transform),
``original_shape``, ``stored_dtype``, ``nonfinite_voxels``.

:func:`read_nifti_slice` reads one slice through nibabel's array proxy (only that slice of the stored slice axis)
and applies the same flips and transposes, so it equals ``load_nifti(path).array[index]`` exactly.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation, source_slice_index
from monai_lessmore.io.volume import LazyVolume, Volume, VolumeReadError
from monai_lessmore.utils.gzstream import (
    MAX_INFLATE_RATIO,
    InflatingThread,
    anonymous_buffer,
    open_gzip,
    populate_in_background,
    stream_gzip_default,
    take_readahead,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "LazyNiftiVolume",
    "is_nifti_path",
    "load_nifti",
    "read_nifti_slice",
    "nifti_volume_name",
    "open_gzip",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _gzip_errors() -> tuple[type[BaseException], ...]:
    try:
        from isal import isal_zlib
    except ImportError:
        return ()
    return (isal_zlib.error,)


# What a truncated or corrupt file raises while its data is read (gzip: EOFError/zlib.error, or ISA-L's error;
# plain: ValueError/OSError).
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) + _gzip_errors()
#: what a truncated or corrupt .nii.gz raises while the reading thread inflates it (gzip.BadGzipFile is an OSError)
_INFLATE_ERRORS = (OSError, EOFError, zlib.error) + _gzip_errors()
#: bytes read per call when streaming the voxels into their buffer
_READ_BLOCK = 1 << 22


#: ``load_nifti(..., lazy=True)`` of a ``.nii.gz`` inflates in a background thread while the caller renders the
#: slices already read; False: read everything first, as the eager path does (see
#: :func:`~monai_lessmore.utils.gzstream.stream_gzip_default`; a worker of ``lessmore reduce --workers N`` with
#: fewer than two CPUs of its own sets it False). The voxels are the same either way.
STREAM_GZIP = stream_gzip_default()


def _voxel_buffer(nbytes: int) -> np.ndarray:
    """An uninitialised ``uint8`` array of ``nbytes`` in anonymous memory of ordinary pages
    (:func:`~monai_lessmore.utils.gzstream.anonymous_buffer`: no huge-page stalls)."""
    return np.frombuffer(anonymous_buffer(nbytes), dtype=np.uint8)


class _StreamedVoxels:
    """The stored voxel bytes of a ``.nii.gz`` file that an :class:`~monai_lessmore.utils.gzstream.InflatingThread`
    is still writing into ``buf``: :meth:`ready` blocks until a view of ``buf`` has arrived, and raises
    :class:`VolumeReadError` naming the file when the file ends or is corrupt before that."""

    def __init__(self, path: str, buf: np.ndarray, thread: InflatingThread) -> None:
        self._start, self._path, self._thread = int(buf.ctypes.data), path, thread

    def ready(self, view: np.ndarray) -> None:
        """Return once every byte of ``view`` (a view of the buffer) has been read."""
        if view.size == 0:
            return
        # one past the view's highest byte (its strides may be negative), relative to the buffer's start
        end = int(view.ctypes.data) + view.itemsize - self._start
        end += sum((n - 1) * st for n, st in zip(view.shape, view.strides) if st > 0)
        ok, error = self._thread.wait_for(end)
        if ok:
            return
        err = error or RuntimeError("the read was stopped")
        if error is None:
            fix = "the volume was closed before these voxels were read"
        elif isinstance(err, (FileNotFoundError, PermissionError)):
            fix = "the file was removed or made unreadable while it was read: check it and run again"
        elif isinstance(err, _INFLATE_ERRORS):
            fix = "the file is truncated or corrupt: re-download or re-export it"
        elif isinstance(err, MemoryError):
            fix = "out of memory: free memory or read fewer volumes at once"
        else:  # not the file's fault: a bug
            fix = "the file itself may be fine: please report this error with the file's header (nib-ls)"
        raise VolumeReadError(
            f"{self._path}: the voxel data could not be read ({type(err).__name__}: {err}); {fix}"
        ) from err

    def close(self) -> None:
        """Stop the thread at its next block and wait for it."""
        self._thread.close()

    def join(self) -> None:
        """Wait for the thread to end by itself (at the file's last byte, or at an error)."""
        self._thread.join()


def _stream_stored(img: Any, path: str) -> tuple[np.ndarray, _StreamedVoxels] | None:
    """:func:`_read_stored` of a ``.nii.gz`` file as a buffer that a thread is still filling, or ``None`` where
    the voxels are not a plain array proxy of a gzip file (then they are read at once)."""
    proxy = img.dataobj
    name = img.get_filename()
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or name is None or not name.lower().endswith(".gz"):
        return None
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(n) for n in proxy.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    offset = int(proxy.offset)
    try:
        stored = os.path.getsize(name)
    except OSError:
        stored = None  # the reading thread words it
    if stored is not None and offset + nbytes > MAX_INFLATE_RATIO * stored:
        # never map that much memory ahead of a read that must fail
        raise VolumeReadError(
            f"{path}: the header promises {nbytes} voxel bytes (shape {shape}, {dtype}), more than its {stored} "
            "compressed bytes can hold; the file is truncated or its header is corrupt: re-download or re-export it"
        )
    # the same bytes already being read since the command line started (monai_lessmore.cli.readahead), if any
    taken = take_readahead(name, offset, nbytes)
    if taken is not None:
        raw, thread = taken
    else:
        try:
            raw = anonymous_buffer(nbytes)
        except (OSError, MemoryError, OverflowError) as err:
            raise VolumeReadError(
                f"{path}: no memory for its {nbytes} voxel bytes (shape {shape}, {dtype}): {err}; free memory or raise "
                "the process's limit (ulimit -v), or re-export the file if that shape is wrong"
            ) from err
        thread = InflatingThread(name, offset, raw)
        populate_in_background(raw, ahead_of=thread)
    buf = np.frombuffer(raw, dtype=np.uint8)
    return buf.view(dtype).reshape(shape, order=proxy.order), _StreamedVoxels(path, buf, thread)


def _read_stored(img: Any, path: str) -> np.ndarray:
    """The stored voxels of the whole image, unscaled, as nibabel's ``dataobj.get_unscaled()`` gives them (same
    dtype, byte order, shape and memory order), read in one streaming pass into one buffer."""
    proxy = img.dataobj
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or img.get_filename() is None:
        return np.asarray(proxy.get_unscaled())
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(n) for n in proxy.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = _voxel_buffer(nbytes)
    name = img.get_filename()
    try:
        with (open_gzip(name) if name.lower().endswith(".gz") else open(name, "rb")) as fh:
            fh.seek(int(proxy.offset))
            view = memoryview(buf)
            done = 0
            while done < nbytes:
                got = fh.readinto(view[done : min(nbytes, done + _READ_BLOCK)])
                if not got:
                    raise EOFError(f"the file ends after {done} of {nbytes} voxel bytes")
                done += got
            if name.lower().endswith(".gz"):
                while fh.read(_READ_BLOCK):  # to the end: the gzip trailer's CRC-32 and length are checked
                    pass
    except _READ_ERRORS as err:
        raise VolumeReadError(
            f"{path}: the voxel data could not be read ({type(err).__name__}: {err}); the file is truncated or "
            "corrupt: re-download or re-export it"
        ) from err
    return buf.view(dtype).reshape(shape, order=proxy.order)


def _scaling(img: Any) -> tuple[Any, int | None]:
    """nibabel's read scaling of ``img`` as a function of a raw chunk (``None`` for none), and the integer offset
    when the scaling is ``raw + offset`` (slope 1, integer intercept).

    The function does what ``ArrayProxy._get_scaled(None, ...)`` does, elementwise, so scaling chunk by chunk
    gives the same values as scaling the whole array."""
    from nibabel.volumeutils import apply_read_scaling

    proxy = img.dataobj
    slope = np.asanyarray(getattr(proxy, "slope", 1.0))
    inter = np.asanyarray(getattr(proxy, "inter", 0.0))
    if (float(slope), float(inter)) == (1.0, 0.0):
        return None, 0
    use = slope.dtype
    if np.can_cast(inter, use):
        inter = inter.astype(use)
    offset = int(inter) if float(slope) == 1.0 and np.isfinite(inter) and float(inter) == int(inter) else None

    def scale(raw: np.ndarray) -> np.ndarray:
        return apply_read_scaling(raw, slope, inter)

    return scale, offset


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


#: most header bytes (header and extensions, up to the voxels) :func:`_gz_header_image` reads itself; a header
#: that claims more is left to nibabel
_MAX_HEADER_BYTES = 1 << 24


def _gz_header_image(path: str) -> Any | None:
    """The nibabel image of a single-file ``.nii.gz`` (its array proxy reads ``path`` afresh), its header read
    through :func:`open_gzip`; ``None`` when the file is not plainly that (nibabel then reads it, and words any
    error).

    ``nib.load`` opens a ``.gz`` twice (once to tell the format, once for the header), and with ``indexed_gzip``
    installed each first read inflates a whole buffer: 45-52 ms per file, measured, against 1.3 ms here. The image is
    built as nibabel's ``from_file_map`` builds it (header class, array proxy of the file, best affine).
    """
    try:
        with open_gzip(path) as fh:
            head = fh.read(540)
            if len(head) < 348:
                return None
            for endian in "<>":
                size = int(np.frombuffer(head, f"{endian}i4", 1)[0])
                if size == 348 and head[344:348] == b"n+1\0":
                    klass, offset = nib.Nifti1Image, float(np.frombuffer(head, f"{endian}f4", 1, 108)[0])
                    break
                if size == 540 and len(head) == 540 and head[4:8] == b"n+2\0":
                    klass, offset = nib.Nifti2Image, float(np.frombuffer(head, f"{endian}i8", 1, 168)[0])
                    break
            else:
                return None
            if not size + 4 <= offset <= _MAX_HEADER_BYTES:
                return None  # no room for the extension flag (e.g. vox_offset 0): nibabel's call
            if offset > len(head):
                head += fh.read(int(offset) - len(head))
        header = klass.header_class.from_fileobj(io.BytesIO(head))
        proxy = nib.arrayproxy.ArrayProxy(path, header.copy(), keep_file_open=False)
        return klass(proxy, header.get_best_affine(), header, file_map=klass.filespec_to_file_map(path))
    except Exception:  # noqa: BLE001 - nibabel reads it instead, and raises what it raises
        return None


def _open(path: str, keep_file_open: bool = False) -> tuple[Any, tuple[int, ...]]:
    """Load the header and check the shape; returns the image and the index of extra (size-1) dimensions."""
    try:
        img = None if keep_file_open or not path.lower().endswith(".gz") else _gz_header_image(path)
        if img is None:
            img = nib.load(path, keep_file_open=keep_file_open)
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


class LazyNiftiVolume(LazyVolume):
    """The :class:`~monai_lessmore.io.volume.LazyVolume` of a NIfTI file (``lazy=True`` of :func:`load_nifti`)."""

    _stream: _StreamedVoxels | None = None

    @property
    def streamed(self) -> bool:
        """Whether a thread reads the file (a ``.nii.gz``): its SHA-256 then comes from the bytes it inflated."""
        return self._stream is not None

    def finish_reading(self) -> None:
        """Wait until the reading thread has ended (after the last voxel it reads the rest of the file and
        remembers the file's SHA-256 for :func:`monai_lessmore.utils.files.content_digest`); at once when none."""
        if self._stream is not None:
            self._stream.join()


def load_nifti(path: str | os.PathLike, *, lazy: bool = False) -> Volume:
    """Read a NIfTI file as an axial ``(S, H, W)`` ``float32`` stack (see the module docstring for the convention).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        lazy: keep the voxels in their stored dtype and order (:class:`LazyNiftiVolume`): no whole-volume float32
            or reoriented copy until ``array`` is used. The values are the same.

    Returns:
        :class:`Volume` with ``kind="nifti"``.

    Raises:
        VolumeReadError: unreadable/truncated file, 2D image, more than one time point, degenerate affine.
    """
    from monai_lessmore.reduction.preprocess import StoredStack

    path = os.fspath(path)
    img, extra = _open(path)
    orientation = _orientation(img, path)
    streamed = _stream_stored(img, path) if lazy and STREAM_GZIP else None
    stored, ready = (_read_stored(img, path), None) if streamed is None else (streamed[0], streamed[1].ready)
    raw = stored[(slice(None),) * 3 + extra]
    scale, offset = _scaling(img)
    stack = StoredStack(apply_axial_orientation(raw, orientation), scale=scale, offset=offset, ready=ready)
    meta = dict(orientation)
    meta["stored_dtype"] = str(img.get_data_dtype())
    meta["nonfinite_voxels"] = stack.count_nonfinite()
    kwargs = dict(name=nifti_volume_name(path), source=path, kind="nifti", meta=meta)
    if lazy:
        vol = LazyNiftiVolume(stack=stack, **kwargs)
        vol._stream = None if streamed is None else streamed[1]
        return vol
    return Volume(array=stack.to_array(), **kwargs)


def read_nifti_slice(path: str | os.PathLike, index: int) -> np.ndarray:
    """Read slice ``index`` (negative counts from the end) of :func:`load_nifti`'s stack, and only that slice.

    Raises:
        IndexError: when ``index`` is outside the ``S`` slices.
        VolumeReadError: as :func:`load_nifti`.
    """
    path = os.fspath(path)
    img, extra, orientation = _open_for_slices(path)
    axis = orientation["slice_axis"]
    num = orientation["original_shape"][axis]
    if not -num <= index < num:
        raise IndexError(f"slice index {index} is out of range for {path}, which has {num} slices")
    stored = source_slice_index(index % num, orientation)
    key: list[Any] = [slice(None)] * 3
    key[axis] = slice(stored, stored + 1)
    block = _read(img, tuple(key) + extra, path)
    return np.ascontiguousarray(apply_axial_orientation(block, orientation)[0], dtype=np.float32)


#: images opened for slice reads, most recent last: ``(path, mtime, size, pid) -> (img, extra, orientation)``
_OPEN_FOR_SLICES: "OrderedDict[tuple, tuple]" = OrderedDict()
_OPEN_FOR_SLICES_MAX = 8
_OPEN_LOCK = threading.Lock()


def _open_for_slices(path: str) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    """The image of ``path`` kept open between slice reads (a few files, least recently used closed first).

    nibabel reads ``.nii.gz`` through ``indexed_gzip`` when it is installed; with the file kept open its index of
    seek points persists, so a later slice is decompressed from the nearest point before it instead of from the
    start of the file. The key holds the file's modification time and size (a rewritten file is opened again)
    and the process id (a forked worker never shares its parent's file position).
    """
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, os.getpid())
    with _OPEN_LOCK:
        hit = _OPEN_FOR_SLICES.get(key)
        if hit is not None:
            _OPEN_FOR_SLICES.move_to_end(key)
            return hit
    img, extra = _open(path, keep_file_open=True)
    entry = (img, extra, _orientation(img, path))
    with _OPEN_LOCK:
        _OPEN_FOR_SLICES[key] = entry
        while len(_OPEN_FOR_SLICES) > _OPEN_FOR_SLICES_MAX:
            _OPEN_FOR_SLICES.popitem(last=False)  # nibabel's proxy closes its file when it is collected
    return entry


def _orientation(img: Any, path: str) -> dict[str, Any]:
    try:
        return axial_orientation(img.affine, img.shape[:3], source=path)
    except ValueError as err:
        raise VolumeReadError(str(err)) from err
