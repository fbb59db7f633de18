"""Tests for monai_lessmore.io.itk_reader: NRRD/MetaImage read via ITK match the NIfTI convention exactly."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.io import VolumeReadError, load_volume, read_slice
from monai_lessmore.io.itk_reader import lps_grid_to_ras_affine
from tests.io.conftest import random_volume, write_nifti

itk = pytest.importorskip("itk")  # importing itk takes seconds: this module pays it once
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")

DIRECTIONS = {
    "identity": np.eye(3),
    # voxel x -> posterior, y -> inferior, z -> right: every axis moved, two of them flipped
    "permuted": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}


def _write_itk(path, zyx: np.ndarray, direction: np.ndarray, spacing, origin):
    image = itk.image_from_array(np.ascontiguousarray(zyx))
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    itk.imwrite(image, str(path))
    return path


def test_identity_direction_is_already_the_lps_view(tmp_path, rng):
    zyx = random_volume(rng, (4, 5, 6))
    path = _write_itk(tmp_path / "v.nrrd", zyx, np.eye(3), (0.7, 0.8, 2.0), (1, 2, 3))
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, zyx)  # (z, y, x) of an LPS grid == (S, H, W)
    assert vol.kind == "itk" and vol.name == "v" and vol.array.dtype == np.float32
    assert vol.meta["spacing"] == pytest.approx((2.0, 0.8, 0.7))
    np.testing.assert_array_equal(read_slice(path, 2), vol.array[2])


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_same_array_as_nifti_with_matching_affine(tmp_path, rng, suffix, direction):
    zyx = random_volume(rng, (3, 4, 5))
    spacing, origin = (0.5, 1.5, 2.5), (-10.0, 20.0, 30.0)
    itk_vol = load_volume(_write_itk(tmp_path / f"v{suffix}", zyx, DIRECTIONS[direction], spacing, origin))
    affine = lps_grid_to_ras_affine(DIRECTIONS[direction], spacing, origin)
    nii_vol = load_volume(write_nifti(tmp_path / "v.nii.gz", np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine))
    np.testing.assert_array_equal(itk_vol.array, nii_vol.array)
    np.testing.assert_allclose(itk_vol.meta["affine"], nii_vol.meta["affine"], atol=1e-5)
    assert itk_vol.meta["slice_axis"] == nii_vol.meta["slice_axis"]


def test_2d_image_is_an_error(tmp_path):
    path = tmp_path / "flat.mha"
    itk.imwrite(itk.image_from_array(np.zeros((4, 5), np.int16)), str(path))
    with pytest.raises(VolumeReadError, match=r"flat\.mha.*2D image.*3D volume"):
        load_volume(path)


def test_corrupt_file_is_an_error(tmp_path):
    path = tmp_path / "junk.nrrd"
    path.write_text("this is not nrrd\n")
    with pytest.raises(VolumeReadError, match=r"junk\.nrrd.*ITK could not read"):
        load_volume(path)
