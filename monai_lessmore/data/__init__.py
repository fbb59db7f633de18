"""Dataset-level tools: the slice reduction filter for MONAI datalists and its persistent cache."""

from __future__ import annotations

from monai_lessmore.data.cache import ReductionCache, params_digest
from monai_lessmore.data.filter import SliceReductionFilter, reduce_datalist, reduce_volume_file

__all__ = ["ReductionCache", "params_digest", "SliceReductionFilter", "reduce_datalist", "reduce_volume_file"]
