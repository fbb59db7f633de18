from __future__ import annotations

from monai_lessmore.transforms.io.array import LoadSlice
from monai_lessmore.transforms.io.dictionary import LoadSliced, LoadSliceD, LoadSliceDict

__all__ = ["LoadSlice", "LoadSliced", "LoadSliceD", "LoadSliceDict"]
