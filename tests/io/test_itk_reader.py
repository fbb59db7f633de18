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


# ---------------------------------------------------------------- stored-dtype reading (lazy volumes)
def _eager_reference(zyx: np.ndarray, direction: np.ndarray, spacing, origin) -> np.ndarray:
    """What the reader returned before it kept ITK's buffer: the (x, y, z) grid reoriented, float32."""
    from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation

    xyz = zyx.transpose(2, 1, 0)
    orientation = axial_orientation(lps_grid_to_ras_affine(direction, spacing, origin), xyz.shape)
    return np.ascontiguousarray(apply_axial_orientation(xyz, orientation), dtype=np.float32)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint8", "int32", "float32", "float64"])
def test_lazy_volume_keeps_the_stored_dtype_and_renders_the_same(tmp_path, rng, suffix, direction, dtype):
    from monai_lessmore.io.volume import LazyVolume
    from monai_lessmore.reduction import SliceReducer
    from monai_lessmore.reduction.preprocess import StoredStack, to_uint8

    high = 250 if dtype == "uint8" else 3000
    zyx = rng.integers(0, high, (6, 7, 8)).astype(dtype) + (rng.random((6, 7, 8)) if dtype[0] == "f" else 0)
    zyx = zyx.astype(dtype)
    zyx[:, :, 2] = 5  # constant along one axis: a constant slice whichever axis becomes the slice axis
    spacing, origin = (0.5, 1.5, 2.5), (-10.0, 20.0, 30.0)
    path = _write_itk(tmp_path / f"v{suffix}", zyx, DIRECTIONS[direction], spacing, origin)
    expected = _eager_reference(zyx, DIRECTIONS[direction], spacing, origin)
    eager, lazy = load_volume(path), load_volume(path, lazy=True)
    np.testing.assert_array_equal(eager.array, expected)
    assert isinstance(lazy, LazyVolume) and isinstance(lazy.slices(), StoredStack)
    assert lazy.slices().raw.dtype == np.dtype(dtype) and lazy.meta["stored_dtype"] == dtype
    assert lazy.num_slices == len(expected) and lazy.meta["nonfinite_voxels"] == 0
    np.testing.assert_array_equal(to_uint8(lazy.slices()), to_uint8(expected))
    np.testing.assert_array_equal(to_uint8(lazy.slices(), window=(100, 900)), to_uint8(expected, window=(100, 900)))
    a, b = SliceReducer().reduce(lazy.slices()), SliceReducer().reduce(expected)
    assert a.kept.tolist() == b.kept.tolist() and a.hashes == b.hashes
    np.testing.assert_array_equal(lazy.take([3, 0, -1]), expected[[3, 0, -1]])  # only these slices converted
    np.testing.assert_array_equal(lazy.original_slice(2), expected[2])
    np.testing.assert_array_equal(lazy.array, expected)  # made on first access, equal to the eager array
    assert lazy.array.dtype == np.float32 and lazy.array.flags.c_contiguous
    np.testing.assert_array_equal(read_slice(path, -2), expected[-2])


def test_lazy_volume_keeps_itks_buffer_alive(tmp_path, rng):
    """The stored voxels are ITK's own buffer (no copy); it must outlive the image object the reader dropped."""
    import gc

    zyx = random_volume(rng, (5, 32, 32))
    path = _write_itk(tmp_path / "v.nrrd", zyx, np.eye(3), (1, 1, 1), (0, 0, 0))
    lazy = load_volume(path, lazy=True)
    chunk = lazy.slices().raw[1:3]  # a view: it alone must keep the buffer
    del lazy
    gc.collect()
    scratch = [np.full(zyx.shape, 7, np.int16) for _ in range(4)]  # memory that would reuse a freed buffer
    np.testing.assert_array_equal(chunk, zyx[1:3])
    del scratch


def test_nonfinite_voxels_counted_without_converting(tmp_path):
    zyx = np.zeros((3, 4, 5), dtype=np.float32)
    zyx[0, 0, 0], zyx[2, 1, 1] = np.nan, -np.inf
    path = _write_itk(tmp_path / "nan.mha", zyx, np.eye(3), (1, 1, 1), (0, 0, 0))
    assert load_volume(path, lazy=True).meta["nonfinite_voxels"] == 2
    with pytest.raises(VolumeReadError, match=r"nan\.mha: 2 NaN/Inf"):
        load_volume(path, lazy=True).require_finite()


def test_read_slice_out_of_range_names_the_file(tmp_path, rng):
    path = _write_itk(tmp_path / "v.mha", random_volume(rng, (3, 4, 5)), np.eye(3), (1, 1, 1), (0, 0, 0))
    with pytest.raises(IndexError, match=r"slice index 3 is out of range for .*v\.mha, which has 3 slices"):
        read_slice(path, 3)
