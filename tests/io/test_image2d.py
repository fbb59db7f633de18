"""Tests for monai_lessmore.io.image2d: one reader of 2-D images for slice folders and classification inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_lessmore.io import ImageReadError, load_volume, read_image_2d, read_raster, read_slice
from monai_lessmore.io.dicom import read_dicom_file
from monai_lessmore.reduction import SliceReducer
from tests.io.conftest import write_dicom, write_nifti

_VALUES16 = np.array([[0, 100, 255, 256], [1000, 4095, 40000, 65535]], np.uint16)


def test_16bit_png_keeps_its_values(tmp_path):
    Image.fromarray(_VALUES16).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I;16")
    assert np.asarray(Image.open(tmp_path / "a.png").convert("L")).max() == 255  # what Pillow's convert would give
    values, is_8bit = read_raster(tmp_path / "a.png")
    np.testing.assert_array_equal(values, _VALUES16.astype(np.float32))
    assert values.dtype == np.float32 and not is_8bit
    np.testing.assert_array_equal(read_image_2d(tmp_path / "a.png"), values)


def test_8bit_colour_palette_and_bilevel_images_are_8bit_gray(tmp_path):
    gray = (np.arange(24).reshape(4, 6) * 10).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    Image.fromarray(gray > 100).save(tmp_path / "bw.png")
    for name in ("l.png", "rgb.png", "p.png"):
        values, is_8bit = read_raster(tmp_path / name)
        np.testing.assert_array_equal(values, gray.astype(np.float32), err_msg=name)
        assert is_8bit
    np.testing.assert_array_equal(read_raster(tmp_path / "bw.png")[0], np.where(gray > 100, 255.0, 0.0))


def test_float_tiff_keeps_its_values(tmp_path):
    values = np.array([[-1000.5, 0.0], [3.25, 2000.0]], np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    out, is_8bit = read_raster(tmp_path / "f.tif")
    np.testing.assert_array_equal(out, values)
    assert not is_8bit


def test_dicom_and_nifti_slices(tmp_path, rng):
    pixels = rng.integers(0, 3000, size=(5, 6)).astype(np.uint16)
    write_dicom(tmp_path / "s.dcm", pixels, slope=1, intercept=-1024)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "s.dcm"), pixels.astype(np.float32) - 1024)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "s.dcm"), read_dicom_file(tmp_path / "s.dcm"))
    write_dicom(tmp_path / "noext", pixels)  # DICOM recognised by its magic without an extension
    np.testing.assert_array_equal(read_image_2d(tmp_path / "noext"), pixels.astype(np.float32))
    write_nifti(tmp_path / "n.nii.gz", pixels[..., None].astype(np.int16))
    np.testing.assert_array_equal(read_image_2d(tmp_path / "n.nii.gz"), pixels.astype(np.float32))


def _write_bad(path):
    if path.name == "v.nii":
        write_nifti(path, np.zeros((4, 4, 3), np.int16))
    elif path.suffix == ".dcm":
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    else:
        path.write_bytes(b"not an image")


@pytest.mark.parametrize(
    "name,message",
    [
        ("broken.png", r"broken\.png: cannot be read"),
        ("broken.tif", r"broken\.tif: cannot be read"),
        ("x.txt", r"x\.txt: unknown image format '\.txt'; supported: \.png"),
        ("v.nii", r"v\.nii: expected one 2-D slice, got an array of shape \(4, 4, 3\)"),
        ("bad.dcm", r"bad\.dcm: is a DICOM file without an image"),
    ],
)
def test_errors_name_the_file(tmp_path, name, message):
    _write_bad(tmp_path / name)
    with pytest.raises(ImageReadError, match=message):
        read_image_2d(tmp_path / name)


def test_slice_folder_of_16bit_images_keeps_values_and_is_rendered(tmp_path, rng):
    """A 16-bit slice folder is not taken as the authors' 8-bit renderings: the reducer renders it."""
    stack = rng.integers(0, 4096, size=(3, 8, 8)).astype(np.uint16)
    for i, image in enumerate(stack):
        Image.fromarray(image).save(tmp_path / f"v_{i}.png")
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack.astype(np.float32))
    assert vol.is_uint8_rendered is False
    np.testing.assert_array_equal(read_slice(tmp_path, 2), vol.array[2])
    result = SliceReducer(method="hash", threshold=6).reduce(vol.slices(), rendered=vol.is_uint8_rendered)
    assert result.n_slices == 3
