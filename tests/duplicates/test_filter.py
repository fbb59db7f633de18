"""SliceReductionFilter(duplicates=...): all but one volume of each duplicate group leave the datalist."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from monai_lessmore.cli.reduce import ReduceJob
from monai_lessmore.data import SliceReductionFilter
from monai_lessmore.duplicates.run import run_duplicates

from .test_realdata import _write_nifti


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(0, 300, (40, 64, 64)), (2, 4, 4)).astype(np.float32)
    c = ndimage.gaussian_filter(rng.normal(0, 300, (30, 64, 64)), (2, 4, 4)).astype(np.float32)
    paths = {"a": tmp_path / "a.nii.gz", "a_copy": tmp_path / "a_copy.nii.gz", "c": tmp_path / "c.nii.gz"}
    _write_nifti(paths["a"], a)
    _write_nifti(paths["a_copy"], a[4:34] + 0.5)  # a shifted, shorter copy
    _write_nifti(paths["c"], c)
    return {k: str(v) for k, v in paths.items()}


def _sources(items):
    return {it["image"] for it in items}


def test_filter_computes_groups(volumes):
    datalist = [{"image": volumes[k], "label": k} for k in ("a_copy", "c", "a")]
    plain = SliceReductionFilter(method="hash", threshold=6)(datalist)
    flt = SliceReductionFilter(method="hash", threshold=6, duplicates={})
    items = flt(datalist)
    assert _sources(plain) == set(volumes.values())
    assert _sources(items) == {volumes["a"], volumes["c"]}  # a has more slices: kept
    assert flt.duplicate_groups == [{"keep": "a", "drop": ["a_copy"]}]
    assert flt.dropped_duplicates == [volumes["a_copy"]]
    assert items == [it for it in plain if it["image"] != volumes["a_copy"]]
    # the copy renders to the same 8-bit slices (an offset of 0.5 HU): it is found at threshold 0 too
    flt0 = SliceReductionFilter(method="hash", threshold=6, duplicates={"threshold": 0, "min_fraction": 1.0})
    assert flt0(datalist) == items


def test_filter_reads_duplicates_csv(volumes, tmp_path):
    ReduceJob(list(volumes.values()), str(tmp_path / "run"), {"method": "hash", "threshold": 6}, progress=False).run()
    summary = run_duplicates(tmp_path / "run")
    assert summary["groups"] == [{"keep": "a", "drop": ["a_copy"]}]
    flt = SliceReductionFilter(method="hash", threshold=6, duplicates=str(tmp_path / "run" / "duplicates.csv"))
    items = flt([{"image": volumes["c"]}, {"image": volumes["a_copy"]}, {"image": volumes["a"]}])
    assert _sources(items) == {volumes["a"], volumes["c"]}
    # the kept volume of a group absent from the datalist: its copy stays
    assert _sources(flt([{"image": volumes["a_copy"]}])) == {volumes["a_copy"]}


def test_filter_bad_duplicates_argument(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        SliceReductionFilter(duplicates=3)
    flt = SliceReductionFilter(method="hash", threshold=6, duplicates=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="does not exist"):
        flt([])
    with pytest.raises(ValueError, match="unknown option"):
        SliceReductionFilter(method="hash", threshold=6, duplicates={"treshold": 3})


@pytest.mark.parametrize("options,match", [
    ({"threshold": 6.5}, r"duplicates\['threshold'\] must be an integer Hamming distance 0..64, got 6.5"),
    ({"threshold": "6"}, r"duplicates\['threshold'\]"), ({"threshold": 65}, r"duplicates\['threshold'\]"),
    ({"min_fraction": 0}, r"duplicates\['min_fraction'\] must be a number in \(0, 1\]"),
    ({"min_fraction": "half"}, r"duplicates\['min_fraction'\]"),
    ({"scope": "series"}, r"duplicates\['scope'\] must be one of dataset, study, patient"),
    ({"num_threads": 0}, r"duplicates\['num_threads'\]"),
])
def test_filter_bad_duplicate_options_fail_at_construction(options, match):
    """A bad option value is an error naming it when the filter is made, not a truncated value (6.5 -> 6) or a bare
    ``int()`` error after the whole datalist has been reduced."""
    with pytest.raises(ValueError, match=match):
        SliceReductionFilter(method="hash", threshold=6, duplicates=options)
