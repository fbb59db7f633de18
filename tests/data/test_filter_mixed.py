"""A dataset of NIfTI volumes (read from the slice store) and slice folders (read directly): every item has the
same keys, so a batch that mixes both collates."""

from __future__ import annotations

import numpy as np
from monai.data import DataLoader, Dataset
from PIL import Image

from monai_lessmore.data import SliceReductionFilter
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.transforms import LoadSliced


def test_store_and_folder_items_share_keys_and_batch_together(tmp_path):
    (nifti,) = write_phantom_dataset(tmp_path / "vols", n_volumes=1, slices=(6, 6), size=16)
    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"vol_{i}.png")
    filt = SliceReductionFilter(method="none", slice_store_dir=tmp_path / "store")
    items = filt([{"image": str(nifti)}, {"image": str(folder / "vol")}])
    assert len(items) == 10 and len({tuple(sorted(it)) for it in items}) == 1
    stored, direct = items[0], items[-1]
    assert stored["image"].endswith(".slices.npy") and stored["source_image"] == str(nifti)
    assert direct["source_image"] == direct["image"] == str(folder / "vol") and direct["source_slice_index"] == 3
    loader = DataLoader(Dataset(items, LoadSliced("image", render="minmax")), batch_size=10)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (10, 1, 16, 16)
    assert list(batch["source_slice_index"]) == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
