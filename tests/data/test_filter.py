"""The dataset filter plugs into monai.data.Dataset / CacheDataset + DataLoader unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, ScaleIntensityRanged

from monai_lessmore.data import ReductionCache, SliceReductionFilter, reduce_datalist
from monai_lessmore.io import load_volume
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.reduction import SliceReducer
from monai_lessmore.transforms import LoadSliced
from tests.conftest import shared_data_path


@pytest.fixture(scope="module")
def phantom_paths(tmp_path_factory):
    return [str(p) for p in write_phantom_dataset(tmp_path_factory.mktemp("ph"), n_volumes=2, slices=(60, 90), size=48)]


def test_filter_keeps_what_the_reducer_keeps_and_carries_other_keys(phantom_paths):
    datalist = [{"image": p, "label": i, "patient": f"p{i}"} for i, p in enumerate(phantom_paths)]
    out = SliceReductionFilter(method="hash", threshold=6)(datalist)
    for i, p in enumerate(phantom_paths):
        expected = SliceReducer(threshold=6).reduce(load_volume(p).array).kept.tolist()
        items = [d for d in out if d["image"] == p]
        assert [d["slice_index"] for d in items] == expected
        assert all(d["label"] == i and d["patient"] == f"p{i}" for d in items)
    assert 0 < len(out) < 150


@pytest.mark.parametrize("dataset_cls", [Dataset, CacheDataset])
def test_filter_output_loads_lazily_through_monai_dataset_and_dataloader(phantom_paths, dataset_cls):
    slices = reduce_datalist([{"image": p} for p in phantom_paths], method="hash", threshold=6)
    transform = Compose([LoadSliced("image"), ScaleIntensityRanged("image", -1000, 1000, 0, 1, clip=True)])
    kwargs = {"progress": False} if dataset_cls is CacheDataset else {}
    ds = dataset_cls(slices, transform=transform, **kwargs)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 48, 48)
    vol = load_volume(slices[2]["image"]).array
    expected = np.clip((vol[slices[2]["slice_index"]] + 1000) / 2000, 0, 1)
    np.testing.assert_allclose(batch["image"][2, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(batch["slice_index"], torch.tensor([d["slice_index"] for d in slices[:4]]))


def test_cache_second_run_does_no_hashing_and_content_change_invalidates(phantom_paths, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    datalist = [{"image": p} for p in phantom_paths]
    first = SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))(datalist)
    assert len(list(cache_dir.rglob("*.json"))) == 2

    def boom(*args, **kwargs):
        raise AssertionError("reduction recomputed despite a cache hit")

    monkeypatch.setattr(SliceReducer, "reduce", boom)
    flt = SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))
    assert flt(datalist) == first
    assert all(r["cached"] for r in flt.records)
    # other settings -> other entry, computed again
    with pytest.raises(AssertionError, match="recomputed"):
        SliceReductionFilter(threshold=3, cache_dir=str(cache_dir))(datalist)
    monkeypatch.undo()
    # the same path with other content is a miss
    copy = tmp_path / "vol.nii.gz"
    copy.write_bytes(open(phantom_paths[0], "rb").read())
    SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))([{"image": str(copy)}])
    copy.write_bytes(open(phantom_paths[1], "rb").read())
    flt = SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))
    flt([{"image": str(copy)}])
    assert flt.records[0]["cached"] is True  # same content as phantom 1, already cached under its digest
    assert flt.records[0]["kept"] == [d["slice_index"] for d in first if d["image"] == phantom_paths[1]]


def test_corrupt_cache_entry_is_a_miss(phantom_paths, tmp_path):
    cache_dir = tmp_path / "cache"
    SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))([{"image": phantom_paths[0]}])
    (entry,) = cache_dir.rglob("*.json")
    entry.write_text("{not json")
    flt = SliceReductionFilter(threshold=6, cache_dir=str(cache_dir))
    flt([{"image": phantom_paths[0]}])
    assert flt.records[0]["cached"] is False


def test_bad_items_and_skip_policy(phantom_paths, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    datalist = [{"image": str(bad)}, {"image": phantom_paths[0]}]
    with pytest.raises(ValueError, match="broken.nii.gz"):
        SliceReductionFilter(threshold=6)(datalist)
    flt = SliceReductionFilter(threshold=6, on_error="skip")
    out = flt(datalist)
    assert out and all(d["image"] == phantom_paths[0] for d in out)
    assert flt.failures[0]["source"] == str(bad)
    with pytest.raises(ValueError, match="has no key 'image'"):
        SliceReductionFilter()([{"img": phantom_paths[0]}])
    with pytest.raises(ValueError, match="on_error must be"):
        SliceReductionFilter(on_error="ignore")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        ReductionCache(bad)


def test_method_none_keeps_everything(phantom_paths):
    out = SliceReductionFilter(method="none")([{"image": phantom_paths[0]}])
    assert [d["slice_index"] for d in out] == list(range(60))


def test_filter_on_real_slice_folders(tmp_path):
    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    vol = "Data-1_coronacases_org_003"
    out = SliceReductionFilter(threshold=6, cache_dir=str(tmp_path / "c"))([{"image": str(folder / vol)}])
    assert 0 < len(out) < 69
    batch = LoadSliced("image")(out[0])
    assert batch["image"].shape[0] == 1


def test_slice_store_items_read_the_same_slices(tmp_path):
    """slice_store_dir: kept slices of a .nii.gz written once, uncompressed; LoadSliced reads the same arrays."""
    import nibabel as nib

    from monai_lessmore.io import load_volume
    from monai_lessmore.transforms import LoadSliced

    vol = np.random.default_rng(0).integers(-1000, 1500, size=(24, 20, 12)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, -1, 1, 1])), str(path))
    before = path.read_bytes()
    store = tmp_path / "store"
    plain = SliceReductionFilter(method="everyn", every_n=3)([{"image": str(path), "label": 2}])
    stored = SliceReductionFilter(method="everyn", every_n=3, slice_store_dir=store, cache_dir=tmp_path / "c")(
        [{"image": str(path), "label": 2}]
    )
    assert [d["source_slice_index"] for d in stored] == [d["slice_index"] for d in plain]
    assert [d["slice_index"] for d in stored] == list(range(len(plain))) and stored[0]["label"] == 2
    assert len(list(store.glob("*.slices.npy"))) == 1 and stored[0]["image"].endswith(".slices.npy")
    load = LoadSliced("image", render=None)
    for a, b in zip(plain, stored):
        np.testing.assert_array_equal(load(dict(a))["image"], load(dict(b))["image"])
    expected = load_volume(str(path)).array[[d["slice_index"] for d in plain]]
    np.testing.assert_array_equal(np.load(next(store.glob("*.slices.npy"))), expected.astype(np.float32))
    # a second run (reduction cached) reuses the store; a deleted store file is rewritten; inputs untouched
    again = SliceReductionFilter(method="everyn", every_n=3, slice_store_dir=store, cache_dir=tmp_path / "c")(
        [{"image": str(path)}]
    )
    assert [d["image"] for d in again] == [d["image"] for d in stored]
    next(store.glob("*.slices.npy")).unlink()
    SliceReductionFilter(method="everyn", every_n=3, slice_store_dir=store, cache_dir=tmp_path / "c")([{"image": str(path)}])
    assert len(list(store.glob("*.slices.npy"))) == 1 and path.read_bytes() == before
    # other settings, another store file
    SliceReductionFilter(method="everyn", every_n=2, slice_store_dir=store)([{"image": str(path)}])
    assert len(list(store.glob("*.slices.npy"))) == 2
    with pytest.raises(IndexError, match=f"out of range.*holds {len(stored)} slices"):
        load({"image": stored[0]["image"], "slice_index": len(stored)})


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_filter_never_converts_the_whole_volume(tmp_path, monkeypatch, fmt):
    """The filter reads the stored voxels (lazy): they are rendered slice by slice and only the kept slices are
    converted to float32 for the slice store; the records and the store equal those of the eager volume."""
    import nibabel as nib

    from monai_lessmore.reduction.preprocess import StoredStack
    from tests.io.conftest import write_series

    vol = np.random.default_rng(1).integers(-1000, 1500, size=(30, 16, 16)).astype(np.int16)  # (S, H, W)
    vol[10:20] = vol[10]  # repeated slices: something to drop
    if fmt == "nifti":
        path = tmp_path / "ct.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([-1.0, -1, 1, 1])), str(path))
    else:
        path = tmp_path / "series"
        write_series(path, vol, intercept=-1024.0)
    eager = load_volume(str(path)).array
    expected = SliceReducer(threshold=6).reduce(eager)

    def whole_volume(self):
        raise AssertionError("the whole volume was converted to float32")

    monkeypatch.setattr(StoredStack, "to_array", whole_volume)
    flt = SliceReductionFilter(threshold=6, slice_store_dir=tmp_path / "store")
    out = flt([{"image": str(path)}])
    record = flt.records[0]
    assert record["kept"] == expected.kept.tolist() and record["hashes"] == expected.hashes
    assert len(out) == len(expected.kept) < 30
    if fmt == "nifti":  # the slice store holds NIfTI/NRRD/MetaImage volumes' kept slices
        np.testing.assert_array_equal(np.load(record["store"]), eager[expected.kept])
