"""Tests for monai_lessmore.io.discover: listing the volumes under a dataset root."""

from __future__ import annotations

import os

import numpy as np
import pytest

from monai_lessmore.io import VolumeReadError, discover_volumes, load_volume
from tests.conftest import shared_data_path
from tests.io.conftest import random_volume, write_nifti, write_series, write_slices


def test_mixed_tree(tmp_path, rng):
    write_nifti(tmp_path / "a.nii.gz", random_volume(rng, (2, 2, 2)))
    (tmp_path / "b.mha").write_text("x")
    (tmp_path / "b.raw").write_text("x")  # MetaImage data file: not a volume of its own
    write_series(tmp_path / "patient" / "series1", random_volume(rng, (2, 2, 2)), names=lambda k: f"IM{k}")
    (tmp_path / "patient" / "series1" / "LICENSE.txt").write_text("x")
    write_slices(tmp_path / "pngs", "v1", {1: np.zeros((2, 2)), 2: np.zeros((2, 2))})
    write_slices(tmp_path / "pngs", "v2", {1: np.zeros((2, 2))})
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    write_nifti(tmp_path / ".hidden" / "h.nii", random_volume(rng, (2, 2, 2)))
    found = discover_volumes(tmp_path)
    expected = ["a.nii.gz", "b.mha", "patient/series1", "pngs/v1", "pngs/v2"]
    assert found == sorted(os.path.join(str(tmp_path), e) for e in expected)
    assert load_volume(found[-1]).name == "v2"


def test_single_volume_paths_return_themselves(tmp_path, rng):
    nii = write_nifti(tmp_path / "a.nii", random_volume(rng, (2, 2, 2)))
    write_series(tmp_path / "s", random_volume(rng, (2, 2, 2)))
    write_slices(tmp_path / "p", "vol", {0: np.zeros((2, 2))})
    assert discover_volumes(nii) == [str(nii)]
    assert discover_volumes(tmp_path / "s") == [str(tmp_path / "s")]
    assert discover_volumes(tmp_path / "p" / "vol") == [str(tmp_path / "p" / "vol")]


def test_output_folders_of_reduce_are_skipped(tmp_path, rng):
    """Exported slices and volumes inside a ``lessmore reduce`` output are not data: the folder is known by its
    lock file, or by the layout older versions wrote (manifest, summary and records/); a partial layout is data."""
    from monai_lessmore.io.discover import OUTPUT_MARKER, is_output_folder

    write_nifti(tmp_path / "a.nii.gz", random_volume(rng, (2, 2, 2)))
    marked, layout, partial = tmp_path / "run1", tmp_path / "sub" / "run2", tmp_path / "notarun"
    for out in (marked, layout, partial):
        write_slices(out / "slices" / "a", "a", {0: np.zeros((2, 2))})
        (out / "volumes").mkdir()
        write_nifti(out / "volumes" / "a.nii.gz", random_volume(rng, (2, 2, 2)))
    (marked / OUTPUT_MARKER).write_text("")
    for name in ("manifest.csv", "summary.json"):
        (layout / name).write_text("x")
    (layout / "records").mkdir()
    (partial / "manifest.csv").write_text("x")  # no summary.json, no records/: an ordinary folder
    assert [is_output_folder(f) for f in (marked, layout, partial, tmp_path)] == [True, True, False, False]
    expected = ["a.nii.gz", "notarun/slices/a/a", "notarun/volumes/a.nii.gz"]
    assert discover_volumes(tmp_path) == sorted(os.path.join(str(tmp_path), e) for e in expected)
    assert discover_volumes(marked) == [] and discover_volumes(layout) == []  # the root itself, too
    # what a run exported is discovered when asked for directly
    assert discover_volumes(marked / "slices") == [str(marked / "slices" / "a" / "a")]
    assert discover_volumes(layout / "volumes") == [str(layout / "volumes" / "a.nii.gz")]


def test_errors(tmp_path):
    with pytest.raises(VolumeReadError, match="no such file or folder"):
        discover_volumes(tmp_path / "missing")
    (tmp_path / "x.xyz").write_text("x")
    with pytest.raises(VolumeReadError, match="unsupported file type"):
        discover_volumes(tmp_path / "x.xyz")
    assert discover_volumes(tmp_path) == []  # inside a walked tree, unsupported files are skipped


@pytest.mark.realdata
def test_real_data_root():
    root = shared_data_path("ct")
    found = discover_volumes(root)
    rel = [os.path.relpath(p, root) for p in found]
    assert len(rel) == 2 + 5 + 20
    assert "dicom/pancreas_ct" in rel and "dicom/totalseg_example_ct" in rel
    assert sum(r.startswith("nifti/") for r in rel) == 5
    assert sum(r.startswith("slices/covid19_ct_seg/") for r in rel) == 20
