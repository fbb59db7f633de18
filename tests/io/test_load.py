"""Tests for monai_lessmore.io.load: choosing the reader from the path, and the errors for everything else."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.io import SUPPORTED_FORMATS, VolumeReadError, detect_volume_kind, load_volume, read_slice
from tests.io.conftest import random_volume, write_nifti, write_series, write_slices


def test_dispatch_by_kind(tmp_path, rng):
    write_nifti(tmp_path / "a.nii.gz", random_volume(rng, (2, 3, 4)))
    write_series(tmp_path / "dcm", random_volume(rng, (2, 3, 4)))
    write_slices(tmp_path / "png", "v", {1: np.zeros((3, 4))})
    (tmp_path / "b.mha").write_text("placeholder")
    assert detect_volume_kind(tmp_path / "a.nii.gz") == ("nifti", None)
    assert detect_volume_kind(tmp_path / "b.mha") == ("itk", None)
    assert detect_volume_kind(tmp_path / "dcm") == ("dicom", None)
    assert detect_volume_kind(tmp_path / "png") == ("slices", (str(tmp_path / "png"), "v"))
    assert detect_volume_kind(tmp_path / "png" / "v") == ("slices", (str(tmp_path / "png"), "v"))


def test_nonexistent_path(tmp_path):
    with pytest.raises(VolumeReadError, match=r"nope\.nii\.gz: no such file or folder"):
        load_volume(tmp_path / "nope.nii.gz")


def test_unsupported_extension_lists_formats(tmp_path):
    (tmp_path / "scan.h5").write_bytes(b"x")
    with pytest.raises(VolumeReadError, match=r"scan\.h5: unsupported file type; supported: NIfTI") as info:
        load_volume(tmp_path / "scan.h5")
    assert SUPPORTED_FORMATS in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(VolumeReadError, match="folder is empty"):
        load_volume(tmp_path)


def test_folder_with_only_subfolders_points_to_discover(tmp_path, rng):
    (tmp_path / "sub").mkdir()
    write_nifti(tmp_path / "sub" / "a.nii.gz", random_volume(rng, (2, 2, 2)))
    with pytest.raises(VolumeReadError, match=r"holds no volume directly.*discover_volumes"):
        load_volume(tmp_path)


def test_single_dicom_file_points_to_its_folder(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (1, 2, 2)))
    with pytest.raises(VolumeReadError, match=r"slice000\.dcm: is a single DICOM file; pass the folder"):
        load_volume(tmp_path / "slice000.dcm")


def test_single_slice_image_points_to_its_volume(tmp_path):
    write_slices(tmp_path, "case", {3: np.zeros((2, 2))})
    with pytest.raises(VolumeReadError, match=r"single slice image; pass its volume as .*case"):
        load_volume(tmp_path / "case_3.png")


def test_order_and_index_are_validated(tmp_path, rng):
    path = write_nifti(tmp_path / "a.nii.gz", random_volume(rng, (2, 3, 4)))
    with pytest.raises(ValueError, match="order must be"):
        load_volume(path, order="string")
    with pytest.raises(TypeError, match=r"index must be an integer.*1\.5"):
        read_slice(path, 1.5)
    np.testing.assert_array_equal(read_slice(path, np.int64(1)), load_volume(path, order="filename").array[1])
