"""Exact search for every pair of 64-bit hashes within a Hamming distance, by multi-index hashing.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing",
CVPR 2012): split the 64 bits into ``m`` contiguous blocks. The Hamming distance of two hashes is the sum of the
distances of their blocks, so by the pigeonhole principle two hashes within distance ``d`` have at least one block
within distance ``r = floor(d / m)``. For every block, the hashes are bucketed by that block's value; a near pair is
then found by comparing only hashes whose buckets lie within ``r`` bits of each other. Every candidate is verified
on all 64 bits, so the result is exact: it equals the brute-force all-pairs comparison
(:func:`brute_force_pairs`), which the tests check.

A pair can share several blocks within ``r``. It is reported by the first such block only (the block kernel checks
the earlier blocks of every verified pair), so the blocks and the key ranges within a block are independent pieces
of work whose results never overlap: they run on threads here (the kernel releases the GIL) or as Dask tasks
(:mod:`monai_lessmore.duplicates.run`).

The number of blocks is chosen per data set from the bucket sizes (:func:`plan_search`): for every admissible
``m`` the exact number of candidate pairs is counted from the bucket histograms, plus the probes of empty buckets,
and the cheapest plan wins. When no plan beats comparing all pairs (large thresholds), all pairs are compared.

The kernels are compiled with numba on first use (:func:`monai_lessmore.reduction._jit.cpu_kernel`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from monai_lessmore.reduction._jit import cpu_kernel, map_rows, resolve_threads

__all__ = ["SearchPlan", "plan_search", "near_pairs", "brute_force_pairs", "block_task", "block_pieces"]

#: widest block whose buckets are addressed directly (a table of ``2**bits + 1`` offsets, 16 MiB at 22 bits)
MAX_BLOCK_BITS = 22
_MAX_BITS_TOTAL = 64

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)


@dataclass(frozen=True)
class SearchPlan:
    """How :func:`near_pairs` searches: ``m`` blocks of ``widths`` bits starting at ``shifts``, searched within
    ``radii`` bits (``-1``: the block is not searched).

    ``m == 0`` means comparing all pairs. ``cost`` is the planner's estimate of candidate pairs (plus probes) and
    ``brute_cost`` that of comparing all pairs.
    """

    threshold: int
    m: int
    radii: tuple[int, ...]
    widths: tuple[int, ...]
    shifts: tuple[int, ...]
    cost: float
    brute_cost: float

    def describe(self) -> str:
        if self.m == 0:
            return "all pairs compared (no block split is cheaper at this threshold)"
        return (f"multi-index hashing: {self.m} blocks of {'/'.join(str(w) for w in sorted(set(self.widths)))} bits, "
                f"radii {','.join(str(r) for r in self.radii)}")


def _blocks(m: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    base, extra = divmod(_MAX_BITS_TOTAL, m)
    widths = tuple(base + (1 if b < extra else 0) for b in range(m))
    shifts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(widths)[:-1]]))
    return widths, shifts


def _ball(width: int, radius: int) -> np.ndarray:
    """Every non-zero mask of at most ``radius`` set bits among ``width`` bits (the probes around a bucket)."""
    masks = [sum(1 << b for b in bits) for r in range(1, radius + 1) for bits in itertools.combinations(range(width), r)]
    return np.array(masks, dtype=np.int64)


def _block_keys(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    return ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


@cpu_kernel
def _shell_pairs(counts, nonempty, flips):  # noqa: ANN001 - numba kernel
    """Candidate pairs of one block from buckets ``k < k ^ f`` summed per probe mask (then grouped by its bits)."""
    out = np.zeros(flips.shape[0], dtype=np.float64)
    for t in range(nonempty.shape[0]):
        k = nonempty[t]
        c = float(counts[k])
        for u in range(flips.shape[0]):
            k2 = k ^ flips[u]
            if k2 > k:
                out[u] += c * counts[k2]
    return out


#: most probes per bucket the planner considers for one block (radius 2 of 22 bits is 253)
_MAX_PROBES = 600
#: hashes the planner counts bucket pairs on; larger inputs are sampled and the pair counts scaled by (N / n)**2
_PLAN_SAMPLE = 50_000
#: pairs below which comparing all of them is always the cheapest (tables of up to 2**22 buckets cost more)
_SMALL = 2e7
#: a probe of a bucket costs about as much as this many candidate checks (random access into the bucket table)
_PROBE_COST = 4.0


def _block_costs(h: np.ndarray, n_full: int, width: int, shift: int, r_max: int) -> list[float]:
    """Estimated cost of searching one block within radius 0..r_max: candidate pairs plus probes."""
    scale = (n_full / max(h.shape[0], 1)) ** 2
    counts = np.bincount(_block_keys(h, shift, width), minlength=1 << width).astype(np.int64)
    same = float((counts * (counts - 1)).sum() / 2)
    flips = _ball(width, r_max)
    shells = np.zeros(r_max + 1)
    if flips.size:
        per = _shell_pairs(counts, np.flatnonzero(counts).astype(np.int64), flips)
        np.add.at(shells, np.array([bin(int(f)).count("1") for f in flips]), per)
    nonempty_full = min(n_full, 1 << width)
    costs = []
    for r in range(r_max + 1):
        n_probes = 1 + sum(math.comb(width, k) for k in range(1, r + 1))
        costs.append(scale * (same + shells[1 : r + 1].sum()) + _PROBE_COST * nonempty_full * n_probes)
    return costs


def _best_radii(costs: list[list[float]], need: int) -> tuple[float, tuple[int, ...]]:
    """Radii ``r_b >= -1`` (``-1``: block not searched) with ``sum(r_b + 1) >= need`` and the least total cost."""
    # generalized pigeonhole: if every block b differed by more than r_b bits, the distance would be at least
    # sum(r_b + 1) > threshold; so a pair within the threshold has some block b within r_b
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for c in costs:
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for got, (cost, radii) in best.items():
            for r in range(-1, len(c)):
                g = min(need, got + r + 1)
                total = cost + (c[r] if r >= 0 else 0.0)
                if g not in nxt or total < nxt[g][0]:
                    nxt[g] = (total, radii + (r,))
        best = nxt
    return best.get(need, (math.inf, ()))


def plan_search(hashes: np.ndarray, threshold: int, *, m: int | None = None, seed: int = 0) -> SearchPlan:
    """The cheapest exact search for pairs within ``threshold``, from the bucket sizes of ``hashes``.

    For every admissible number of blocks ``m`` the cost of searching each block within each radius is estimated
    (candidate pairs counted from the bucket histograms, on a sample of :data:`_PLAN_SAMPLE` hashes for large
    inputs, plus the bucket probes); the radii are then chosen by the generalized pigeonhole principle (Qin et
    al., "GPH: similarity search in Hamming space", ICDE 2018): any radii ``r_b`` with ``sum(r_b + 1) > threshold``
    are exact. ``r_b = floor(threshold / m)`` for every block is the classic multi-index hashing choice.

    Args:
        hashes: ``(N,)`` uint64.
        threshold: Hamming distance, inclusive, 0..64.
        m: force this number of blocks (``0``: compare all pairs); ``None`` chooses.
        seed: of the planner's sample (the plan, never the result, depends on it).

    Raises:
        ValueError: for a threshold outside 0..64 or an ``m`` whose blocks would be wider than
            :data:`MAX_BLOCK_BITS`.
    """
    d = _check_threshold(threshold)
    h = _as_hashes(hashes)
    n = h.shape[0]
    brute = 0.5 * n * (n - 1)
    lo = math.ceil(_MAX_BITS_TOTAL / MAX_BLOCK_BITS)
    if m is not None:
        if m == 0:
            return SearchPlan(d, 0, (), (), (), brute, brute)
        if not lo <= m <= _MAX_BITS_TOTAL:
            raise ValueError(f"m must be 0 (all pairs) or {lo}..64 blocks (blocks of at most {MAX_BLOCK_BITS} bits), got {m}")
        choices = [m]
    else:
        # more than d + 1 blocks keeps radius 0 with narrower blocks: never fewer candidates
        choices = list(range(lo, max(lo, min(d + 1, _MAX_BITS_TOTAL)) + 1))
    if m is None and brute <= _SMALL:
        return SearchPlan(d, 0, (), (), (), brute, brute)  # a few milliseconds of numpy: no tables worth building
    sample = h
    if n > _PLAN_SAMPLE:
        sample = h[np.sort(np.random.default_rng(seed).choice(n, _PLAN_SAMPLE, replace=False))]
    best: SearchPlan | None = None
    for mm in choices:
        widths, shifts = _blocks(mm)
        costs = []
        for w, s in zip(widths, shifts):
            r_max = 0
            while r_max < min(d, (d + 1) // mm + 1) and 1 + sum(math.comb(w, k) for k in range(1, r_max + 2)) <= _MAX_PROBES:
                r_max += 1
            costs.append(_block_costs(sample, n, w, s, r_max))
        cost, radii = _best_radii(costs, d + 1)
        if radii and (best is None or cost < best.cost):
            best = SearchPlan(d, mm, radii, widths, shifts, cost, brute)
    if best is None or (m is None and best.cost >= brute):
        return SearchPlan(d, 0, (), (), (), brute, brute)
    return best


def _check_threshold(threshold: Any) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be an integer Hamming distance 0..64, got {threshold!r}")
    return int(threshold)


@cpu_kernel
def _block_kernel(hs, vs, gs, os_, starts, occupied, flips, k_lo, k_hi, d, prev_shifts, prev_masks, prev_radii):  # noqa: ANN001
    """Pairs within ``d`` between buckets ``k`` in ``[k_lo, k_hi)`` and buckets ``k ^ f >= k`` of one block.

    ``hs, vs, gs, os_``: hashes, volume ids, group ids and original indices sorted by the block's key; ``starts``:
    bucket offsets; ``occupied``: one bit per bucket, set when it is not empty (a bitmap that stays in cache, so
    that probing an empty bucket costs no memory access). A pair within ``prev_radii[b]`` in an earlier searched block ``b`` is left to that block.
    """
    cap = 1024
    oi = np.empty(cap, dtype=np.int32)
    oj = np.empty(cap, dtype=np.int32)
    od = np.empty(cap, dtype=np.uint8)
    n = 0
    checked = 0
    nb = prev_shifts.shape[0]
    for k in range(k_lo, k_hi):
        s1 = starts[k]
        e1 = starts[k + 1]
        if s1 == e1:
            continue
        for t in range(-1, flips.shape[0]):
            if t < 0:
                k2 = k
            else:
                k2 = k ^ flips[t]
                if k2 < k or not (occupied[k2 >> 6] >> np.uint64(k2 & 63)) & _S1:
                    continue
            s2 = starts[k2]
            e2 = starts[k2 + 1]
            if s2 == e2:
                continue
            checked += (e1 - s1) * (e1 - s1 - 1) // 2 if t < 0 else (e1 - s1) * (e2 - s2)
            for p in range(s1, e1):
                hp = hs[p]
                vp = vs[p]
                gp = gs[p]
                q0 = p + 1 if t < 0 else s2
                for q in range(q0, e2):
                    x = hp ^ hs[q]
                    y = x - ((x >> _S1) & _M1)  # popcount (SWAR; LLVM emits one popcnt instruction)
                    y = (y & _M2) + ((y >> _S2) & _M2)
                    y = (y + (y >> _S4)) & _M4
                    dist = (y * _H01) >> _S56
                    if dist > d or vs[q] == vp or gs[q] != gp:
                        continue
                    seen = False
                    for b in range(nb):
                        y = (x >> prev_shifts[b]) & prev_masks[b]
                        y = y - ((y >> _S1) & _M1)
                        y = (y & _M2) + ((y >> _S2) & _M2)
                        y = (y + (y >> _S4)) & _M4
                        if (y * _H01) >> _S56 <= prev_radii[b]:
                            seen = True
                            break
                    if seen:
                        continue
                    if n == cap:
                        cap *= 2
                        ni = np.empty(cap, dtype=np.int32)
                        nj = np.empty(cap, dtype=np.int32)
                        nd = np.empty(cap, dtype=np.uint8)
                        ni[:n] = oi[:n]
                        nj[:n] = oj[:n]
                        nd[:n] = od[:n]
                        oi = ni
                        oj = nj
                        od = nd
                    a = os_[p]
                    c = os_[q]
                    if a < c:
                        oi[n] = a
                        oj[n] = c
                    else:
                        oi[n] = c
                        oj[n] = a
                    od[n] = dist
                    n += 1
    return oi[:n].copy(), oj[:n].copy(), od[:n].copy(), checked


def _as_ids(values: Any, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.int32)
    arr = np.asarray(values)
    if arr.shape != (n,) or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array with one entry per hash ({n}), got shape {arr.shape} "
                         f"and dtype {arr.dtype}")
    return arr.astype(np.int32)


def _as_hashes(hashes: Any) -> np.ndarray:
    arr = np.asarray(hashes)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui") or (arr.dtype.kind == "i" and (arr < 0).any()):
        raise ValueError(f"hashes must be a 1D array of uint64 hashes (see dhash.hex_to_hash), got shape {arr.shape} "
                         f"and dtype {arr.dtype}")
    if arr.shape[0] >= 2**31 - 1:
        raise ValueError(f"at most 2**31 - 2 hashes per search, got {arr.shape[0]}")
    return np.ascontiguousarray(arr, dtype=np.uint64)


class _SortedBlock:
    """One block's buckets: the data sorted by the block key and the bucket offsets."""

    def __init__(self, h: np.ndarray, vol: np.ndarray, grp: np.ndarray, plan: SearchPlan, b: int) -> None:
        w, s = plan.widths[b], plan.shifts[b]
        keys = _block_keys(h, s, w)
        order = np.argsort(keys, kind="stable").astype(np.int32)
        self.hs, self.vs, self.gs, self.os = h[order], vol[order], grp[order], order
        self.starts = np.zeros((1 << w) + 1, dtype=np.int64)
        counts = np.bincount(keys, minlength=1 << w)
        np.cumsum(counts, out=self.starts[1:])
        self.occupied = np.packbits(counts > 0, bitorder="little")
        self.occupied = np.pad(self.occupied, (0, (-len(self.occupied)) % 8)).view(np.uint64)
        self.flips = _ball(w, plan.radii[b])
        prev = [c for c in range(b) if plan.radii[c] >= 0]
        self.prev_shifts = np.array([plan.shifts[c] for c in prev], dtype=np.uint64)
        self.prev_masks = np.array([(1 << plan.widths[c]) - 1 for c in prev], dtype=np.uint64)
        self.prev_radii = np.array([plan.radii[c] for c in prev], dtype=np.uint64)
        self.plan = plan

    def run(self, k_lo: int, k_hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        return _block_kernel(self.hs, self.vs, self.gs, self.os, self.starts, self.occupied, self.flips, np.int64(k_lo),
                             np.int64(k_hi), np.uint64(self.plan.threshold), self.prev_shifts, self.prev_masks,
                             self.prev_radii)


def block_pieces(hashes: np.ndarray, plan: SearchPlan, pieces_per_block: int) -> list[tuple[int, int, int]]:
    """``(block, k_lo, k_hi)`` pieces of work: each block's keys cut where equal shares of the hashes begin."""
    out = []
    h = np.asarray(hashes, dtype=np.uint64)
    for b, (w, s) in enumerate(zip(plan.widths, plan.shifts)):
        if plan.radii[b] < 0:
            continue
        keys = np.sort(_block_keys(h, s, w))
        cuts = [0]
        for t in range(1, pieces_per_block):
            c = int(keys[min(len(keys) - 1, t * len(keys) // pieces_per_block)]) if len(keys) else 0
            if c > cuts[-1]:
                cuts.append(c)
        cuts.append(1 << w)
        out.extend((b, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]))
    return out


def block_task(hashes: np.ndarray, volumes: np.ndarray, groups: np.ndarray, plan: SearchPlan,
               pieces: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run some pieces of a search (a Dask task, or one thread's share); returns ``(i, j, dist, checked)``."""
    cache: dict[int, _SortedBlock] = {}
    parts = []
    checked = 0
    for b, lo, hi in pieces:
        if b not in cache:
            cache.clear()  # pieces come grouped by block: keep one sorted block at a time
            cache[b] = _SortedBlock(hashes, volumes, groups, plan, b)
        i, j, dd, c = cache[b].run(lo, hi)
        parts.append((i, j, dd))
        checked += int(c)
    return _concat(parts) + (checked,)


def _concat(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def _sorted_pairs(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def near_pairs(
    hashes: Any,
    threshold: int = 6,
    *,
    volumes: Any = None,
    groups: Any = None,
    num_threads: int | None = 1,
    plan: SearchPlan | None = None,
    stats: dict[str, Any] | None = None,
    executor: Callable[..., list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes within Hamming ``threshold`` (inclusive), from different volumes of the same group.

    Args:
        hashes: ``(N,)`` uint64 hashes (e.g. :func:`monai_lessmore.reduction.dhash.hex_to_hash` of a manifest).
        threshold: Hamming distance, 0..64.
        volumes: ``(N,)`` integer volume id of each hash; pairs within one volume are not reported. ``None``: every
            hash is its own volume.
        groups: ``(N,)`` integer group id (the search scope, e.g. one per study); only pairs within a group are
            reported. ``None``: one group.
        num_threads: threads (``None``: torch's thread count).
        plan: a :func:`plan_search` result to use instead of planning.
        executor: runs the pieces of the search elsewhere: called as ``executor(hashes, volumes, groups, plan,
            shares)`` it returns ``[block_task(hashes, volumes, groups, plan, share) for share in shares]``
            (e.g. as Dask tasks, :class:`monai_lessmore.duplicates.run.DaskSearch`); ``None``: threads here.
        stats: when given, filled with ``plan`` (its description), ``m``, ``radii`` and ``checked`` (candidate
            pairs compared).

    Returns:
        ``(i, j, distance)``: int32 indices with ``i < j`` and uint8 distances, sorted by ``(i, j)``; each pair
        once. Equal to :func:`brute_force_pairs`.
    """
    h = _as_hashes(hashes)
    n = h.shape[0]
    vol = np.arange(n, dtype=np.int32) if volumes is None else _as_ids(volumes, n, "volumes")
    grp = _as_ids(groups, n, "groups")
    threads = resolve_threads(num_threads)
    plan = plan_search(h, threshold) if plan is None else plan
    if plan.m == 0:
        i, j, dd = brute_force_pairs(h, plan.threshold, volumes=vol, groups=grp)
        checked = int(plan.brute_cost)
    else:
        workers = threads if executor is None else max(1, int(getattr(executor, "n_workers", threads)))
        pieces = block_pieces(h, plan, max(1, 4 * workers))
        # one share per worker, pieces of one block together, so that each worker sorts few blocks
        shares = [sorted(pieces[t::workers]) for t in range(workers)]
        shares = [s for s in shares if s]
        if executor is not None:
            results = list(executor(h, vol, grp, plan, shares))
        else:
            results = [None] * len(shares)

            def work(t: int) -> None:
                results[t] = block_task(h, vol, grp, plan, shares[t])

            map_rows(work, range(len(shares)), threads)
        i, j, dd = _sorted_pairs(*_concat([r[:3] for r in results]))
        checked = sum(r[3] for r in results)
    if stats is not None:
        stats.update(plan=plan.describe(), m=plan.m, radii=plan.radii, checked=checked)
    return i, j, dd


def brute_force_pairs(
    hashes: Any, threshold: int = 6, *, volumes: Any = None, groups: Any = None, chunk: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: every pair compared with numpy (XOR and popcount), in row blocks of bounded memory.

    Same arguments and result as :func:`near_pairs`.
    """
    from monai_lessmore.reduction.dhash import _popcount

    d = _check_threshold(threshold)
    h = _as_hashes(hashes)
    n = h.shape[0]
    vol = np.arange(n, dtype=np.int32) if volumes is None else _as_ids(volumes, n, "volumes")
    grp = _as_ids(groups, n, "groups")
    parts = []
    rows = max(1, chunk // max(n, 1))
    for a in range(0, n, rows):
        b = min(n, a + rows)
        dist = _popcount(h[a:b, None] ^ h[None, :])
        ok = (dist <= d) & (vol[a:b, None] != vol[None, :]) & (grp[a:b, None] == grp[None, :])
        ok &= np.arange(a, b)[:, None] < np.arange(n)[None, :]
        ii, jj = np.nonzero(ok)
        parts.append(((ii + a).astype(np.int32), jj.astype(np.int32), dist[ii, jj].astype(np.uint8)))
    return _sorted_pairs(*_concat(parts))
