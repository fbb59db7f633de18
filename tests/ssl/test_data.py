"""Pre-training datalist: the bad-input errors."""

from __future__ import annotations

import pytest

from monai_lessmore.data import SliceReductionFilter
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.ssl.data import build_pretrain_datalist, check_batch_size


class _KeepNothing:
    """A reduction that reads the volumes but keeps no slice (what an over-strict reduction does)."""

    def __init__(self):
        self.failures, self.records = [], []

    def __call__(self, datalist):
        self.records = [{"source": d["image"], "n_slices": 20, "kept": []} for d in datalist]
        return []


def test_datalist_from_phantom(tmp_path):
    write_phantom_dataset(tmp_path, n_volumes=2, slices=(12, 16), size=16)
    items = build_pretrain_datalist(tmp_path, SliceReductionFilter(method="none"))
    assert len(items) == 28 and {"image", "slice_index"} <= set(items[0])
    few = build_pretrain_datalist(tmp_path, SliceReductionFilter(method="none"), max_slices=5)
    assert len(few) == 5


def test_empty_after_reduction_names_counts(tmp_path):
    write_phantom_dataset(tmp_path, n_volumes=2, slices=(12, 16), size=16)
    with pytest.raises(ValueError, match=r"kept 0 of 40 slices from 2 volumes"):
        build_pretrain_datalist(tmp_path, _KeepNothing())


def test_no_readable_volumes(tmp_path):
    (tmp_path / "notes.txt").write_text("not a CT")
    with pytest.raises(ValueError, match="no readable volumes"):
        build_pretrain_datalist(tmp_path, SliceReductionFilter(method="none"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_pretrain_datalist(tmp_path / "missing", SliceReductionFilter(method="none"))


def test_unreadable_volumes_reported(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could be read|no readable volumes"):
        build_pretrain_datalist(tmp_path, SliceReductionFilter(method="none", on_error="skip"))


def test_batch_size_larger_than_dataset():
    assert check_batch_size(8, 4) == 4
    with pytest.raises(ValueError, match="batch_size 16 is larger than the 8 slices"):
        check_batch_size(8, 16)
    with pytest.raises(ValueError, match="per process"):
        check_batch_size(8, 5, world_size=2)
