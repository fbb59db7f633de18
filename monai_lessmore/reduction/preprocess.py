"""Rendering of CT slices to the 8-bit images the similarity measures compare.

The authors of the paper exported every slice as its own PNG: the slice in Hounsfield units, min-max scaled on its
own to 0..255 and rounded to 8 bit, with no HU window (spec section 2). :func:`to_uint8` reproduces that and is
the one place where slices are rendered to 8 bit. An HU window is offered as an option.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["to_uint8", "validate_window", "validate_size", "resize_uint8"]


def validate_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    """Check an HU window ``(low, high)`` and return it as a tuple of floats (``None`` passes through).

    Raises:
        ValueError: when the window is not two finite numbers with ``low < high``.
    """
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be two numbers (low, high) in HU, e.g. [-1000, 1000], got {window!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"window must satisfy low < high with finite values in HU, got {window!r}")
    return low, high


def to_uint8(slices: np.ndarray, *, window: Sequence[float] | None = None) -> np.ndarray:
    """Render slices to 8 bit, one slice at a time.

    Without ``window`` each slice is min-max scaled on its own: ``round((x - min) / (max - min) * 255)``, the
    authors' PNG export; a constant slice becomes all zeros. With ``window=(low, high)`` values are clipped to the
    window and scaled linearly, the same mapping for every slice. Rounding is to the nearest integer (ties to
    even, :func:`numpy.rint`).

    Args:
        slices: ``(H, W)`` or ``(S, H, W)`` array of real values (HU), slice axis first. ``uint8`` input is
            scaled like any other input: pass already-rendered images straight to the hash instead.
        window: optional HU window ``(low, high)``.

    Returns:
        ``uint8`` array of the same shape.

    Raises:
        ValueError: for arrays that are not 2D/3D, or that hold NaN/Inf (the message gives the count).
    """
    arr = np.asarray(slices)
    if arr.ndim not in (2, 3):
        raise ValueError(f"slices must be a 2D slice (H, W) or a stack (S, H, W), got shape {arr.shape}")
    squeeze = arr.ndim == 2
    stack = arr[None] if squeeze else arr
    if stack.dtype.kind == "f" and not np.isfinite(stack).all():
        bad = int(stack.size - np.count_nonzero(np.isfinite(stack)))
        raise ValueError(
            f"slices contain {bad} NaN/Inf values; replace them (e.g. np.nan_to_num(x, nan=-1024)) before rendering"
        )
    win = validate_window(window)
    out = np.empty(stack.shape, dtype=np.uint8)
    if stack.shape[0] == 0:
        return out[0] if squeeze else out
    if win is None:
        # min and max are exact in the input dtype; the arithmetic below is float64 as in the authors' export
        lo = stack.min(axis=(1, 2)).astype(np.float64)
        span = stack.max(axis=(1, 2)).astype(np.float64) - lo
        span[span == 0] = 1.0  # constant slice: x - lo is 0 everywhere, so it maps to 0
        if _integer_valued(stack, span):
            return _minmax_lut(stack, lo, span, out)[0] if squeeze else _minmax_lut(stack, lo, span, out)
        lo, span = lo[:, None, None], span[:, None, None]
    # chunks of slices bound the float64 temporaries (~8 MiB) whatever the volume size
    step = max(1, (8 << 20) // max(1, 8 * stack.shape[1] * stack.shape[2]))
    for i in range(0, stack.shape[0], step):
        chunk = stack[i : i + step].astype(np.float64)
        if win is not None:
            low, high = win
            np.clip(chunk, low, high, out=chunk)
            chunk -= low
            chunk /= high - low
        else:
            chunk -= lo[i : i + step]
            chunk /= span[i : i + step]
        chunk *= 255.0
        np.rint(chunk, out=chunk)
        out[i : i + step] = chunk
    return out[0] if squeeze else out


_LUT_MAX_SPAN = 1 << 16


def _integer_valued(stack: np.ndarray, span: np.ndarray) -> bool:
    """Whether every value is an integer and each slice spans at most 65536 levels (CT in HU, 8/16-bit images)."""
    if span.max() > _LUT_MAX_SPAN:
        return False
    if stack.dtype.kind in "iub":
        return True
    # one slice at a time: an early non-integer slice ends the check without a full pass
    return all(np.array_equal(sl, np.floor(sl)) for sl in stack)


def _minmax_lut(stack: np.ndarray, lo: np.ndarray, span: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-slice min-max through a lookup table: for integer values ``v - lo`` is an exact integer ``k``, and
    ``LUT[k] = rint(k / span * 255)`` is the same float64 expression as the direct formula, so the result is
    identical while each voxel is touched a few times in 4-byte integers instead of six float64 passes."""
    for i, sl in enumerate(stack):
        levels = np.arange(int(span[i]) + 1, dtype=np.float64)
        lut = np.rint(levels / span[i] * 255.0).astype(np.uint8)
        idx = (sl - sl.dtype.type(lo[i])) if sl.dtype.kind == "f" else (sl.astype(np.int64) - int(lo[i]))
        out[i] = lut[idx.astype(np.intp, copy=False)]
    return out


def validate_size(size: int | Sequence[int] | None, name: str = "mixed_size") -> tuple[int, int] | None:
    """``None``, or a slice size ``(H, W)`` of positive integers (an int ``n`` means ``(n, n)``)."""
    if size is None:
        return None
    if isinstance(size, (str, bytes)):
        raise ValueError(f"{name} must be a positive integer N (N x N) or a pair (H, W) of them, got {size!r}")
    items = [size] if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else size
    try:
        hw = [int(v) for v in items]  # type: ignore[union-attr]
        ok = len(hw) in (1, 2) and all(v >= 1 and not isinstance(v0, bool) and float(v0) == v
                                       for v, v0 in zip(hw, items))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer N (N x N) or a pair (H, W) of them, got {size!r}")
    return (hw[0], hw[0]) if len(hw) == 1 else (hw[0], hw[1])


def resize_uint8(slices: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Resample 2-D uint8 slices of any sizes to one ``(H, W)`` with Pillow's bilinear filter (antialiased when it
    shrinks), as an ``(S, H, W)`` uint8 stack. Slices already of that size are copied unchanged."""
    from PIL import Image

    h, w = size
    out = np.empty((len(slices), h, w), dtype=np.uint8)
    for k, s in enumerate(slices):
        out[k] = s if s.shape == (h, w) else np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR))
    return out
