"""Inflating a gzip file in a background thread into a preallocated buffer, while the caller works on the bytes
that have arrived.

The reader of :func:`monai_lessmore.io.nifti.load_nifti` (``lazy=True``) is built on :class:`InflatingThread`: one
thread inflates the file (ISA-L's ``isal.igzip`` when installed, else the standard library's ``gzip``; both release
the GIL while they inflate) while the caller already renders the slices that have arrived, a second hashes the
compressed bytes it reads (SHA-256, for :func:`monai_lessmore.utils.files.content_digest`), and a third maps the
buffer's pages ahead of the first. :func:`start_readahead` starts such a thread before its reader exists (the
command line, while it imports), and :func:`take_readahead` hands it to the reader. Plain bytes in, plain buffers
out: nothing here knows NIfTI, numpy or nibabel.
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
import time
import weakref
from typing import Any

from monai_lessmore.utils.cpus import available_cpus
from monai_lessmore.utils.files import known_file_digest, remember_file_digest

__all__ = [
    "InflatingThread",
    "open_gzip",
    "open_gzip_stream",
    "anonymous_buffer",
    "populate_in_background",
    "stream_gzip_default",
    "start_readahead",
    "take_readahead",
    "cancel_readaheads",
    "readahead_started",
]

#: bytes inflated per step by an :class:`InflatingThread`, and compressed bytes it reads per step (ISA-L): few
#: steps, because each one needs the GIL, which a busy main thread hands over only every few milliseconds
#: (``sys.getswitchinterval``); small enough that the slices already there are rendered while the rest is read.
#: Measured on one 512x512x600 int16 ``.nii.gz`` inflated while the command line's imports ran: 1.11 s with 1 MiB
#: steps and ISA-L's 512 KiB reads, 0.99 s with 8 MiB of each, against 0.89 s with nothing else running.
PIPELINE_BLOCK = 8 << 20
#: chunks read but not hashed yet, at most: the reading thread waits beyond that
HASH_QUEUE = 4
#: Linux's ``MADV_POPULATE_WRITE`` (5.14 and later): map the pages of a range writable, as a write to each would,
#: without touching their contents
_MADV_POPULATE_WRITE = 23
#: bytes populated per ``madvise`` call by :func:`populate_in_background`
POPULATE_STEP = 16 << 20
#: the most bytes :func:`populate_in_background` maps beyond those its :class:`InflatingThread` has filled: the
#: mapping runs about eight times as fast as ISA-L inflates (0.08 s against 0.6-0.7 s for 300 MiB), so it stays
#: ahead; a header that promises gigabytes the file does not hold then costs this much more than the bytes it has
POPULATE_AHEAD = 64 << 20


def stream_gzip_default(cpus: int | None = None) -> bool:
    """Whether a ``.nii.gz`` is inflated in a background thread by default: when the process may run on two CPUs
    or more (``cpus``: the CPUs it may use; default: :func:`~monai_lessmore.utils.cpus.available_cpus`, its
    affinity and cgroup quota), unless the environment variable ``LESSMORE_STREAM_GZIP`` says otherwise (``0`` or
    ``1``). On one CPU the threads only take turns: 8 volumes of 512x512x300 took 1.10x a bare nibabel load
    streamed and 1.03x read first (measured with ``taskset -c 0``), against 0.73x and 1.01x on two CPUs."""
    env = os.environ.get("LESSMORE_STREAM_GZIP", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return (available_cpus() if cpus is None else int(cpus)) >= 2


def open_gzip(path: str) -> Any:
    """A binary reader of the gzip file ``path``: ISA-L's ``igzip`` (about twice zlib's speed, the same bytes)
    when the ``isal`` package is installed, else the standard library's :func:`gzip.open`."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.open(path, "rb")
    return igzip.open(path, "rb")


def open_gzip_stream(fileobj: Any) -> Any:
    """:func:`open_gzip` of an open binary file, reading it :data:`PIPELINE_BLOCK` bytes at a time where ISA-L
    allows (its ``isal_zlib._GzipReader``, the reader inside ``igzip.IGzipFile``, whose own reads are 512 KiB)."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    reader = getattr(isal_zlib, "_GzipReader", None)
    if reader is None:  # python-isal before 1.6
        return igzip.IGzipFile(fileobj=fileobj, mode="rb")
    return _GzipStream(reader(fileobj, PIPELINE_BLOCK))


class _GzipStream:
    """ISA-L's C gzip reader (all members, CRC and length checked) as a context manager."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def read(self, size: int = -1) -> bytes:
        return self._reader.read(size)

    def readinto(self, b: Any) -> int:
        return self._reader.readinto(b)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "_GzipStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HashingReader(io.RawIOBase):
    """A binary file that passes on the bytes of ``raw`` and hashes them (SHA-256) in the order they are read, in
    a thread of its own: the thread that inflates them does only that (hashing 154 MiB takes 0.13 s, a fifth of
    inflating it, measured). At most :data:`HASH_QUEUE` chunks of the decompressor's reads wait to be hashed."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw, self._sha = raw, hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_QUEUE)
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


class _EmptyBuffer(bytearray):
    """A zero-length buffer that can be weakly referenced (a plain ``bytearray`` cannot; an ``mmap`` cannot be
    empty), as :class:`InflatingThread` holds its buffer."""


def anonymous_buffer(nbytes: int) -> Any:
    """An uninitialised writable buffer of ``nbytes``: anonymous memory of ordinary pages (an ``mmap``).

    numpy asks the kernel for transparent huge pages for arrays of 4 MiB and more (``madvise``); where the
    kernel's huge-page defrag setting is ``madvise`` (a common default), the first touch of such memory may stall
    on compaction: measured here as 0.6-0.9 s of system time, in one run of four, for a 300 MiB buffer filled by
    the reading thread. Ordinary pages cost about the same to fill and never stall that way. Private mappings
    where the system has them (POSIX), an anonymous mapping of the paging file on Windows.

    Args:
        nbytes: the size; 0 or less gives an empty buffer.
    """
    if nbytes <= 0:
        return _EmptyBuffer()
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows
        return mmap.mmap(-1, nbytes)
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def buffer_address(buf: Any) -> int:
    """The address of the first byte of the writable buffer ``buf``."""
    import ctypes

    if len(buf) == 0:
        return 0
    ref = ctypes.c_char.from_buffer(buf)  # holds an export of buf until it is dropped, two lines down
    address = ctypes.addressof(ref)
    del ref
    return address


def populate(buf: Any, start: int, stop: int) -> bool:
    """Map the pages of ``buf[start:stop]`` (``MADV_POPULATE_WRITE``; contents unchanged, also while another thread
    writes there); False where the system cannot (not Linux, an older kernel), and nothing is done."""
    if not sys.platform.startswith("linux") or stop <= start:
        return False
    page = mmap.PAGESIZE
    base = buffer_address(buf)
    first = (base + start) // page * page
    # ctypes releases the GIL for the call
    return _madvise()(first, base + stop - first, _MADV_POPULATE_WRITE) == 0


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    import ctypes

    fn = ctypes.CDLL(None, use_errno=True).madvise
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def populate_in_background(buf: Any, ahead_of: "InflatingThread | None" = None) -> threading.Thread:
    """Map the pages of ``buf`` from its start in a thread of its own, ahead of the thread that inflates into it:
    a fresh page costs a fault and zeroing wherever it is first written; here that work leaves the critical path
    (measured, 300 MiB: inflating 0.61 s into mapped pages against 0.72-0.76 s into fresh ones; mapping them
    0.08 s).

    With ``ahead_of`` (the :class:`InflatingThread` filling ``buf``) it maps at most :data:`POPULATE_AHEAD` bytes
    beyond those filled, and stops when that thread ends or nothing else holds ``buf``: a damaged file whose
    header promises far more voxels than it holds fails after the bytes it has, without all the promised memory
    being taken first. It holds ``buf`` only while it maps, so the memory is never unmapped under it.
    Returns the thread (a daemon).
    """
    nbytes, buf_ref = len(buf), weakref.ref(buf)

    def run() -> None:
        for start in range(0, nbytes, POPULATE_STEP):
            stop = min(nbytes, start + POPULATE_STEP)
            if ahead_of is not None and not ahead_of.wait_for(max(0, stop - POPULATE_AHEAD))[0]:
                return  # the inflating thread ended early (an error, closed)
            held = buf_ref()
            if held is None:
                return
            try:
                if not populate(held, start, stop):
                    return
            finally:
                del held

    thread = threading.Thread(target=run, name="lessmore-populate", daemon=True)
    thread.start()
    return thread


class InflatingThread:
    """A thread that inflates the gzip file ``path`` into ``buf``, from byte ``skip`` of its content on (the bytes
    before are read and dropped), while the caller works on the bytes that have arrived.

    Args:
        path: the gzip file.
        skip: bytes of the inflated content before the first byte of ``buf`` (a NIfTI header and extensions).
        buf: a writable buffer that can be weakly referenced (:func:`anonymous_buffer`), filled from its start.

    Before it hands over the last block it inflates the rest of the file, so that the gzip trailer (CRC-32 and
    length) is checked first: a file damaged where it still inflates fails as a truncated one does. Then, unless
    this process already knew it, it remembers the file's SHA-256, hashed from the compressed bytes as they were read
    (:func:`~monai_lessmore.utils.files.remember_file_digest`). It holds ``buf`` only weakly between its blocks:
    it stops at its next block once nothing else holds the buffer (a caller that gave up half-way) or after
    :meth:`close`, and ends by itself at the last byte or at an error; it never waits on the caller.
    """

    def __init__(self, path: str, skip: int, buf: Any) -> None:
        self.path, self.nbytes = path, len(buf)
        #: wall-clock time before the file was opened: when this read began
        self.started = time.time()
        self._filled = 0
        self._error: BaseException | None = None
        self._digest: tuple[str, os.stat_result] | None = None  # the file's SHA-256 and stat, once hashed
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._fill, args=(int(skip), weakref.ref(buf)),
                                        name=f"lessmore-read {os.path.basename(path)}", daemon=True)
        self._thread.start()

    def _fill(self, skip: int, buf_ref: Any) -> None:
        nbytes, total = self.nbytes, skip
        hashed = None
        try:
            with open(self.path, "rb") as raw:
                st = os.fstat(raw.fileno())
                if known_file_digest(self.path, st) is None:  # e.g. a cache lookup has just taken it
                    hashed = HashingReader(raw)
                with open_gzip_stream(raw if hashed is None else hashed) as fh:
                    while skip:  # the header: read past it (the hashing stream does not seek)
                        got = len(fh.read(min(skip, PIPELINE_BLOCK)))
                        if not got:
                            raise EOFError(f"the file ends inside its header ({total - skip} of {total} bytes)")
                        skip -= got
                    done = 0
                    while done < nbytes and not self._stop.is_set():
                        buf = buf_ref()
                        if buf is None:  # nothing reads these bytes any more
                            break
                        try:
                            with memoryview(buf) as view:
                                got = fh.readinto(view[done : min(nbytes, done + PIPELINE_BLOCK)])
                        finally:  # also on an error: its traceback must not keep the buffer alive
                            del buf
                        if not got:
                            raise EOFError(f"the file ends after {done} of {nbytes} voxel bytes")
                        done += got
                        if done == nbytes:
                            # inflate to the end, so that the gzip trailer's CRC-32 and length are checked before
                            # the last bytes are handed over: damage that still inflates is an error, not data
                            while fh.read(PIPELINE_BLOCK):
                                pass
                        with self._cond:
                            self._filled = done
                            self._cond.notify_all()
                    # the input's SHA-256 from the bytes read, not from a second read of the file
                    if done == nbytes and hashed is not None:
                        while hashed.read(PIPELINE_BLOCK):
                            pass
                        digest = (hashed.hexdigest(), st)  # waits for the hashing thread: not under the lock
                        with self._cond:
                            self._digest = digest
                        remember_file_digest(self.path, *digest)
        except BaseException as err:  # noqa: BLE001 - handed to the caller by wait_for()
            with self._cond:
                self._error = err
        finally:
            if hashed is not None:
                hashed.stop()
            with self._cond:
                self._stop.set()
                self._cond.notify_all()

    def wait_for(self, end: int) -> tuple[bool, BaseException | None]:
        """Block until the first ``end`` bytes of the buffer have arrived: ``(True, None)``; or, when the thread
        ended before (an error, or :meth:`close`), ``(False, error)``, the error ``None`` after :meth:`close`."""
        with self._cond:
            while self._filled < end and not self._stop.is_set():
                self._cond.wait()
            return (True, None) if self._filled >= end else (False, self._error)

    def remember_digest(self) -> None:
        """Remember the file's SHA-256 again if this thread has hashed it already: a reader that takes a read-ahead
        over may have made this process forget it in between (:func:`take_readahead`); a thread still reading
        remembers it when it ends."""
        with self._cond:
            digest = self._digest
        if digest is not None:
            remember_file_digest(self.path, *digest)

    def close(self) -> None:
        """Stop the thread at its next block and wait for it."""
        self._stop.set()
        self._thread.join()

    def join(self) -> None:
        """Wait for the thread to end by itself (at the file's last byte, or at an error)."""
        self._thread.join()


#: the most bytes that deflate inflates one compressed byte to (RFC 1951: a 258-byte match in 2 bits, about 1032:1);
#: a header that promises more bytes than that of its file is corrupt
MAX_INFLATE_RATIO = 1032

#: read-aheads started by :func:`start_readahead` and not taken or cancelled yet: key -> (buffer, thread)
_READAHEADS: dict[tuple, tuple[Any, InflatingThread]] = {}
_READAHEAD_LOCK = threading.Lock()


def _readahead_key(path: str, skip: int, nbytes: int) -> tuple:
    fd = os.open(path, os.O_RDONLY)  # the stat of an open file: NFS revalidates a file's attributes when it is opened
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, int(skip), int(nbytes))


def start_readahead(path: str, skip: int, nbytes: int) -> bool:
    """Start inflating bytes ``skip`` to ``skip + nbytes`` of the content of the gzip file ``path`` into a fresh
    buffer (:class:`InflatingThread`, pages mapped ahead by :func:`populate_in_background`), for a reader to take
    over later with :func:`take_readahead`; e.g. while the rest of a program is still being imported.

    Returns False, starting nothing, when the file cannot be read, ``nbytes`` is not positive, the file is too
    small to inflate to that many bytes (:data:`MAX_INFLATE_RATIO`), or the memory cannot be mapped or a thread
    cannot start (a ``ulimit -v``, no overcommit): the reader then reads the file itself and words any error with its
    name. A read-ahead nobody takes holds its buffer until :func:`cancel_readaheads`.
    """
    try:
        key = _readahead_key(path, skip, nbytes)
    except OSError:
        return False
    if nbytes <= 0 or skip < 0 or nbytes + skip > MAX_INFLATE_RATIO * key[2]:
        return False
    try:
        buf = anonymous_buffer(nbytes)
    except (OSError, MemoryError, OverflowError, ValueError):
        return False
    try:
        thread = InflatingThread(path, skip, buf)
    except RuntimeError:  # no thread can start
        return False
    try:
        populate_in_background(buf, ahead_of=thread)
    except RuntimeError:
        pass  # inflating into pages not mapped ahead: slower, the same bytes
    with _READAHEAD_LOCK:
        old = _READAHEADS.pop(key, None)
        _READAHEADS[key] = (buf, thread)
    if old is not None:
        old[1].close()
    return True


def take_readahead(path: str, skip: int, nbytes: int) -> tuple[Any, InflatingThread] | None:
    """The buffer and thread of a :func:`start_readahead` of exactly these bytes of ``path``, if one was started
    and the file is the same and unchanged since (device, inode, size, modification and change times), else
    ``None``; the caller then owns them. Every other read-ahead is cancelled (the caller reads something else).

    The read-ahead is this reader's read of the file, so the SHA-256 it took is the file's digest for this read
    even where it was taken before the reader began (a read-ahead that ended while the program was still
    importing) and the reader has since made this process forget older digests of the file."""
    try:
        key = _readahead_key(path, skip, nbytes)
    except OSError:
        key = None
    with _READAHEAD_LOCK:
        hit = _READAHEADS.pop(key, None) if key is not None else None
    cancel_readaheads()
    if hit is not None:
        hit[1].remember_digest()
    return hit


def readahead_started(path: str) -> float | None:
    """The wall-clock time at which a read-ahead of the file ``path`` not taken yet began (the earliest, if several),
    or ``None``: a reader that takes it over began reading then, not when it took it (e.g. for
    :func:`monai_lessmore.data.cache.settled`)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _READAHEAD_LOCK:
        times = [t.started for k, (_b, t) in _READAHEADS.items() if k[:2] == (st.st_dev, st.st_ino)]
    return min(times, default=None)


def cancel_readaheads(keep: str | None = None) -> None:
    """Stop the read-aheads not taken yet, and free their buffers; except those of the file ``keep``, if given.
    Each thread stops at its next block (:meth:`InflatingThread.close`)."""
    try:
        same = None if keep is None else os.stat(keep)
    except OSError:
        same = None
    with _READAHEAD_LOCK:
        drop = [k for k in _READAHEADS if keep is None or same is None or k[:2] != (same.st_dev, same.st_ino)]
        stopped = [_READAHEADS.pop(k) for k in drop]
    for _buf, thread in stopped:
        thread.close()
