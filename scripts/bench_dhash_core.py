"""Time the batched dHash against imagehash on the same in-memory slices (the core of the HASH method's cost).

Timed as CPU time of this process (single-threaded code; robust to other processes on a shared machine), the
two sides interleaved, median of the runs. Both sides get their input ready in memory: imagehash a list of ``PIL.Image`` objects (as the authors' pipeline
had after loading), :func:`monai_lessmore.reduction.dhash.dhash` the ``(N, H, W)`` uint8 stack. Run single-threaded
for a per-core comparison::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_dhash_core.py
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["compare"]


def _median_cpu(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of this process per call (single-threaded code: less disturbed by a shared machine's
    other processes than wall time)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times))


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


def compare(n: int = 64, size: int = 512, seed: int = 0, repeats: int = 5) -> dict:
    """Seconds per slice of ``imagehash.dhash`` (a loop over PIL images) and of the batched ``dhash``.

    Args:
        n: slices in the batch.
        size: side of the square slices.
        seed: seed of the synthetic slices.
        repeats: timings per side, interleaved (imagehash, ours, imagehash, ...); the median CPU time is kept.

    Returns:
        dict with ``imagehash_s_per_slice``, ``batched_s_per_slice``, ``speedup`` (imagehash / batched),
        ``mismatches`` (slices whose hashes differ; must be 0), ``n``, ``size``, ``backend`` (``"compiled"`` when
        the numba kernel ran), and ``<path>_s_per_slice`` / ``<path>_mismatches`` for the paths that run without
        numba (``int8``: torch's int8 product; ``float32``: numpy).
    """
    import imagehash
    from PIL import Image

    import monai_lessmore.reduction._jit as _jit
    from monai_lessmore.reduction.dhash import dhash, hash_to_hex

    _jit.COMPILE_AFTER_PIXELS = 0  # time the compiled kernel from the first call (no numpy phase)

    slices = _test_batch(n, size, seed)
    images = [Image.fromarray(s) for s in slices]
    reference = [str(imagehash.dhash(im)) for im in images]  # also warms both code paths
    ours = hash_to_hex(dhash(slices))
    t_ref, t_ours = [], []
    for _ in range(repeats):  # interleaved, so that both sides see the same machine load
        t_ref.append(_median_cpu(lambda: [imagehash.dhash(im) for im in images], 1) / n)
        t_ours.append(_median_cpu(lambda: dhash(slices), 1) / n)
    import monai_lessmore.reduction.dhash as dhash_module

    result = {
        "n": n,
        "size": size,
        "imagehash_s_per_slice": float(np.median(t_ref)),
        "batched_s_per_slice": float(np.median(t_ours)),
        "speedup": float(np.median(t_ref) / np.median(t_ours)),
        "speedups": [a / b for a, b in zip(t_ref, t_ours)],
        "mismatches": sum(a != b for a, b in zip(reference, ours)),
        "backend": "compiled" if dhash_module._compiled_resample() is not None else "matrix product",
    }
    # the paths without numba, for reference: torch's int8 product, then numpy float32
    compiled, int8 = dhash_module._compiled_resample, dhash_module._torch_int8_matmul
    dhash_module._compiled_resample = lambda: None
    try:
        for name in ("int8", "float32"):
            if name == "float32":
                dhash_module._torch_int8_matmul = lambda: None
            elif int8() is None:
                continue
            result[f"{name}_mismatches"] = sum(a != b for a, b in zip(reference, hash_to_hex(dhash(slices))))
            result[f"{name}_s_per_slice"] = _median_cpu(lambda: dhash(slices), max(1, repeats // 2)) / n
    finally:
        dhash_module._compiled_resample, dhash_module._torch_int8_matmul = compiled, int8
    return result


if __name__ == "__main__":
    import platform

    result = compare()
    others = ", ".join(
        f"{name} {result[name + '_s_per_slice'] * 1e6:.0f} us/slice ({result[name + '_mismatches']} mismatches)"
        for name in ("int8", "float32")
        if name + "_s_per_slice" in result
    )
    print(
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{result['n']} slices of {result['size']}x{result['size']}, CPU time per slice, median of interleaved runs: "
        f"imagehash {result['imagehash_s_per_slice'] * 1e6:.0f} us, "
        f"batched dhash ({result['backend']}) {result['batched_s_per_slice'] * 1e6:.1f} us, "
        f"speedup {result['speedup']:.1f}x (runs: {', '.join(f'{v:.1f}' for v in result['speedups'])}), "
        f"mismatches {result['mismatches']}; without numba: {others}"
    )
