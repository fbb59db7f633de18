"""The reduction cache's stat index: a volume seen before, unchanged, is found without reading it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from monai_lessmore.data import ReductionCache, SliceReductionFilter
from monai_lessmore.data import cache as cache_mod
from monai_lessmore.io import VolumeReadError
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.utils.files import content_digest, file_hash


pytestmark = pytest.mark.skipif(os.name != "posix", reason="the stat index is used on POSIX systems only")


@pytest.fixture()
def settled(monkeypatch):
    """Files written by the test count as settled at once (the default waits ``SETTLED_SECONDS`` after a change;
    minus infinity: whatever the file system's clock says)."""
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", float("-inf"))


@pytest.fixture()
def volume(tmp_path):
    (path,) = write_phantom_dataset(tmp_path / "data", n_volumes=1, slices=(20, 20), size=32)
    return path


def _no_reads(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the volume was read to find its digest")

    monkeypatch.setattr(cache_mod, "content_digest", fail)


def _entries(cache_dir):
    return sorted((cache_dir / "stat").glob("*.stat"))


def test_digest_equals_the_content_digest_and_is_then_taken_from_the_index(tmp_path, volume, settled, monkeypatch):
    cache = ReductionCache(tmp_path / "cache")
    expected = file_hash(volume)
    assert cache.digest(volume) == expected == content_digest(volume)
    (entry,) = _entries(cache.cache_dir)
    assert json.loads(entry.read_text())["digest"] == expected
    _no_reads(monkeypatch)
    assert ReductionCache(tmp_path / "cache").digest(volume) == expected  # a new process would find it too


def test_filter_hit_reads_no_volume(tmp_path, volume, settled, monkeypatch):
    datalist = [{"image": str(volume)}]
    first = SliceReductionFilter(threshold=6, cache_dir=str(tmp_path / "cache"))(datalist)
    _no_reads(monkeypatch)
    monkeypatch.setattr("monai_lessmore.io.load_volume", lambda *a, **k: pytest.fail("the volume was loaded"))
    flt = SliceReductionFilter(threshold=6, cache_dir=str(tmp_path / "cache"))
    assert flt(datalist) == first and flt.records[0]["cached"] is True


def test_a_file_rewritten_with_the_same_size_and_time_is_read_again(tmp_path, volume, settled):
    cache = ReductionCache(tmp_path / "cache")
    old = cache.digest(volume)
    st = os.stat(volume)
    data = bytearray(volume.read_bytes())
    data[-5] ^= 0xFF  # in the gzip trailer's CRC-32: same length, other bytes
    with open(volume, "r+b") as fh:  # in place: the same inode
        fh.write(bytes(data))
    os.utime(volume, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its time set back, as rsync -t would
    assert os.stat(volume).st_ino == st.st_ino and os.stat(volume).st_mtime_ns == st.st_mtime_ns
    if os.stat(volume).st_ctime_ns == st.st_ctime_ns:
        pytest.skip("this file system does not keep change times apart from modification times")
    assert cache.digest(volume) == file_hash(volume) != old


@pytest.mark.parametrize("field", [0, 1, 2, 3, 4, 5])  # name, device, inode, size, modification and change times
def test_any_changed_stat_field_is_a_miss(tmp_path, volume, settled, field):
    cache = ReductionCache(tmp_path / "cache")
    real = cache.digest(volume)
    (entry,) = _entries(cache.cache_dir)
    rec = json.loads(entry.read_text())
    rec["files"][0][field] = rec["files"][0][field] + ("x" if field == 0 else 1)
    rec["digest"] = "0" * 64
    entry.write_text(json.dumps(rec))
    assert cache.digest(volume) == real


def test_an_index_hit_is_remembered_so_the_reader_need_not_hash(tmp_path, volume, settled, monkeypatch):
    from monai_lessmore.utils import files

    ReductionCache(tmp_path / "cache").digest(volume)
    monkeypatch.setattr(files, "_memo", {})  # a new process
    with monkeypatch.context() as m:
        _no_reads(m)  # a hit
        ReductionCache(tmp_path / "cache").digest(volume)
    assert files.known_file_digest(volume, os.stat(volume)) == file_hash(volume)


def test_a_remembered_digest_is_not_indexed(tmp_path, volume, settled, monkeypatch):
    """A digest this process took earlier may come from a read racing a write: only a fresh read enters the index."""
    from monai_lessmore.utils import files

    files.remember_file_digest(volume, "f" * 64, os.stat(volume))  # what an earlier, racy read might have left
    assert ReductionCache(tmp_path / "cache").digest(volume) == file_hash(volume)
    (entry,) = _entries(tmp_path / "cache")
    assert json.loads(entry.read_text())["digest"] == file_hash(volume)


def test_the_settled_time_counts_from_before_the_read(tmp_path, volume, monkeypatch):
    """A file changed 1 s before the digest was started is not indexed, however long the read takes."""
    ctime = os.stat(volume).st_ctime
    calls = []

    def clock():  # the read "takes" 99 s: the check must use the time before it
        calls.append(None)
        return ctime + (1.0 if len(calls) == 1 else 100.0)

    monkeypatch.setattr(cache_mod, "_clock", clock)
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", 5.0)
    ReductionCache(tmp_path / "cache").digest(volume)
    assert calls and _entries(tmp_path / "cache") == []


def test_a_file_changed_just_now_is_not_indexed(tmp_path, volume, monkeypatch):
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", 1e9)  # whatever the machine's speed
    cache = ReductionCache(tmp_path / "cache")
    assert cache.digest(volume) == file_hash(volume)
    assert _entries(cache.cache_dir) == []


def test_stat_index_off_reads_every_time(tmp_path, volume, settled, monkeypatch):
    cache = ReductionCache(tmp_path / "cache", stat_index=False)
    assert cache.digest(volume) == file_hash(volume)
    assert _entries(cache.cache_dir) == []
    flt = SliceReductionFilter(threshold=6, cache_dir=str(tmp_path / "cache"), cache_stat_index=False)
    assert flt.cache.stat_index is False


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"path": 1}', "", '{"path": "%s", "files": %s, "digest": null}', "\xff\xfe"]
)
def test_corrupt_index_entry_is_taken_anew(tmp_path, volume, settled, content):
    cache = ReductionCache(tmp_path / "cache")
    cache.digest(volume)
    (entry,) = _entries(cache.cache_dir)
    if "%s" in content:  # right path and files, no digest
        rec = json.loads(entry.read_text())
        content = content % (rec["path"], json.dumps(rec["files"]))
    entry.write_bytes(content.encode("latin-1"))
    assert cache.digest(volume) == file_hash(volume)
    assert json.loads(entry.read_text())["digest"] == file_hash(volume)  # and repaired


def test_folder_volume_is_indexed_by_all_its_files(tmp_path, settled, monkeypatch):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"{i}.dcm").write_bytes(bytes([i]) * 100)
    cache = ReductionCache(tmp_path / "cache")
    first = cache.digest(series)
    assert first == content_digest(series, fresh=True)
    with monkeypatch.context() as m:
        _no_reads(m)
        assert cache.digest(series) == first  # a hit: no file read
    (series / "3.dcm").write_bytes(b"x")  # a file more
    assert cache.digest(series) == content_digest(series, fresh=True) != first


def test_unwritable_index_still_gives_the_digest(tmp_path, volume, settled):
    blocker = tmp_path / "cache" / "stat"
    blocker.parent.mkdir()
    blocker.write_text("a file where the index folder would go")
    assert ReductionCache(tmp_path / "cache").digest(volume) == file_hash(volume)


def test_missing_volume_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        ReductionCache(tmp_path / "cache").digest(tmp_path / "nothing.nii.gz")


@pytest.mark.parametrize("change", ["rewrite", "delete"])
def test_a_volume_changed_while_it_was_read_is_not_indexed(tmp_path, volume, settled, monkeypatch, change):
    real = cache_mod.content_digest

    def read_then_change(source, **kwargs):
        digest = real(source, **kwargs)
        if change == "rewrite":
            volume.write_bytes(volume.read_bytes() + b"more")
        else:
            volume.unlink()
        return digest

    monkeypatch.setattr(cache_mod, "content_digest", read_then_change)
    original = file_hash(volume)
    assert ReductionCache(tmp_path / "cache").digest(volume) == original  # the digest of the bytes read
    assert _entries(tmp_path / "cache") == []


def test_no_index_where_change_times_are_not_kept(tmp_path, volume, settled, monkeypatch):
    monkeypatch.setattr(cache_mod, "change_time_reliable", lambda path: False)
    cache = ReductionCache(tmp_path / "cache")
    assert cache.digest(volume) == file_hash(volume)
    assert _entries(cache.cache_dir) == []


@pytest.mark.parametrize("bad", ["false", 0, None])
def test_stat_index_must_be_a_bool(tmp_path, bad):
    with pytest.raises(ValueError, match="stat_index must be True or False"):
        ReductionCache(tmp_path / "cache", stat_index=bad)
    with pytest.raises(ValueError, match="stat_index must be True or False"):
        SliceReductionFilter(cache_dir=str(tmp_path / "cache"), cache_stat_index=bad)


def test_a_detached_header_whose_data_file_is_missing_gets_the_reader_s_error(tmp_path):
    import itk

    path = tmp_path / "v.mhd"
    itk.imwrite(itk.image_from_array(np.zeros((4, 5, 6), dtype=np.int16)), str(path), compression=False)
    (tmp_path / "v.raw").unlink()
    f = SliceReductionFilter(cache_dir=str(tmp_path / "cache"), on_error="raise")
    with pytest.raises(VolumeReadError, match=r"(?s)v\.mhd.*data file it points to"):
        f([{"image": str(path)}])
