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
file a second time). ``LESSMORE_STREAM_GZIP=0`` reads
everything first; the voxels are the same either way.

``meta`` keys: ``spacing`` (mm along ``(S, H, W)``), ``affine`` (RAS affine of the returned array),
``original_affine``, ``orientation`` (stored axis codes, e.g. ``("R", "A", "S")``), ``slice_axis`` (stored axis
that became the slice axis), ``slice_axis_flipped``, ``ornt_transform`` (nibabel orientation transform),
``original_shape``, ``stored_dtype``, ``nonfinite_voxels``.

:func:`read_nifti_slice` reads one slice through nibabel's array proxy (only that slice of the stored slice axis)
and applies the same flips and transposes, so it equals ``load_nifti(path).array[index]`` exactly.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import mmap
import os
import queue
import sys
import threading
import weakref
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation, source_slice_index
from monai_lessmore.io.volume import LazyVolume, Volume, VolumeReadError
from monai_lessmore.utils.cpus import available_cpus
from monai_lessmore.utils.files import known_file_digest, remember_file_digest

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


def stream_gzip_default(cpus: int | None = None) -> bool:
    """Whether ``load_nifti(..., lazy=True)`` inflates a ``.nii.gz`` in a background thread by default: when the
    process may run on two CPUs or more (``cpus``: the CPUs it may use; default:
    :func:`~monai_lessmore.utils.cpus.available_cpus`, its affinity and cgroup quota), unless the
    environment variable ``LESSMORE_STREAM_GZIP`` says otherwise (``0`` or ``1``). On one CPU the threads only
    take turns: 8 volumes of 512x512x300 took 1.10x a bare nibabel load streamed and 1.03x read first (measured
    with ``taskset -c 0``), against 0.73x and 1.01x on two CPUs."""
    env = os.environ.get("LESSMORE_STREAM_GZIP", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return (available_cpus() if cpus is None else int(cpus)) >= 2


#: ``load_nifti(..., lazy=True)`` of a ``.nii.gz`` inflates in a background thread while the caller renders the
#: slices already read; False: read everything first, as the eager path does (see :func:`stream_gzip_default`;
#: a worker of ``lessmore reduce --workers N`` with fewer than two CPUs of its own sets it False). The voxels are
#: the same either way.
STREAM_GZIP = stream_gzip_default()
#: bytes inflated per step by the reading thread of :func:`load_nifti` (``lazy=True``): small enough that the slices
#: already there are rendered while the rest is read
_PIPELINE_BLOCK = 1 << 20
#: chunks (512 KiB each with ISA-L) read but not hashed yet, at most: the reading thread waits beyond that
_HASH_QUEUE = 32


def open_gzip(path: str) -> Any:
    """A binary reader of the gzip file ``path``: ISA-L's ``igzip`` (about twice zlib's speed, the same bytes)
    when the ``isal`` package is installed, else the standard library's :func:`gzip.open`."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.open(path, "rb")
    return igzip.open(path, "rb")


class _HashingReader(io.RawIOBase):
    """A binary file that passes on the bytes of ``raw`` and hashes them (SHA-256) in the order they are read, in
    a thread of its own: the thread that inflates them does only that (hashing 154 MiB takes 0.13 s, a fifth of
    inflating it, measured). At most ``_HASH_QUEUE`` chunks of the decompressor's reads wait to be hashed."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw, self._sha = raw, hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_HASH_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hash, name="lessmore-sha256", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:  # after a failure, keep taking chunks: the reader must never wait on a full queue
                try:
                    self._sha.update(chunk)  # hashlib releases the GIL for chunks of more than 2 KiB
                except BaseException as err:  # noqa: BLE001 - reported by hexdigest()
                    self._error = err

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        with memoryview(b) as view:
            chunk = self._raw.read(len(view))
            got = len(chunk)
            view[:got] = chunk
        if got:
            self._queue.put(chunk)
        return got

    def hexdigest(self) -> str:
        """The SHA-256 of every byte read (once the hashing thread has caught up)."""
        self.stop()
        if self._error is not None:
            raise RuntimeError(f"hashing the file failed: {self._error!r}") from self._error
        return self._sha.hexdigest()

    def stop(self) -> None:
        """Let the hashing thread finish what is queued and end; idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _voxel_buffer(nbytes: int) -> np.ndarray:
    """An uninitialised ``uint8`` buffer of ``nbytes`` in private anonymous memory of ordinary pages.

    numpy asks the kernel for transparent huge pages for arrays of 4 MiB and more (``madvise``); where the
    kernel's huge-page defrag setting is ``madvise`` (a common default), the first touch of such memory may stall
    on compaction: measured here as 0.6-0.9 s of system time, in one run of four, for a 300 MiB buffer filled by
    the reading thread. Ordinary pages cost about the same to fill and never stall that way.
    """
    if nbytes <= 0 or not hasattr(mmap, "MAP_PRIVATE"):  # Windows has no such flags (nor that numpy advice)
        return np.empty(max(0, nbytes), dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=np.uint8)


def _open_gzip_stream(fileobj: Any) -> Any:
    """:func:`open_gzip` of an open binary file."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")


class _StreamedVoxels:
    """The stored voxel bytes of a ``.nii.gz`` file, inflated by a background thread into one preallocated buffer
    while the caller already works on the bytes that have arrived (ISA-L and zlib release the GIL while they
    inflate, so reading and rendering overlap on two cores).

    :meth:`ready` blocks until a view of the buffer has been filled, and raises :class:`VolumeReadError` naming the
    file when the file ends or is corrupt before that. The thread holds the buffer only weakly between its blocks:
    it stops at its next block once nothing else holds the voxels (a caller that gave up half-way) or after
    :meth:`close`, and ends by itself at the last byte; it never waits on the caller.
    """

    def __init__(self, name: str, path: str, offset: int, buf: np.ndarray) -> None:
        self._start, self._nbytes = int(buf.ctypes.data), int(buf.nbytes)
        self._filled = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._name, self._path = name, path  # the file nibabel opened; the path the caller gave (for messages)
        self._thread = threading.Thread(target=self._fill, args=(int(offset), weakref.ref(buf)),
                                        name=f"lessmore-read {os.path.basename(path)}", daemon=True)
        self._thread.start()

    def _fill(self, offset: int, buf_ref: Any) -> None:
        nbytes = self._nbytes
        try:
            hashed = None
            with open(self._name, "rb") as raw:
                st = os.fstat(raw.fileno())
                if known_file_digest(self._name, st) is None:  # e.g. a cache lookup has just taken it
                    hashed = _HashingReader(raw)
                with _open_gzip_stream(raw if hashed is None else hashed) as fh:
                    skip = offset  # the header: read past it (the hashing stream does not seek)
                    while skip:
                        got = len(fh.read(min(skip, _PIPELINE_BLOCK)))
                        if not got:
                            raise EOFError(f"the file ends inside its header ({offset - skip} of {offset} bytes)")
                        skip -= got
                    done = 0
                    while done < nbytes and not self._stop.is_set():
                        buf = buf_ref()
                        if buf is None:  # nothing reads these voxels any more
                            break
                        with memoryview(buf) as view:
                            got = fh.readinto(view[done : min(nbytes, done + _PIPELINE_BLOCK)])
                        del buf
                        if not got:
                            raise EOFError(f"the file ends after {done} of {nbytes} voxel bytes")
                        done += got
                        with self._cond:
                            self._filled = done
                            self._cond.notify_all()
                    # the input's SHA-256 from the bytes read, not from a second read of the file
                    if done == nbytes and hashed is not None:
                        while hashed.read(_PIPELINE_BLOCK):
                            pass
                        remember_file_digest(self._name, hashed.hexdigest(), st)
        except BaseException as err:  # noqa: BLE001 - raised in the reading thread by ready()
            with self._cond:
                self._error = err
        finally:
            if hashed is not None:
                hashed.stop()
            with self._cond:
                self._stop.set()
                self._cond.notify_all()

    def ready(self, view: np.ndarray) -> None:
        """Return once every byte of ``view`` (a view of the buffer) has been read."""
        if view.size == 0:
            return
        # one past the view's highest byte (its strides may be negative), relative to the buffer's start
        end = int(view.ctypes.data) + view.itemsize - self._start
        end += sum((n - 1) * st for n, st in zip(view.shape, view.strides) if st > 0)
        with self._cond:
            while self._filled < end and not self._stop.is_set():
                self._cond.wait()
            filled, error = self._filled, self._error
        if filled < end:
            err = error or RuntimeError("the read was stopped")
            if error is None:
                fix = "the volume was closed before these voxels were read"
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
        self._stop.set()
        self._thread.join()

    def join(self) -> None:
        """Wait for the thread to end by itself (at the file's last byte, or at an error)."""
        self._thread.join()


#: Linux's ``MADV_POPULATE_WRITE`` (5.14 and later): map the pages of a range writable, as a write to each would,
#: without touching their contents
_MADV_POPULATE_WRITE = 23
#: bytes populated per ``madvise`` call by :func:`_populate_in_background`
_POPULATE_STEP = 16 << 20


def _populate(buf: np.ndarray, start: int, stop: int) -> bool:
    """Map the pages of ``buf[start:stop]`` (``MADV_POPULATE_WRITE``; contents unchanged, also while another thread
    writes there); False where the system cannot (not Linux, an older kernel), and nothing is done."""
    if not sys.platform.startswith("linux") or stop <= start:
        return False
    page = mmap.PAGESIZE
    first = (int(buf.ctypes.data) + start) // page * page
    last = int(buf.ctypes.data) + stop
    # ctypes releases the GIL for the call
    return _madvise()(first, last - first, _MADV_POPULATE_WRITE) == 0


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    import ctypes

    fn = ctypes.CDLL(None, use_errno=True).madvise
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def _populate_in_background(buf: np.ndarray) -> None:
    """Map the pages of ``buf`` from its start in a thread of its own, ahead of the thread that inflates into it:
    a fresh page costs a fault and zeroing wherever it is first written; here that work leaves the critical path
    (measured, 300 MiB: inflating 0.61 s into mapped pages against 0.72-0.76 s into fresh ones; mapping them
    0.08 s). The thread holds ``buf`` until it ends, so the memory is never unmapped under it."""

    def run() -> None:
        for start in range(0, buf.nbytes, _POPULATE_STEP):
            if not _populate(buf, start, min(buf.nbytes, start + _POPULATE_STEP)):
                return

    threading.Thread(target=run, name="lessmore-populate", daemon=True).start()


def _stream_stored(img: Any, path: str) -> tuple[np.ndarray, _StreamedVoxels] | None:
    """:func:`_read_stored` of a ``.nii.gz`` file as a buffer that a thread is still filling, or ``None`` where
    the voxels are not a plain array proxy of a gzip file (then they are read at once)."""
    proxy = img.dataobj
    name = img.get_filename()
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or name is None or not name.lower().endswith(".gz"):
        return None
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(n) for n in proxy.shape)
    buf = _voxel_buffer(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    _populate_in_background(buf)
    stream = _StreamedVoxels(name, path, int(proxy.offset), buf)
    return buf.view(dtype).reshape(shape, order=proxy.order), stream


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


def _open(path: str, keep_file_open: bool = False) -> tuple[Any, tuple[int, ...]]:
    """Load the header and check the shape; returns the image and the index of extra (size-1) dimensions."""
    try:
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
