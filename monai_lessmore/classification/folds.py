"""Stratified (group) splits for the downstream cross-validation protocol.

Wolf et al. (2024), section 2.3: for a custom dataset "a five-fold stratified cross-validation is performed. For
each fold, four parts of the data are used for training and validation (90 % training, 10 % validation), and the
remaining part ... is used for testing". When the data carry a patient (group) id, no patient may appear in two
folds, nor in both the training and the validation part of a fold.

scikit-learn is not a dependency of this package, so the two splitters are implemented here:

* without groups every sample is its own group and the classes are dealt round-robin into the folds, which
  keeps every class ratio within one sample of the overall ratio;
* with groups, groups are assigned greedily (largest and most class-skewed first) to the fold whose class
  counts stay closest to the overall class ratio, the approach of scikit-learn's ``StratifiedGroupKFold``;
* the 90/10 split inside a fold adds whole patients to validation, rarest class first, until every class reaches
  its share (at least one sample per class in each part).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def _greedy_assign(y: np.ndarray, g: np.ndarray, n_bins: int, targets: np.ndarray, rng: np.random.Generator):
    """Assign whole groups to ``n_bins`` bins whose class counts should follow ``targets`` (bins x classes)."""
    classes = np.unique(y)
    group_ids = np.unique(g)
    counts = np.zeros((group_ids.size, classes.size), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(group_ids, g), np.searchsorted(classes, y)), 1)
    order = rng.permutation(group_ids.size)  # random tie-break
    # large and class-skewed groups first: they are the hard ones to place
    key = [(-counts[i].sum(), -np.std(counts[i] / counts[i].sum())) for i in order]
    order = order[sorted(range(order.size), key=lambda j: key[j])]
    filled = np.zeros_like(targets, dtype=np.float64)
    bin_of_group = np.empty(group_ids.size, dtype=np.int64)
    for i in order:
        # cost: squared relative deviation from the targets after adding this group
        trial = filled[None, :, :] + np.eye(n_bins)[:, :, None] * counts[i][None, None, :]
        cost = (((trial - targets[None]) / np.maximum(targets[None], 1.0)) ** 2).sum(axis=(1, 2))
        best = int(np.argmin(cost))
        bin_of_group[i] = best
        filled[best] += counts[i]
    return bin_of_group[np.searchsorted(group_ids, g)]


def stratified_group_kfold(
    labels: Sequence[int], num_folds: int = 5, groups: Sequence[str] | None = None, *, seed: int = 0
) -> np.ndarray:
    """Assign every sample to one of ``num_folds`` stratified folds (groups never split).

    Args:
        labels: class index per sample.
        num_folds: k, the paper's default is 5 (section 2.3).
        groups: optional patient id per sample; all samples of a patient land in the same fold.
        seed: seed of the shuffle.

    Returns:
        int array, the fold index (0..k-1) of each sample.

    Raises:
        ValueError: when a class has fewer samples/patients than folds (see :func:`check_fold_feasible`).
    """
    check_fold_feasible(labels, num_folds, groups)
    y, g = _as_arrays(labels, groups)
    rng = np.random.default_rng(seed)
    if groups is None:
        fold = np.empty(y.size, dtype=np.int64)
        offset = 0
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            # continue the round-robin where the previous class stopped so fold sizes stay balanced
            fold[idx] = (np.arange(idx.size) + offset) % num_folds
            offset = (offset + idx.size) % num_folds
        return fold
    classes, class_counts = np.unique(y, return_counts=True)
    targets = np.tile(class_counts / num_folds, (num_folds, 1))
    return _greedy_assign(y, g, num_folds, targets, rng)


def stratified_group_split(
    labels: Sequence[int], val_fraction: float = 0.1, groups: Sequence[str] | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into a training and a validation part, stratified by class and grouped by patient.

    Section 2.3: inside each fold 90 % of the training data train and 10 % validate. Every class gets at least one
    validation sample (validation AUC needs both classes) and at least one training sample.

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
    rng = np.random.default_rng(seed)
    classes, class_counts = np.unique(y, return_counts=True)
    n_val = np.clip(np.round(class_counts * val_fraction), 1, class_counts - 1)
    if groups is None:
        val = []
        for c, n in zip(classes, n_val):
            val.extend(rng.permutation(np.flatnonzero(y == c))[: int(n)])
        is_val = np.zeros(y.size, dtype=bool)
        is_val[np.asarray(val, dtype=np.int64)] = True
    else:
        group_ids, gidx = np.unique(g, return_inverse=True)
        counts = np.zeros((group_ids.size, classes.size), dtype=np.int64)
        np.add.at(counts, (gidx, np.searchsorted(classes, y)), 1)
        val_groups: list[int] = []
        in_val = np.zeros(classes.size, dtype=np.int64)
        # rarest class first; for each class add random patients (those mostly of that class first) until the
        # class reaches its validation share - whole patients, so the share is met up to one patient
        for c in np.argsort(class_counts, kind="stable"):
            order = [int(i) for i in rng.permutation(group_ids.size) if counts[i, c] > 0 and i not in val_groups]
            order.sort(key=lambda i: -counts[i, c] / counts[i].sum())
            for i in order:
                if in_val[c] >= n_val[c]:
                    break
                val_groups.append(i)
                in_val += counts[i]
        is_val = np.isin(gidx, val_groups)
        missing = [classes[c].item() for c in range(classes.size) if not np.any(is_val & (y == classes[c]))
                   or not np.any(~is_val & (y == classes[c]))]
        if missing:
            raise ValueError(
                f"could not split {group_ids.size} patients into training and validation with both parts holding "
                f"every class (classes {missing} lack patients); add patients or lower num_folds"
            )
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
