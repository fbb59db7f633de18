"""Tests for monai_lessmore.io.slice_folder: the authors' <volume>_<index>.png layout."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from monai_lessmore.io import VolumeReadError, discover_volumes, load_volume, read_slice
from monai_lessmore.io.slice_folder import scan_slice_folder, slice_volume_files, validate_order
from tests.conftest import shared_data_path
from tests.io.conftest import write_slices


def _images(rng, indices, shape=(6, 7)):
    return {i: rng.integers(0, 256, size=shape) for i in indices}


def test_numeric_order_and_filename_order(tmp_path, rng):
    images = _images(rng, range(1, 13))
    write_slices(tmp_path, "case_a", images)
    by_index = load_volume(tmp_path)  # one volume: the folder may be passed directly
    np.testing.assert_array_equal(by_index.array, np.stack([images[i] for i in range(1, 13)]).astype(np.float32))
    assert by_index.name == "case_a" and by_index.kind == "slices" and by_index.is_uint8_rendered
    assert by_index.source == os.path.join(str(tmp_path), "case_a")
    assert [os.path.basename(p) for p in by_index.slice_sources[:3]] == ["case_a_1.png", "case_a_2.png", "case_a_3.png"]
    by_name = load_volume(tmp_path, order="filename")
    assert by_name.meta["indices"] == [1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9]  # the authors' string sort
    np.testing.assert_array_equal(by_name.array[1], by_index.array[9])
    for index in (0, 4, -1):
        np.testing.assert_array_equal(read_slice(tmp_path, index), by_index.array[index])
        np.testing.assert_array_equal(read_slice(tmp_path, index, order="filename"), by_name.array[index])


def test_volume_id_is_the_name_up_to_the_last_underscore(tmp_path, rng):
    write_slices(tmp_path, "Data-1_org_covid-19_3-dcm", _images(rng, [1, 2]), ext="jpg")
    write_slices(tmp_path, "other_b", _images(rng, [5]), ext="jpeg")
    assert sorted(scan_slice_folder(tmp_path)) == ["Data-1_org_covid-19_3-dcm", "other_b"]
    vol = load_volume(tmp_path / "Data-1_org_covid-19_3-dcm")
    assert vol.array.shape == (2, 6, 7) and vol.meta["indices"] == [1, 2]


def test_rgb_images_are_converted_to_gray(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 4, 3), [255, 0, 0], np.uint8)).save(tmp_path / "rgb_0.png")
    assert load_volume(tmp_path).array[0, 0, 0] == 76  # PIL's ITU-R 601-2 luma of pure red


def test_missing_indices_are_reported(tmp_path, rng):
    write_slices(tmp_path, "gap", _images(rng, [0, 1, 4, 5, 7]))
    with pytest.warns(UserWarning, match=r"'gap'.*3 missing slice indices, first: \[2, 3, 6\]"):
        vol = load_volume(tmp_path)
    assert vol.meta["missing_indices"] == [2, 3, 6] and vol.num_slices == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_slice(tmp_path, 2)  # per-slice reads stay quiet


def test_non_matching_files_are_ignored(tmp_path, rng):
    write_slices(tmp_path, "v", _images(rng, [1, 2]))
    (tmp_path / "README.txt").write_text("x")
    (tmp_path / "overview.png").write_bytes(b"not matched: no _<index>")
    (tmp_path / "v_x.png").write_bytes(b"not matched: index not an integer")
    assert load_volume(tmp_path).num_slices == 2


def test_folder_without_matching_images_names_the_pattern(tmp_path):
    (tmp_path / "overview.png").write_bytes(b"x")
    with pytest.raises(VolumeReadError, match=r"holds no volume directly.*<volume>_<index>\.png\|\.jpg"):
        load_volume(tmp_path)


def test_mixed_sizes_are_padded_and_recorded(tmp_path, rng):
    images = {1: rng.integers(0, 256, (5, 7)), 2: rng.integers(0, 256, (6, 4))}
    write_slices(tmp_path, "crop", images)
    vol = load_volume(tmp_path)
    assert vol.array.shape == (2, 6, 7) and vol.meta["padded"]
    assert vol.meta["slice_shapes"] == [(5, 7), (6, 4)]
    np.testing.assert_array_equal(vol.original_slice(1), images[2])
    assert np.all(vol.array[0, 5:] == 0) and np.all(vol.array[1, :, 4:] == 0)
    for index in (0, 1):
        np.testing.assert_array_equal(read_slice(tmp_path, index), vol.array[index])


def test_several_volumes_need_an_address(tmp_path, rng):
    write_slices(tmp_path, "a", _images(rng, [1]))
    write_slices(tmp_path, "b", _images(rng, [1]))
    with pytest.raises(VolumeReadError, match=r"2 slice volumes \(a, b\).*'<folder>/<volume id>'.*discover_volumes"):
        load_volume(tmp_path)
    assert load_volume(tmp_path / "b").name == "b"
    with pytest.raises(VolumeReadError, match=r"no slice volume 'c'.*holds a, b"):
        load_volume(tmp_path / "c")


def test_duplicate_index_is_an_error(tmp_path, rng):
    write_slices(tmp_path, "dup", _images(rng, [1, 2]))
    write_slices(tmp_path, "dup", {"01": rng.integers(0, 256, (6, 7))})
    with pytest.raises(VolumeReadError, match=r"index 1 of volume 'dup' appears twice"):
        load_volume(tmp_path)


def test_unreadable_image_is_an_error(tmp_path, rng):
    write_slices(tmp_path, "bad", _images(rng, [1]))
    (tmp_path / "bad_2.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(VolumeReadError, match=r"bad_2\.png.*not a readable PNG/JPEG"):
        load_volume(tmp_path)


def test_order_is_validated():
    with pytest.raises(ValueError, match=r"order must be 'index'.*'filename'.*or 'instance'.*got 'name'"):
        validate_order("name")


def test_order_instance_is_the_index_order_in_slice_folders(tmp_path, rng):
    write_slices(tmp_path, "v", _images(rng, [1, 2, 10]))
    vol = load_volume(tmp_path, order="instance")  # the number in the name is the slice's number
    assert vol.meta["indices"] == [1, 2, 10]
    np.testing.assert_array_equal(vol.array, load_volume(tmp_path).array)
    np.testing.assert_array_equal(read_slice(tmp_path, -1, order="instance"), vol.array[-1])


@pytest.fixture(scope="module")
def covid_volumes():
    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    return folder, discover_volumes(folder)


@pytest.mark.realdata
def test_real_slice_folder_volumes(covid_volumes):
    folder, paths = covid_volumes
    assert len(paths) == 20
    total = 0
    for path in paths:
        vol = load_volume(path)
        total += vol.num_slices
        assert vol.meta["indices"] == list(range(1, vol.num_slices + 1)) and vol.meta["missing_indices"] == []
        files, _ = slice_volume_files(str(folder), vol.name, order="filename")
        if vol.num_slices >= 10:
            assert [f.index for f in files] != vol.meta["indices"]
        assert sorted(f.path for f in files) == sorted(vol.slice_sources)
    assert total == 1600


@pytest.mark.realdata
@pytest.mark.parametrize("which", [0, 10, 19])
def test_real_read_slice_matches_load(covid_volumes, which):
    path = covid_volumes[1][which]
    by_index, by_name = load_volume(path), load_volume(path, order="filename")
    for index in (0, by_index.num_slices // 2, by_index.num_slices - 1):
        np.testing.assert_array_equal(read_slice(path, index), by_index.array[index])
        np.testing.assert_array_equal(read_slice(path, index, order="filename"), by_name.array[index])
        original = by_name.meta["indices"][index] - 1  # the same image, found through its index
        np.testing.assert_array_equal(by_name.array[index], by_index.array[original])
