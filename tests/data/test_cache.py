"""The reduction cache's stat index: a volume seen before, unchanged, is found without reading it."""

from __future__ import annotations

import json
import os

import pytest

from monai_lessmore.data import ReductionCache, SliceReductionFilter
from monai_lessmore.data import cache as cache_mod
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.utils.files import content_digest, file_hash


@pytest.fixture()
def settled(monkeypatch):
    """Files written by the test count as settled at once (the default waits ``SETTLED_SECONDS`` after a write)."""
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", 0.0)


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


def test_a_file_replaced_with_the_same_size_and_time_is_read_again(tmp_path, volume, settled):
    cache = ReductionCache(tmp_path / "cache")
    old = cache.digest(volume)
    st = os.stat(volume)
    data = bytearray(volume.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer: same size, other bytes
    tmp = volume.with_name("new.tmp")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, volume)  # another inode, as an unpacked archive or a copy would be
    assert os.stat(volume).st_mtime_ns == st.st_mtime_ns and os.stat(volume).st_size == st.st_size
    assert cache.digest(volume) == file_hash(volume) != old


@pytest.mark.parametrize("field", [3, 4, 5])  # size, modification time, change time
def test_any_changed_stat_field_is_a_miss(tmp_path, volume, settled, monkeypatch, field):
    cache = ReductionCache(tmp_path / "cache")
    real = cache.digest(volume)
    (entry,) = _entries(cache.cache_dir)
    rec = json.loads(entry.read_text())
    rec["files"][0][field] -= 1
    rec["digest"] = "0" * 64
    entry.write_text(json.dumps(rec))
    assert cache.digest(volume) == real


def test_a_file_changed_just_now_is_not_indexed(tmp_path, volume):
    cache = ReductionCache(tmp_path / "cache")
    assert cache.digest(volume) == file_hash(volume)
    assert _entries(cache.cache_dir) == []  # written less than SETTLED_SECONDS ago: its stat may not show a change


@pytest.mark.parametrize("content", ["{not json", "[]", '{"path": 1}', ""])
def test_corrupt_index_entry_is_taken_anew(tmp_path, volume, settled, content):
    cache = ReductionCache(tmp_path / "cache")
    cache.digest(volume)
    (entry,) = _entries(cache.cache_dir)
    entry.write_text(content)
    assert cache.digest(volume) == file_hash(volume)
    assert json.loads(entry.read_text())["digest"] == file_hash(volume)  # and repaired


def test_folder_volume_is_indexed_by_all_its_files(tmp_path, settled):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"{i}.dcm").write_bytes(bytes([i]) * 100)
    cache = ReductionCache(tmp_path / "cache")
    first = cache.digest(series)
    assert first == content_digest(series)
    (series / "3.dcm").write_bytes(b"x")  # a file more
    assert cache.digest(series) == content_digest(series) != first


def test_read_only_cache_still_gives_the_digest(tmp_path, volume, settled):
    blocker = tmp_path / "cache" / "stat"
    blocker.parent.mkdir()
    blocker.write_text("a file where the index folder would go")
    assert ReductionCache(tmp_path / "cache").digest(volume) == file_hash(volume)


def test_missing_volume_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        ReductionCache(tmp_path / "cache").digest(tmp_path / "nothing.nii.gz")
