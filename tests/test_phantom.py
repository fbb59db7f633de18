from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.phantom import make_phantom, write_phantom_dataset


def test_phantom_is_hu_valued_and_changes_smoothly_along_z():
    vol = make_phantom(120, 64, seed=3)
    assert vol.shape == (120, 64, 64) and vol.dtype == np.float32
    assert vol.min() < -900 and vol.max() > 1000  # air and cortical bone
    step = np.abs(np.diff(vol, axis=0)).mean(axis=(1, 2))
    far = np.abs(vol[60:] - vol[:60]).mean(axis=(1, 2))
    assert step.mean() < far.mean() / 2  # neighbours are near-duplicates, distant slices are not


def test_phantom_is_deterministic_per_seed():
    np.testing.assert_array_equal(make_phantom(20, 32, seed=1), make_phantom(20, 32, seed=1))
    assert not np.array_equal(make_phantom(20, 32, seed=1), make_phantom(20, 32, seed=2))


def test_phantom_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_slices >= 1 and size >= 8"):
        make_phantom(0, 64)


def test_written_phantom_reads_back_unchanged(tmp_path):
    from monai_lessmore.io import load_volume

    paths = write_phantom_dataset(tmp_path / "ph", n_volumes=2, slices=(20, 30), size=32)
    assert [p.name for p in paths] == ["phantom_00.nii.gz", "phantom_01.nii.gz"]
    vol = load_volume(str(paths[1]))
    expected = make_phantom(30, 32, seed=1).astype(np.int16).astype(np.float32)
    np.testing.assert_array_equal(vol.array, expected)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_phantom_dataset(tmp_path / "file")
