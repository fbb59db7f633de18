"""Tests for monai_lessmore.io.volume: the Volume container and VolumeReadError."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.io import Volume, VolumeReadError


def test_volume_read_error_is_value_error():
    assert issubclass(VolumeReadError, ValueError)
    with pytest.raises(ValueError, match="bad.nii"):
        raise VolumeReadError("bad.nii: truncated")


def test_volume_fields_and_num_slices():
    vol = Volume(name="v", source="/x/v.nii.gz", array=np.zeros((3, 4, 5), np.float32), kind="nifti")
    assert vol.num_slices == 3
    assert vol.is_uint8_rendered is False and vol.slice_sources is None and vol.meta == {}
    assert "shape=(3, 4, 5)" in repr(vol) and "nifti" in repr(vol)


def test_original_slice_crops_padding():
    array = np.zeros((2, 4, 5), np.float32)
    array[1, :3, :2] = 7
    vol = Volume("v", "f/v", array, "slices", True, ["a", "b"], {"slice_shapes": [(4, 5), (3, 2)]})
    assert vol.original_slice(0).shape == (4, 5)
    np.testing.assert_array_equal(vol.original_slice(1), np.full((3, 2), 7, np.float32))
    plain = Volume("v", "v.nii", array, "nifti")
    np.testing.assert_array_equal(plain.original_slice(1), array[1])
