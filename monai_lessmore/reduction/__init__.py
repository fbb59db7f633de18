"""Slice reduction: rendering, similarity measures, selection algorithms and the per-volume reducer.

Layers (one place for each piece of maths): measures (:mod:`.dhash`, :mod:`.ssim`, :mod:`.mi`, :mod:`.deepnet`)
-> :mod:`.methods` (name -> score matrix) -> :mod:`.selection` (which slices stay) -> :class:`SliceReducer`.
"""

from __future__ import annotations

from monai_lessmore.reduction.methods import METHODS, get_method
from monai_lessmore.reduction.preprocess import to_uint8
from monai_lessmore.reduction.reducer import ALGORITHMS, ReductionResult, SliceReducer
from monai_lessmore.reduction.selection import (
    select_all,
    select_every_n,
    select_greedy,
    select_leader,
    select_leader_count,
    target_count,
)

__all__ = [
    "METHODS",
    "get_method",
    "to_uint8",
    "ALGORITHMS",
    "ReductionResult",
    "SliceReducer",
    "select_all",
    "select_every_n",
    "select_greedy",
    "select_leader",
    "select_leader_count",
    "target_count",
]
