"""Array transform: keep only the dissimilar slices of a CT volume (the paper's HASH-6 by default)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from monai_lessmore.reduction.presets import merge_reduction_config
from monai_lessmore.reduction.reducer import SliceReducer

__all__ = ["ReduceSlices", "KEPT_INDICES", "KEPT_HASHES", "SLICE_AXIS", "N_SLICES"]

#: metadata keys written by :class:`ReduceSlices`
KEPT_INDICES = "lessmore_kept_indices"
KEPT_HASHES = "lessmore_kept_hashes"
SLICE_AXIS = "lessmore_slice_axis"
N_SLICES = "lessmore_n_slices"


class ReduceSlices(Transform):
    """Remove near-duplicate slices of one volume along its axial axis.

    The input is a volume as ``LoadImage`` returns it: a ``MetaTensor`` of shape ``(C, X, Y, Z)`` (channel first,
    one channel) or ``(X, Y, Z)``. The axial axis comes from the affine (``meta["affine"]``, RAS as MONAI's
    readers give it) and the slices are visited inferior to superior in the package's LPS view, so the result is
    the same as ``lessmore reduce`` on the file. For arrays without an affine, pass ``slice_axis``.

    The output keeps the input's layout with only the kept slices along the slice axis (in stored order). Its
    metadata records ``lessmore_kept_indices`` (indices along the stored slice axis), ``lessmore_kept_hashes``
    (16-hex-digit dHash of each kept slice), ``lessmore_slice_axis`` (spatial axis, 0..2) and
    ``lessmore_n_slices``. The affine is left unchanged: the kept slices are no longer evenly spaced.

    Args:
        method, threshold, fraction, count, algorithm, every_n, window, device, bins, deepnet_weights: as
            :class:`~monai_lessmore.reduction.SliceReducer` (HASH-6 with the leader algorithm by default); ``None``
            takes the value of ``config``, else the reducer's default.
        slice_axis: spatial axis (0..2) of the slices, overriding the affine; slices are then taken in stored order
            and orientation.
        rendered: the values are already 8-bit renderings (e.g. stacked PNG slices): hash them as they are.
        config: reduction settings from a preset name (``"hash6"``, ``"ssim10"`` ...) or a YAML/JSON file
            (:mod:`monai_lessmore.reduction.presets`); the other arguments override it.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
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
        config: str | os.PathLike | Mapping[str, Any] | None = None,
    ) -> None:
        options = dict(method=method, threshold=threshold, fraction=fraction, count=count, algorithm=algorithm,
                       every_n=every_n, window=window, device=device, bins=bins, deepnet_weights=deepnet_weights)
        self.reducer = SliceReducer(**merge_reduction_config(config, options))
        if slice_axis is not None and slice_axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"slice_axis must be a spatial axis 0, 1 or 2 (or -1..-3), got {slice_axis!r}")
        self.slice_axis = slice_axis
        self.rendered = bool(rendered)

    def _stack(self, spatial: np.ndarray, affine: Any) -> tuple[np.ndarray, int, Any]:
        """(S, H, W) stack in visiting order, the stored slice axis, and a map from stack index to stored index."""
        if self.slice_axis is not None:
            axis = self.slice_axis % 3
            return np.moveaxis(spatial, axis, 0), axis, lambda k: k
        if affine is None:
            raise ValueError(
                "ReduceSlices needs the volume's affine to find the axial axis: load it with LoadImage(d) "
                "(MetaTensor) or pass slice_axis=0|1|2"
            )
        from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation, source_slice_index

        ori = axial_orientation(np.asarray(affine, dtype=np.float64), spatial.shape)
        return apply_axial_orientation(spatial, ori), ori["slice_axis"], lambda k: source_slice_index(k, ori)

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        out = img if isinstance(img, MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img))
        if out.ndim == 4:
            if out.shape[0] != 1:
                raise ValueError(
                    f"ReduceSlices expects one channel (C, X, Y, Z) with C=1, got shape {tuple(out.shape)}; "
                    "select the CT channel first"
                )
            spatial_dims_offset = 1
        elif out.ndim == 3:
            spatial_dims_offset = 0
        else:
            raise ValueError(
                f"ReduceSlices expects a 3D volume (X, Y, Z) or (1, X, Y, Z), got shape {tuple(out.shape)}; "
                "a 2D image has no slices to reduce"
            )
        spatial = out.detach().cpu().numpy().reshape(out.shape[spatial_dims_offset:])
        affine = out.meta.get("affine") if isinstance(img, MetaTensor) else None
        if isinstance(affine, torch.Tensor):
            affine = affine.cpu().numpy()
        stack, axis, to_stored = self._stack(spatial, affine)
        result = self.reducer.reduce(stack, rendered=self.rendered)
        stored = np.asarray(sorted(int(to_stored(int(k))) for k in result.kept), dtype=np.int64)
        hash_of = {int(to_stored(k)): h for k, h in enumerate(result.hashes)}
        index = torch.as_tensor(stored, device=out.device)
        reduced = torch.index_select(out, spatial_dims_offset + axis, index)
        if not isinstance(reduced, MetaTensor):
            reduced = MetaTensor(reduced, meta=dict(out.meta))
        reduced.meta[KEPT_INDICES] = stored.tolist()
        reduced.meta[KEPT_HASHES] = [hash_of[int(k)] for k in stored]
        reduced.meta[SLICE_AXIS] = int(axis)
        reduced.meta[N_SLICES] = int(result.n_slices)
        return reduced
