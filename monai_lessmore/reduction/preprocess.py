"""Rendering of CT slices to the 8-bit images the similarity measures compare.

The authors of the paper exported every slice as its own PNG: the slice in Hounsfield units, min-max scaled on its
own to 0..255 and rounded to 8 bit, with no HU window (Wolf et al. 2024, section 2.1). :func:`to_uint8` reproduces
that and is the one place where slices are rendered to 8 bit. An HU window is offered as an option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Sequence

import numpy as np

__all__ = ["StoredStack", "to_uint8", "render_stack", "validate_window", "validate_size", "resize_uint8"]

#: float32 holds every integer of magnitude <= 2**24 exactly
_FLOAT32_EXACT_INT = 1 << 24


class StoredStack:
    """The slices of a volume in their stored dtype and order, rendered or scaled slice by slice.

    Readers that can hand out their voxels without converting them (:func:`monai_lessmore.io.nifti.load_nifti`
    with ``lazy=True``) return this instead of a whole-volume float32 copy: :func:`to_uint8` renders it in bounded
    chunks, and :meth:`chunk` gives the float32 values of any slices, equal to the reader's float32 array.

    Args:
        raw: ``(S, H, W)`` view of the stored voxels (any strides, any numeric dtype), slice axis first.
        scale: maps a chunk of ``raw`` to its real values elementwise (e.g. nibabel's ``scl_slope``/``scl_inter``),
            or ``None`` when the stored values are the real values.
        offset: when the real values are ``raw + offset`` for an integer ``offset`` and an integer ``raw`` of at
            most 16 bits (every value exact in float32), that offset; enables the compiled rendering straight from
            the stored integers. ``None`` otherwise.
        ready: for voxels still being read (:func:`monai_lessmore.io.nifti.load_nifti` decompresses ``.nii.gz`` in
            a thread while the slices already read are rendered): called with a view of ``raw`` before it is read,
            returns once that view's bytes are there (or raises the reader's error). ``None``: all there.
    """

    def __init__(self, raw: np.ndarray, scale: Any = None, offset: int | None = None,
                 ready: Callable[[np.ndarray], None] | None = None) -> None:
        if raw.ndim != 3:
            raise ValueError(f"a stored stack must be (S, H, W), got shape {raw.shape}")
        self.raw = raw
        self.ready = ready
        self.scale = scale
        if offset is not None and not (raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2 and raw.dtype.isnative
                                       and abs(int(offset)) + (1 << 16) <= _FLOAT32_EXACT_INT):
            offset = None  # (raw + offset would not be exact in float32: render from the float32 values)
        self.offset = offset

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.raw.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def view(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """``raw[start:stop]``, once its voxels have been read (see ``ready``)."""
        block = self.raw[start:stop]
        if self.ready is not None:
            self.ready(block)
        return block

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """``float32`` real values of slices ``start:stop``."""
        block = self.view(start, stop)
        if self.scale is not None:
            block = self.scale(block)
        return np.asarray(block, dtype=np.float32)

    def to_array(self) -> np.ndarray:
        """The whole stack as a C-contiguous ``float32`` array (what the reader's eager path returns), scaled in
        chunks of slices so that no whole-volume float64 temporary is made."""
        if self.scale is None:
            return np.ascontiguousarray(self.view(), dtype=np.float32)
        out = np.empty(self.shape, dtype=np.float32)
        step = _chunk_slices(self.raw.shape)
        for i in range(0, len(self), step):
            out[i : i + step] = self.chunk(i, i + step)
        return out

    def count_nonfinite(self) -> int:
        """NaN/Inf values among the real values, counted chunk by chunk."""
        if self.offset is not None or (self.scale is None and self.raw.dtype.kind in "iub"):
            return 0
        step = _chunk_slices(self.raw.shape)
        bad = 0
        for i in range(0, len(self), step):
            values = self.chunk(i, i + step)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        return bad


#: bytes of stored voxels rendered per step while a volume is still being read (a few slices of 512 x 512 int16)
_PIPELINE_BYTES = 4 << 20


def _chunk_slices(shape: tuple[int, ...]) -> int:
    """Slices per chunk so that a float64 chunk stays near 8 MiB."""
    return max(1, (8 << 20) // max(1, 8 * int(shape[1]) * int(shape[2])))


def _render_offset_kernel(raw, out, lut):  # pragma: no cover - compiled
    """Per-slice min-max rendering of integer slices (the real values are ``raw + offset``, and min-max scaling
    does not see the offset): ``out = rint((v - min) / span * 255)`` through a per-slice lookup table built with
    the same float64 expression as :func:`_minmax_lut` (compiled without fastmath: IEEE division, same rounding)."""
    for s in range(raw.shape[0]):
        lo = raw[s, 0, 0]
        hi = lo
        for h in range(raw.shape[1]):
            row = raw[s, h]
            for w in range(row.shape[0]):
                lo = min(lo, row[w])
                hi = max(hi, row[w])
        span = np.int64(hi) - np.int64(lo)
        fspan = 1.0 if span == 0 else np.float64(span)
        for k in range(span + 1):
            lut[k] = np.uint8(np.rint(np.float64(k) / fspan * 255.0))
        base = np.int64(lo)
        for h in range(raw.shape[1]):
            row = raw[s, h]
            dst = out[s, h]
            for w in range(row.shape[0]):
                dst[w] = lut[np.int64(row[w]) - base]


def _render_offset_numpy(raw: np.ndarray, out: np.ndarray) -> None:
    """:func:`_render_offset_kernel` in numpy, slice by slice (the same lookup table, the same float64 expression
    for it, so the same pixels): for a process that has not started numba (see
    :func:`monai_lessmore.reduction._jit.use_compiled`)."""
    if raw.size == 0:
        return
    for s in range(raw.shape[0]):
        sl = raw[s]
        lo = int(sl.min())
        span = int(sl.max()) - lo
        fspan = 1.0 if span == 0 else float(span)
        lut = np.rint(np.arange(span + 1, dtype=np.float64) / fspan * 255.0).astype(np.uint8)
        idx = sl.astype(np.intp)  # take's own index type (no second conversion); idx - lo lies in 0..span
        idx -= lo
        np.take(lut, idx, out=out[s], mode="clip")  # every index is in range; "clip" skips the bounds check


_RENDER_KERNEL: list[Any] = []


def _render_kernel() -> Any:
    if not _RENDER_KERNEL:
        try:
            import numba  # noqa: F401
        except ImportError:
            _RENDER_KERNEL.append(None)
        else:
            from monai_lessmore.reduction._jit import cpu_kernel

            _RENDER_KERNEL.append(cpu_kernel(_render_offset_kernel, exact=True))
    return _RENDER_KERNEL[0]


def _stored_to_uint8(stack: StoredStack, window: tuple[float, float] | None,
                    each: Callable[[int, int, np.ndarray], None] | None = None, *, keep: bool = True) -> np.ndarray | None:
    """:func:`to_uint8` of a :class:`StoredStack`: straight from the stored integers when it can be (min-max
    rendering of ``raw + offset``; compiled, or in numpy while the process has not started numba), else chunk by
    chunk through its float32 values. Equal either way to ``to_uint8(stack.to_array())``: every step is per slice
    (min-max) or per voxel (window). ``each(lo, hi, rendered)`` is called with every block of output slices
    ``lo:hi`` as soon as it is rendered (in the order the voxels are stored, so while the rest is still read).
    ``keep=False`` renders every block into one block-sized buffer that ``each`` sees and returns ``None``."""
    from monai_lessmore.reduction._jit import use_compiled

    if not keep and each is None:
        raise ValueError("keep=False renders for each() alone: pass each")
    n = len(stack)
    out = np.empty(stack.shape, dtype=np.uint8) if keep else None
    if window is None and stack.offset is not None:
        # Min-max rendering is per slice and per voxel, so any flip or order of the in-slice axes gives the same
        # pixels: walk the stored voxels in memory order (positive strides, the fastest axis last; for the usual
        # (x, y, z) file each slice is then one contiguous block) and write through the same flips.
        raw = stack.raw
        flips = tuple(axis for axis in range(3) if raw.strides[axis] < 0)
        flipped = 0 in flips  # block i:j of ``raw`` is then output slices n-j:n-i
        if flips:
            raw = np.flip(raw, flips)
        swap = abs(raw.strides[1]) < abs(raw.strides[2])
        if swap:
            raw = raw.transpose(0, 2, 1)

        def as_stored(target: np.ndarray) -> np.ndarray:  # output slices lo:hi, viewed in the order of ``raw``
            target = np.flip(target, flips) if flips else target
            return target.transpose(0, 2, 1) if swap else target

        kernel = _render_kernel() if use_compiled(raw.size) else None
        lut = np.empty(1 << 16, dtype=np.uint8)
        # slices in the order of their addresses, so that a volume still being read is rendered as it arrives
        # (one call for the whole stack when it is all there)
        pipelined = stack.ready is not None or each is not None
        step = max(1, _PIPELINE_BYTES // max(1, raw[:1].nbytes)) if pipelined else max(1, n)
        scratch = None if keep else np.empty((min(step, n), *stack.shape[1:]), dtype=np.uint8)
        for i in range(0, n, step):
            block = raw[i : i + step]
            lo, hi = (max(0, n - i - step), n - i) if flipped else (i, min(n, i + step))
            target = out[lo:hi] if keep else scratch[: hi - lo]
            if stack.ready is not None:
                stack.ready(block)
            if kernel is not None:
                kernel(block, as_stored(target), lut)
            else:
                _render_offset_numpy(block, as_stored(target))
            if each is not None:
                each(lo, hi, target)
        return out
    step = _chunk_slices(stack.shape)
    for i in range(0, n, step):
        rendered = to_uint8(stack.chunk(i, i + step), window=window)
        if keep:
            out[i : i + step] = rendered
        if each is not None:
            each(i, min(n, i + step), rendered)
    return out


def render_stack(stack: StoredStack, *, window: Sequence[float] | None = None,
                 each: Callable[[int, int, np.ndarray], None] | None = None, keep: bool = True) -> np.ndarray | None:
    """:func:`to_uint8` of a :class:`StoredStack`, calling ``each(lo, hi, rendered)`` with every block of output
    slices ``lo:hi`` as soon as it is rendered: for a volume still being read, while the rest arrives (the HASH
    reduction hashes each block there). Every slice is in exactly one block. Min-max rendering from the stored
    integers goes in the order the voxels are stored, which may be from the last slice down; the float path (a
    window, non-integer scaling, float data) goes from the first output slice.

    ``keep=False`` (with ``each``) does not keep the rendered stack: every block is rendered into one buffer of a
    block's size, valid only during its ``each`` call, and ``None`` is returned. The HASH reduction needs only the
    hashes, so a volume costs its stored voxels and a few slices more, not also a uint8 copy of itself.
    """
    return _stored_to_uint8(stack, validate_window(window), each, keep=keep)


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
        slices: ``(H, W)`` or ``(S, H, W)`` array of real values (HU), slice axis first, or a
            :class:`StoredStack` (rendered in bounded chunks, without a whole-volume float copy). ``uint8`` input
            is scaled like any other input: pass already-rendered images straight to the hash instead.
        window: optional HU window ``(low, high)``.

    Returns:
        ``uint8`` array of the same shape.

    Raises:
        ValueError: for arrays that are not 2D/3D, or that hold NaN/Inf (the message gives the count).
    """
    if isinstance(slices, StoredStack):
        return _stored_to_uint8(slices, validate_window(window))
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
    step = _chunk_slices(stack.shape)
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
