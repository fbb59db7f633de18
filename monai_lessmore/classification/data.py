"""Data adapters for the downstream classification tasks (Wolf et al., 2024, section 2.3 and Table 2).

Every adapter turns a dataset on disk into lists of MONAI data dictionaries
``{"image": <path or 2-D array>, "label": <int>, "id": <str>[, "group": <str>]}`` and knows its class names:

* :class:`CovidCTData` - the COVID-CT challenge with its official split files (``Data-split/``);
* :class:`MedMNISTData` - any MedMNIST 2-D ``.npz`` (OrganSMNIST in the paper, OrganAMNIST here);
* :class:`CSVData` - a user CSV, ``path,label[,group]`` or columns named by the user (ids resolved by a pattern);
* :class:`FolderData` - one sub-folder per class.

A fixed-split adapter answers :meth:`splits` (the paper's "five runs on the given split"); every adapter answers
:meth:`items` (the pool for the stratified k-fold protocol).

Bad input rule: problems are collected and raised together, fail fast, before any training starts - unknown
labels, missing files, files named by a split file that do not exist, and (via :func:`check_images`) images that
cannot be decoded. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import string
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


_PATH_COLUMNS = ("path", "image", "file", "filename")
_GROUP_COLUMNS = ("group", "patient")


class _LenientFormatter(string.Formatter):
    """``str.format`` that converts CSV text to a number when the format spec needs one (``{id:03d}`` of ``"7"``)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return super().format_field(value, format_spec)
        except ValueError:
            for convert in (int, float):
                try:
                    return super().format_field(convert(str(value).strip()), format_spec)
                except ValueError:
                    continue
            raise


def _find_column(header: dict[str, str], wanted: str | None, defaults: Sequence[str]) -> str | None:
    """The CSV's own name of column ``wanted`` (case and surrounding spaces ignored), else of the first default."""
    if wanted is not None:
        return header.get(wanted.strip().lower())
    return next((header[d] for d in defaults if d in header), None)


class CSVData(ClassificationData):
    """A user dataset listed in a CSV: one row per image with its path (or an id) and its label.

    By default the header names ``path`` (or ``image``, ``file``, ``filename``), ``label`` and optionally ``group``
    (or ``patient``). Label files as they come name their columns otherwise: give ``path_column`` and
    ``label_column``. When the rows hold ids instead of file names, ``path_pattern`` turns a row into its file,
    e.g. ``"{id:03d}.png"`` for the head CT hemorrhage set (``labels.csv``: ``id, hemorrhage``, ids ``0..199`` for
    files ``000.png .. 199.png``). Column names are matched ignoring case and surrounding spaces. Relative paths are
    resolved against ``data_root`` (default: the CSV's folder). With a group column the k-fold protocol keeps every
    patient in one fold.

    Args:
        csv_file: the CSV file.
        data_root: base folder for relative paths.
        class_names: the allowed labels in index order; default: sorted unique labels (numeric when all are
            integers). A label not in ``class_names`` is an error.
        path_column: the column holding the image path or id; default the first of ``path``, ``image``, ``file``,
            ``filename`` present (and ``id`` when ``path_pattern`` is given).
        label_column: the column holding the label; default ``label``.
        group_column: the column holding the patient/group id; default ``group`` or ``patient`` when present.
        path_pattern: a :meth:`str.format` pattern giving each row's file: ``{id}`` is the path column's value and
            ``{<column>}`` any other column's; a value is converted to a number when the format spec needs one
            (``{id:03d}`` of ``7`` is ``007``). Default: the path column's value is the path.

    Raises:
        ValueError: missing columns (listing the columns found), unknown labels, missing files, a pattern that
            cannot be formatted - every offending row listed.
    """

    def __init__(
        self,
        csv_file: str | Path,
        data_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        path_column: str | None = None,
        label_column: str | None = None,
        group_column: str | None = None,
        path_pattern: str | None = None,
    ) -> None:
        self.csv_file = Path(csv_file)
        if not self.csv_file.is_file():
            raise ValueError(f"csv_file {self.csv_file} does not exist; give --csv_file path/to/labels.csv")
        base = Path(data_root) if data_root else self.csv_file.parent
        with open(self.csv_file, newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            rows = list(reader)
            names = [n.strip() for n in (reader.fieldnames or [])]
        header = {n.lower(): orig for n, orig in zip(names, reader.fieldnames or [])}
        path_defaults = _PATH_COLUMNS + (("id",) if path_pattern else ())
        path_col = _find_column(header, path_column, path_defaults)
        label_col = _find_column(header, label_column, ("label",))
        group_col = _find_column(header, group_column, _GROUP_COLUMNS)
        missing = []
        if path_col is None:
            missing.append(f"the path column {path_column!r}" if path_column else
                           f"a path column ({', '.join(path_defaults)})")
        if label_col is None:
            missing.append(f"the label column {label_column!r}" if label_column else "a label column ('label')")
        if group_column is not None and group_col is None:
            missing.append(f"the group column {group_column!r}")
        if missing or not rows:
            found = ", ".join(names) if names else "none"
            problem = f"needs a header with {' and '.join(missing)}" if missing else "has a header but no rows"
            raise ValueError(
                f"{self.csv_file} {problem}; columns found: {found}. Name the columns with path_column= and "
                "label_column= (and path_pattern= such as '{id:03d}.png' when the rows hold ids, not file names); "
                "in the classification bundle: --data#path_column, --data#label_column, --data#path_pattern"
            )
        self.path_column, self.label_column, self.group_column = path_col, label_col, group_col
        self.path_pattern = path_pattern
        fields = {n: orig for n, orig in zip(names, reader.fieldnames or [])}
        labels = [str(r[label_col] or "").strip() for r in rows]
        self.class_names = _class_index(labels, class_names)
        index = {c: i for i, c in enumerate(self.class_names)}
        problems = []
        self._items = []
        formatter = _LenientFormatter()
        for line, (row, label) in enumerate(zip(rows, labels), start=2):
            value = str(row[path_col] or "").strip()
            if path_pattern:
                values = {n: str(row[orig] or "").strip() for n, orig in fields.items()}
                try:
                    name = formatter.format(path_pattern, **{**values, "id": value})
                except KeyError as err:
                    raise ValueError(
                        f"path_pattern {path_pattern!r} names {{{err.args[0]}}}, but {self.csv_file} has no such "
                        f"column (columns found: {', '.join(names)}); use {{id}} for the {path_col.strip()!r} column"
                    ) from None
                except (ValueError, IndexError) as err:
                    problems.append(f"line {line}: path_pattern {path_pattern!r} cannot format {value!r} ({err})")
                    continue
            else:
                name = value
            path = Path(name)
            path = path if path.is_absolute() else base / path
            if label not in index:
                problems.append(f"line {line}: unknown label {label!r} (known: {self.class_names})")
            elif not path.is_file():
                problems.append(f"line {line}: image {path} does not exist")
            else:
                item = {"image": str(path), "label": index[label], "id": value}
                if group_col is not None:
                    item["group"] = str(row[group_col] or "").strip()
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
    path_column: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
    path_pattern: str | None = None,
) -> ClassificationData:
    """Build the adapter named by ``dataset`` (the bundle's ``--dataset``) and check ``num_classes``.

    Args:
        dataset: one of ``covid_ct``, ``medmnist``, ``csv``, ``folder``.
        data_root: folder for ``covid_ct`` / ``folder`` (base folder for relative CSV paths).
        npz_file: the ``.npz`` for ``medmnist``.
        csv_file: the CSV for ``csv``.
        class_names: optional class names (``medmnist``, ``csv``, ``folder``).
        num_classes: optional expected number of classes; a mismatch with the data is an error.
        path_column, label_column, group_column, path_pattern: ``csv`` only, see :class:`CSVData` (in the
            classification bundle: ``--data#label_column hemorrhage`` and so on).
    """
    csv_options = {"path_column": path_column, "label_column": label_column, "group_column": group_column,
                   "path_pattern": path_pattern}
    given = sorted(k for k, v in csv_options.items() if v is not None)
    if given and dataset != "csv":
        raise ValueError(f"{', '.join(given)} apply to dataset 'csv' only, got dataset={dataset!r}")
    if dataset == "covid_ct":
        data: ClassificationData = CovidCTData(data_root)
    elif dataset == "medmnist":
        data = MedMNISTData(npz_file, class_names)
    elif dataset == "csv":
        data = CSVData(csv_file, data_root, class_names, **csv_options)
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
