"""Selection algorithms against naive reference implementations written as the paper/authors describe them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from monai_lessmore.reduction.selection import (
    select_every_n,
    select_greedy,
    select_leader,
    select_leader_count,
    similar_pairs,
    target_count,
)


def leader_reference(scores, threshold):
    """The authors' released loop: in order, each surviving slice deletes every later similar slice."""
    n = len(scores)
    deleted = set()
    kept = []
    for i in range(n):
        if i in deleted:
            continue
        kept.append(i)
        for j in range(i + 1, n):
            if j not in deleted and scores[i][j] <= threshold:
                deleted.add(j)
    return kept


def greedy_reference(scores, threshold=None, count=None):
    """Paper's text, naively: repeatedly find the most similar remaining pair, remove its later slice."""
    alive = list(range(len(scores)))
    target = 1 if count is None else count
    while len(alive) > target:
        pairs = [(scores[i][j], i, j) for i, j in itertools.combinations(alive, 2)]
        s, i, j = min(pairs)
        if threshold is not None and s > threshold:
            break
        alive.remove(j)
    return alive


def random_hamming(n, seed):
    """Hamming distances of random 64-bit hashes drawn near a few prototypes (many small distances, many ties)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 2, size=(max(1, n // 6), 64))
    bits = protos[rng.integers(0, len(protos), size=n)] ^ (rng.random((n, 64)) < 0.05)
    return (bits[:, None, :] != bits[None, :, :]).sum(-1)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0, 3, 6, 12])
def test_leader_equals_reference_and_leaves_no_similar_pair(seed, threshold):
    d = random_hamming(40, seed)
    kept = select_leader(d, threshold)
    assert kept.tolist() == leader_reference(d, threshold)
    sub = d[np.ix_(kept, kept)]
    assert (sub[np.triu_indices(len(kept), 1)] > threshold).all()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0, 3, 6, 12])
def test_greedy_threshold_equals_reference_and_leaves_no_similar_pair(seed, threshold):
    d = random_hamming(30, seed)
    kept = select_greedy(d, threshold=threshold)
    assert kept.tolist() == greedy_reference(d, threshold=threshold)
    sub = d[np.ix_(kept, kept)]
    assert (sub[np.triu_indices(len(kept), 1)] > threshold).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [1, 2, 5, 17, 30, 50])
def test_greedy_count_equals_reference_and_keeps_exact_count(seed, count):
    rng = np.random.default_rng(seed)
    s = rng.random((30, 30))
    s = (s + s.T) / 2  # continuous scores, e.g. -SSIM
    kept = select_greedy(s, count=count)
    assert len(kept) == min(count, 30)
    assert kept.tolist() == greedy_reference(s, count=count)


def test_greedy_threshold_and_count_stop_at_first():
    d = random_hamming(30, 3)
    by_threshold = select_greedy(d, threshold=6)
    both = select_greedy(d, threshold=6, count=len(by_threshold) + 3)
    assert len(both) == len(by_threshold) + 3
    assert set(by_threshold) <= set(both)
    assert select_greedy(d, threshold=6, count=1).tolist() == by_threshold.tolist()


def test_greedy_removes_later_slice_and_breaks_ties_by_slice_order():
    # 0-1 and 2-3 equally similar: the pair (0, 1) is visited first, and 1 (the later slice) goes
    s = np.array([[0, 1, 9, 9], [1, 0, 9, 9], [9, 9, 0, 1], [9, 9, 1, 0]])
    assert select_greedy(s, count=3).tolist() == [0, 2, 3]
    assert select_greedy(s, threshold=1).tolist() == [0, 2]
    ii, jj = similar_pairs(s, 1)
    assert list(zip(ii.tolist(), jj.tolist())) == [(0, 1), (2, 3)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("count", [1, 3, 7, 12, 40])
def test_leader_count_keeps_exact_count_from_leader_exemplars(seed, count):
    d = random_hamming(40, seed)
    kept, thr = select_leader_count(d, count)
    assert len(kept) == min(count, 40)
    if thr is not None:
        # the kept slices are exemplars of leader selection at the threshold found
        assert set(kept.tolist()) <= set(select_leader(d, thr).tolist())
        assert len(select_leader(d, thr)) >= count


def test_leader_handles_identical_slices():
    d = np.zeros((5, 5), dtype=int)
    assert select_leader(d, 0).tolist() == [0]
    assert select_greedy(d, threshold=0).tolist() == [0]


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(100, 0.1, 10), (134, 0.1, 13), (135, 0.1, 14), (5, 0.01, 1), (7, 1.0, 7)]
)
def test_target_count_rounds_to_nearest_and_keeps_one(n, fraction, expected):
    assert target_count(n, fraction=fraction) == expected


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "0.1"])
def test_target_count_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        target_count(10, fraction=bad)


def test_target_count_rejects_bad_count_and_ambiguity():
    with pytest.raises(ValueError, match="count must be a positive integer"):
        target_count(10, count=0)
    with pytest.raises(ValueError, match="exactly one of fraction or count"):
        target_count(10, fraction=0.5, count=3)


def test_every_n():
    assert select_every_n(25, n=10).tolist() == [0, 10, 20]
    assert select_every_n(100, count=10).tolist() == list(range(0, 100, 10))
    assert len(select_every_n(134, count=13)) == 13
    with pytest.raises(ValueError, match="n must be a positive integer"):
        select_every_n(10, n=0)


def test_scores_must_be_square_and_finite():
    with pytest.raises(ValueError, match="square"):
        select_leader(np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="NaN/Inf"):
        select_greedy(np.full((3, 3), np.nan), threshold=1.0)


@pytest.mark.parametrize("seed", range(20))
def test_leader_count_uses_the_largest_threshold_for_hamming_scores(seed):
    d = random_hamming(30, seed)
    for count in (2, 4, 9):
        kept, thr = select_leader_count(d, count)
        ok = [t for t in np.unique(d[np.triu_indices(30, 1)]) if len(select_leader(d, t)) >= count]
        assert thr == float(max(ok)) or (thr is None and not ok)
