"""Tests for monai_lessmore.io.dicom: HU, slice sorting, one series per folder, lazy slices, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from monai_lessmore.io import VolumeReadError, load_volume, read_slice
from monai_lessmore.io.dicom import dicom_series_files, is_dicom_file, load_dicom_series, read_dicom_slice
from tests.conftest import shared_data_path
from tests.io.conftest import lps_to_ras, random_volume, write_dicom, write_nifti, write_series


def test_hu_from_rescale_tags(tmp_path, rng):
    stack = random_volume(rng, (3, 4, 5), 0, 3000).astype(np.uint16)
    write_series(tmp_path / "s", stack, slope=0.5, intercept=-1024)
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, stack * 0.5 - 1024)
    assert vol.kind == "dicom" and vol.name == "s" and vol.array.dtype == np.float32
    assert vol.meta["spacing"] == pytest.approx((2.0, 0.5, 0.7))


def test_rescale_defaults_when_absent(tmp_path, rng):
    stack = random_volume(rng, (2, 4, 5))
    write_series(tmp_path / "s", stack)  # no RescaleSlope / RescaleIntercept
    np.testing.assert_array_equal(load_volume(tmp_path / "s").array, stack)


def test_sorted_by_position_not_name_or_instance(tmp_path, rng):
    stack = random_volume(rng, (5, 4, 4))
    order = [3, 0, 4, 1, 2]  # file k holds slice order[k]; instance numbers deliberately scrambled
    for k, s in enumerate(order):
        write_dicom(tmp_path / f"f{k}", stack[s], position=(0, 0, -50 + 2.5 * s), instance=10 - k)
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.meta["sort_key"] == "position"
    assert np.all(np.diff(vol.meta["slice_positions"]) > 0)
    assert [os.path.basename(p) for p in vol.slice_sources] == [f"f{order.index(s)}" for s in range(5)]


def test_position_projected_on_normal_of_tilted_series(tmp_path, rng):
    stack = random_volume(rng, (4, 3, 3))
    iop = (1, 0, 0, 0, np.cos(0.3), -np.sin(0.3))
    normal = np.cross(iop[:3], iop[3:])
    for s in (2, 0, 3, 1):
        write_dicom(tmp_path / f"x{s}.dcm", stack[s], position=tuple(normal * 3 * s + [0, 7 * s, 0]), orientation=iop)
    np.testing.assert_array_equal(load_volume(tmp_path).array, stack)


def test_normal_pointing_inferior_still_gives_inferior_to_superior(tmp_path, rng):
    stack = random_volume(rng, (3, 4, 4))
    iop = (1, 0, 0, 0, -1, 0)  # rows run posterior -> anterior, so the normal points inferior
    for s in range(3):
        write_dicom(tmp_path / f"x{s}.dcm", stack[s], position=(0, 0, 5.0 * s), orientation=iop)
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack)  # kept as stored in-plane, z ascending
    assert vol.meta["affine"][2, 0] > 0


def test_instance_number_fallback(tmp_path, rng):
    stack = random_volume(rng, (4, 3, 3))
    for s, name in zip(range(4), "dcba"):
        write_dicom(tmp_path / f"{name}.dcm", stack[s], position=None, orientation=None, instance=s + 1)
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.meta["sort_key"] == "instance_number" and vol.meta["affine"] is None


def test_files_without_extension_and_non_dicom_files_ignored(tmp_path, rng):
    stack = random_volume(rng, (3, 4, 5))
    write_series(tmp_path, stack, names=lambda k: f"CT.1.2.3.{k}")
    (tmp_path / "LICENSE.txt").write_text("CC BY 4.0")
    (tmp_path / "Citations.txt").write_text("cite us")
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack)
    assert sorted(os.path.basename(p) for p in vol.meta["ignored_files"]) == ["Citations.txt", "LICENSE.txt"]
    assert is_dicom_file(tmp_path / "CT.1.2.3.0") and not is_dicom_file(tmp_path / "LICENSE.txt")


def test_several_series_is_an_error_naming_each(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (3, 4, 4)), series_uid="1.2.3.4")
    write_series(tmp_path, random_volume(rng, (2, 4, 4)), series_uid="1.2.3.5", names=lambda k: f"b{k}.dcm")
    expected = r"2 DICOM series: 1\.2\.3\.4 \(3 files\), 1\.2\.3\.5 \(2 files\).*one series folder at a time"
    with pytest.raises(VolumeReadError, match=expected):
        load_volume(tmp_path)


def test_mixed_shapes_is_an_error_naming_the_file(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (3, 4, 4)))
    write_dicom(tmp_path / "odd.dcm", random_volume(rng, (5, 4)), position=(0, 0, 99))
    with pytest.raises(VolumeReadError, match=r"odd\.dcm is 5x4 but 3 files are 4x4"):
        load_volume(tmp_path)


def test_undecodable_pixel_data_names_file_and_syntax(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (2, 4, 4)))
    write_dicom(
        tmp_path / "jls.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 50), transfer_syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"]),
    )
    expected = r"jls\.dcm.*JPEG-LS Lossless.*pip install pylibjpeg pylibjpeg-libjpeg.*dcm2niix"
    with pytest.raises(VolumeReadError, match=expected):
        load_volume(tmp_path)
    with pytest.raises(VolumeReadError, match="JPEG-LS"):
        read_slice(tmp_path, -1)


def test_corrupt_dicom_is_an_error(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (2, 4, 4)))
    good = (tmp_path / "slice000.dcm").read_bytes()
    (tmp_path / "broken.dcm").write_bytes(good[:200])
    with pytest.raises(VolumeReadError, match=r"broken\.dcm.*corrupt"):
        load_volume(tmp_path)


def test_read_slice_reads_one_file_and_cache_follows_the_folder(tmp_path, rng):
    stack = random_volume(rng, (4, 4, 4))
    write_series(tmp_path, stack)
    for index in (0, 2, -1):
        np.testing.assert_array_equal(read_dicom_slice(tmp_path, index), stack[index].astype(np.float32))
    with pytest.raises(IndexError, match="4 slices"):
        read_slice(tmp_path, 4)
    (tmp_path / "slice003.dcm").unlink()  # the folder's mtime changes, so the cached file list is rebuilt
    assert len(dicom_series_files(tmp_path)) == 3


def test_folder_without_dicom_images(tmp_path):
    (tmp_path / "README.txt").write_text("no images here")
    with pytest.raises(VolumeReadError, match="no DICOM image files"):
        load_dicom_series(tmp_path)


@pytest.fixture(scope="module")
def pancreas():
    return load_volume(shared_data_path("ct", "dicom", "pancreas_ct"))


@pytest.mark.realdata
def test_real_pancreas_series(pancreas):
    assert pancreas.array.shape == (134, 512, 512)
    assert -2048 <= pancreas.array.min() <= -900  # air; this scanner's padding value is -1000 HU
    assert pancreas.array.max() > 1000
    assert np.all(np.diff(pancreas.meta["slice_positions"]) > 0)
    assert len(pancreas.slice_sources) == 134 and all(p.endswith(".dcm") for p in pancreas.slice_sources)
    assert sorted(os.path.basename(p) for p in pancreas.meta["ignored_files"]) == ["Citations.txt", "LICENSE.txt"]
    # files 1-001 .. 1-134 run superior -> inferior here, so the stack is the reverse of the file names
    assert os.path.basename(pancreas.slice_sources[0]) == "1-134.dcm"
    for index in (0, 67, 133):
        np.testing.assert_array_equal(read_slice(pancreas.source, index), pancreas.array[index])


@pytest.mark.realdata
def test_real_totalseg_series_without_extensions():
    path = shared_data_path("ct", "dicom", "totalseg_example_ct")
    vol = load_volume(path)  # JPEG 2000 compressed; SeriesInstanceUID is empty in these files
    assert vol.array.shape == (20, 512, 512)
    assert np.all(np.diff(vol.meta["slice_positions"]) > 0)
    assert vol.array.min() < -900 and vol.array.max() > 1000
    for index in (0, 9, 19):
        np.testing.assert_array_equal(read_slice(path, index), vol.array[index])


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")
def test_real_series_matches_itk_gdcm():
    """ITK's GDCM series reader (sorts by position along the normal, applies the rescale) is the oracle."""
    itk = pytest.importorskip("itk")
    path = str(shared_data_path("ct", "dicom", "totalseg_example_ct"))
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(path)
    reference = itk.array_from_image(itk.imread(names.GetFileNames(names.GetSeriesUIDs()[0]), itk.F))
    np.testing.assert_array_equal(load_volume(path).array, reference)


@pytest.mark.realdata
def test_real_dicom_and_nifti_agree(pancreas, tmp_path):
    """The DICOM array written as NIfTI with its DICOM geometry reads back identically: the shared convention."""
    first = np.asarray(pancreas.meta["image_orientation"])
    row_spacing, col_spacing = pancreas.meta["spacing"][1:]
    positions = _first_last_positions(pancreas)
    affine_lps = np.eye(4)  # voxel (x = column, y = row, z = slice) -> LPS mm
    affine_lps[:3, 0] = first[:3] * col_spacing
    affine_lps[:3, 1] = first[3:] * row_spacing
    affine_lps[:3, 2] = (positions[-1] - positions[0]) / (pancreas.num_slices - 1)
    affine_lps[:3, 3] = positions[0]
    data = np.ascontiguousarray(pancreas.array.transpose(2, 1, 0)).astype(np.int16)
    path = write_nifti(tmp_path / "pancreas.nii", data, lps_to_ras(affine_lps))  # uncompressed: fast to write
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, pancreas.array)
    np.testing.assert_allclose(vol.meta["affine"], pancreas.meta["affine"], atol=1e-3)


def _first_last_positions(volume):
    import pydicom

    return [
        np.asarray(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient, dtype=float)
        for p in (volume.slice_sources[0], volume.slice_sources[-1])
    ]


def test_truncated_pixel_data_is_an_error(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (2, 8, 8)))
    good = (tmp_path / "slice001.dcm").read_bytes()
    (tmp_path / "slice001.dcm").write_bytes(good[:-40])
    with pytest.raises(VolumeReadError, match=r"slice001\.dcm.*(truncated|corrupt)"):
        load_volume(tmp_path)
