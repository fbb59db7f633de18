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
