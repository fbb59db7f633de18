from __future__ import annotations

import json
import os

import pytest

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_json, content_digest, volume_files


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    dest = tmp_path / "sub" / "out.json"
    atomic_write_json(dest, {"a": 1})
    atomic_write_json(dest, {"a": 2})
    assert json.loads(dest.read_text()) == {"a": 2}
    assert os.listdir(dest.parent) == ["out.json"]


def test_failed_write_keeps_previous_version(tmp_path, monkeypatch):
    dest = tmp_path / "out.bin"
    atomic_write_bytes(dest, b"old")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_content_digest_follows_content_not_name(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 100)
    assert content_digest(a) == content_digest(b)
    b.write_bytes(b"y" * 100)
    assert content_digest(a) != content_digest(b)


def test_folder_and_slice_volume_digests(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"one")
    (series / "2.dcm").write_bytes(b"two")
    before = content_digest(series)
    (series / "2.dcm").write_bytes(b"TWO")
    assert content_digest(series) != before
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(3):
        (slices / f"vol_{i}.png").write_bytes(bytes([i]))
    (slices / "other_0.png").write_bytes(b"z")
    assert [p.name for p in volume_files(slices / "vol")] == ["vol_0.png", "vol_1.png", "vol_2.png"]
    digest = content_digest(slices / "vol")
    (slices / "other_0.png").write_bytes(b"changed")
    assert content_digest(slices / "vol") == digest  # another volume's file does not count
    with pytest.raises(FileNotFoundError, match="does not exist"):
        content_digest(tmp_path / "missing")


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "summary.json", {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
