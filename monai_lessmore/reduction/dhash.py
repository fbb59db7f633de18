"""Batched 64-bit difference hash (dHash), bit-identical to :func:`imagehash.dhash`.

The paper's HASH method (Wolf et al. 2024, "Less is More", section 2.1) compares slices by the Hamming distance of
their dHashes as computed by the ``imagehash`` package::

    image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    bits = pixels[:, 1:] > pixels[:, :-1]          # row-major, first bit = most significant

Calling Pillow once per slice costs about a millisecond. This module reproduces Pillow's LANCZOS ("antialias")
resampling for 8-bit images exactly, in numpy, for a whole stack at once (:func:`pillow_lanczos_resize_u8`), and
derives the hash from it (:func:`dhash_bits`, :func:`dhash`). The facts of Pillow's algorithm it relies on
(``src/libImaging/Resample.c``) are written beside the code that reproduces them.

Facts of Pillow 13's resize that matter for exactness (each is commented where it is reproduced): weights are
computed in double exactly as ``precompute_coeffs`` does (half-open Lanczos window, ``(int)`` truncation of the
window bounds, multiplication by ``1 / filterscale``, sequential normalisation), then rounded to 22-bit fixed point
by truncating ``w * 2**22 +- 0.5``; each pass accumulates from ``2**21`` and floors with an arithmetic shift before
clamping to 0..255, into an 8-bit image; the horizontal pass covers only the rows the vertical pass reads; a pass
whose size is unchanged is skipped; and -- new in Pillow 13 -- the vertical pass runs *first* when the height
shrinks by more than twice as many pixels as the width (not the case for 512x512 -> 9x8).

How the costly horizontal pass (every pixel times ~343 weights for 512 -> 9) is made exact and fast: Pillow sums
``pixel * weight`` in 32-bit integers with weights below ``2**22`` in magnitude.

* With numba (a dependency; the default once a process has enough work), a compiled kernel
  (:func:`_resample_rows_kernel`) sums only the taps inside each output's window, eight rows at a time, in float32
  SIMD. Every weight and pixel is an integer exact in float32, and the error of any float32 summation order is
  bounded (Higham's ``gamma_n``); a sum further than that bound from a rounding boundary rounds as the exact
  integer sum does, and the few that are not (~2 % for 512 -> 9) are summed again in float64, exactly. The result
  is Pillow's, bit for bit.

* Without numba, with torch, pixels enter as ``v - 128`` (int8, one XOR pass) and the weights as three
  balanced base-256 int8 digits; ``torch._int_mm`` gives exact int32 digit sums, recombined in wrapping int32
  (exact, because the true sum fits int32 as it does in Pillow's own accumulator).
* Without torch's int8 product either (or if its self-check fails), and in a process whose work has not yet
  paid for starting numba (:func:`monai_lessmore.reduction._jit.use_compiled`), each weight is split into digits
  small enough that *every* partial sum of ``pixel * digit`` is an integer of magnitude ``<= 2**24``; float32
  holds all of those exactly, so BLAS ``sgemm`` gives exact digit sums in any summation order, recombined in
  float64 (exact below ``2**53``).

The small vertical pass (or the first pass, for tall images) uses the float32 digit method.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any, Sequence

import numpy as np

from monai_lessmore.reduction._jit import numba_installed, use_compiled

__all__ = [
    "pillow_lanczos_resize_u8",
    "dhash_bits",
    "dhash",
    "hash_to_hex",
    "hex_to_hash",
    "hamming_matrix",
    "hamming_distance",
]

# Resample.c: ``#define PRECISION_BITS (32 - 8 - 2)``: weights are fixed point with 22 fractional bits, leaving
# 8 bits for the pixel value and 2 spare bits because a Lanczos window's partial sums can exceed 1 or go negative.
_PRECISION_BITS = 22
_ONE = float(1 << _PRECISION_BITS)
# Every accumulator starts at half a unit (``ss0 = 1 << (PRECISION_BITS - 1)``), so the final ``>> PRECISION_BITS``
# rounds to nearest (ties up) instead of flooring.
_HALF = float(1 << (_PRECISION_BITS - 1))
_LANCZOS_SUPPORT = 3.0
# Largest integer n such that all integers in [-n, n] are exact in float32.
_FLOAT32_EXACT = float(1 << 24)
# Float elements of one chunk's temporaries (8 MiB as float64); small enough to stay in cache, which is also faster.
_CHUNK_ELEMENTS = 1 << 20
# Bytes of uint8 pixels per int8 matrix product: large enough to amortise per-call costs, small enough for cache.
_INT8_BLOCK_BYTES = 1 << 20


def _sinc(x: float) -> float:
    # Resample.c ``sinc_filter``: exactly 1.0 at 0, else sin(pi x) / (pi x) -- computed as ``x = x * M_PI;
    # sin(x) / x`` in double. math.sin calls the same C library sin as Pillow, so the doubles agree to the bit.
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    # Resample.c ``lanczos_filter``: the window is half-open, -3 <= x < 3 (so x == 3 gives 0, x == -3 does not,
    # although sin(3 pi) makes that weight ~1e-17 and it rounds to the integer 0 anyway).
    if -_LANCZOS_SUPPORT <= x < _LANCZOS_SUPPORT:
        return _sinc(x) * _sinc(x / 3.0)
    return 0.0


@functools.lru_cache(maxsize=64)
def _fixed_point_weights(in_size: int, out_size: int) -> tuple[np.ndarray, int, int]:
    """Pillow's fixed-point LANCZOS weights for resampling one axis from ``in_size`` to ``out_size``.

    Reproduces ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` of Pillow's ``Resample.c`` for the default box
    ``(0, in_size)``, with every double operation in the same order as the C code.

    Returns:
        ``(weights, first, last)``: ``weights`` is a read-only ``(out_size, in_size)`` int64 matrix whose row
        ``i`` holds the integer weights of output ``i`` inside its window and zeros elsewhere; ``first``/``last``
        bound the input indices any output uses (Pillow's ``ybox_first``/``ybox_last``).
    """
    # scale = (double)(in1 - in0) / outSize with float box corners in0 = 0, in1 = in_size (exact for sizes < 2**24)
    scale = float(in_size) / out_size
    # Downscaling widens the kernel by the scale factor (anti-aliasing); upscaling keeps the plain 3-lobe kernel.
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    inv = 1.0 / filterscale  # C multiplies by ``ss = 1.0 / filterscale`` rather than dividing: keep that rounding
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    first, last = in_size, 0
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        # ``(int)(center - support + 0.5)``: C truncates toward zero (not floor), then clamps at 0; for the
        # negative values where trunc and floor differ the clamp makes them equal, but keep C's form.
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        # Evaluation order as in C: ((x + xmin) - center) + 0.5, then times ss.
        w = [_lanczos(((x + xmin) - center + 0.5) * inv) for x in range(xmax)]
        ww = 0.0
        for v in w:  # sequential sum, as the C loop
            ww += v
        if ww != 0.0:  # C leaves the weights unnormalised when they sum to exactly 0
            w = [v / ww for v in w]
        # normalize_coeffs_8bpc: (int)(+-0.5 + w * 2**22), i.e. round half away from zero by truncation. The sign
        # test is ``w < 0``, so -0.0 takes the +0.5 branch (both give 0).
        ints = [int(-0.5 + v * _ONE) if v < 0 else int(0.5 + v * _ONE) for v in w]
        weights[xx, xmin : xmin + xmax] = ints
        first = min(first, xmin)
        last = max(last, xmin + xmax)
    weights.flags.writeable = False
    return weights, first, last


@functools.lru_cache(maxsize=64)
def _digit_weights(in_size: int, out_size: int, lo: int, hi: int) -> tuple[np.ndarray, int, int]:
    """Pillow's weights for inputs ``lo:hi``, split into digits whose products are exact in float32.

    Each integer weight ``w`` is written as balanced base-``2**s`` digits ``w = sum_p d_p * 2**(s*p)``. A split
    is accepted only if, for every output and digit, ``255 * sum_x |d_p[x]| <= 2**24``: then every partial sum
    a BLAS kernel can form from ``pixel * d_p`` is an integer that float32 holds exactly, so ``sgemm`` is exact
    whatever order it adds in. Fewest digits first: each digit costs one more output column of the product.

    Returns:
        ``(matrix, n_digits, shift)``: ``matrix`` is read-only ``(n_digits * out_size, hi - lo)``, digit ``p`` of
        output ``j`` in row ``p * out_size + j``; float32, or float64 holding the undivided weights
        (``n_digits == 1``) when no float32 split exists (not for any realistic size: float64 is exact for any
        8-bit image since the sums stay below ``2**31``).
    """
    weights = _fixed_point_weights(in_size, out_size)[0][:, lo:hi]
    for n_digits in (1, 2, 3, 4):
        for shift in range(1, 23) if n_digits > 1 else (0,):
            digits = []
            rest = weights
            for _ in range(n_digits - 1):
                half = 1 << (shift - 1)
                d = ((rest + half) & ((1 << shift) - 1)) - half  # balanced digit in [-half, half)
                digits.append(d)
                rest = (rest - d) >> shift
            digits.append(rest)
            if all(255.0 * np.abs(d).sum(axis=1).max() <= _FLOAT32_EXACT for d in digits):
                matrix = np.concatenate(digits, axis=0).astype(np.float32)
                matrix.flags.writeable = False
                return matrix, n_digits, shift
    matrix = weights.astype(np.float64)
    matrix.flags.writeable = False
    return matrix, 1, 0


def _recombine(sums: np.ndarray, n_digits: int, shift: int, axis: int) -> np.ndarray:
    """Exact ``sum_p digit_sum_p * 2**(shift*p)`` in float64 (all values are integers below 2**53)."""
    parts = np.split(sums, n_digits, axis=axis) if n_digits > 1 else [sums]
    total = parts[0].astype(np.float64)
    for p in range(1, n_digits):
        total += parts[p].astype(np.float64) * float(1 << (shift * p))
    return total


def _as_uint8_stack(images: Any, name: str = "images") -> np.ndarray:
    """Validate ``images`` (numpy array or torch tensor) and return a ``(N, H, W)`` uint8 numpy view."""
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # torch.Tensor without importing torch
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        hint = (
            "render them to 8 bit first with monai_lessmore.reduction.preprocess.to_uint8"
            if arr.dtype.kind in "fiub"
            else "pass a numeric array"
        )
        raise ValueError(f"{name} must have dtype uint8 (8-bit grey images), got dtype {arr.dtype}; {hint}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be one image (H, W) or a stack (N, H, W), got shape {arr.shape}")
    stack = arr[None] if arr.ndim == 2 else arr
    if stack.shape[1] < 1 or stack.shape[2] < 1:
        raise ValueError(f"{name} must be at least 1x1 pixels, got shape {arr.shape}")
    return stack


def _validate_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        width, height = size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in (width, height))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"size must be (width, height) with two integers >= 1, like PIL, got {size!r}")
    return int(width), int(height)


@functools.lru_cache(maxsize=1)
def _torch_int8_matmul() -> Any:
    """``torch._int_mm`` (int8 x int8 -> exact int32 products) when it is there and passes a self-check, else None.

    int8 matrix products run on the CPU's integer dot-product units and are about twice as fast as float32 BLAS
    for this product; the numpy float32 path below gives the same bits and is the fallback.
    """
    try:
        import torch

        mm = torch._int_mm
        rng = np.random.default_rng(0)
        a = rng.integers(-128, 128, (64, 40), dtype=np.int8)
        b = rng.integers(-128, 128, (40, 24), dtype=np.int8)
        got = mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        if not np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64)):
            return None
        return mm
    except Exception:  # no torch, no int8 kernel on this platform or version: use numpy
        return None


@functools.lru_cache(maxsize=64)
def _int8_digit_weights(in_size: int, out_size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Pillow's weights as balanced base-256 int8 digits for an int8 x int8 -> int32 product.

    Pixels enter as ``v - 128`` (int8), so every product has magnitude ``<= 128 * 128`` and a row of
    ``in_size < 2**17`` of them cannot overflow int32; ``128 * sum(w)`` is added back afterwards.

    Returns:
        ``(digits, n_digits, weight_sums)``: ``digits`` ``(in_size, cols)`` int8 with digit ``p`` of output ``j``
        in column ``p * out_size + j`` (zero-padded to a multiple of 8 columns, which the kernels prefer);
        ``weight_sums`` ``(out_size,)`` int64.
    """
    weights = _fixed_point_weights(in_size, out_size)[0]
    digits = []
    rest = weights
    while True:
        d = ((rest + 128) & 255) - 128
        digits.append(d)
        rest = (rest - d) >> 8
        if not rest.any():
            break
    # Pillow accumulates in a C int starting from 2**21; for the Lanczos kernel the extreme sums stay far inside
    # int32 (|sum| < 255 * 1.3 * 2**22), which the int32 wrap-around recombination below relies on.
    pos = 255 * np.clip(weights, 0, None).sum(axis=1).max() + (1 << (_PRECISION_BITS - 1))
    neg = 255 * np.clip(-weights, 0, None).sum(axis=1).max()
    if max(pos, neg) >= 1 << 31:
        raise ValueError(f"weight sums of {in_size} -> {out_size} exceed int32")  # not reachable for Lanczos
    cols = len(digits) * out_size
    matrix = np.zeros((in_size, -(-cols // 8) * 8), dtype=np.int8)
    matrix[:, :cols] = np.concatenate(digits, axis=0).T
    matrix.flags.writeable = False
    return matrix, len(digits), weights.sum(axis=1)


# ----------------------------------------------------------------------------------------- compiled (numba) path
# u = 2**-24, the unit roundoff of float32
_FLOAT32_U = 2.0**-24


@functools.lru_cache(maxsize=64)
def _window_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's weights as windows, for the compiled kernel: only the taps inside each output's window.

    Returns:
        ``(start, length, w32, w64, bound)``: output ``j`` reads inputs ``start[j] : start[j] + length[j]`` with
        integer weights ``w32[j, :length[j]]`` (float32, exact: every weight is below ``2**24``) and ``w64`` (the
        same as float64); ``bound[j]`` bounds the rounding error of a float32 sum of that window, whatever the
        summation order: ``gamma_{n+1} * 255 * sum|w|`` with ``gamma_k = k u / (1 - k u)`` (Higham, *Accuracy and
        Stability of Numerical Algorithms*, 2nd ed., section 4.2), doubled for margin; ``inf`` when the float32
        sum is never trusted (then every output is summed exactly in float64).
    """
    weights = _fixed_point_weights(in_size, out_size)[0]
    nonzero = weights != 0
    any_nz = nonzero.any(axis=1)
    start = np.where(any_nz, nonzero.argmax(axis=1), 0).astype(np.int64)
    stop = np.where(any_nz, in_size - nonzero[:, ::-1].argmax(axis=1), 0).astype(np.int64)
    length = stop - start
    width = max(1, int(length.max()))
    w64 = np.zeros((out_size, width), dtype=np.float64)
    for j in range(out_size):
        w64[j, : length[j]] = weights[j, start[j] : stop[j]]
    w32 = w64.astype(np.float32)
    k = (length + 1).astype(np.float64)
    gamma = k * _FLOAT32_U / (1.0 - k * _FLOAT32_U)
    bound = 2.0 * gamma * 255.0 * np.abs(w64).sum(axis=1) + 1.0
    if np.abs(w64).max() >= _FLOAT32_EXACT or (gamma >= 0.5).any():
        bound[:] = np.inf
    bound = np.minimum(bound, np.inf)
    for a in (start, length, w32, w64, bound):
        a.flags.writeable = False
    return start, length, w32, w64, bound


def _exact_window(row, start, length, weights):  # pragma: no cover - compiled
    """``floor((2**21 + sum(row[start:start + length] * weights)) / 2**22)``, summed exactly in float64.

    Every product is an integer below ``2**32`` and every partial sum one below ``2**31`` in magnitude, so float64
    holds them all exactly and the sum is exact in any order: the kernel is compiled with the shared ``fastmath``
    flags (vectorised reassociated sum, FMA), which cannot change the result here.
    """
    r = row[start : start + length]
    exact = 0.0
    for k in range(length):
        exact += np.float64(r[k]) * weights[k]
    return np.floor((exact + 2097152.0) / 4194304.0)


def _resample_rows_kernel(src, lo, hi, start, length, w32, w64, bound, out):  # pragma: no cover - compiled
    """Pillow's one-axis pass along the last axis of ``src[:, lo:hi]`` (any strides) into ``out`` (uint8).

    Each output is ``clip8((2**21 + sum pixel * weight) >> 22)`` over its window (Resample.c), only the window's
    taps. Eight rows are summed together in float32: eight independent SIMD chains share each weight load, which
    keeps the loop at about one load per FMA (four rows: 1.25; measured 13-22 % faster). A sum that lies within
    its error bound of a rounding boundary is redone exactly in float64 (:func:`_exact_window`), so every output
    is Pillow's integer result.
    """
    n = src.shape[0]
    width = src.shape[2]
    n_out = start.shape[0]
    one = 4194304.0  # 2**22
    inv_one = 1.0 / one  # exact: a power of two
    half = 2097152.0  # 2**21
    rows = np.zeros((8, width), dtype=np.float32)
    sums = np.empty((8, n_out), dtype=np.float32)
    for i in range(n):
        for y in range(lo, hi, 8):
            m = min(8, hi - y)
            for q in range(m):
                for x in range(width):
                    rows[q, x] = src[i, y + q, x]
            for j in range(n_out):
                # slices (not rows[q, x0 + k]) let LLVM see contiguous reductions and vectorise them
                s0 = start[j]
                e0 = s0 + length[j]
                r0 = rows[0, s0:e0]
                r1 = rows[1, s0:e0]
                r2 = rows[2, s0:e0]
                r3 = rows[3, s0:e0]
                r4 = rows[4, s0:e0]
                r5 = rows[5, s0:e0]
                r6 = rows[6, s0:e0]
                r7 = rows[7, s0:e0]
                wj = w32[j]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                a4 = np.float32(0.0)
                a5 = np.float32(0.0)
                a6 = np.float32(0.0)
                a7 = np.float32(0.0)
                for k in range(r0.shape[0]):
                    wk = wj[k]
                    a0 += r0[k] * wk
                    a1 += r1[k] * wk
                    a2 += r2[k] * wk
                    a3 += r3[k] * wk
                    a4 += r4[k] * wk
                    a5 += r5[k] * wk
                    a6 += r6[k] * wk
                    a7 += r7[k] * wk
                sums[0, j] = a0
                sums[1, j] = a1
                sums[2, j] = a2
                sums[3, j] = a3
                sums[4, j] = a4
                sums[5, j] = a5
                sums[6, j] = a6
                sums[7, j] = a7
            # Rounding, kept out of the summation loop (which then stays a plain vectorised reduction): Pillow's
            # clip8((2**21 + sum) >> 22). The float32 sum is trusted when it lies further than its error bound
            # from every rounding boundary (a multiple of 2**22); otherwise (~2 % of outputs for 512 -> 9) the
            # window is summed again in float64, exact for these integers (all below 2**53).
            for q in range(m):
                for j in range(n_out):
                    total = np.float64(sums[q, j]) + half
                    v = np.floor(total * inv_one)
                    r = total - v * one
                    if r <= bound[j] or r >= one - bound[j]:
                        v = _exact_window_c(rows[q], start[j], length[j], w64[j])
                    out[i, y + q - lo, j] = np.uint8(min(max(v, 0.0), 255.0))


_exact_window_c = _exact_window  # replaced by its compiled version before the kernel is compiled


@functools.lru_cache(maxsize=1)
def _compiled_resample() -> Any:
    """The compiled one-axis pass, or None when numba cannot be imported (the matrix-product paths then run)."""
    try:
        from numba import njit
    except ImportError:
        return None

    from monai_lessmore.reduction._jit import _FASTMATH, cpu_kernel

    global _exact_window_c
    _exact_window_c = njit(nogil=True, cache=True, error_model="numpy", fastmath=set(_FASTMATH))(_exact_window)
    return cpu_kernel(_resample_rows_kernel)


def _pass_compiled(
    kernel: Any, src: np.ndarray, lo: int, hi: int, in_size: int, out_size: int, offset: int = 0
) -> np.ndarray:
    """One pass along ``src``'s last axis (rows ``lo:hi`` of axis 1); ``offset`` shifts the windows for inputs
    that start at index ``offset`` of the ``in_size`` Pillow resamples (the vertical pass after a row-limited
    horizontal one)."""
    start, length, w32, w64, bound = _window_weights(in_size, out_size)
    if offset:
        start = start - offset
    out = np.empty((src.shape[0], hi - lo, out_size), dtype=np.uint8)
    kernel(src, lo, hi, start, length, w32, w64, bound, out)
    return out


def _resize_compiled(kernel: Any, stack: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """:func:`pillow_lanczos_resize_u8` with the compiled pass (the pass order and skipped passes as Pillow)."""
    n, height, width = stack.shape
    need_horizontal, need_vertical = out_w != width, out_h != height

    def vertical(img: np.ndarray, first: int, rows: int) -> np.ndarray:
        # the vertical pass is the horizontal one on the transposed image: (N, W, rows) -> (N, W, out_h)
        cols = img.transpose(0, 2, 1)
        return _pass_compiled(kernel, cols, 0, cols.shape[1], height, out_h, first).transpose(0, 2, 1)

    if not need_vertical:
        return _pass_compiled(kernel, stack, 0, height, width, out_w)
    if not need_horizontal:
        return np.ascontiguousarray(vertical(stack, 0, height))
    if _vertical_first(width, height, out_w, out_h):
        mid = np.ascontiguousarray(vertical(stack, 0, height))
        return _pass_compiled(kernel, mid, 0, out_h, width, out_w)
    _, first, last = _fixed_point_weights(height, out_h)
    inter = _pass_compiled(kernel, stack, first, last, width, out_w)
    return np.ascontiguousarray(vertical(inter, first, last - first))


def _row_blocks(n: int, first: int, last: int, rows_per_block: int) -> list[tuple[slice, slice]]:
    """Blocks of whole images while they fit ``rows_per_block`` rows, else blocks of rows of one image."""
    rows = last - first
    if rows <= rows_per_block:
        per = rows_per_block // rows
        return [(slice(i, min(i + per, n)), slice(first, last)) for i in range(0, n, per)]
    return [
        (slice(i, i + 1), slice(r, min(r + rows_per_block, last)))
        for i in range(n)
        for r in range(first, last, rows_per_block)
    ]


def _horizontal_pass(stack: np.ndarray, first: int, last: int, out_width: int, int8: bool = True) -> np.ndarray:
    """Pillow's horizontal pass over rows ``first:last`` of every image: ``(N, last - first, out_width)`` uint8;
    through torch's int8 product when ``int8`` and it is available, else numpy float32."""
    n, _, width = stack.shape
    mm = _torch_int8_matmul() if int8 and width < (1 << 17) else None
    if mm is not None:
        return _horizontal_pass_int8(stack, first, last, out_width, mm)
    rows = last - first
    matrix, n_digits, shift = _digit_weights(width, out_width, 0, width)
    weights = matrix.T  # (width, digits * out_width)
    out = np.empty((n, rows, out_width), dtype=np.uint8)
    rows_per_block = max(1, _CHUNK_ELEMENTS // max(width, weights.shape[1]))
    size = min(rows_per_block, n * rows)
    buf = np.empty((size, width), dtype=weights.dtype)  # reused: fresh pages per block would cost more than BLAS
    acc = np.empty((size, weights.shape[1]), dtype=weights.dtype)
    with _one_blas_thread():
        for img, row in _row_blocks(n, first, last, rows_per_block):
            src = stack[img, row]
            m = src.shape[0] * src.shape[1]
            np.copyto(buf[:m].reshape(src.shape), src, casting="unsafe")
            sums = np.matmul(buf[:m], weights, out=acc[:m])
            total = _recombine(sums, n_digits, shift, axis=1)
            out[img, row.start - first : row.stop - first] = _round_clip8(total).reshape(src.shape[:2] + (out_width,))
    return out


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController()
    except Exception:  # not installed, or it cannot inspect this platform's libraries: BLAS keeps its threads
        return None


def _one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread, when ``threadpoolctl`` is installed. This product is too skinny
    (9 or 18 columns) for BLAS threads to pay: with two, OpenBLAS spent 3x the CPU time (0.61 vs 0.19 s for 300
    slices of 512x512) and was slower in wall time too on a 2-core machine."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def _horizontal_pass_int8(stack: np.ndarray, first: int, last: int, out_width: int, mm: Any) -> np.ndarray:
    """:func:`_horizontal_pass` with an exact int8 x int8 -> int32 matrix product (``torch._int_mm``)."""
    import torch

    n, _, width = stack.shape
    rows = last - first
    matrix, n_digits, weight_sums = _int8_digit_weights(width, out_width)
    weights = torch.from_numpy(matrix.copy())
    # the -128 shift of every pixel, added back, and Pillow's rounding half
    offset = (128 * weight_sums + (1 << (_PRECISION_BITS - 1))).astype(np.int32)
    out = np.empty((n, rows, out_width), dtype=np.uint8)
    rows_per_block = max(1, _INT8_BLOCK_BYTES // width)
    buf = torch.empty((min(rows_per_block, n * rows), width), dtype=torch.uint8)
    for img, row in _row_blocks(n, first, last, rows_per_block):
        src = np.ascontiguousarray(stack[img, row])
        m = src.shape[0] * src.shape[1]
        with warnings.catch_warnings():  # read-only input is fine: torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(src).view(m, width)
        # v - 128 as int8 is v XOR 0x80 reinterpreted: one cheap byte pass instead of a float conversion.
        torch.bitwise_xor(pixels, 128, out=buf[:m])
        sums = mm(buf[:m].view(torch.int8), weights).numpy()
        # Recombine the digit sums in int32 with wrap-around: every step is exact modulo 2**32, and the true
        # result (Pillow's own int32 accumulator, half included) lies in [-2**31, 2**31), so it comes out exact.
        total = sums[:, (n_digits - 1) * out_width : n_digits * out_width] << (8 * (n_digits - 1))
        for p in range(n_digits - 2, 0, -1):
            total += sums[:, p * out_width : (p + 1) * out_width] << (8 * p)
        total += sums[:, :out_width]
        total += offset
        # clip8: arithmetic shift (floor) after adding half, clamp to 0..255 (see _round_clip8)
        total >>= _PRECISION_BITS
        np.clip(total, 0, 255, out=total)
        out[img, row.start - first : row.stop - first] = total.reshape(src.shape[:2] + (out_width,))
    return out


def _round_clip8(total: np.ndarray) -> np.ndarray:
    # ``clip8(ss) = lookup[ss >> PRECISION_BITS]``: an arithmetic shift, i.e. floor((sum + 2**21) / 2**22), then
    # clamped to 0..255. Division by a power of two and floor are exact in float64 for these integers. (The C
    # accumulator is a 32-bit int; |sum| < 255 * 1.3 * 2**22 < 2**31, so it never overflows and we need not
    # emulate wrap-around.)
    total += _HALF
    total *= 1.0 / _ONE
    np.floor(total, out=total)
    np.clip(total, 0.0, 255.0, out=total)
    return total.astype(np.uint8)


def _vertical_pass(inter: np.ndarray, in_height: int, first: int, out_height: int) -> np.ndarray:
    """Pillow's vertical pass from ``in_height`` to ``out_height`` rows: ``(N, out_height, W)`` uint8.

    ``inter`` holds rows ``first:first + inter.shape[1]`` of the ``in_height``-row images (Pillow's horizontal
    pass keeps only the rows the vertical pass reads).
    """
    n, rows, width = inter.shape
    matrix, n_digits, shift = _digit_weights(in_height, out_height, first, first + rows)
    out = np.empty((n, out_height, width), dtype=np.uint8)
    per = max(1, _CHUNK_ELEMENTS // (max(rows, matrix.shape[0]) * width))
    buf = np.empty((min(per, n), rows, width), dtype=matrix.dtype)
    for i in range(0, n, per):
        src = inter[i : i + per]
        np.copyto(buf[: src.shape[0]], src, casting="unsafe")
        sums = np.matmul(matrix, buf[: src.shape[0]])  # (n, digits * out_height, W)
        out[i : i + per] = _round_clip8(_recombine(sums, n_digits, shift, axis=1))
    return out


def pillow_lanczos_resize_u8(images: Any, size: Sequence[int] = (9, 8)) -> np.ndarray:
    """Resize 8-bit images exactly as Pillow's LANCZOS resampling does, for a whole stack at once.

    Bit-identical to ``np.asarray(PIL.Image.fromarray(img).resize(size, PIL.Image.Resampling.LANCZOS))`` for
    every mode-"L" image with the installed Pillow 13 (``Resample.c``, default box): two separable passes, each
    with fixed-point weights and round-to-nearest clipping to 0..255 into an 8-bit image; a pass whose size does
    not change is skipped, and the vertical pass runs first when the height shrinks by more than twice as many
    pixels as the width (see :func:`_vertical_first`).

    Args:
        images: one image ``(H, W)`` or a stack ``(N, H, W)``, numpy array or torch tensor of dtype uint8;
            any strides. ``H, W >= 1``.
        size: output ``(width, height)``, the order PIL uses.

    Returns:
        ``(N, height, width)`` uint8 array (``N = 1`` for a single image).

    Raises:
        ValueError: for a dtype other than uint8, a shape that is not 2D/3D or has a zero side, or a bad ``size``.
    """
    stack = _as_uint8_stack(images)
    out_w, out_h = _validate_size(size)
    n, height, width = stack.shape
    if n == 0:
        return np.zeros((0, out_h, out_w), dtype=np.uint8)
    # ImagingResampleInner: a pass runs only when its size changes (the box is the whole image here). With
    # neither, Pillow copies the image.
    need_horizontal = out_w != width
    need_vertical = out_h != height
    if not (need_horizontal or need_vertical):
        return np.array(stack, dtype=np.uint8, copy=True)
    if use_compiled(n * height * width):
        kernel = _compiled_resample()
        if kernel is not None:
            return _resize_compiled(kernel, stack, out_w, out_h)
        int8 = True  # numba cannot run here: the matrix-product paths are the fast ones
    else:
        # Until this process's work pays for starting numba, numpy float32 (importing torch for its int8 product
        # would cost more than it saves, and without VNNI that product is the slower one).
        int8 = not numba_installed()
    if not need_horizontal:
        return _vertical_pass(stack, height, 0, out_h)
    if not need_vertical:
        return _horizontal_pass(stack, 0, height, out_w, int8)
    if _vertical_first(width, height, out_w, out_h):
        # Vertical pass over all columns (Pillow computes every column), then horizontal over the out_h rows.
        return _horizontal_pass(_vertical_pass(stack, height, 0, out_h), 0, out_h, out_w, int8)
    # Horizontal pass only over rows ybox_first..ybox_last-1, those some output row reads (Pillow then shifts the
    # vertical bounds by ybox_first). The skipped rows never influence the result; skipping them keeps upscaled
    # images cheap.
    _, first, last = _fixed_point_weights(height, out_h)
    return _vertical_pass(_horizontal_pass(stack, first, last, out_w, int8), height, first, out_h)


@functools.lru_cache(maxsize=1)
def _pillow_runs_vertical_first() -> bool:
    """Whether the installed Pillow has the pass-order rule of Pillow 13 (PR #9549); True without Pillow."""
    try:
        from PIL import __version__
    except ImportError:
        return True
    return int(__version__.split(".")[0]) >= 13


def _vertical_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Pillow >= 13 (PR #9549) runs the vertical pass first when the height loses more than twice as many pixels
    as the width: ``(H - h) > 0 and (H - h) > 2 * (W - w)``, a difference of pixel counts, not of scale factors.

    The order changes results (each pass rounds to 8 bit), e.g. a 9-row, 8-column image resized to 9x8 goes
    vertical-first. For 512x512 -> 9x8 (dHash) it is horizontal-first, as in every older Pillow: 504 > 2 * 503
    is false. Older Pillow always goes horizontal-first; we follow the installed one.
    """
    shrink_h = height - out_height
    return shrink_h > 0 and shrink_h > 2 * (width - out_width) and _pillow_runs_vertical_first()


def _validate_hash_size(hash_size: Any) -> int:
    if not isinstance(hash_size, (int, np.integer)) or isinstance(hash_size, bool) or hash_size < 2:
        # imagehash.dhash raises for hash_size < 2 as well
        raise ValueError(f"hash_size must be an integer >= 2, got {hash_size!r}")
    return int(hash_size)


def dhash_bits(images: Any, hash_size: int = 8) -> np.ndarray:
    """Difference-hash bits of 8-bit images, as ``imagehash.dhash(..., hash_size).hash.flatten()``.

    Each image is resized with Pillow's LANCZOS to ``hash_size + 1`` columns by ``hash_size`` rows; bit
    ``(r, c)`` is set when pixel ``c + 1`` of row ``r`` is strictly brighter than pixel ``c`` (equal neighbours
    give 0). Bits are row-major.

    Args:
        images: ``(H, W)`` or ``(N, H, W)`` uint8 numpy array or torch tensor.
        hash_size: rows of the hash (``hash_size ** 2`` bits); imagehash's default and the paper's is 8.

    Returns:
        ``(N, hash_size * hash_size)`` bool array.

    Raises:
        ValueError: for a bad ``hash_size`` or images that are not 2D/3D uint8.
    """
    hash_size = _validate_hash_size(hash_size)
    small = pillow_lanczos_resize_u8(images, (hash_size + 1, hash_size))
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(small.shape[0], hash_size * hash_size)


def dhash(images: Any, hash_size: int = 8) -> np.ndarray:
    """64-bit dHash of each 8-bit image, as used by the paper's HASH reduction (section 2.1).

    ``format(int(h), "016x") == str(imagehash.dhash(PIL.Image.fromarray(img), hash_size=8))`` for every
    image: the first (top-left) bit is the most significant.

    Args:
        images: ``(H, W)`` or ``(N, H, W)`` uint8 numpy array or torch tensor. Render CT slices to 8 bit with
            :func:`monai_lessmore.reduction.preprocess.to_uint8` first.
        hash_size: must be 8 (a uint64 holds 64 bits); use :func:`dhash_bits` for other sizes.

    Returns:
        ``(N,)`` uint64 array.

    Raises:
        ValueError: for ``hash_size != 8`` or images that are not 2D/3D uint8.
    """
    if hash_size != 8:
        raise ValueError(
            f"dhash returns 64-bit integers, so hash_size must be 8, got {hash_size!r}; "
            "use dhash_bits(images, hash_size) for other sizes"
        )
    bits = dhash_bits(images, 8)
    # packbits with big bit order puts bit 0 in the most significant position of byte 0; reading the 8 bytes
    # big-endian then gives imagehash's "first bit = most significant" 64-bit integer.
    return np.packbits(bits, axis=1, bitorder="big").view(">u8").reshape(-1).astype(np.uint64)


def hash_to_hex(hashes: Any) -> list[str]:
    """Format 64-bit hashes as 16 lowercase hex digits each, like ``str(imagehash.ImageHash)``.

    Args:
        hashes: a uint64 array (any shape, flattened) or a sequence of non-negative ints below ``2**64``.

    Returns:
        One string per hash.
    """
    arr = np.asarray(hashes)
    if arr.size and (arr.dtype.kind not in "ui" or (arr.dtype.kind == "i" and (arr < 0).any())):
        raise ValueError(f"hashes must be unsigned 64-bit integers (e.g. from dhash), got {arr.dtype} values")
    return [format(int(h), "016x") for h in arr.astype(np.uint64).reshape(-1)]


def hex_to_hash(hex_strings: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-digit strings (as :func:`hash_to_hex` or ``str(imagehash.dhash(...))`` write) to uint64.

    Args:
        hex_strings: a sequence of strings of exactly 16 hex digits.

    Returns:
        ``(N,)`` uint64 array.

    Raises:
        TypeError: when given a single string instead of a sequence.
        ValueError: naming the first string that is not 16 hex digits.
    """
    if isinstance(hex_strings, (str, bytes)):
        raise TypeError(f"hex_strings must be a sequence of strings, got a single string {hex_strings!r}; wrap it")
    out = np.empty(len(hex_strings), dtype=np.uint64)
    for i, text in enumerate(hex_strings):
        try:
            if not isinstance(text, str) or len(text) != 16:
                raise ValueError
            out[i] = int(text, 16)
        except ValueError:
            raise ValueError(f"hex_strings[{i}] must be 16 hex digits (a 64-bit dHash), got {text!r}") from None
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(x.shape + (8,))].sum(axis=-1, dtype=np.uint8)


def hamming_matrix(hashes: Any) -> np.ndarray:
    """Pairwise Hamming distances ``popcount(h_i XOR h_j)`` of 64-bit hashes, the paper's HASH distance.

    Equals ``imagehash_i - imagehash_j`` for imagehash objects.

    Args:
        hashes: ``(N,)`` uint64 array from :func:`dhash`.

    Returns:
        ``(N, N)`` int32 symmetric matrix with a zero diagonal.

    Raises:
        ValueError: for anything but a 1D array of unsigned integers.
    """
    arr = np.asarray(hashes)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui") or (arr.dtype.kind == "i" and (arr < 0).any()):
        raise ValueError(
            f"hashes must be a 1D array of uint64 hashes (from dhash), got shape {arr.shape} and dtype {arr.dtype}"
        )
    h = arr.astype(np.uint64)
    n = h.shape[0]
    out = np.empty((n, n), dtype=np.int32)
    per = max(1, _CHUNK_ELEMENTS // max(n, 1))  # bound the uint64 XOR temporary
    for i in range(0, n, per):
        out[i : i + per] = _popcount(h[i : i + per, None] ^ h[None, :])
    return out


def hamming_distance(a: int | str, b: int | str) -> int:
    """Hamming distance of two 64-bit hashes given as integers or 16-hex-digit strings."""
    ha, hb = (int(hex_to_hash([v])[0]) if isinstance(v, str) else int(v) for v in (a, b))
    for name, v in (("a", ha), ("b", hb)):
        if not 0 <= v < 1 << 64:
            raise ValueError(f"{name} must be a 64-bit hash in 0..2**64-1, got {v}")
    return bin(ha ^ hb).count("1")
