"""Reading 2-D slices: PNG/JPG (PIL), DICOM (pydicom), NIfTI (nibabel), arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shared_data_path
from monai_lessmore.classification.transforms import (
    ImageLoadError,
    ReadClassificationImage,
    ReadClassificationImaged,
    read_image,
)


@pytest.fixture
def gradient():
    return (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)


def test_png_and_rgb_jpg(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), gradient.astype(np.float32))
    Image.fromarray(np.stack([gradient] * 3, -1)).save(tmp_path / "b.jpg", quality=100)
    out = read_image(tmp_path / "b.jpg")
    assert out.shape == (20, 30) and out.dtype == np.float32
    assert np.abs(out - gradient).mean() < 3  # JPEG is lossy


def test_nifti_slice_and_volume_error(tmp_path, gradient):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(gradient[..., None].astype(np.int16) - 1000, np.eye(4)), tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "s.nii.gz"), gradient.astype(np.float32) - 1000)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(ImageLoadError, match=r"v\.nii: expected one 2-D slice, got an array of shape \(4, 4, 3\)"):
        read_image(tmp_path / "v.nii")


def test_dicom_real_slice_in_hu():
    path = shared_data_path("ct", "dicom", "pancreas_ct", "1-001.dcm")
    import pydicom

    ds = pydicom.dcmread(str(path))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = read_image(path)
    assert out.shape == (512, 512)
    np.testing.assert_allclose(out, expected)
    assert out.min() < -500  # air in HU


def test_unreadable_and_unknown(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match=r"broken\.png: cannot be read"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ImageLoadError, match=r"x\.txt: unknown image format '\.txt'"):
        read_image(tmp_path / "x.txt")


def test_array_and_dict_transform(gradient):
    out = ReadClassificationImage()(gradient)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 20, 30) and out.dtype == torch.float32
    rgb = np.stack([gradient, gradient, gradient], -1)
    torch.testing.assert_close(ReadClassificationImage()(rgb), out)
    d = ReadClassificationImaged(keys="image")({"image": gradient, "label": 1})
    assert d["label"] == 1 and d["image"].shape == (1, 20, 30)
    with pytest.raises(ImageLoadError, match="expected a 2-D slice array"):
        ReadClassificationImage()(np.zeros((2, 3, 4, 5)))
