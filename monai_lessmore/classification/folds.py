"""Stratified (group) splits for the downstream cross-validation protocol, with scikit-learn's splitters.

Wolf et al. (2024), section 2.3: for a custom dataset "a five-fold stratified cross-validation is performed. For
each fold, four parts of the data are used for training and validation (90 % training, 10 % validation), and the
remaining part ... is used for testing". When the data carry a patient (group) id, no patient may appear in two
folds, nor in both the training and the validation part of a fold.

* k-fold: ``sklearn.model_selection.StratifiedKFold`` (shuffled, seeded), or ``StratifiedGroupKFold`` with groups;
* the 90/10 split inside a fold: the same splitters with ``round(1 / val_fraction)`` folds, and the first fold
  whose two parts both hold every class becomes the validation part (validation AUC needs every class);
* what this module adds: a clear error before splitting when a class has fewer samples (patients) than folds, and
  one after splitting when a part would lack a class -- scikit-learn only warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

__all__ = ["check_fold_feasible", "stratified_group_kfold", "stratified_group_split"]


def _as_arrays(labels: Sequence[int], groups: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {y.shape}")
    if groups is None:
        g = np.arange(y.size)
    else:
        if len(groups) != y.size:
            raise ValueError(f"groups must have one entry per label: got {len(groups)} groups for {y.size} labels")
        _, g = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)
    return y, g


def check_fold_feasible(labels: Sequence[int], num_folds: int, groups: Sequence[str] | None = None) -> None:
    """Raise when a class has fewer samples (or patients, with groups) than folds.

    Args:
        labels: class index per sample.
        num_folds: number of folds k (>= 2).
        groups: optional patient id per sample.

    Raises:
        ValueError: naming the class, its count and k.
    """
    if int(num_folds) < 2:
        raise ValueError(f"num_folds must be >= 2 for cross-validation, got {num_folds}")
    y, g = _as_arrays(labels, groups)
    unit = "patients" if groups is not None else "samples"
    too_small = []
    for c in np.unique(y):
        n = np.unique(g[y == c]).size
        if n < num_folds:
            too_small.append(f"class {c.item()!r}: {n} {unit}")
    if too_small:
        raise ValueError(
            f"every class needs at least num_folds={num_folds} {unit} for stratified {num_folds}-fold "
            f"cross-validation, but {', '.join(too_small)}; lower --num_folds or add data for these classes"
        )


def _splits(y: np.ndarray, g: np.ndarray, n_splits: int, grouped: bool, seed: int) -> list[np.ndarray]:
    """The test indices of scikit-learn's (group) stratified k-fold, in its order."""
    splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(n_splits=n_splits, shuffle=True,
                                                                       random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only N members": checked by the callers
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [test for _, test in splitter.split(np.zeros(y.size), y, g if grouped else None)]


def _has_every_class(y: np.ndarray, part: np.ndarray) -> bool:
    return np.unique(y[part]).size == np.unique(y).size


def stratified_group_kfold(
    labels: Sequence[int], num_folds: int = 5, groups: Sequence[str] | None = None, *, seed: int = 0
) -> np.ndarray:
    """Assign every sample to one of ``num_folds`` stratified folds (groups never split).

    Args:
        labels: class index per sample.
        num_folds: k, the paper's default is 5 (section 2.3).
        groups: optional patient id per sample; all samples of a patient land in the same fold.
        seed: ``random_state`` of scikit-learn's shuffle.

    Returns:
        int array, the fold index (0..k-1) of each sample.

    Raises:
        ValueError: when a class has fewer samples/patients than folds (see :func:`check_fold_feasible`), or a fold
            would lack a class.
    """
    check_fold_feasible(labels, num_folds, groups)
    y, g = _as_arrays(labels, groups)
    fold = np.empty(y.size, dtype=np.int64)
    for f, test in enumerate(_splits(y, g, int(num_folds), groups is not None, seed)):
        fold[test] = f
    lacking = [f for f in range(int(num_folds)) if not _has_every_class(y, np.flatnonzero(fold == f))]
    if lacking:
        raise ValueError(
            f"stratified {num_folds}-fold cross-validation left folds {lacking} without some class: patients hold too "
            "many samples of one class for an even split; lower --num_folds or add patients"
        )
    return fold


def stratified_group_split(
    labels: Sequence[int], val_fraction: float = 0.1, groups: Sequence[str] | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into a training and a validation part, stratified by class and grouped by patient.

    Section 2.3: inside each fold 90 % of the training data train and 10 % validate. Both parts hold every class
    (validation AUC needs them): of scikit-learn's ``round(1 / val_fraction)`` stratified folds the first one that
    leaves every class on both sides is the validation part.

    Args:
        labels: class index per sample.
        val_fraction: fraction for validation, in (0, 1); the paper's value is 0.1.
        groups: optional patient id per sample; no patient is in both parts.
        seed: seed of the shuffle.

    Returns:
        ``(train_indices, val_indices)``, sorted int arrays.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    y, g = _as_arrays(labels, groups)
    check_fold_feasible(y, 2, None if groups is None else groups)
    # as many folds as 1 / val_fraction, at most one per patient (sample) and per sample of the largest class:
    # scikit-learn refuses more (tiny pools get a larger validation share)
    largest_class = int(np.unique(y, return_counts=True)[1].max())
    n_splits = max(2, min(int(round(1.0 / float(val_fraction))), np.unique(g).size, largest_class))
    for val in _splits(y, g, n_splits, groups is not None, seed):
        train = np.setdiff1d(np.arange(y.size), val)
        if _has_every_class(y, val) and _has_every_class(y, train):
            return train, np.sort(val)
    unit = "patients" if groups is not None else "samples"
    raise ValueError(
        f"could not split {np.unique(g).size} {unit} into training and validation (val_fraction={val_fraction}) with "
        "both parts holding every class; add data for the rare classes or raise val_fraction"
    )
