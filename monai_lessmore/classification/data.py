"""Data adapters for the downstream classification tasks (Wolf et al., 2024, section 2.3 and Table 2).

Every adapter turns a dataset on disk into lists of MONAI data dictionaries
``{"image": <path or 2-D array>, "label": <int>, "id": <str>[, "group": <str>]}`` and knows its class names:

* :class:`CovidCTData` - the COVID-CT challenge with its official split files (``Data-split/``);
* :class:`MedMNISTData` - any MedMNIST 2-D ``.npz`` (OrganSMNIST in the paper, OrganAMNIST here);
* :class:`CSVData` - a user CSV ``path,label[,group]``;
* :class:`FolderData` - one sub-folder per class.

A fixed-split adapter answers :meth:`splits` (the paper's "five runs on the given split"); every adapter answers
:meth:`items` (the pool for the stratified k-fold protocol).

Bad input rule: problems are collected and raised together, fail fast, before any training starts - unknown
labels, missing files, files named by a split file that do not exist, and (via :func:`check_images`) images that
cannot be decoded. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_lessmore.classification.transforms import ImageLoadError
from monai_lessmore.io.image2d import IMAGE_SUFFIXES, ImageReadError, read_image_2d

__all__ = [
    "ClassificationData",
    "CovidCTData",
    "MedMNISTData",
    "CSVData",
    "FolderData",
    "build_data",
    "check_images",
    "list_images",
    "subset_items",
    "DATASETS",
]

DATASETS = ("covid_ct", "medmnist", "csv", "folder")
_SPLITS = ("train", "val", "test")


def _bad_input(title: str, problems: list[str], hint: str, limit: int = 20) -> ValueError:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return ValueError(f"{title} ({len(problems)} problem(s)):\n  {shown}{more}\n{hint}")


class ClassificationData:
    """Base class: a list of class names plus data dictionaries, optionally with a fixed train/val/test split."""

    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def has_fixed_split(self) -> bool:
        """Whether the dataset ships an official train/val/test split."""
        return self.splits() is not None

    def splits(self) -> dict[str, list[dict[str, Any]]] | None:
        """The fixed ``{"train", "val", "test"}`` split, or ``None`` for a pool meant for cross-validation."""
        return None

    def split(self, name: str) -> list[dict[str, Any]]:
        """One part of the fixed split, or the whole pool for ``name="all"``."""
        if name == "all":
            return self.items()
        splits = self.splits()
        if splits is None:
            raise ValueError(f"{type(self).__name__} has no fixed split; use split 'all' (got {name!r})")
        if name not in splits:
            raise ValueError(f"split must be one of {sorted(splits)} or 'all', got {name!r}")
        return splits[name]

    def items(self) -> list[dict[str, Any]]:
        """All samples (the union of the fixed split parts when there is one)."""
        splits = self.splits()
        if splits is None:
            raise NotImplementedError
        return [d for part in _SPLITS for d in splits[part]]

    def check_num_classes(self, num_classes: int | None) -> None:
        """Raise when a configured ``num_classes`` disagrees with the data."""
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"num_classes={num_classes} was given but the data have {self.num_classes} classes "
                f"({self.class_names}); set --num_classes {self.num_classes} or fix the data"
            )


class CovidCTData(ClassificationData):
    """COVID-CT (UCSD-AI4H) with its official challenge split (section 2.3: five runs on the given split).

    Layout: ``<root>/Images/CT_COVID``, ``<root>/Images/CT_NonCOVID``, and split files
    ``<root>/Data-split/COVID/{train,val,test}CT_COVID.txt``, ``<root>/Data-split/NonCOVID/{...}CT_NonCOVID.txt``
    with one image name per line. Labels: 0 = NonCOVID, 1 = COVID (the positive class for AUC and F1).

    Args:
        data_root: the ``covid_ct`` folder.

    Raises:
        ValueError: listing every split file that is missing and every image a split file names but that does not
            exist (both paths named).
    """

    class_names = ["NonCOVID", "COVID"]

    def __init__(self, data_root: str | Path) -> None:
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise ValueError(f"data_root for covid_ct must be a folder with Images/ and Data-split/, got {self.root}")
        problems: list[str] = []
        self._splits: dict[str, list[dict[str, Any]]] = {s: [] for s in _SPLITS}
        for label, cls in enumerate(self.class_names):
            for part in _SPLITS:
                split_file = self.root / "Data-split" / cls / f"{part}CT_{cls}.txt"
                if not split_file.is_file():
                    problems.append(f"missing split file {split_file}")
                    continue
                for line in split_file.read_text().splitlines():
                    name = line.strip()
                    if not name:
                        continue
                    image = self.root / "Images" / f"CT_{cls}" / name
                    if not image.is_file():
                        problems.append(f"split file {split_file} names {name!r}, but {image} does not exist")
                        continue
                    self._splits[part].append({"image": str(image), "label": label, "id": name})
        if problems:
            raise _bad_input(
                f"COVID-CT at {self.root} is incomplete",
                problems,
                "Point --data_root at the covid_ct folder holding Images/ and Data-split/ (the official split).",
            )

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        return self._splits


class MedMNISTData(ClassificationData):
    """A MedMNIST v2 2-D ``.npz`` (``{train,val,test}_{images,labels}``), e.g. OrganSMNIST / OrganAMNIST.

    Images stay 28x28 uint8 arrays here; the bundle's transforms resize them to 224x224 (section 2.3).

    Args:
        npz_file: the ``.npz`` file.
        class_names: optional names; default ``"0" .. "K-1"`` with K = largest label + 1.

    Raises:
        ValueError: missing arrays, multi-label files, labels outside ``0..K-1``.
    """

    def __init__(self, npz_file: str | Path, class_names: Sequence[str] | None = None) -> None:
        self.npz_file = Path(npz_file)
        if not self.npz_file.is_file():
            raise ValueError(f"npz_file {self.npz_file} does not exist; give a MedMNIST 2-D .npz with --npz_file")
        with np.load(self.npz_file) as npz:
            missing = [f"{p}_{k}" for p in _SPLITS for k in ("images", "labels") if f"{p}_{k}" not in npz.files]
            if missing:
                raise ValueError(f"{self.npz_file} is not a MedMNIST 2-D file: arrays {missing} are missing")
            arrays = {p: (npz[f"{p}_images"], npz[f"{p}_labels"]) for p in _SPLITS}
        problems = []
        for part, (images, labels) in arrays.items():
            if labels.ndim == 2 and labels.shape[1] != 1:
                raise ValueError(
                    f"{self.npz_file}: {part}_labels has shape {labels.shape}; multi-label MedMNIST sets "
                    "(e.g. ChestMNIST) are not single-label classification tasks and are not supported"
                )
            if images.ndim not in (3, 4) or len(images) != len(labels):
                problems.append(f"{part}: images {images.shape} and labels {labels.shape} do not match")
        if problems:
            raise _bad_input(f"{self.npz_file} is malformed", problems, "Use an unmodified MedMNIST 2-D .npz.")
        top = max(int(lab.max()) for _, lab in arrays.values())
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(top + 1)]
        self._splits = {}
        for part, (images, labels) in arrays.items():
            labels = labels.reshape(-1).astype(np.int64)
            bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
            if bad.size:
                problems.append(f"{part}: {bad.size} labels outside 0..{self.num_classes - 1}, e.g. {labels[bad[:5]]}")
            self._splits[part] = [
                {"image": images[i], "label": int(labels[i]), "id": f"{part}_{i}"} for i in range(len(labels))
            ]
        if problems:
            raise _bad_input(
                f"{self.npz_file} has unknown label values for class_names={self.class_names}",
                problems,
                "Give class_names matching the file's labels.",
            )

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        return self._splits


def _class_index(labels: list[str], class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return [str(c) for c in class_names]
    uniq = sorted(set(labels))
    if all(s.lstrip("-").isdigit() for s in uniq):
        uniq = sorted(uniq, key=int)
    return uniq


class CSVData(ClassificationData):
    """A user dataset listed in a CSV with a header ``path,label[,group]`` (``image`` and ``patient`` also accepted).

    Relative paths are resolved against ``data_root`` (default: the CSV's folder). With a ``group`` column the
    k-fold protocol keeps every patient in one fold.

    Args:
        csv_file: the CSV file.
        data_root: base folder for relative paths.
        class_names: the allowed labels in index order; default: sorted unique labels (numeric when all are
            integers). A label not in ``class_names`` is an error.

    Raises:
        ValueError: missing columns, unknown labels, missing files - every offending row listed.
    """

    def __init__(
        self, csv_file: str | Path, data_root: str | Path | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        self.csv_file = Path(csv_file)
        if not self.csv_file.is_file():
            raise ValueError(f"csv_file {self.csv_file} does not exist; give --csv_file path/to/labels.csv")
        base = Path(data_root) if data_root else self.csv_file.parent
        with open(self.csv_file, newline="") as f:
            rows = list(csv.DictReader(f))
        header = {k.strip().lower(): k for k in (rows[0].keys() if rows else [])}
        path_col = header.get("path", header.get("image"))
        label_col = header.get("label")
        group_col = header.get("group", header.get("patient"))
        if not rows or path_col is None or label_col is None:
            raise ValueError(
                f"{self.csv_file} needs a header with columns path,label[,group] and at least one row, "
                f"got columns {list(header) or 'none'}"
            )
        labels = [str(r[label_col]).strip() for r in rows]
        self.class_names = _class_index(labels, class_names)
        index = {c: i for i, c in enumerate(self.class_names)}
        problems = []
        self._items = []
        for line, (row, label) in enumerate(zip(rows, labels), start=2):
            path = Path(str(row[path_col]).strip())
            path = path if path.is_absolute() else base / path
            if label not in index:
                problems.append(f"line {line}: unknown label {label!r} (known: {self.class_names})")
            elif not path.is_file():
                problems.append(f"line {line}: image {path} does not exist")
            else:
                item = {"image": str(path), "label": index[label], "id": str(row[path_col]).strip()}
                if group_col is not None:
                    item["group"] = str(row[group_col]).strip()
                self._items.append(item)
        if problems:
            raise _bad_input(
                f"{self.csv_file} has bad rows", problems, "Fix these rows, or pass class_names with every label."
            )

    def items(self) -> list[dict[str, Any]]:
        return self._items


def list_images(folder: str | Path) -> list[str]:
    """Image files (see ``IMAGE_SUFFIXES``) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    return sorted(
        str(p) for p in folder.iterdir() if p.is_file() and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)
    )


class FolderData(ClassificationData):
    """A user dataset with one sub-folder per class (``<root>/<class>/<image>``).

    Args:
        data_root: the folder holding the class folders.
        class_names: the expected class folders in index order; default: sorted sub-folder names. A sub-folder
            that is not in ``class_names`` (an unknown label) is an error.

    Raises:
        ValueError: unknown or empty class folders.
    """

    def __init__(self, data_root: str | Path, class_names: Sequence[str] | None = None) -> None:
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise ValueError(f"data_root {self.root} is not a folder of class folders")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.class_names = list(class_names) if class_names is not None else found
        problems = [f"folder {self.root / c} is not one of class_names {self.class_names}" for c in found
                    if c not in self.class_names]
        self._items = []
        for label, cls in enumerate(self.class_names):
            files = list_images(self.root / cls) if (self.root / cls).is_dir() else []
            if not files:
                problems.append(f"class {cls!r}: no images in {self.root / cls}")
            self._items += [{"image": f, "label": label, "id": f"{cls}/{Path(f).name}"} for f in files]
        if problems:
            raise _bad_input(f"class folders under {self.root} are inconsistent", problems,
                             "Give one non-empty folder per class, or pass class_names.")

    def items(self) -> list[dict[str, Any]]:
        return self._items


def build_data(
    dataset: str,
    data_root: str | None = None,
    npz_file: str | None = None,
    csv_file: str | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> ClassificationData:
    """Build the adapter named by ``dataset`` (the bundle's ``--dataset``) and check ``num_classes``.

    Args:
        dataset: one of ``covid_ct``, ``medmnist``, ``csv``, ``folder``.
        data_root: folder for ``covid_ct`` / ``folder`` (base folder for relative CSV paths).
        npz_file: the ``.npz`` for ``medmnist``.
        csv_file: the CSV for ``csv``.
        class_names: optional class names (``medmnist``, ``csv``, ``folder``).
        num_classes: optional expected number of classes; a mismatch with the data is an error.
    """
    if dataset == "covid_ct":
        data: ClassificationData = CovidCTData(data_root)
    elif dataset == "medmnist":
        data = MedMNISTData(npz_file, class_names)
    elif dataset == "csv":
        data = CSVData(csv_file, data_root, class_names)
    elif dataset == "folder":
        data = FolderData(data_root, class_names)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    data.check_num_classes(num_classes)
    return data


def subset_items(items: list[dict[str, Any]], n: int | None, *, seed: int = 0) -> list[dict[str, Any]]:
    """At most ``n`` items, classes interleaved so that a tiny subset still holds every class (tiny test runs).

    Args:
        items: data dictionaries with ``"label"``.
        n: how many to keep; ``None`` or ``0`` keeps all.
        seed: seed of the per-class shuffle.
    """
    if not n or n >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    labels = np.asarray([d["label"] for d in items])
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop(0)))
    return [items[i] for i in sorted(picked)]


def check_images(items: list[dict[str, Any]], key: str = "image") -> None:
    """Decode every file-backed image once and raise one error naming every file that fails (fail fast).

    Images are read by :func:`monai_lessmore.io.image2d.read_image_2d`, the package's one 2-D reader.

    Args:
        items: data dictionaries; array-backed items (MedMNIST) are skipped.
        key: the image key.

    Raises:
        ImageLoadError: listing every unreadable file and why.
    """
    problems = []
    for d in items:
        if isinstance(d[key], (str, Path)):
            try:
                read_image_2d(d[key])
            except (ImageReadError, ImageLoadError) as e:
                problems.append(str(e))
    if problems:
        raise ImageLoadError(
            str(_bad_input("images that cannot be loaded", problems, "Remove or fix these files; nothing was skipped."))
        )
