"""MONAI transforms of monai-lessmore (array + dictionary versions), for ``Compose`` and bundle configs."""

from __future__ import annotations

from monai_lessmore.transforms.io import LoadSlice, LoadSliced, LoadSliceD, LoadSliceDict
from monai_lessmore.transforms.reduce import ReduceSlices, ReduceSlicesd, ReduceSlicesD, ReduceSlicesDict

__all__ = [
    "ReduceSlices", "ReduceSlicesd", "ReduceSlicesD", "ReduceSlicesDict",
    "LoadSlice", "LoadSliced", "LoadSliceD", "LoadSliceDict",
]
