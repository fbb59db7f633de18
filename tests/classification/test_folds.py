"""Stratified (group) k-fold and the 90/10 split inside a fold (paper section 2.3), scikit-learn as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from monai_lessmore.classification import folds as folds_module
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


def test_folds_are_scikit_learns_and_deterministic():
    y = _labels((30, 70))
    fold = stratified_group_kfold(y, 5, seed=4)
    for f, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=4).split(np.zeros(y.size), y)):
        assert sorted(np.flatnonzero(fold == f)) == sorted(test)
    assert np.array_equal(fold, stratified_group_kfold(y, 5, seed=4))
    groups = [f"p{i // 3}" for i in range(y.size)]
    fold = stratified_group_kfold(y, 5, groups, seed=2)
    oracle = StratifiedGroupKFold(5, shuffle=True, random_state=2).split(np.zeros(y.size), y, groups)
    for f, (_, test) in enumerate(oracle):
        assert sorted(np.flatnonzero(fold == f)) == sorted(test)


def test_split_is_the_first_scikit_learn_fold_holding_every_class():
    y = _labels((40, 3))  # ten folds, three of them hold a sample of class 1
    tr, va = stratified_group_split(y, 0.1, seed=5)
    first = next(test for _, test in StratifiedKFold(10, shuffle=True, random_state=5).split(np.zeros(y.size), y)
                 if 1 in y[test])
    assert sorted(va) == sorted(first) and sorted(np.r_[tr, va]) == list(range(y.size))


def test_a_fold_lacking_a_class_is_an_error(monkeypatch):
    y = _labels((10, 10))
    # a splitter result that leaves class 1 out of fold 0 (possible with large one-class patients)
    monkeypatch.setattr(folds_module, "_splits", lambda y, g, n, grouped, seed: [np.arange(0, 5), np.arange(5, 20)])
    with pytest.raises(ValueError, match=r"left folds \[0\] without some class"):
        stratified_group_kfold(y, 2)
    monkeypatch.setattr(folds_module, "_splits", lambda y, g, n, grouped, seed: [np.arange(0, 5), np.arange(5, 10)])
    with pytest.raises(ValueError, match="both parts holding every class"):
        stratified_group_split(y, 0.5)
