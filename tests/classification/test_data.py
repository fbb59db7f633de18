"""Data adapters: COVID-CT official split, MedMNIST npz, CSV, class folders; the fail-fast bad-input rule."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_data_path
from monai_lessmore.classification.data import (
    CovidCTData,
    CSVData,
    FolderData,
    MedMNISTData,
    build_data,
    check_images,
    list_images,
    subset_items,
)
from monai_lessmore.classification.transforms import ImageLoadError


def _png(path, value=128, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def test_covid_ct_official_split():
    data = CovidCTData(shared_data_path("covid_ct"))
    s = data.splits()
    # counts from ../shared/data/README.md: COVID 191/60/98, NonCOVID 234/58/105
    assert {k: len(v) for k, v in s.items()} == {"train": 425, "val": 118, "test": 203}
    assert sum(d["label"] for d in s["test"]) == 98
    assert data.class_names == ["NonCOVID", "COVID"] and data.num_classes == 2
    ids = [d["id"] for part in s.values() for d in part]
    assert len(set(ids)) == len(ids), "an image is in two parts of the official split"
    assert len(data.items()) == 746


def _fake_covid(root):
    for cls in ("COVID", "NonCOVID"):
        for part in ("train", "val", "test"):
            names = [f"{cls}_{part}_{i}.png" for i in range(2)]
            for n in names:
                _png(root / "Images" / f"CT_{cls}" / n)
            split = root / "Data-split" / cls / f"{part}CT_{cls}.txt"
            split.parent.mkdir(parents=True, exist_ok=True)
            split.write_text("\n".join(names) + "\n")
    return root


def test_covid_split_file_naming_a_missing_image(tmp_path):
    root = _fake_covid(tmp_path / "covid_ct")
    assert len(CovidCTData(root).split("val")) == 4
    split = root / "Data-split" / "COVID" / "testCT_COVID.txt"
    split.write_text(split.read_text() + "ghost.png\n")
    with pytest.raises(ValueError, match=r"testCT_COVID\.txt names 'ghost\.png', but .*CT_COVID/ghost\.png does not"):
        CovidCTData(root)


def test_medmnist_real_organamnist():
    data = MedMNISTData(shared_data_path("organamnist", "organamnist.npz"))
    assert data.num_classes == 11
    assert {k: len(v) for k, v in data.splits().items()} == {"train": 34561, "val": 6491, "test": 17778}
    item = data.split("test")[0]
    assert item["image"].shape == (28, 28) and item["image"].dtype == np.uint8 and item["id"] == "test_0"


def _npz(path, labels_train=(0, 1, 2, 1), labels_shape=None):
    arrays = {}
    for part in ("train", "val", "test"):
        labels = np.asarray(labels_train if part == "train" else (0, 1), np.uint8).reshape(-1, 1)
        if labels_shape is not None:
            labels = np.zeros(labels_shape, np.uint8)
        arrays[f"{part}_images"] = np.zeros((len(labels), 28, 28), np.uint8)
        arrays[f"{part}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_medmnist_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"labels outside 0\.\.1"):
        MedMNISTData(_npz(tmp_path / "a.npz"), class_names=["a", "b"])
    with pytest.raises(ValueError, match="multi-label MedMNIST"):
        MedMNISTData(_npz(tmp_path / "b.npz", labels_shape=(2, 14)))
    np.savez(tmp_path / "c.npz", train_images=np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="arrays .*train_labels.* are missing"):
        MedMNISTData(tmp_path / "c.npz")


def test_csv_with_groups_unknown_labels_and_missing_files(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "ok.csv").write_text("path,label,group\nimg/0.png,cat,p1\nimg/1.png,dog,p1\nimg/2.png,dog,p2\n")
    data = CSVData(tmp_path / "ok.csv")
    assert data.class_names == ["cat", "dog"]
    assert [(d["label"], d["group"]) for d in data.items()] == [(0, "p1"), (1, "p1"), (1, "p2")]
    assert data.has_fixed_split is False
    (tmp_path / "bad.csv").write_text("path,label\nimg/0.png,cat\nimg/1.png,bird\nimg/9.png,cat\n")
    with pytest.raises(ValueError, match=r"(?s)line 3: unknown label 'bird'.*line 4: image .*9\.png does not exist"):
        CSVData(tmp_path / "bad.csv", class_names=["cat", "dog"])
    (tmp_path / "nohead.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"needs a header with a path column \(path, .*and a label column.*found: a, b"):
        CSVData(tmp_path / "nohead.csv")


def test_folders(tmp_path):
    for cls in ("b", "a"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png")
    data = FolderData(tmp_path)
    assert data.class_names == ["a", "b"] and len(data.items()) == 6
    with pytest.raises(ValueError, match=r"folder .*[/\\]b is not one of class_names \['a', 'c'\]"):
        FolderData(tmp_path, class_names=["a", "c"])
    assert list_images(tmp_path / "a")[0].endswith("0.png")


def test_num_classes_mismatch_and_unknown_dataset(tmp_path):
    for cls in ("a", "b"):
        _png(tmp_path / cls / "0.png")
    with pytest.raises(ValueError, match=r"num_classes=3 was given but the data have 2 classes"):
        build_data("folder", data_root=str(tmp_path), num_classes=3)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_data("imagenet")


def test_check_images_lists_every_bad_file(tmp_path):
    good = _png(tmp_path / "good.png")
    (tmp_path / "bad1.png").write_bytes(b"xx")
    (tmp_path / "bad2.jpg").write_bytes(b"yy")
    items = [{"image": str(p), "label": 0} for p in (good, tmp_path / "bad1.png", tmp_path / "bad2.jpg")]
    with pytest.raises(ImageLoadError, match=r"(?s)2 problem.*bad1\.png.*bad2\.jpg.*nothing was skipped"):
        check_images(items)
    check_images(items[:1] + [{"image": np.zeros((4, 4)), "label": 0}])


def test_subset_keeps_every_class():
    items = [{"label": 0, "id": i} for i in range(50)] + [{"label": 1, "id": 50 + i} for i in range(5)]
    sub = subset_items(items, 6, seed=0)
    assert len(sub) == 6 and {d["label"] for d in sub} == {0, 1}
    assert subset_items(items, 0) == items


def test_16bit_png_reads_the_same_for_classification_and_slice_folders(tmp_path):
    """One reading layer: a 16-bit PNG gives its 16-bit values to a classification task and to a slice folder."""
    from monai_lessmore.classification.transforms import ReadClassificationImage
    from monai_lessmore.io import load_volume, read_image_2d, read_slice

    values = np.array([[0, 255, 256, 1000], [4095, 40000, 65535, 7]], np.uint16)
    Image.fromarray(values).save(tmp_path / "scan_0.png")
    classification = ReadClassificationImage()(str(tmp_path / "scan_0.png"))[0].numpy()
    volume = load_volume(tmp_path)
    np.testing.assert_array_equal(volume.array[0], values.astype(np.float32))
    np.testing.assert_array_equal(classification, volume.array[0])
    np.testing.assert_array_equal(read_slice(tmp_path, 0), volume.array[0])
    np.testing.assert_array_equal(read_image_2d(tmp_path / "scan_0.png"), volume.array[0])
    check_images([{"image": str(tmp_path / "scan_0.png"), "label": 0}])


def _head_ct(root, n=6):
    """The head CT hemorrhage layout: ``head_ct/000.png ..`` and ``labels.csv`` with ``id, hemorrhage``."""
    for i in range(n):
        _png(root / "head_ct" / f"{i:03d}.png", value=i)
    rows = "".join(f"{i}, {int(i >= n // 2)}\n" for i in range(n))
    (root / "labels.csv").write_text("id, hemorrhage\n" + rows)
    return root / "labels.csv"


def test_csv_named_columns_and_id_pattern(tmp_path):
    labels = _head_ct(tmp_path)
    data = CSVData(labels, data_root=tmp_path / "head_ct", label_column="hemorrhage", path_pattern="{id:03d}.png")
    assert data.class_names == ["0", "1"] and data.path_column == "id" and data.label_column == "hemorrhage"
    assert [(d["id"], d["label"]) for d in data.items()] == [("0", 0), ("1", 0), ("2", 0), ("3", 1), ("4", 1), ("5", 1)]
    assert data.items()[4]["image"] == str(tmp_path / "head_ct" / "004.png")
    same = CSVData(labels, path_column=" ID ", label_column="Hemorrhage", path_pattern="head_ct/{id:03d}.png")
    assert [d["image"] for d in same.items()] == [d["image"] for d in data.items()]  # case and spaces ignored


def test_csv_column_errors_list_the_columns_found(tmp_path):
    labels = _head_ct(tmp_path)
    with pytest.raises(ValueError, match=r"needs a header with a label column \('label'\); columns found: id, hemorrhage"
                       r"\..*label_column=.*--data#label_column"):
        CSVData(labels, path_pattern="head_ct/{id:03d}.png")
    with pytest.raises(ValueError, match=r"the path column 'file_name'.*columns found: id, hemorrhage"):
        CSVData(labels, path_column="file_name", label_column="hemorrhage")
    with pytest.raises(ValueError, match=r"path_pattern '\{idx\}\.png' names \{idx\}, but .* no such column"):
        CSVData(labels, label_column="hemorrhage", path_pattern="{idx}.png")
    with pytest.raises(ValueError, match=r"line 2: image .*head_ct[/\\]0\.png does not exist"):
        CSVData(labels, label_column="hemorrhage", path_pattern="head_ct/{id}.png")  # ids lack the zero padding
    with pytest.raises(ValueError, match=r"apply to dataset 'csv' only"):
        build_data("folder", data_root=str(tmp_path), label_column="hemorrhage")


def test_bundle_reads_a_csv_with_named_columns_through_overrides(tmp_path):
    """The classification bundle takes the CSV options as overrides of its ``data`` component, no config edit."""
    from monai.bundle import ConfigParser

    from tests.classification.test_bundle import TRAIN

    labels = _head_ct(tmp_path)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"dataset": "csv", "csv_file": str(labels), "data_root": str(tmp_path / "head_ct"),
                   "data#label_column": "hemorrhage", "data#path_pattern": "{id:03d}.png"})
    data = parser.get_parsed_content("data")
    assert isinstance(data, CSVData) and len(data.items()) == 6 and data.num_classes == 2
