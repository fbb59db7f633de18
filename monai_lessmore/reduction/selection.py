"""Which slices of one volume to keep, given how alike every pair of them is.

Every function here works on a square *score* matrix in which **lower means more similar** (the Hamming distance
of two hashes as it is; a similarity such as SSIM negated by :mod:`monai_lessmore.reduction.methods`). A pair is
*similar* when its score is at most the threshold (inclusive): for HASH-6, a Hamming distance of 0..6.

Two algorithms, both deterministic (Wolf et al. 2024 section 2.1 and the authors' released code):

* :func:`select_leader` -- the authors' released HASH code. In slice order, the first remaining slice becomes an
  exemplar and every remaining slice similar to it is dropped; repeat. With HASH-6, kept exemplars are pairwise at
  distance >= 7.
* :func:`select_greedy` -- the paper's text (section 2.1). All pairs are sorted from most to least similar; starting
  from the most similar pair one slice of the pair is removed (pairs whose slice is already gone are skipped) until
  no similar pair remains or a target number of slices is left. **Which slice goes:** the later one in slice
  order (the higher index), so that -- as in the leader algorithm -- the earlier slice of a run of near-duplicates
  survives. **Ties** between pairs of equal score are broken by slice order: pair ``(i, j)`` with ``i < j`` before
  ``(i', j')`` when ``(i, j) < (i', j')`` lexicographically.

Both also select a target *count* (the paper's "reduce to 10 %"): see :func:`select_greedy` and
:func:`select_leader_count`. :func:`select_every_n` is the EveryN baseline.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "target_count",
    "select_all",
    "select_every_n",
    "select_leader",
    "select_leader_count",
    "select_greedy",
    "similar_pairs",
]


def target_count(n_slices: int, *, fraction: float | None = None, count: int | None = None) -> int:
    """Number of slices to keep for a target ``fraction`` of ``n_slices`` or an absolute ``count``.

    The fraction is rounded to the nearest count (halves up) and is at least one slice; a count larger than the
    volume keeps the whole volume.

    Raises:
        ValueError: when neither or both are given, ``fraction`` is outside (0, 1] or ``count`` < 1.
    """
    if (fraction is None) == (count is None):
        raise ValueError(f"give exactly one of fraction or count, got fraction={fraction!r}, count={count!r}")
    if fraction is not None:
        if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
            raise ValueError(f"fraction must be in (0, 1] (e.g. 0.1 keeps 10 % of the slices), got {fraction!r}")
        return max(1, min(n_slices, int(math.floor(float(fraction) * n_slices + 0.5))))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer number of slices to keep, got {count!r}")
    return int(min(n_slices, count))


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"scores must be a square (N, N) matrix of pairwise scores, got shape {s.shape}")
    if s.dtype.kind == "f" and s.size and not np.isfinite(s).all():
        raise ValueError("scores contain NaN/Inf; every pair of slices needs a finite score")
    return s


def select_all(n_slices: int) -> np.ndarray:
    """Keep every slice (the ALL baseline)."""
    return np.arange(n_slices, dtype=np.int64)


def select_every_n(n_slices: int, *, n: int | None = None, count: int | None = None) -> np.ndarray:
    """The EveryN baseline: slices ``0, n, 2n, ...``, or ``count`` evenly spaced slices starting at slice 0.

    With ``count`` the kept indices are ``floor(i * n_slices / count)``, which equals every ``n``-th slice when
    ``n_slices`` is a multiple of ``count`` and otherwise spreads the remainder evenly.
    """
    if (n is None) == (count is None):
        raise ValueError(f"give exactly one of n or count, got n={n!r}, count={count!r}")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer (n=10 keeps every 10th slice), got {n!r}")
        return np.arange(0, n_slices, int(n), dtype=np.int64)
    k = min(int(count), n_slices)
    return (np.arange(k, dtype=np.int64) * n_slices) // max(k, 1)


def select_leader(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Leader/exemplar selection, the authors' released HASH algorithm.

    In slice order, the first remaining slice is kept as an exemplar and every remaining slice whose score to it is
    ``<= threshold`` is dropped; this repeats until no slice remains.

    Args:
        scores: ``(N, N)`` pairwise scores, lower = more similar.
        threshold: pairs scoring ``<= threshold`` are similar.

    Returns:
        Sorted indices of the kept slices.
    """
    s = _check_scores(scores)
    n = s.shape[0]
    remaining = np.ones(n, dtype=bool)
    kept = []
    i = 0
    while i < n:
        kept.append(i)
        remaining[i] = False
        remaining &= ~(s[i] <= threshold)
        nxt = np.flatnonzero(remaining[i + 1 :])
        if nxt.size == 0:
            break
        i = i + 1 + int(nxt[0])
    return np.asarray(kept, dtype=np.int64)


def similar_pairs(scores: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, ordered from most to least similar, ties by ``(i, j)``.

    With ``threshold`` only pairs scoring ``<= threshold`` are returned.
    """
    s = _check_scores(scores)
    ii, jj = np.triu_indices(s.shape[0], k=1)
    vals = s[ii, jj]
    if threshold is not None:
        mask = vals <= threshold
        ii, jj, vals = ii[mask], jj[mask], vals[mask]
    order = np.lexsort((jj, ii, vals))
    return ii[order], jj[order]


def select_greedy(scores: np.ndarray, *, threshold: float | None = None, count: int | None = None) -> np.ndarray:
    """Pairwise greedy selection, the paper's text (section 2.1).

    Pairs are visited from most to least similar (ties by slice order); while both slices of the visited pair are
    still kept, the later slice is removed. Stops when every remaining pair scores above ``threshold``, or when
    ``count`` slices are left, whichever comes first.

    In threshold mode no two kept slices score ``<= threshold``: a kept pair would have been visited while both were
    kept, and one of them removed.

    Args:
        scores: ``(N, N)`` pairwise scores, lower = more similar.
        threshold: pairs scoring ``<= threshold`` are similar.
        count: number of slices to leave (``1 <= count``).

    Returns:
        Sorted indices of the kept slices.
    """
    if threshold is None and count is None:
        raise ValueError("select_greedy needs a threshold, a count, or both")
    s = _check_scores(scores)
    n = s.shape[0]
    target = 1 if count is None else max(1, int(count))
    kept = np.ones(n, dtype=bool)
    n_kept = n
    if n_kept <= target:
        return np.arange(n, dtype=np.int64)
    ii, jj = similar_pairs(s, threshold)
    for i, j in zip(ii.tolist(), jj.tolist()):
        if kept[i] and kept[j]:
            kept[j] = False
            n_kept -= 1
            if n_kept <= target:
                break
    return np.flatnonzero(kept).astype(np.int64)


def select_leader_count(scores: np.ndarray, count: int) -> tuple[np.ndarray, float | None]:
    """Leader selection that leaves exactly ``count`` slices.

    Finds a threshold at which :func:`select_leader` keeps at least ``count`` slices, then removes the surplus with
    :func:`select_greedy` among those exemplars (most similar pair first, later slice removed). With few distinct
    pair scores (at most 128, e.g. Hamming distances 0..64) every threshold is tried and the largest one that keeps
    at least ``count`` is used. Otherwise the threshold comes from a binary search over the sorted pair scores. The
    leader's kept count does not always fall as the threshold rises, so the search finds a threshold that keeps at
    least ``count`` while the next larger candidate keeps fewer, not necessarily the largest such threshold.

    Returns:
        ``(kept indices, threshold used)``; the threshold is ``None`` when every slice is kept.
    """
    s = _check_scores(scores)
    n = s.shape[0]
    count = max(1, int(count))
    if count >= n:
        return np.arange(n, dtype=np.int64), None
    candidates = np.unique(s[np.triu_indices(n, k=1)])
    best = np.arange(n, dtype=np.int64)
    lo = -1  # index of the chosen candidate; -1 = no threshold (all slices kept)
    if candidates.size <= 128:
        for i, c in enumerate(candidates):
            kept = select_leader(s, float(c))
            if kept.size >= count:
                lo, best = i, kept
    else:
        hi = candidates.size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            kept = select_leader(s, float(candidates[mid]))
            if kept.size >= count:
                lo, best = mid, kept
            else:
                hi = mid
    threshold = None if lo < 0 else float(candidates[lo])
    if best.size > count:
        sub = select_greedy(s[np.ix_(best, best)], count=count)
        best = best[sub]
    return best, threshold
