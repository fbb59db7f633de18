"""The background inflater under the .nii.gz reader: bytes, order, digests, failures, page mapping."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import threading

import numpy as np
import pytest

from monai_lessmore.utils import files, gzstream
from monai_lessmore.utils.gzstream import HashingReader, InflatingThread, anonymous_buffer


@pytest.fixture
def gz(tmp_path):
    data = np.random.default_rng(0).integers(0, 40, 300_000, dtype=np.uint8).tobytes()  # compressible
    path = tmp_path / "data.gz"
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path, data


@pytest.mark.parametrize("block", [333, 1 << 20])
def test_inflates_the_bytes_after_skip_and_remembers_the_file_digest(gz, monkeypatch, block):
    path, data = gz
    monkeypatch.setattr(gzstream, "PIPELINE_BLOCK", block)
    monkeypatch.setattr(files, "_memo", {})
    buf = anonymous_buffer(len(data) - 1000)
    thread = InflatingThread(str(path), 1000, buf)
    assert thread.wait_for(10) == (True, None)
    assert thread.wait_for(len(buf)) == (True, None)
    thread.join()
    assert bytes(buf) == data[1000:]
    assert files.known_file_digest(path, os.stat(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_truncated_file_is_reported_to_the_waiting_caller(gz):
    path, data = gz
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    buf = anonymous_buffer(len(data))
    ok, err = InflatingThread(str(path), 0, buf).wait_for(len(buf))
    assert not ok and isinstance(err, (EOFError, OSError))


def test_close_stops_the_thread_and_the_wait_says_so_without_an_error(gz, monkeypatch):
    path, data = gz
    monkeypatch.setattr(gzstream, "PIPELINE_BLOCK", 64)
    release = threading.Event()
    real = gzstream.open_gzip_stream

    class Slow(io.RawIOBase):  # the first block waits until the test has called close()
        def __init__(self, fh):
            self.fh = fh

        def readinto(self, b):
            release.wait(30)
            return self.fh.readinto(b)

        def read(self, n=-1):
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(gzstream, "open_gzip_stream", lambda raw: Slow(real(raw)))
    buf = anonymous_buffer(len(data))
    thread = InflatingThread(str(path), 0, buf)
    closer = threading.Thread(target=thread.close)
    closer.start()
    thread._stop.wait(30)  # close() has asked the thread to stop before its first block is let through
    release.set()
    closer.join(30)
    assert thread.wait_for(len(buf)) == (False, None)


@pytest.mark.parametrize("private", [True, False])  # False: as on Windows, which has no MAP_PRIVATE
def test_anonymous_buffer_is_writable_memory_of_the_size_asked(monkeypatch, private):
    import mmap
    import weakref

    if not private:
        monkeypatch.delattr(mmap, "MAP_PRIVATE", raising=False)
    for n in (3 * 4096 + 5, 0):
        buf = anonymous_buffer(n)
        assert len(buf) == n and weakref.ref(buf)() is buf  # the inflating thread holds it weakly
        buf[:] = b"\x07" * n
        assert bytes(buf) == b"\x07" * n


@pytest.mark.parametrize("private", [True, False])
def test_inflating_into_every_kind_of_buffer(gz, monkeypatch, private):
    import mmap

    path, data = gz
    if not private:
        monkeypatch.delattr(mmap, "MAP_PRIVATE", raising=False)
    for skip, n in ((0, len(data)), (len(data), 0)):
        buf = anonymous_buffer(n)
        thread = InflatingThread(str(path), skip, buf)
        assert thread.wait_for(n) == (True, None)
        thread.join()
        assert bytes(buf) == data[skip:]


def test_mapping_the_pages_ahead_keeps_what_was_written():
    """The pages are mapped while the reading thread writes into them: the advice must never change contents."""
    buf = np.frombuffer(anonymous_buffer(5 * 4096 + 123), dtype=np.uint8)
    buf[: 3 * 4096 + 7] = np.arange(3 * 4096 + 7) % 251  # part written, part never touched
    ok = gzstream.populate(buf, 1000, buf.nbytes)
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) if hasattr(os, "uname") else ()
    if sys.platform.startswith("linux") and len(release) == 2 and release >= (5, 14):
        assert ok  # the advice exists there: a wrong constant or address would make it fail
    np.testing.assert_array_equal(buf[: 3 * 4096 + 7], np.arange(3 * 4096 + 7) % 251)
    assert gzstream.populate(buf, 10, 10) is False  # an empty range: nothing to do


def _resident_bytes(buf) -> int:
    """Bytes of the page-aligned buffer ``buf`` that are mapped in memory (Linux's ``mincore``)."""
    import ctypes
    import mmap

    pages = -(-len(buf) // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    mincore = ctypes.CDLL(None, use_errno=True).mincore
    mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    assert mincore(gzstream.buffer_address(buf), len(buf), vec) == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page mapping ahead and mincore are Linux's")
def test_pages_are_mapped_only_a_bounded_way_ahead_of_the_bytes_a_file_holds(tmp_path, monkeypatch):
    """A header that promises far more voxels than its file holds: the mapping stops near the bytes that came."""
    if not gzstream.populate(anonymous_buffer(4096), 0, 4096):
        pytest.skip("no MADV_POPULATE_WRITE here (Linux before 5.14): nothing is mapped ahead")
    monkeypatch.setattr(gzstream, "POPULATE_STEP", 1 << 20)
    monkeypatch.setattr(gzstream, "POPULATE_AHEAD", 4 << 20)
    held = 3 << 20
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(1).integers(0, 256, held, dtype=np.uint8).tobytes(), 1))
    promised = 64 << 20

    control = anonymous_buffer(promised)  # mapped ahead with no inflating thread to pace it: every page
    gzstream.populate_in_background(control).join(timeout=60)
    assert _resident_bytes(control) == promised

    buf = anonymous_buffer(promised)
    thread = InflatingThread(str(path), 0, buf)
    mapper = gzstream.populate_in_background(buf, ahead_of=thread)
    ok, err = thread.wait_for(promised)
    assert not ok and isinstance(err, EOFError)
    mapper.join(timeout=60)
    assert not mapper.is_alive()
    assert held <= _resident_bytes(buf) <= held + (4 << 20) + (1 << 20)


def test_the_page_mapping_thread_holds_no_buffer_while_it_waits_and_stops_once_it_is_gone(monkeypatch):
    import weakref

    if not gzstream.populate(anonymous_buffer(4096), 0, 4096):
        pytest.skip("no MADV_POPULATE_WRITE here (not Linux, or before 5.14): the thread ends after its first step")
    monkeypatch.setattr(gzstream, "POPULATE_STEP", 1 << 20)
    monkeypatch.setattr(gzstream, "POPULATE_AHEAD", 1 << 20)

    class Paced:  # an inflating thread that has filled nothing yet, until `go`
        def __init__(self):
            self.asked, self.go = threading.Event(), threading.Event()

        def wait_for(self, end):
            if end > 0:
                self.asked.set()
                self.go.wait(60)
            return True, None

    pace = Paced()
    buf = anonymous_buffer(8 << 20)
    alive = weakref.ref(buf)
    mapper = gzstream.populate_in_background(buf, ahead_of=pace)
    assert pace.asked.wait(60)  # the first step is mapped; the second waits for bytes to arrive
    del buf  # a caller that gave up
    assert alive() is None  # the waiting thread did not keep 8 MiB alive
    pace.go.set()
    mapper.join(timeout=60)
    assert not mapper.is_alive()


def test_the_hashing_thread_hashes_in_order_and_a_failure_never_blocks_the_reader():
    data = bytes(range(256)) * 5000
    reader = HashingReader(io.BytesIO(data))
    while reader.read(777):
        pass
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()

    class Failing:
        def update(self, chunk):
            raise MemoryError("no memory")

    reader = HashingReader(io.BytesIO(data))
    reader._sha = Failing()

    def read_all():
        while reader.read(100):  # far more chunks than the queue holds: the reader must go on
            pass

    worker = threading.Thread(target=read_all, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the reader waits on the failed hashing thread"
    with pytest.raises(RuntimeError, match="hashing the file failed"):
        reader.hexdigest()
    assert not reader._thread.is_alive()
