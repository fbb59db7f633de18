"""Tests for monai_lessmore.io.dicom: HU, slice sorting, one series per folder, lazy slices, bad files."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

from monai_lessmore.io import VolumeReadError, dicom, load_volume, read_slice
from monai_lessmore.io.dicom import dicom_series_files, is_dicom_file, load_dicom_series, read_dicom_slice
from tests.conftest import shared_data_path
from tests.io.conftest import (
    lps_to_ras,
    random_volume,
    write_compressed_copy,
    write_dicom,
    write_nifti,
    write_series,
)


def test_hu_from_rescale_tags(tmp_path, rng):
    stack = random_volume(rng, (3, 4, 5), 0, 3000).astype(np.uint16)
    write_series(tmp_path / "s", stack, slope=0.5, intercept=-1024)
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, stack * 0.5 - 1024)
    assert vol.kind == "dicom" and vol.name == "s" and vol.array.dtype == np.float32
    assert vol.meta["spacing"] == pytest.approx((2.0, 0.5, 0.7))


def test_rescale_defaults_when_absent_with_a_warning(tmp_path, rng):
    stack = random_volume(rng, (2, 4, 5), 0, 3000)
    write_series(tmp_path / "s", stack, slope=None, intercept=None)
    with pytest.warns(UserWarning, match=r"2 of 2 files .*no RescaleSlope/RescaleIntercept.*1024 too high"):
        vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.meta["rescale_missing"] == 2 and "1024" in vol.meta["warnings"][0]
    write_series(tmp_path / "t", stack)  # with the tags: quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(tmp_path / "t").meta["warnings"] == []


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


def test_mixed_series_message_names_a_series_without_uid(tmp_path, rng):
    write_series(tmp_path, random_volume(rng, (3, 4, 4)), series_uid="1.2.3.4")
    write_series(tmp_path, random_volume(rng, (2, 4, 4)), series_uid="", names=lambda k: f"b{k}.dcm")  # empty tag
    with pytest.raises(VolumeReadError, match=r"2 DICOM series: 1\.2\.3\.4 \(3 files\), <no SeriesInstanceUID> \(2"):
        load_volume(tmp_path)


def test_gap_in_slice_positions_is_reported(tmp_path, rng):
    stack = random_volume(rng, (7, 4, 4))
    write_series(tmp_path, stack)  # z = 10, 12, ..., 22
    (tmp_path / "slice003.dcm").unlink()
    (tmp_path / "slice004.dcm").unlink()
    with pytest.warns(UserWarning, match=r"about 2 slice\(s\) missing: .*jump 6 mm between slice002\.dcm and "
                      r"slice005\.dcm where the series steps 2 mm"):
        vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, stack[[0, 1, 2, 5, 6]])
    assert vol.meta["position_gaps"] == [[2, 6.0, 2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_slice(tmp_path, 3)  # per-slice reads stay quiet
        write_series(tmp_path / "even", stack, spacing_z=1.25)
        assert load_volume(tmp_path / "even").meta["position_gaps"] == []


def test_spacing_that_changes_along_the_series_is_not_a_gap(tmp_path, rng):
    """12 slices 2.5 mm apart, then 6 slices 5 mm apart (a reconstruction with two zones): no gap; a slice missing
    from the 5 mm zone is one gap, found against that zone's step (not the series' median, 2.5 mm)."""
    z = [2.5 * k for k in range(12)] + [27.5 + 5.0 * k for k in range(6)]
    stack = random_volume(rng, (len(z), 4, 4))
    (tmp_path / "zones").mkdir()
    for k, zk in enumerate(z):
        write_dicom(tmp_path / "zones" / f"s{k:02d}.dcm", stack[k], position=(0, 0, zk), instance=k + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(tmp_path / "zones").meta["position_gaps"] == []
    (tmp_path / "zones" / "s15.dcm").unlink()  # z = 42.5 in the 5 mm zone
    with pytest.warns(UserWarning, match=r"about 1 slice\(s\) missing: .*jump 10 mm between s14\.dcm and s16\.dcm "
                      r"where the series steps 5 mm"):
        assert load_volume(tmp_path / "zones").meta["position_gaps"] == [[14, 10.0, 1]]


def test_repeated_position_is_counted_not_a_gap(tmp_path, rng):
    stack = random_volume(rng, (4, 4, 4))
    write_series(tmp_path, stack[:3])
    write_dicom(tmp_path / "again.dcm", stack[3], position=(-5.0, -7.0, 12.0), instance=9)  # z of slice 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = load_volume(tmp_path)
    assert vol.meta["duplicate_positions"] == 1 and vol.meta["position_gaps"] == []
    np.testing.assert_allclose(vol.meta["affine"][:3, 0], [0, 0, 4.0 / 3])  # first to last over three steps


def test_order_instance_follows_instance_numbers(tmp_path, rng):
    stack = random_volume(rng, (5, 4, 4))
    for s in range(5):  # instance numbers run superior -> inferior, as in many scanners' series
        write_dicom(tmp_path / f"im{s}.dcm", stack[s], position=(0, 0, 3.0 * s), instance=5 - s)
    by_position = load_volume(tmp_path)
    by_instance = load_volume(tmp_path, order="instance")
    np.testing.assert_array_equal(by_position.array, stack)
    np.testing.assert_array_equal(by_instance.array, stack[::-1])
    assert by_instance.meta["sort_key"] == "instance_number"
    assert by_instance.meta["slice_positions"] == [12.0, 9.0, 6.0, 3.0, 0.0]
    assert [os.path.basename(p) for p in by_instance.slice_sources] == [f"im{s}.dcm" for s in (4, 3, 2, 1, 0)]
    np.testing.assert_allclose(by_instance.meta["affine"][:3, 0], [0, 0, -3.0])  # index 0 is the top slice
    np.testing.assert_allclose(by_instance.meta["affine"][:3, 3], by_position.meta["affine"][:3, 3] + [0, 0, 12])
    for index in (0, 3, -1):
        np.testing.assert_array_equal(read_slice(tmp_path, index, order="instance"), by_instance.array[index])
    assert dicom_series_files(tmp_path, order="instance") == by_instance.slice_sources
    np.testing.assert_array_equal(load_volume(tmp_path, order="filename").array, stack)  # DICOM: by position


def test_order_instance_needs_instance_numbers_and_warns_on_scrambled_positions(tmp_path, rng):
    stack = random_volume(rng, (3, 4, 4))
    for s, instance in enumerate((2, 1, 3)):
        write_dicom(tmp_path / f"im{s}.dcm", stack[s], position=(0, 0, 3.0 * s), instance=instance)
    with pytest.warns(UserWarning, match="do not run monotonically in InstanceNumber order"):
        vol = load_volume(tmp_path, order="instance")
    np.testing.assert_array_equal(vol.array, stack[[1, 0, 2]])
    assert vol.meta["affine"] is None
    write_dicom(tmp_path / "im3.dcm", stack[0], position=(0, 0, 9.0), instance=None)
    with pytest.raises(VolumeReadError, match=r"im3\.dcm: has no InstanceNumber.*use the default order"):
        load_volume(tmp_path, order="instance")
    with pytest.raises(ValueError, match="order of a DICOM series must be one of"):
        load_dicom_series(tmp_path, order="index")


def test_unknown_transfer_syntax_names_file_and_syntax(tmp_path, rng):
    """No decoder, installed or not, knows a private transfer syntax: the error case without disabling anything."""
    write_series(tmp_path, random_volume(rng, (2, 4, 4)))
    write_dicom(
        tmp_path / "odd.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 50),
        transfer_syntax="1.2.826.0.1.3680043.9.9999.1", pixel_bytes=encapsulate([b"\x00" * 32]),
    )
    expected = (
        r"odd\.dcm: the pixel data could not be decoded, transfer syntax 1\.2\.826\.0\.1\.3680043\.9\.9999\.1 "
        r"\(not a transfer syntax pydicom knows\).*pip install pylibjpeg.*dcm2niix"
    )
    with pytest.raises(VolumeReadError, match=expected):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom guesses the VR encoding of the unknown syntax aloud
            load_volume(tmp_path)


@pytest.mark.slow  # GDCM is tried too: the first use of ITK's GDCM module in a process loads it (seconds)
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")
def test_undecodable_pixel_data_names_file_and_syntax(tmp_path, rng):
    """Corrupt JPEG-LS data: pydicom's plugins (if any are installed) and GDCM both fail; one line names both."""
    write_series(tmp_path, random_volume(rng, (2, 4, 4)))
    write_dicom(
        tmp_path / "jls.dcm", np.zeros((4, 4), np.int16), position=(0, 0, 50), transfer_syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"]),
    )
    expected = r"jls\.dcm: the pixel data could not be decoded, transfer syntax JPEG-LS Lossless.*ITK/GDCM.*corrupt"
    with pytest.raises(VolumeReadError, match=expected) as info:
        load_volume(tmp_path)
    assert "\n" not in str(info.value)  # decoder messages spread over lines are joined into one
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
def test_real_pancreas_in_instance_order_runs_the_other_way(pancreas):
    """InstanceNumber runs superior -> inferior in this series: the authors' order is the reverse of ours."""
    vol = load_volume(pancreas.source, order="instance")
    assert os.path.basename(vol.slice_sources[0]) == "1-001.dcm"
    np.testing.assert_array_equal(vol.array, pancreas.array[::-1])
    np.testing.assert_allclose(vol.meta["slice_positions"], pancreas.meta["slice_positions"][::-1])
    assert vol.meta["affine"][2, 0] < 0 < pancreas.meta["affine"][2, 0]
    assert vol.meta["warnings"] == [] and pancreas.meta["position_gaps"] == []


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


_PANCREAS_FILES = ("1-040.dcm", "1-041.dcm", "1-042.dcm")


@pytest.fixture(scope="module")
def compressed_series(tmp_path_factory):
    """Three real pancreas slices: as shipped (uncompressed) and re-encoded as JPEG lossless and JPEG 2000."""
    source = shared_data_path("ct", "dicom", "pancreas_ct")
    root = tmp_path_factory.mktemp("compressed")
    folders = {}
    for kind in ("plain", "jpeg", "jpeg2000"):
        folders[kind] = root / kind
        folders[kind].mkdir()
        for name in _PANCREAS_FILES:
            if kind == "plain":
                shutil.copy(source / name, folders[kind] / name)
            else:
                write_compressed_copy(source / name, folders[kind] / name, kind)
    return folders


@pytest.mark.realdata
@pytest.mark.slow  # the first use of ITK's GDCM module in a process loads it: seconds
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")
@pytest.mark.parametrize("kind,syntax", [("jpeg", JPEGLosslessSV1), ("jpeg2000", JPEG2000Lossless)])
@pytest.mark.parametrize("decoder", ["default", "gdcm"])
def test_compressed_series_read_bit_identical(compressed_series, monkeypatch, kind, syntax, decoder):
    """Lossless JPEG and JPEG 2000 read out of the box, equal to the uncompressed series in every voxel.

    ``default`` takes whichever decoder this installation has (pydicom's plugins when present, else GDCM in ITK);
    ``gdcm`` hides pydicom's plugins, as on a plain install, so the GDCM path is tested wherever the test runs.
    """
    if decoder == "gdcm":
        monkeypatch.setattr(dicom, "_decoder_available", lambda uid: False)
    expected = load_volume(compressed_series["plain"])
    vol = load_volume(compressed_series[kind])
    assert vol.meta["transfer_syntax"] == syntax
    assert pydicom.dcmread(vol.slice_sources[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(vol.array, expected.array)
    assert vol.array.min() <= -1000 and vol.array.max() > 500  # HU: the rescale is applied on both paths
    np.testing.assert_array_equal(read_slice(compressed_series[kind], 1), expected.array[1])


@pytest.mark.slow  # the first use of ITK's GDCM module in a process loads it: seconds
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")
@pytest.mark.parametrize("pixel_dtype,slope,intercept", [(np.int16, 2.5, -100.0), (np.uint16, 1.0, -1024.0),
                                                       (np.uint16, None, None)])
def test_gdcm_path_applies_the_rescale_once(tmp_path, rng, monkeypatch, pixel_dtype, slope, intercept):
    """Synthetic JPEG-lossless series (no shared data needed) read through GDCM as on a plain install: signed and
    unsigned storage, a slope other than 1, no rescale tags; HU equal to the uncompressed series in every voxel."""
    monkeypatch.setattr(dicom, "_decoder_available", lambda uid: False)
    low = -1024 if pixel_dtype == np.int16 else 0
    (tmp_path / "plain").mkdir()
    (tmp_path / "jpeg").mkdir()
    for s in range(2):
        pixels = rng.integers(low, low + 3000, size=(8, 8)).astype(pixel_dtype)
        plain = write_dicom(tmp_path / "plain" / f"s{s}.dcm", pixels, position=(0, 0, 2.0 * s), instance=s + 1,
                            slope=slope, intercept=intercept)
        write_compressed_copy(plain, tmp_path / "jpeg" / f"s{s}.dcm", "jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-rescale case warns (tested elsewhere)
        expected = load_volume(tmp_path / "plain").array
        vol = load_volume(tmp_path / "jpeg")
    assert vol.meta["transfer_syntax"] == JPEGLosslessSV1
    np.testing.assert_array_equal(vol.array, expected)


def test_cli_order_instance_reduces_in_instance_order(tmp_path, rng, capsys):
    """``lessmore reduce --order instance``: the manifest lists the series' slices by InstanceNumber."""
    import csv
    import json

    from monai_lessmore.cli.main import main

    stack = random_volume(rng, (4, 16, 16))
    (tmp_path / "ct").mkdir()
    for s in range(4):
        write_dicom(tmp_path / "ct" / f"im{s}.dcm", stack[s], position=(0, 0, 2.0 * s), instance=4 - s)
    for order, first in (("index", "im0.dcm"), ("instance", "im3.dcm")):
        out = tmp_path / f"out_{order}"
        assert main(["reduce", str(tmp_path / "ct"), "-o", str(out), "--order", order, "--no-progress"]) == 0
        with open(out / "manifest.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [os.path.basename(r["source"]) for r in rows][0] == first
        assert json.loads((out / "summary.json").read_text())["params"]["order"] == order
    capsys.readouterr()


def test_python_api_order_instance(tmp_path, rng):
    """``order="instance"`` through the dataset filter and the slice loader, as the command line does."""
    from monai_lessmore.data import SliceReductionFilter
    from monai_lessmore.transforms import LoadSliced

    stack = random_volume(rng, (3, 8, 8))
    for s in range(3):
        write_dicom(tmp_path / f"im{s}.dcm", stack[s], position=(0, 0, 2.0 * s), instance=3 - s)
    items = SliceReductionFilter(order="instance", method="all")([{"image": str(tmp_path)}])
    assert [d["slice_index"] for d in items] == [0, 1, 2]
    first = LoadSliced(keys="image", order="instance")(items[0])["image"]
    np.testing.assert_array_equal(first[0].numpy(), stack[2])  # InstanceNumber 1 is the top slice here


# ---------------------------------------------------------------- threaded decoding, stored pixels (lazy volumes)
@pytest.mark.parametrize("num_threads", [1, 3])
def test_threads_decode_the_same_volume_in_slice_order(tmp_path, rng, monkeypatch, num_threads):
    import threading

    stack = random_volume(rng, (11, 6, 7))
    order = rng.permutation(11)  # file names in another order than the positions
    write_series(tmp_path, stack, names=lambda k: f"f{order[k]:02d}.dcm", intercept=-1024.0)
    decoded_in = []
    real = dicom._decode
    monkeypatch.setattr(dicom, "_decode", lambda *a: (decoded_in.append(threading.current_thread().name), real(*a))[1])
    vol = load_dicom_series(tmp_path, num_threads=num_threads)
    np.testing.assert_array_equal(vol.array, stack.astype(np.float32) - 1024)
    assert vol.slice_sources == [str(tmp_path / f"f{order[k]:02d}.dcm") for k in range(11)]
    pooled = sum(name.startswith("lessmore-dicom") for name in decoded_in)
    assert len(decoded_in) == 11 and pooled == (0 if num_threads == 1 else 10)  # the first file alone, then the pool


def test_threaded_decoding_reports_the_first_failing_file_and_leaves_no_thread(tmp_path, rng):
    import threading

    write_series(tmp_path, random_volume(rng, (12, 8, 8)))
    for name in ("slice005.dcm", "slice009.dcm"):
        good = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(good[:-40])  # header intact, pixel data truncated
    for threads in (1, 4):  # the same error as one by one: the first bad file in slice order
        with pytest.raises(VolumeReadError, match=r"slice005\.dcm.*(truncated|corrupt)"):
            load_dicom_series(tmp_path, num_threads=threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("lessmore-dicom")]


def test_ordered_map_runs_at_most_twice_the_threads_ahead():
    import threading

    started = []
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        return item * 2

    results = dicom._ordered_map(work, list(range(50)), 3)
    assert next(results) == 0
    assert len(started) <= 2 * 3 + 1  # nothing is decoded far ahead of the consumer
    assert list(results) == [2 * i for i in range(1, 50)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_num_threads_is_an_error(tmp_path, rng, bad):
    write_series(tmp_path, random_volume(rng, (2, 4, 4)))
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        load_volume(tmp_path, num_threads=bad)


def test_auto_threads_are_bounded_and_give_the_same_volume(tmp_path, rng):
    assert 1 <= dicom.auto_dicom_threads() <= dicom.MAX_DICOM_THREADS
    stack = random_volume(rng, (5, 4, 4))
    write_series(tmp_path, stack)
    np.testing.assert_array_equal(load_volume(tmp_path, num_threads=None).array, stack)


@pytest.mark.parametrize(
    "pixel_dtype, slope, intercept, offset",
    [(np.uint16, 1.0, -1024.0, -1024), (np.int16, 1.0, 0.0, 0), (np.int16, 0.5, -1000.25, None),
     (np.uint16, None, None, 0)],
)
def test_lazy_series_keeps_the_stored_pixels(tmp_path, rng, pixel_dtype, slope, intercept, offset):
    from monai_lessmore.io.volume import LazyVolume
    from monai_lessmore.reduction import SliceReducer
    from monai_lessmore.reduction.preprocess import StoredStack, to_uint8

    low = 0 if pixel_dtype == np.uint16 else -1024
    stack = rng.integers(low, low + 3000, (7, 9, 8)).astype(pixel_dtype)
    stack[2] = 40  # a constant slice
    write_series(tmp_path, stack, slope=slope, intercept=intercept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no rescale tags: warned (tested elsewhere)
        eager, lazy = load_volume(tmp_path), load_volume(tmp_path, lazy=True, num_threads=2)
    # the HU of every file as before: stored * slope + intercept in float64, then float32
    expected = (stack.astype(np.float64) * (slope or 1.0) + (intercept or 0.0)).astype(np.float32)
    np.testing.assert_array_equal(eager.array, expected)
    assert isinstance(lazy, LazyVolume) and isinstance(lazy.slices(), StoredStack)
    assert lazy.slices().raw.dtype == pixel_dtype and lazy.slices().offset == offset
    np.testing.assert_array_equal(to_uint8(lazy.slices()), to_uint8(expected))
    np.testing.assert_array_equal(to_uint8(lazy.slices(), window=(-900, 600)), to_uint8(expected, window=(-900, 600)))
    a, b = SliceReducer().reduce(lazy.slices()), SliceReducer().reduce(expected)
    assert a.kept.tolist() == b.kept.tolist() and a.hashes == b.hashes
    np.testing.assert_array_equal(lazy.take([4, 0]), expected[[4, 0]])
    np.testing.assert_array_equal(lazy.array, expected)
    np.testing.assert_array_equal(lazy.meta.pop("affine"), eager.meta.pop("affine"))
    assert lazy.meta == eager.meta and lazy.slice_sources == eager.slice_sources


@pytest.mark.parametrize("change", ["rescale", "dtype"])
def test_series_whose_files_differ_is_read_per_file_as_float32(tmp_path, rng, change):
    """RescaleSlope/Intercept (or the stored dtype) changing from file to file: HU per file, as float32."""
    stack = rng.integers(0, 3000, (6, 5, 5))
    slopes = [1.0, 1.0, 1.0, 0.5, 2.0, 1.0]
    dtypes = [np.uint16] * 3 + [np.int16] * 3 if change == "dtype" else [np.uint16] * 6
    for k in range(6):
        write_dicom(tmp_path / f"s{k}.dcm", stack[k].astype(dtypes[k]), position=(0, 0, 2.0 * k), instance=k + 1,
                    slope=slopes[k] if change == "rescale" else 1.0, intercept=-1024.0)
    expected = np.stack([(stack[k].astype(np.float64) * (slopes[k] if change == "rescale" else 1.0) - 1024)
                         for k in range(6)]).astype(np.float32)
    for threads in (1, 3):
        vol = load_volume(tmp_path, lazy=True, num_threads=threads)
        assert not hasattr(vol, "stack")  # a plain float32 volume
        np.testing.assert_array_equal(vol.array, expected)


@pytest.mark.realdata
def test_real_pancreas_lazy_and_threaded_equal_the_eager_volume(pancreas):
    lazy = load_volume(pancreas.source, lazy=True, num_threads=2)  # the fixture decoded one file at a time
    assert lazy.slices().raw.dtype == np.uint16 and lazy.slices().offset == -1000  # RescaleIntercept -1000
    from monai_lessmore.reduction import SliceReducer

    a, b = SliceReducer().reduce(lazy.slices()), SliceReducer().reduce(pancreas.array)
    assert a.kept.tolist() == b.kept.tolist() and a.hashes == b.hashes
    np.testing.assert_array_equal(lazy.array, pancreas.array)
