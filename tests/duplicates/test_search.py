"""Exactness of the multi-index hashing search: equal to brute force on random and planted data."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.duplicates.search import block_pieces, block_task, brute_force_pairs, near_pairs, plan_search
from monai_lessmore.reduction.dhash import hamming_matrix


def _planted(n: int, seed: int, n_vol: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Random hashes, a third of them near copies (1-8 flipped bits) of others: many pairs near every threshold."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=n).astype(np.uint64)
    src = rng.integers(0, n, size=n // 3)
    dst = rng.integers(0, n, size=n // 3)
    for s, t in zip(src, dst):
        bits = rng.choice(64, size=rng.integers(0, 9), replace=False)
        h[t] = h[s] ^ np.uint64(sum(1 << int(b) for b in bits))
    return h, rng.integers(0, n_vol, size=n)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("threshold", [0, 1, 3, 6, 9, 14])
def test_equals_brute_force_for_every_block_count(threshold):
    h, vol = _planted(1500, seed=threshold)
    grp = (vol % 3 == 0).astype(np.int32)
    want = brute_force_pairs(h, threshold, volumes=vol, groups=grp)
    assert len(want[0]) > 0
    for m in range(3, max(3, threshold + 1) + 1):
        got = near_pairs(h, threshold, volumes=vol, groups=grp, plan=plan_search(h, threshold, m=m))
        assert _same(got, want), (threshold, m)
    assert _same(near_pairs(h, threshold, volumes=vol, groups=grp, num_threads=2), want)


def test_brute_force_matches_hamming_matrix():
    h, vol = _planted(300, seed=7)
    dist = hamming_matrix(h)
    i, j = np.nonzero(np.triu(dist <= 6, 1) & (vol[:, None] != vol[None, :]))
    got = brute_force_pairs(h, 6, volumes=vol)
    assert np.array_equal(got[0], i) and np.array_equal(got[1], j) and np.array_equal(got[2], dist[i, j])


def test_pairs_are_unique_sorted_and_across_volumes():
    h, vol = _planted(2000, seed=3, n_vol=5)
    i, j, d = near_pairs(h, 6, volumes=vol, plan=plan_search(h, 6, m=4))
    assert (i < j).all() and (vol[i] != vol[j]).all() and (d <= 6).all()
    key = i.astype(np.int64) * len(h) + j
    assert (np.diff(key) > 0).all()


def test_identical_hashes_and_empty_input():
    h = np.zeros(50, dtype=np.uint64)
    i, j, d = near_pairs(h, 0, plan=plan_search(h, 0, m=3))
    assert len(i) == 50 * 49 // 2 and (d == 0).all()
    assert all(len(x) == 0 for x in near_pairs(np.zeros(0, dtype=np.uint64), 6))
    assert all(len(x) == 0 for x in near_pairs(h, 6, volumes=np.zeros(50, dtype=int)))  # one volume: nothing


def test_planner_prefers_blocks_on_large_inputs_and_is_exact():
    h, vol = _planted(12000, seed=11, n_vol=500)
    plan = plan_search(h, 6)
    assert plan.m > 0 and sum(r + 1 for r in plan.radii) >= 7  # generalized pigeonhole condition
    stats = {}
    got = near_pairs(h, 6, volumes=vol, plan=plan, stats=stats)
    assert stats["checked"] < plan.brute_cost / 20
    assert _same(got, brute_force_pairs(h, 6, volumes=vol))


def test_pieces_are_disjoint_and_cover():
    h, vol = _planted(3000, seed=5)
    plan = plan_search(h, 6, m=4)
    pieces = block_pieces(h, plan, 3)
    parts = [block_task(h, vol.astype(np.int32), np.zeros(len(h), np.int32), plan, [p]) for p in pieces]
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    key = i.astype(np.int64) * len(h) + j
    assert len(np.unique(key)) == len(key)  # no pair found twice
    want = brute_force_pairs(h, 6, volumes=vol)
    assert np.array_equal(np.sort(key), want[0].astype(np.int64) * len(h) + want[1])


def test_matches_imagededup_bktree():
    bk = pytest.importorskip("imagededup.handlers.search.bktree")

    def hamming(a: str, b: str) -> int:
        return bin(int(a, 16) ^ int(b, 16)).count("1")

    h, _ = _planted(400, seed=2)
    names = [str(k) for k in range(len(h))]
    tree = bk.BKTree(dict(zip(names, [f"{int(x):016x}" for x in h])), hamming)
    want = set()
    for k, x in enumerate(h):
        for name, dist in tree.search(f"{int(x):016x}", tol=6):
            if int(name) > k:
                want.add((k, int(name), dist))
    i, j, d = near_pairs(h, 6, plan=plan_search(h, 6, m=4))
    assert set(zip(i.tolist(), j.tolist(), d.tolist())) == want


@pytest.mark.parametrize("bad", [-1, 65, 2.5, True])
def test_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        near_pairs(np.zeros(3, dtype=np.uint64), bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint64"):
        near_pairs(np.zeros((2, 2), dtype=np.uint64), 6)
    with pytest.raises(ValueError, match="volumes"):
        near_pairs(np.zeros(3, dtype=np.uint64), 6, volumes=[0, 1])
    with pytest.raises(ValueError, match="m must be"):
        plan_search(np.zeros(3, dtype=np.uint64), 6, m=2)
