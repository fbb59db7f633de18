from __future__ import annotations

from monai_lessmore.transforms.reduce.array import KEPT_HASHES, KEPT_INDICES, N_SLICES, SLICE_AXIS, ReduceSlices
from monai_lessmore.transforms.reduce.dictionary import ReduceSlicesd, ReduceSlicesD, ReduceSlicesDict

__all__ = ["ReduceSlices", "ReduceSlicesd", "ReduceSlicesD", "ReduceSlicesDict", "KEPT_INDICES", "KEPT_HASHES", "SLICE_AXIS", "N_SLICES"]
