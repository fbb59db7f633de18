"""Duplicate volumes across series and across a dataset: the paper's within-volume idea one level up.

The same acquisition is often in a CT collection more than once (one scan reconstructed with two kernels, thin and
thick reconstructions, a series re-exported in another collection). Within-volume reduction keeps every copy, so
contrastive pre-training still sees near-identical slices as negatives. This package finds such volumes from the
per-slice dHashes of a reduce run: an exact search for every slice pair within a Hamming threshold across volumes
(:mod:`~monai_lessmore.duplicates.search`, multi-index hashing compiled with numba), then matched fractions,
alignment and groups (:mod:`~monai_lessmore.duplicates.volumes`), and the ``lessmore duplicates`` command
(:mod:`~monai_lessmore.duplicates.run`).
"""

from monai_lessmore.duplicates.search import SearchPlan, brute_force_pairs, near_pairs, plan_search
from monai_lessmore.duplicates.volumes import (
    DEFAULT_MIN_FRACTION,
    DUPLICATE_COLUMNS,
    VolumeSet,
    duplicate_groups,
    find_duplicates,
    volume_pairs,
)

__all__ = [
    "SearchPlan", "brute_force_pairs", "near_pairs", "plan_search", "DEFAULT_MIN_FRACTION", "DUPLICATE_COLUMNS",
    "VolumeSet", "duplicate_groups", "find_duplicates", "volume_pairs",
]
