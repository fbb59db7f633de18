"""Dictionary transform wrapping :class:`~monai_lessmore.transforms.io.array.LoadSlice`."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_lessmore.transforms.io.array import LoadSlice

__all__ = ["LoadSliced", "LoadSliceD", "LoadSliceDict"]


class LoadSliced(MapTransform):
    """Replace the volume path under each key by that volume's slice ``d[slice_key]``, read lazily.

    This is the loader for items made by :class:`~monai_lessmore.data.SliceReductionFilter`.

    Args:
        keys: keys holding volume paths.
        slice_key: key holding the slice index (default ``"slice_index"``).
        order, render, dtype: as :class:`LoadSlice`.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: str = "slice_index",
        order: str = "index",
        render: str | Sequence[float] | None = None,
        dtype: str | torch.dtype = "float32",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.loader = LoadSlice(order=order, render=render, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.slice_key not in d:
            raise KeyError(f"LoadSliced: item has no {self.slice_key!r} key; make the datalist with SliceReductionFilter")
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], d[self.slice_key])
        return d


LoadSliceD = LoadSliceDict = LoadSliced
