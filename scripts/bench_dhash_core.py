"""Time the batched dHash against imagehash on the same in-memory slices (the core of the HASH method's cost).

Both sides get their input ready in memory: imagehash a list of ``PIL.Image`` objects (as the authors' pipeline
had after loading), :func:`monai_lessmore.reduction.dhash.dhash` the ``(N, H, W)`` uint8 stack. Run single-threaded
for a per-core comparison::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_dhash_core.py
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["compare"]


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _test_batch(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth CT-like slices with noise and flat (tied) regions, so both hashes see realistic content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    slices = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        body = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16 + 0.01 * np.sin(i / 7)).astype(np.float64)
        img = body * (120 + 60 * np.sin(6 * xx + i / 10) * np.cos(5 * yy)) + rng.normal(0, 8, (size, size)) * body
        slices[i] = np.clip(np.rint(img), 0, 255)
    return slices


def compare(n: int = 64, size: int = 512, seed: int = 0, repeats: int = 3) -> dict:
    """Seconds per slice of ``imagehash.dhash`` (a loop over PIL images) and of the batched ``dhash``.

    Args:
        n: slices in the batch.
        size: side of the square slices.
        seed: seed of the synthetic slices.
        repeats: timings per side; the best is kept (least disturbed by other processes).

    Returns:
        dict with ``imagehash_s_per_slice``, ``batched_s_per_slice``, ``speedup`` (imagehash / batched),
        ``mismatches`` (slices whose hashes differ; must be 0), ``n``, ``size``, ``int8_backend`` (whether the
        torch int8 product was used) and ``numpy_fallback_s_per_slice`` / ``numpy_fallback_mismatches`` for the
        numpy float32 path.
    """
    import imagehash
    from PIL import Image

    from monai_lessmore.reduction.dhash import dhash, hash_to_hex

    slices = _test_batch(n, size, seed)
    images = [Image.fromarray(s) for s in slices]
    reference = [str(imagehash.dhash(im)) for im in images]  # also warms both code paths
    ours = hash_to_hex(dhash(slices))
    t_ref = _best_of(lambda: [imagehash.dhash(im) for im in images], repeats) / n
    t_ours = _best_of(lambda: dhash(slices), repeats) / n
    # the numpy float32 fallback (used when torch._int_mm is unavailable), for reference
    import monai_lessmore.reduction.dhash as dhash_module

    fast = dhash_module._torch_int8_matmul
    dhash_module._torch_int8_matmul = lambda: None
    try:
        mismatches_fallback = sum(a != b for a, b in zip(reference, hash_to_hex(dhash(slices))))
        t_fallback = _best_of(lambda: dhash(slices), repeats) / n
    finally:
        dhash_module._torch_int8_matmul = fast
    return {
        "n": n,
        "size": size,
        "imagehash_s_per_slice": t_ref,
        "batched_s_per_slice": t_ours,
        "speedup": t_ref / t_ours,
        "mismatches": sum(a != b for a, b in zip(reference, ours)),
        "int8_backend": fast() is not None,
        "numpy_fallback_s_per_slice": t_fallback,
        "numpy_fallback_mismatches": mismatches_fallback,
    }


if __name__ == "__main__":
    result = compare()
    print(
        f"{result['n']} slices of {result['size']}x{result['size']}: "
        f"imagehash {result['imagehash_s_per_slice'] * 1e6:.0f} us/slice, "
        f"batched dhash {result['batched_s_per_slice'] * 1e6:.1f} us/slice, "
        f"speedup {result['speedup']:.1f}x, mismatches {result['mismatches']} "
        f"(int8 backend: {result['int8_backend']}; numpy float32 fallback "
        f"{result['numpy_fallback_s_per_slice'] * 1e6:.1f} us/slice, mismatches {result['numpy_fallback_mismatches']})"
    )
