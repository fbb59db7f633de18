"""Pairwise normalised mutual information (MI) of the slices of one volume.

The paper (Wolf et al. 2024, section 2.1, equation 2) uses the normalised mutual information of Studholme et al.
(1999), ``NMI(X, Y) = (H(X) + H(Y)) / H(X, Y)``, which ranges from 1 (independent) to 2 (identical up to a
relabelling of the bins). :func:`pairwise_nmi` returns it for every pair of slices, equal to
``skimage.metrics.normalized_mutual_information(x, y, bins=bins)``.

scikit-image builds the joint histogram with ``np.histogramdd(..., bins=bins)``: per image, ``bins`` equal-width
bins over that image's own ``[min, max]`` (``np.linspace``; a constant image gets ``[v - 0.5, v + 0.5]``), a value
falls in bin ``searchsorted(edges, v, side="right") - 1`` and the maximum is counted in the last bin. Here the bin
index of every pixel is computed once per slice with exactly those numpy calls, so the joint counts of a pair are
*identical* to scikit-image's; the pair itself is one pass of joint counting, in a compiled kernel on CPU (numba,
:mod:`monai_lessmore.reduction._jit`) or a ``bincount`` of ``i * bins + j`` in torch on a GPU. Entropies are
natural-log Shannon entropies as ``scipy.stats.entropy``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from monai_lessmore.reduction._jit import cpu_kernel, map_rows, resolve_threads
from monai_lessmore.reduction.stack import as_slice_stack, native_numpy as _native_numpy

__all__ = ["pairwise_nmi", "histogram_bin_indices"]


#: integer-valued slices whose value range is at most this wide get their bin indices from a lookup table
_LUT_MAX = 1 << 22


def _bin_edges(sample: np.ndarray, bins: int, lo: np.generic, hi: np.generic) -> np.ndarray:
    """Bin edges of one image as ``np.histogramdd(..., bins=bins)`` computes them (``_get_outer_edges``)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"slice holds NaN or infinite values (range [{lo}, {hi}]); NMI is undefined for them")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    with np.errstate(over="ignore", invalid="ignore"):  # reported below with the fix
        edges = np.linspace(lo, hi, bins + 1)
    if not np.all(np.isfinite(edges)):
        raise ValueError(f"bin edges overflow {sample.dtype} for the range [{lo}, {hi}]; convert the slices to "
                         "float32 first")
    return edges


def _assign(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy's histogramdd rule: ``searchsorted(edges, v, side="right") - 1``, the maximum in the last bin."""
    count = np.searchsorted(edges, values, side="right")
    count[values == edges[-1]] -= 1
    return count - 1


def _index_dtype(bins: int) -> type:
    """The narrowest integer type that holds a joint index ``i * bins + j`` (less memory traffic per pair)."""
    nb2 = bins * bins
    return np.int16 if nb2 <= 2**15 else np.int32 if nb2 <= 2**31 else np.int64


def histogram_bin_indices(slices: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (0 .. bins-1) of every pixel and the bin widths, per slice, exactly as ``np.histogramdd`` has them.

    Integer-valued slices (integer dtypes, and float slices holding whole numbers such as HU or 8-bit values) are
    binned through a lookup table built with the very same ``searchsorted`` on every value of the slice's range,
    which is several times faster than a binary search per pixel and gives identical indices.

    Args:
        slices: ``(N, H, W)`` numpy array (any real dtype; edges are computed in the slice's own dtype as numpy does).
        bins: number of equal-width bins over each slice's own ``[min, max]``.

    Returns:
        ``(N, H*W)`` bin indices (int16 when ``bins**2`` fits, else int32/int64) and ``(N, bins)`` float64 bin
        widths (``np.diff`` of the edges).

    Raises:
        ValueError: when a slice holds NaN or infinite values (numpy's "autodetected range ... is not finite").
    """
    n = slices.shape[0]
    flat = slices.reshape(n, -1)
    idx = np.empty(flat.shape, dtype=_index_dtype(bins))
    widths = np.empty((n, bins), dtype=np.float64)
    for i in range(n):
        sample = flat[i]
        lo, hi = sample.min(), sample.max()
        try:
            edges = _bin_edges(sample, bins, lo, hi)
        except ValueError as err:
            raise ValueError(f"slice {i}: {err}") from None
        widths[i] = np.diff(edges)
        span = float(hi) - float(lo)
        if span <= _LUT_MAX:
            if np.issubdtype(sample.dtype, np.integer):
                wide = np.int32 if sample.dtype.itemsize <= 2 else np.int64  # no wrap-around in the subtraction
                offset = (sample.astype(wide) - wide(lo)).astype(np.int32)
            else:
                offset = (sample - lo).astype(np.int32)
            values = (np.arange(int(span) + 2, dtype=np.int64) + lo).astype(sample.dtype)  # +1: rounding slack
            # the table holds lo, lo+1, ...: valid only if every pixel is exactly its table entry
            if np.issubdtype(sample.dtype, np.integer) or np.array_equal(values[offset], sample):
                idx[i] = _assign(values, edges).astype(idx.dtype)[offset]
                continue
        idx[i] = _assign(sample, edges)
    return idx, widths


def _nmi_from_counts(counts: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """NMI of joint bin counts ``(..., bins, bins)`` exactly as scikit-image derives it from ``histogramdd``.

    numpy's ``density=True`` divides each cell by its bin widths ``dx_i dy_j`` (equal only up to the rounding of
    the edges, which matters at ~1e-7 for float32 images); scipy's ``entropy`` then renormalises each histogram.
    The same is done here, so the result equals scikit-image's to ~1e-15. For an unnormalised histogram ``q`` with
    total ``S``: ``H = log S + sum(entr(q)) / S`` with ``entr(q) = -q log q``.
    """
    hist = counts.to(torch.float64) / (dx[..., :, None] * dy[..., None, :])

    def entropy(q: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        total = q.sum(dim=dims)
        return torch.log(total) + torch.special.entr(q).sum(dim=dims) / total

    h0 = entropy(hist.sum(dim=-2), (-1,))
    h1 = entropy(hist.sum(dim=-1), (-1,))
    h01 = entropy(hist, (-2, -1))
    # two constant slices (one occupied cell): 0/0 in scikit-image (NaN); they are identical, give them the maximum
    # 2. Anything else undefined (NaN) stays NaN, as in scikit-image.
    single = (counts > 0).flatten(-2).sum(-1) == 1
    return torch.where(single, torch.full_like(h01, 2.0), (h0 + h1) / torch.where(single, torch.ones_like(h01), h01))


@cpu_kernel
def _nmi_row_kernel(idx, i, bins, widths, out):  # pragma: no cover - compiled by numba
    """NMI of slice ``i`` with every slice ``j > i`` into ``out[j - i - 1]`` (the CPU kernel).

    The joint counts of a pair are accumulated in four interleaved histograms (consecutive pixels often share a bin;
    separate copies keep those increments independent), then turned into NMI exactly as :func:`_nmi_from_counts`:
    cell ``c / (dx_a dy_b)``, Shannon entropies ``log S + sum(-q log q) / S`` of the joint and both marginals.
    """
    n, p = idx.shape
    nb2 = bins * bins
    h = np.zeros((4, nb2), dtype=np.int32)
    col = np.empty(bins, dtype=np.float64)
    row = np.empty(bins, dtype=np.float64)
    code_i = np.empty(p, dtype=np.int32)
    for t in range(p):
        code_i[t] = np.int32(idx[i, t]) * bins
    p4 = p - p % 4
    for j in range(i + 1, n):
        h[:] = 0
        for t in range(0, p4, 4):
            h[0, code_i[t] + idx[j, t]] += 1
            h[1, code_i[t + 1] + idx[j, t + 1]] += 1
            h[2, code_i[t + 2] + idx[j, t + 2]] += 1
            h[3, code_i[t + 3] + idx[j, t + 3]] += 1
        for t in range(p4, p):
            h[0, code_i[t] + idx[j, t]] += 1
        col[:] = 0.0
        total = 0.0
        ent = 0.0
        cells = 0
        for a in range(bins):
            wa = widths[i, a]
            rs = 0.0
            for b in range(bins):
                k = a * bins + b
                c = h[0, k] + h[1, k] + h[2, k] + h[3, k]
                if c > 0:
                    cells += 1
                    q = c / (wa * widths[j, b])
                    rs += q
                    col[b] += q
                    ent -= q * math.log(q)
            row[a] = rs
            total += rs
        e0 = 0.0
        e1 = 0.0
        for a in range(bins):
            if row[a] > 0:
                e1 -= row[a] * math.log(row[a])
            if col[a] > 0:
                e0 -= col[a] * math.log(col[a])
        log_total = math.log(total)
        h01 = log_total + ent / total
        # two constant slices, one occupied cell: h01 = 0 (scikit-image: 0/0 = NaN); identical images, so the
        # maximum 2. Anything else undefined stays NaN, as in scikit-image.
        out[j - i - 1] = 2.0 if cells == 1 else (2 * log_total + (e0 + e1) / total) / h01


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise ValueError(
            f"bins must be an integer >= 2 (one bin count shared by both images; sequences of bin counts or edges, "
            f"which scikit-image also accepts, are not supported), got {bins!r}"
        )
    if bins < 2:
        raise ValueError(f"bins must be >= 2 for a meaningful mutual information, got {bins}; the paper-style "
                         "default is 100")
    return int(bins)


def pairwise_nmi(
    slices: Any,
    *,
    bins: int = 100,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    num_threads: int | None = None,
) -> np.ndarray:
    """Studholme's normalised mutual information of every pair of slices of one volume (paper section 2.1).

    ``out[i, j]`` equals ``skimage.metrics.normalized_mutual_information(slices[i], slices[j], bins=bins)``
    (measured: max abs error ~1e-15; the joint histograms are bit-identical). The diagonal is what scikit-image
    gives for ``(x, x)``: 2. One deliberate difference: for two *constant* slices scikit-image returns NaN (0/0, with
    a warning); here they get 2, the value of identical images, so that selection can sort the matrix.

    Args:
        slices: ``(N, H, W)`` array/tensor or a list of equally shaped 2-D slices (any real dtype). All slices share
            one dtype, so bin edges are those scikit-image computes for a pair of slices of that dtype.
        bins: number of histogram bins per image, an integer >= 2 (sequences are not supported).
        device: where the joint histograms are counted: "cpu" or a CUDA device.
        backend: "auto" (a compiled kernel on CPU, torch ``bincount`` on CUDA) or "torch" (torch on any device;
            the GPU code path, also runnable on CPU).
        num_threads: CPU threads for the compiled kernel; None uses ``torch.get_num_threads()``.

    Returns:
        ``(N, N)`` float64 symmetric matrix, values in [1, 2] (higher = more similar).

    Raises:
        ValueError: ``bins`` not an integer >= 2, slices of different shapes or not ``(N, H, W)``, non-finite values.
    """
    bins = _check_bins(bins)
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' (compiled kernel on CPU, torch on CUDA) or 'torch', got {backend!r}")
    threads = resolve_threads(num_threads)
    stack = as_slice_stack(slices)
    stack = _native_numpy(stack)
    n = stack.shape[0]
    dev = torch.device(device)
    out = np.full((n, n), 2.0, dtype=np.float64)
    idx, widths = histogram_bin_indices(stack, bins)
    if n > 1 and dev.type == "cpu" and backend == "auto":
        map_rows(lambda i: _nmi_row_kernel(idx, i, bins, widths, out[i, i + 1 :]), range(n - 1), threads)
        iu = np.triu_indices(n, 1)
        out.T[iu] = out[iu]
        return out
    nb2 = bins * bins
    w_t = torch.from_numpy(widths).to(dev)
    # torch: pairs (i, j > i) in chunks of consecutive j, the joint counts of a chunk in one bincount, then the NMI
    # of the chunk at once
    chunk = max(1, min(n - 1, (32 * 2**20) // (nb2 * 8 * 4)))
    idx_t = torch.from_numpy(idx).to(dev, torch.int64)
    offsets = torch.arange(chunk, device=dev)[:, None] * nb2  # keep the pairs' histograms apart
    for i in range(n - 1):
        scaled_i = idx_t[i] * bins
        for s in range(i + 1, n, chunk):
            e = min(n, s + chunk)
            codes = (idx_t[s:e] + scaled_i + offsets[: e - s]).reshape(-1)
            c = torch.bincount(codes, minlength=(e - s) * nb2).view(e - s, bins, bins)
            vals = _nmi_from_counts(c, w_t[i].expand(e - s, bins), w_t[s:e]).cpu().numpy()
            out[i, s:e] = vals
            out[s:e, i] = vals
    return out
