"""Validation of the slices of one volume, shared by the pixel-wise similarity measures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["as_slice_stack", "native_numpy"]


def as_slice_stack(slices: Any, *, name: str = "slices") -> np.ndarray | torch.Tensor:
    """Return the slices of one volume as a single ``(N, H, W)`` array or tensor, validating the shapes.

    Args:
        slices: a ``(N, H, W)`` numpy array or torch tensor, or a sequence of ``(H, W)`` arrays/tensors.
        name: the argument name used in error messages.

    Returns:
        ``slices`` itself when it already is an ``(N, H, W)`` array/tensor, else the stacked numpy array.

    Raises:
        ValueError: when the slices differ in shape, are not 2-D, or there are none.
    """
    if isinstance(slices, (np.ndarray, torch.Tensor)):
        stack = slices
    elif isinstance(slices, Sequence) and not isinstance(slices, (str, bytes)):
        arrays = [s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s) for s in slices]
        if not arrays:
            raise ValueError(f"{name} must hold at least one slice, got an empty sequence")
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise ValueError(
                f"all slices of one volume must have the same shape, got {len(shapes)} different shapes in "
                f"{name}: {shapes}; resample or crop them to one size first"
            )
        stack = np.stack(arrays)
    else:
        raise TypeError(f"{name} must be an (N, H, W) numpy array/torch tensor or a list of 2-D slices, "
                        f"got {type(slices).__name__}")
    if stack.ndim != 3:
        raise ValueError(f"{name} must be a stack of 2-D slices with shape (N, H, W), got shape {tuple(stack.shape)}")
    if stack.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one slice, got shape {tuple(stack.shape)}")
    return stack


def native_numpy(stack: np.ndarray | torch.Tensor, *, half_to_float32: bool = False) -> np.ndarray:
    """An ``(N, H, W)`` stack as a numpy array the compiled kernels accept: torch tensors copied to host (bfloat16,
    which numpy lacks, as float32), booleans as uint8, big-endian data in native byte order, and float16 as float32
    when ``half_to_float32``. Values are unchanged; the input is never modified."""
    if isinstance(stack, torch.Tensor):
        t = stack.detach().cpu()
        stack = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    arr = np.asarray(stack)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif half_to_float32 and arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
