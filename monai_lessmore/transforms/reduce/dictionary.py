"""Dictionary transform wrapping :class:`~monai_lessmore.transforms.reduce.array.ReduceSlices`."""

from __future__ import annotations

import os
from typing import Any, Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_lessmore.transforms.reduce.array import ReduceSlices

__all__ = ["ReduceSlicesd", "ReduceSlicesD", "ReduceSlicesDict"]


class ReduceSlicesd(MapTransform):
    """Dictionary version of :class:`ReduceSlices`: reduces each volume under ``keys``.

    Args:
        keys: keys of the volumes to reduce.
        allow_missing_keys: don't raise when a key is missing.
        config: a preset name or YAML/JSON file of reduction settings, overridden by the other arguments.
        other arguments: as :class:`ReduceSlices`.
    """

    backend = ReduceSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        method: str | None = None,
        threshold: float | None = None,
        fraction: float | None = None,
        count: int | None = None,
        algorithm: str | None = None,
        every_n: int | None = None,
        window: Sequence[float] | None = None,
        device: str | None = None,
        bins: int | None = None,
        deepnet_weights: str | None = None,
        slice_axis: int | None = None,
        rendered: bool = False,
        allow_missing_keys: bool = False,
        config: str | os.PathLike | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reducer = ReduceSlices(
            method=method, threshold=threshold, fraction=fraction, count=count, algorithm=algorithm,
            every_n=every_n, window=window, device=device, bins=bins, deepnet_weights=deepnet_weights,
            slice_axis=slice_axis, rendered=rendered, config=config,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reducer(d[key])
        return d


ReduceSlicesD = ReduceSlicesDict = ReduceSlicesd
