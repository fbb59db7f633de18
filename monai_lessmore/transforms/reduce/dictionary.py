"""Dictionary transform wrapping :class:`~monai_lessmore.transforms.reduce.array.ReduceSlices`."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_lessmore.transforms.reduce.array import ReduceSlices

__all__ = ["ReduceSlicesd", "ReduceSlicesD", "ReduceSlicesDict"]


class ReduceSlicesd(MapTransform):
    """Dictionary version of :class:`ReduceSlices`: reduces each volume under ``keys``.

    Args:
        keys: keys of the volumes to reduce.
        allow_missing_keys: don't raise when a key is missing.
        other arguments: as :class:`ReduceSlices`.
    """

    backend = ReduceSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "hash",
        threshold: float | None = None,
        fraction: float | None = None,
        count: int | None = None,
        algorithm: str | None = None,
        every_n: int | None = None,
        window: Sequence[float] | None = None,
        device: str = "cpu",
        bins: int = 100,
        deepnet_weights: str | None = "imagenet",
        slice_axis: int | None = None,
        rendered: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reducer = ReduceSlices(
            method=method, threshold=threshold, fraction=fraction, count=count, algorithm=algorithm,
            every_n=every_n, window=window, device=device, bins=bins, deepnet_weights=deepnet_weights,
            slice_axis=slice_axis, rendered=rendered,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reducer(d[key])
        return d


ReduceSlicesD = ReduceSlicesDict = ReduceSlicesd
