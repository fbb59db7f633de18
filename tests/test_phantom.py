from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.phantom import make_phantom, write_phantom_dataset


def test_phantom_is_hu_valued_and_changes_smoothly_along_z():
    vol = make_phantom(120, 64, seed=3)
    assert vol.shape == (120, 64, 64) and vol.dtype == np.float32
    assert vol.min() < -900 and vol.max() > 1000  # air and cortical bone
    step = np.abs(np.diff(vol, axis=0)).mean(axis=(1, 2))
    far = np.abs(vol[60:] - vol[:60]).mean(axis=(1, 2))
    assert step.mean() < far.mean() / 2  # neighbours are near-duplicates, distant slices are not


def test_phantom_is_deterministic_per_seed():
    np.testing.assert_array_equal(make_phantom(20, 32, seed=1), make_phantom(20, 32, seed=1))
    assert not np.array_equal(make_phantom(20, 32, seed=1), make_phantom(20, 32, seed=2))


def test_phantom_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_slices >= 1 and size >= 8"):
        make_phantom(0, 64)


def test_written_phantom_reads_back_unchanged(tmp_path):
    from monai_lessmore.io import load_volume

    paths = write_phantom_dataset(tmp_path / "ph", n_volumes=2, slices=(20, 30), size=32)
    assert [p.name for p in paths] == ["phantom_00.nii.gz", "phantom_01.nii.gz"]
    vol = load_volume(str(paths[1]))
    expected = make_phantom(30, 32, seed=1).astype(np.int16).astype(np.float32)
    np.testing.assert_array_equal(vol.array, expected)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_phantom_dataset(tmp_path / "file")


def test_phantom_classification_is_a_balanced_separable_medmnist_file(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from monai_lessmore.classification.data import MedMNISTData
    from monai_lessmore.phantom import write_phantom_classification

    path = write_phantom_classification(tmp_path / "p.npz", per_split=(20, 4, 20), size=28, seed=3)
    data = MedMNISTData(path)
    splits = data.splits()
    assert data.num_classes == 2 and [len(splits[s]) for s in ("train", "val", "test")] == [40, 8, 40]
    for items in splits.values():
        labels = [it["label"] for it in items]
        assert labels.count(0) == labels.count(1)
        assert items[0]["image"].shape == (28, 28) and items[0]["image"].dtype == np.uint8
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    images = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    assert len({im.tobytes() for im in images}) == len(images)  # no slice twice across the splits
    # a real task: a linear classifier on the pixels separates lower from upper body slices on unseen slices
    x_train, y_train = arrays["train_images"].reshape(40, -1) / 255.0, arrays["train_labels"][:, 0]
    x_test, y_test = arrays["test_images"].reshape(40, -1) / 255.0, arrays["test_labels"][:, 0]
    accuracy = LogisticRegression(max_iter=2000).fit(x_train, y_train).score(x_test, y_test)
    assert accuracy >= 0.9
    again = write_phantom_classification(tmp_path / "q.npz", per_split=(20, 4, 20), size=28, seed=3)
    assert np.load(again)["train_images"].tobytes() == arrays["train_images"].tobytes()  # deterministic
