"""From slice pairs to duplicate volumes: matched fractions, the aligning offset, groups and which volume to keep.

Two volumes *duplicate* each other when, for at least one of them, a fraction ``min_fraction`` of its slices has a
slice of the other within the Hamming threshold (a crop or a thick reconstruction of a scan is then found in the
full or thin one). A slice whose hash is 0 -- a uniform image, such as the padding slices of a volume
padded to a fixed size -- carries no content to compare: it takes no part, neither in the search nor in the
fractions (otherwise any two padded volumes would match on their padding). Duplicate pairs are joined into groups (connected components: a group can hold volumes that are
each duplicates of a third one only). Of each group one volume is kept: the one with the most slices (the most
complete reconstruction), ties broken by the smallest volume name -- the same choice for the same data on every run
and in :class:`monai_lessmore.data.SliceReductionFilter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from monai_lessmore.duplicates.search import near_pairs

__all__ = ["VolumeSet", "DUPLICATE_COLUMNS", "volume_pairs", "duplicate_groups", "find_duplicates", "DEFAULT_MIN_FRACTION"]

#: columns of ``duplicates.csv``
DUPLICATE_COLUMNS = (
    "volume_a", "volume_b", "fraction_a", "fraction_b", "offset", "median_distance", "slices_a", "slices_b",
    "slice_pairs", "source_a", "source_b",
)
#: default ``min_fraction``. Measured on the real CT of the test data: two chest CTs of different patients from one
#: collection match up to 47 % of their slices; a reconstruction with a mild kernel change, 5 HU noise, a 4-pixel crop
#: and a shifted start matches 75-96 %; stronger changes (10 HU noise, an 8-pixel crop) only 40-70 %
DEFAULT_MIN_FRACTION = 0.5


@dataclass
class VolumeSet:
    """The per-slice hashes of a set of volumes, in one flat array.

    Args:
        names: volume names, unique (sorted on construction; all arrays follow).
        hashes: one uint64 (or 16-hex-digit string) array per volume, in slice order.
        sources: each volume's source path (``""`` when unknown).
        n_kept: slices each volume keeps after within-volume reduction (``None``: unknown).
    """

    names: list[str]
    hashes: list[Any]
    sources: list[str] = field(default_factory=list)
    n_kept: list[int] | None = None

    def __post_init__(self) -> None:
        from monai_lessmore.reduction.dhash import hex_to_hash

        if len(set(self.names)) != len(self.names):
            raise ValueError("volume names must be unique")
        if len(self.hashes) != len(self.names):
            raise ValueError(f"got {len(self.hashes)} hash arrays for {len(self.names)} volumes")
        sources = list(self.sources) or [""] * len(self.names)
        kept = None if self.n_kept is None else list(self.n_kept)
        order = sorted(range(len(self.names)), key=lambda k: self.names[k])
        self.names = [self.names[k] for k in order]
        self.sources = [sources[k] for k in order]
        arrays = []
        for k in order:
            h = self.hashes[k]
            if len(h) and isinstance(h[0], str):
                h = hex_to_hash(list(h))
            arrays.append(np.asarray(h, dtype=np.uint64).reshape(-1))
        self.hashes = arrays
        self.n_kept = None if kept is None else [int(kept[k]) for k in order]
        self.n_slices = np.array([len(a) for a in arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.n_slices)]).astype(np.int64)
        self.flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint64)
        self.volume = np.repeat(np.arange(len(arrays), dtype=np.int32), self.n_slices)
        self.slice_index = (np.arange(self.flat.shape[0], dtype=np.int64) - self.starts[self.volume]).astype(np.int32)


def _popcount(x: np.ndarray) -> np.ndarray:
    from monai_lessmore.reduction.dhash import _popcount as pc

    return pc(x)


def _unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of an int64 array and their counts (a sort: faster than numpy's hashing unique here)."""
    s = np.sort(x)
    first = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]])) if s.size else np.zeros(0, dtype=np.int64)
    return s[first], np.diff(np.append(first, s.size))


def _aligned(vs: "VolumeSet", a: int, b: int, off: int) -> np.ndarray:
    """Hamming distances of slices ``k`` of ``a`` and ``k + off`` of ``b`` over their overlap."""
    lo, hi = max(0, -off), min(int(vs.n_slices[a]), int(vs.n_slices[b]) - off)
    return _popcount(vs.hashes[a][lo:hi] ^ vs.hashes[b][lo + off:hi + off])


def _best_offset(vs: "VolumeSet", a: int, b: int, offsets: np.ndarray) -> int:
    """The offset of the matched pairs that aligns the volumes best: among the offsets with at least half as many
    matched pairs as the most frequent one, the one whose aligned slices are closest on average (ties: nearest 0).
    Neighbouring slices look alike, so the most frequent offset alone is often one slice off."""
    values, counts = np.unique(offsets, return_counts=True)
    cands = values[counts * 2 >= counts.max()].tolist()
    if len(cands) == 1:
        return int(cands[0])
    return int(min(cands, key=lambda o: (float(_aligned(vs, a, b, int(o)).mean()), abs(o), o)))


def volume_pairs(
    vs: VolumeSet, i: np.ndarray, j: np.ndarray, dist: np.ndarray, *, min_fraction: float = DEFAULT_MIN_FRACTION
) -> list[dict[str, Any]]:
    """Rows of ``duplicates.csv`` from slice pairs ``(i, j)`` (flat indices into ``vs``) within the threshold.

    Per pair of volumes: ``fraction_a`` / ``fraction_b`` are the fractions of the slices of each with a match in the
    other, among its slices that are not blank (hash 0; pairs with a blank slice are ignored); ``offset`` is the ``slice_index_b - slice_index_a`` of matched pairs that aligns the volumes best (see
    :func:`_best_offset`); ``median_distance`` is the median Hamming distance of all slice pairs aligned by that offset over the
    overlap of the two volumes (small for a true duplicate, large when the matches are scattered coincidences);
    ``slice_pairs`` counts the matched slice pairs. Only pairs with ``max(fraction_a, fraction_b) >= min_fraction``
    are returned, sorted by ``(volume_a, volume_b)``.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    n_vol = len(vs.names)
    n = max(int(vs.flat.shape[0]), 1)
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    content = (vs.flat[i] != 0) & (vs.flat[j] != 0)  # a blank slice (hash 0) matches nothing
    i, j = i[content], j[content]
    if len(i) == 0:
        return []
    n_content = np.bincount(vs.volume[vs.flat != 0], minlength=n_vol)
    va = vs.volume[i].astype(np.int64)
    vb = vs.volume[j].astype(np.int64)
    swap = va > vb  # i < j in the flat order already gives va < vb; kept general for any input
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    va, vb = np.minimum(va, vb), np.maximum(va, vb)
    key = va * n_vol + vb
    keys, n_pairs = _unique_counts(key)

    pair = np.searchsorted(keys, key)  # dense index of the volume pair: pair * n + slice stays far below 2**63
    # (key * n would not: n_vol**2 * n passes it from about 2.1 million volumes and slices)

    def matched(side: np.ndarray) -> np.ndarray:
        u = _unique_counts(pair * n + side)[0] // n  # distinct (volume pair, slice) -> its volume pair
        k, c = _unique_counts(u)
        out = np.zeros(len(keys), dtype=np.int64)
        out[k] = c
        return out

    ka, kb = keys // n_vol, keys % n_vol
    fa = matched(i) / n_content[ka]
    fb = matched(j) / n_content[kb]
    dup = np.flatnonzero(np.maximum(fa, fb) >= min_fraction)
    if not dup.size:
        return []
    sel = np.isin(key, keys[dup])
    order = np.argsort(key[sel], kind="stable")
    k_sel = key[sel][order]
    off_sel = (vs.slice_index[j[sel]] - vs.slice_index[i[sel]])[order].astype(np.int64)
    bounds = np.searchsorted(k_sel, keys[dup])
    ends = np.append(bounds[1:], len(k_sel))
    rows = []
    for t, d in enumerate(dup):
        a, b = int(ka[d]), int(kb[d])
        off = _best_offset(vs, a, b, off_sel[bounds[t]:ends[t]])
        rows.append({
            "volume_a": vs.names[a], "volume_b": vs.names[b],
            "fraction_a": round(float(fa[d]), 6), "fraction_b": round(float(fb[d]), 6),
            "offset": off, "median_distance": float(np.median(_aligned(vs, a, b, off))),
            "slices_a": int(vs.n_slices[a]), "slices_b": int(vs.n_slices[b]), "slice_pairs": int(n_pairs[d]),
            "source_a": vs.sources[a], "source_b": vs.sources[b],
        })
    return rows


def duplicate_groups(
    pairs: Iterable[tuple[str, str]], n_slices: dict[str, int], *, present: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Groups of duplicate volumes and the one kept of each.

    Args:
        pairs: ``(volume_a, volume_b)`` duplicate pairs.
        n_slices: slices of each volume (the keeper is the volume with the most slices, ties: smallest name).
        present: only these volumes can be kept or dropped (e.g. those of a datalist); others are ignored after
            joining the groups.

    Returns:
        ``[{"keep": name, "drop": [names]}, ...]`` sorted by ``keep``; groups with nothing to drop are left out.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    keep_set = None if present is None else set(present)
    groups = []
    for names in members.values():
        if keep_set is not None:
            names = [x for x in names if x in keep_set]
        if len(names) < 2:
            continue
        ranked = sorted(names, key=lambda x: (-int(n_slices.get(x, 0)), x))
        groups.append({"keep": ranked[0], "drop": sorted(ranked[1:])})
    return sorted(groups, key=lambda g: g["keep"])


def find_duplicates(
    vs: VolumeSet,
    *,
    threshold: int = 6,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    groups: Sequence[int] | None = None,
    num_threads: int | None = 1,
    executor: Any = None,
) -> dict[str, Any]:
    """Search all slices of ``vs`` and return the duplicate volumes.

    Args:
        vs: the volumes.
        threshold: Hamming distance of two matching slices (inclusive).
        min_fraction: see :func:`volume_pairs`.
        groups: scope id of each volume (only volumes of one scope are compared); ``None``: all together.
        num_threads: threads of the local search.
        executor: runs the search pieces elsewhere (see :func:`monai_lessmore.duplicates.search.near_pairs`).

    Returns:
        ``{"rows": duplicates.csv rows, "groups": duplicate_groups(...), "n_slice_pairs": int, "n_blank_slices": int,
        "search": stats}``
        (``stats``: see :func:`~monai_lessmore.duplicates.search.near_pairs`, plus the search's ``seconds``).
    """
    slice_groups = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (len(vs.names),):
            raise ValueError(f"groups must give one id per volume ({len(vs.names)}), got shape {g.shape}")
        slice_groups = g.astype(np.int32)[vs.volume]
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    content = np.flatnonzero(vs.flat != 0)  # blank slices (hash 0) are left out: see the module docstring
    i, j, dist = near_pairs(vs.flat[content], threshold, volumes=vs.volume[content],
                            groups=None if slice_groups is None else slice_groups[content], num_threads=num_threads,
                            stats=stats, executor=executor)
    i, j = content[i].astype(np.int32), content[j].astype(np.int32)  # back to indices into vs.flat (order kept)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    rows = volume_pairs(vs, i, j, dist, min_fraction=min_fraction)
    n_slices = dict(zip(vs.names, vs.n_slices.tolist()))
    return {
        "rows": rows,
        "groups": duplicate_groups(((r["volume_a"], r["volume_b"]) for r in rows), n_slices),
        "n_slice_pairs": int(len(i)),
        "n_blank_slices": int(vs.flat.shape[0] - content.shape[0]),
        "search": stats,
    }
