"""Stratified (group) k-fold and the 90/10 split inside a fold (paper section 2.3)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.classification.folds import check_fold_feasible, stratified_group_kfold, stratified_group_split


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


@pytest.mark.parametrize("counts", [(50, 50), (30, 70), (12, 25, 40, 7)])
def test_kfold_keeps_class_ratios(counts):
    y = _labels(counts)
    fold = stratified_group_kfold(y, 5, seed=3)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    for f in range(5):
        for c, n in enumerate(counts):
            # round-robin dealing: every fold holds floor or ceil of n/k samples of each class
            assert abs(np.sum((fold == f) & (y == c)) - n / 5) < 1
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1


def test_kfold_groups_are_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    groups, labels = [], []
    for patient in range(60):  # 60 patients with 2..8 slices, label per patient, 40 % positive
        n = int(rng.integers(2, 9))
        label = int(patient % 5 < 2)
        groups += [f"p{patient}"] * n
        labels += [label] * n
    y = np.asarray(labels)
    fold = stratified_group_kfold(y, 5, groups, seed=1)
    g = np.asarray(groups)
    for patient in np.unique(g):
        assert np.unique(fold[g == patient]).size == 1, f"patient {patient} is in two folds"
    overall = y.mean()
    for f in range(5):
        assert abs(y[fold == f].mean() - overall) < 0.1
        assert abs(np.sum(fold == f) - y.size / 5) < 0.25 * y.size / 5


def test_split_is_90_10_stratified_and_grouped():
    y = _labels((90, 30))
    tr, va = stratified_group_split(y, 0.1, seed=0)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == y.size
    assert np.sum(y[va] == 0) == 9 and np.sum(y[va] == 1) == 3
    groups = [f"p{i // 4}" for i in range(y.size)]  # patients of 4 slices, all one label
    tr, va = stratified_group_split(y, 0.1, groups, seed=0)
    gtr, gva = {groups[i] for i in tr}, {groups[i] for i in va}
    assert not gtr & gva
    assert set(np.unique(y[va])) == {0, 1}
    assert 0.05 < len(va) / y.size < 0.2


def test_tiny_class_still_gets_one_validation_sample():
    y = _labels((40, 3))
    tr, va = stratified_group_split(y, 0.1, seed=0)
    assert np.sum(y[va] == 1) == 1 and np.sum(y[tr] == 1) == 2


def test_class_with_fewer_samples_than_folds_is_an_error():
    y = _labels((20, 3))
    with pytest.raises(ValueError, match=r"num_folds=5 samples.*class 1: 3 samples"):
        stratified_group_kfold(y, 5)
    with pytest.raises(ValueError, match="patients"):
        check_fold_feasible([0, 0, 0, 1, 1, 1], 2, groups=["a", "a", "a", "b", "b", "b"])
    with pytest.raises(ValueError, match="num_folds must be >= 2"):
        check_fold_feasible([0, 1], 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction must be in"):
        stratified_group_split([0, 1, 0, 1], 1.5)
    with pytest.raises(ValueError, match="one entry per label"):
        stratified_group_kfold([0, 1, 0, 1, 0, 1], 2, groups=["a"])
