"""Array transform: read one slice of a volume on disk, lazily (only that slice is read where the format allows)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from monai_lessmore.io.slice_folder import validate_order
from monai_lessmore.reduction.preprocess import to_uint8

__all__ = ["LoadSlice"]


class LoadSlice(Transform):
    """Load slice ``index`` of the volume at ``path`` as a ``(1, H, W)`` ``MetaTensor``.

    The slice is the one :func:`monai_lessmore.io.load_volume` would give at that position (inferior to superior,
    LPS view) -- the index the dataset filter writes. Values are HU (the 8-bit values for slice folders), or with
    ``render`` the 8-bit rendering the reduction used.

    Args:
        order: slice order: ``"index"`` (anatomical), ``"filename"`` (slice folders: the authors' string sort) or
            ``"instance"`` (DICOM: InstanceNumber).
        render: ``None`` (values as stored), ``"minmax"`` (per-slice min-max to 0..255, as the authors' PNGs) or an
            HU window ``[low, high]`` to 0..255.
        dtype: output dtype, by name (``"float32"``, JSON-friendly for bundle configs) or as a ``torch.dtype``.
    """

    def __init__(
        self, order: str = "index", render: str | Sequence[float] | None = None, dtype: str | torch.dtype = "float32"
    ) -> None:
        validate_order(order)
        if render is not None and render != "minmax":
            from monai_lessmore.reduction.preprocess import validate_window

            render = list(validate_window(render))
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype must name a torch dtype such as 'float32' or 'float16', got {dtype!r}")
            dtype = getattr(torch, dtype)
        self.order = order
        self.render = render
        self.dtype = dtype

    def __call__(self, path: str | os.PathLike, index: int) -> MetaTensor:
        from monai_lessmore.io import read_slice

        sl = np.asarray(read_slice(str(path), int(index), order=self.order), dtype=np.float32)
        if self.render == "minmax":
            sl = to_uint8(sl).astype(np.float32)
        elif self.render is not None:
            sl = to_uint8(sl, window=self.render).astype(np.float32)
        meta = {"filename_or_obj": str(path), "slice_index": int(index), "spatial_shape": np.asarray(sl.shape)}
        return MetaTensor(torch.as_tensor(sl[None], dtype=self.dtype), meta=meta)
