"""ReduceSlices / ReduceSlicesd on volumes loaded by MONAI, against the file-based reducer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from monai_lessmore.io import load_volume
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.reduction import SliceReducer
from monai_lessmore.transforms import ReduceSlices, ReduceSlicesd, ReduceSlicesD, ReduceSlicesDict
from monai_lessmore.transforms.reduce import KEPT_HASHES, KEPT_INDICES, N_SLICES, SLICE_AXIS
from tests.conftest import shared_data_path


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    (path,) = write_phantom_dataset(tmp_path_factory.mktemp("ph"), n_volumes=1, slices=(80, 80), size=40)
    return str(path)


def test_dictionary_transform_in_compose_matches_file_reduction(phantom):
    pipeline = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ReduceSlicesd("image", threshold=6)])
    out = pipeline({"image": phantom})["image"]
    ref = SliceReducer(threshold=6).reduce(load_volume(phantom).array)
    # the phantom is stored (x, y, z) with z inferior->superior: stored slice indices equal the reducer's
    assert out.meta[KEPT_INDICES] == ref.kept.tolist()
    assert out.meta[KEPT_HASHES] == [ref.hashes[k] for k in ref.kept]
    assert out.meta[SLICE_AXIS] == 2 and out.meta[N_SLICES] == 80
    assert tuple(out.shape) == (1, 40, 40, ref.n_kept)
    full = LoadImage(image_only=True)(phantom)
    np.testing.assert_array_equal(out[0].numpy(), full.numpy()[..., ref.kept])


def test_flipped_and_transposed_storage_gives_the_same_selection(phantom, tmp_path):
    import nibabel as nib

    img = nib.load(phantom)
    data = np.asarray(img.dataobj)
    # store z first and reversed (superior->inferior), with the affine saying so
    flipped = np.ascontiguousarray(data[:, :, ::-1].transpose(2, 0, 1))
    aff = img.affine.copy()
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    perm[2, 0] = -1  # stored axis 0 = -z
    perm[2, 3] = data.shape[2] - 1
    perm[0, 1] = 1
    perm[1, 2] = 1
    path = tmp_path / "zfirst.nii.gz"
    nib.save(nib.Nifti1Image(flipped, aff @ perm), str(path))
    a = ReduceSlices(threshold=6)(LoadImage(image_only=True)(phantom))
    b = ReduceSlices(threshold=6)(LoadImage(image_only=True)(str(path)))
    n = data.shape[2]
    assert b.meta[SLICE_AXIS] == 0
    assert sorted(n - 1 - k for k in b.meta[KEPT_INDICES]) == a.meta[KEPT_INDICES]


def test_plain_arrays_need_slice_axis():
    vol = np.random.default_rng(0).normal(size=(16, 16, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="needs the volume's affine"):
        ReduceSlices()(vol)
    out = ReduceSlices(method="everyn", every_n=3, slice_axis=2)(vol)
    assert out.meta[KEPT_INDICES] == [0, 3, 6, 9] and tuple(out.shape) == (16, 16, 4)
    out = ReduceSlices(method="all", slice_axis=0)(torch.as_tensor(vol))
    assert isinstance(out, MetaTensor) and out.meta[KEPT_INDICES] == list(range(16))


@pytest.mark.parametrize("shape", [(8, 8), (2, 8, 8, 8), (1, 1, 8, 8, 8)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="ReduceSlices expects"):
        ReduceSlices(slice_axis=0)(np.zeros(shape, dtype=np.float32))


def test_bad_arguments_are_reported_by_name():
    with pytest.raises(ValueError, match="threshold must be an integer in 0..64 for HASH, got 70"):
        ReduceSlicesd("image", threshold=70)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ReduceSlices(fraction=1.5)
    with pytest.raises(ValueError, match="slice_axis must be"):
        ReduceSlices(slice_axis=3)


def test_aliases_and_bundle_config_by_dotted_target(phantom):
    assert ReduceSlicesD is ReduceSlicesd is ReduceSlicesDict
    parser = ConfigParser(
        {
            "transform": {
                "_target_": "monai.transforms.Compose",
                "transforms": [
                    {"_target_": "monai.transforms.LoadImaged", "keys": "image"},
                    {"_target_": "monai_lessmore.transforms.ReduceSlicesd", "keys": "image", "method": "hash", "threshold": 6},
                ],
            }
        }
    )
    out = parser.get_parsed_content("transform")({"image": phantom})
    assert out["image"].meta[KEPT_INDICES]


def test_dicom_series_loaded_by_monai_matches_reader(tmp_path):
    folder = shared_data_path("ct", "dicom", "totalseg_example_ct")
    img = LoadImage(image_only=True, reader="PydicomReader")(str(folder))
    out = ReduceSlices(threshold=6)(img)
    ref = SliceReducer(threshold=6).reduce(load_volume(str(folder)).array)
    assert out.meta[N_SLICES] == ref.n_slices == 20
    assert sorted(out.meta[KEPT_HASHES]) == sorted(ref.hashes[k] for k in ref.kept)
