"""Compiled CPU kernels for the pairwise measures: the numba settings they share, and their fan-out over threads.

The all-pairs SSIM and MI loops are compiled with numba (LLVM) rather than run as a sequence of torch operations:
a fused kernel makes one pass over each pair's pixels where torch makes ~30 memory-bound passes, which is what
brings them to >= 20x scikit-image per core (``docs/benchmarks.md``). The CUDA paths stay in torch.

Settings, chosen for exactness first:

- ``error_model="numpy"``: IEEE division (no Python ZeroDivisionError branch, which would stop vectorisation);
- ``fastmath`` limited to ``contract`` (FMA), ``reassoc`` (vectorised sums), ``nsz`` and ``arcp`` -- no ``nnan`` or
  ``ninf``, so NaN and infinity keep their meaning; the effect on results is measured in the tests (SSIM float32
  within ~2e-6 of scikit-image, MI within ~1e-14);
- ``nogil=True``: kernels run in parallel threads of one process (:func:`map_rows`);
- ``cache=True``: compiled code is kept in ``__pycache__`` (or numba's per-user cache when the package folder is
  read-only), so only the first call on a machine pays the ~1-2 s compilation;
- compiled on first call: numba is imported only when a CPU kernel first runs.

Starting numba costs a process ~1.3 s of CPU time even when every kernel comes from the cache (importing numba
~0.25 s; its CPU target's first dispatch ~0.45 s, plus ~0.25 s for the ``scipy.linalg`` import that numba's
``numba.np.arraymath`` does to look for BLAS; measured in ``docs/benchmarks.md``). The light per-pixel kernels of
the HASH path (8-bit rendering, dHash) have exact numpy equivalents that cost ~1.5 ns more per pixel, so a process
runs those in numpy until its work would have paid for the start-up (:func:`use_compiled`, a "rent or buy" rule
that keeps a job within about twice the cheaper choice), and compiled from then on, or at once when numba already
runs in the process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["cpu_kernel", "map_rows", "resolve_threads", "use_compiled", "COMPILE_AFTER_PIXELS_ENV"]

_FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp"})

#: Environment variable that sets :data:`COMPILE_AFTER_PIXELS` (``0``: compile at once).
COMPILE_AFTER_PIXELS_ENV = "LESSMORE_COMPILE_AFTER_PIXELS"


def _compile_after_pixels() -> int:
    text = os.environ.get(COMPILE_AFTER_PIXELS_ENV, "")
    try:
        return max(0, int(text)) if text.strip() else 1 << 29
    except ValueError:
        raise ValueError(
            f"{COMPILE_AFTER_PIXELS_ENV} must be a non-negative integer number of pixels, got {text!r}"
        ) from None


#: Pixels a process passes through the light kernels in numpy (rendering and dHash counted separately) before it
#: starts numba for them: numba's ~1.3 s start-up over the ~1.5 ns per pixel and kernel that compiling saves
#: (``2**29``: about 1000 slices of 512x512 rendered and hashed; measured in ``docs/benchmarks.md``).
COMPILE_AFTER_PIXELS = _compile_after_pixels()
_light_pixels = 0  # pixels the light kernels were asked for in this process so far
_started: list[bool] = []  # non-empty once a compiled kernel has run in this process
_light_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def numba_installed() -> bool:
    """Whether numba can be found, without importing it (importing costs ~0.25 s)."""
    return importlib.util.find_spec("numba") is not None


def numba_started() -> bool:
    """Whether numba's CPU target already runs in this process (one of our kernels ran, or other code compiled
    with numba; the second is recognised by numba having loaded its array implementations, which its target's
    initialisation does)."""
    return bool(_started) or "numba.np.arraymath" in sys.modules


def use_compiled(pixels: int) -> bool:
    """Whether a light kernel (8-bit rendering, dHash) should run compiled for ``pixels`` more pixels of work.

    True when numba runs in the process already, or once this process's light work, this call included, exceeds
    :data:`COMPILE_AFTER_PIXELS`; False without numba. Both choices give the same bits.
    """
    global _light_pixels
    if not numba_installed():
        return False
    if numba_started():
        return True
    with _light_lock:
        _light_pixels += int(pixels)
        return _light_pixels > COMPILE_AFTER_PIXELS


def cpu_kernel(fn: Callable[..., Any], *, exact: bool = False) -> Callable[..., Any]:
    """``fn`` compiled with the shared numba settings on its first call.

    numba is imported only then, so importing the measures (or running them on a GPU) does not need it.
    ``kernel.py_func`` is the plain Python function. ``exact=True`` compiles without ``fastmath`` (IEEE division
    and evaluation order as written), for kernels whose float results must equal numpy's to the bit.
    """
    lock = threading.Lock()
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def kernel(*args: Any) -> Any:
        if not compiled:
            with lock:  # threads of map_rows may arrive together: compile once
                if not compiled:
                    from numba import njit

                    fastmath = False if exact else set(_FASTMATH)
                    compiled.append(njit(nogil=True, cache=True, error_model="numpy", fastmath=fastmath)(fn))
        out = compiled[0](*args)
        if not _started:
            _started.append(True)
        return out

    kernel.py_func = fn  # type: ignore[attr-defined]
    return kernel


def resolve_threads(num_threads: int | None) -> int:
    """``num_threads`` validated; None means torch's intra-op thread count (what the torch paths would use)."""
    if num_threads is None:
        import torch

        return max(1, torch.get_num_threads())
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None (torch's thread count), got {num_threads!r}")
    return int(num_threads)


def map_rows(fn: Callable[[int], None], rows: Iterable[int], num_threads: int) -> None:
    """Call ``fn(row)`` for every row, on ``num_threads`` threads (a ``nogil`` kernel inside ``fn`` runs in parallel).

    Rows are handed out in the given order as threads become free, so listing the longest rows first balances the
    triangular all-pairs loop. The first exception raised by ``fn`` is re-raised, and on an exception (or
    Ctrl-C) rows not yet started are cancelled instead of run.
    """
    rows = list(rows)
    if num_threads == 1 or len(rows) <= 1:
        for r in rows:
            fn(r)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(num_threads, len(rows)))
    try:
        for fut in [pool.submit(fn, r) for r in rows]:
            fut.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
