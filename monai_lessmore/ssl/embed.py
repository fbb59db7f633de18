"""Embed a dataset with a pre-trained encoder: one feature vector per CT slice (the pre-training bundle's
``configs/inference.json``).

Three inputs, exactly one given:

- ``dataset_dir``: CT volumes (anything :func:`monai_lessmore.io.discover_volumes` finds), reduced to slices by a
  :class:`monai_lessmore.data.SliceReductionFilter` (``method="none"`` keeps every slice);
- ``slice_dir``: a folder of 2-D slice images (PNG/JPG/DICOM/NIfTI files, as the fine-tuning bundle reads them);
- ``datalist_file``: a JSON list of ``{"image": path}`` (a slice file) or ``{"image": volume, "slice_index": k}``.

:class:`ReadSliced` reads either kind of item; :class:`EmbeddingWriter` writes ``features.npy`` (``(N, 2048)``
float32, rows in datalist order, with ``features_ids.txt``) and ``index.csv`` naming the volume and slice of every
row, all atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_lessmore.classification.handlers import FeatureWriter
from monai_lessmore.utils.files import atomic_write_text

__all__ = ["embedding_datalist", "ReadSliced", "EmbeddingWriter"]

logger = logging.getLogger(__name__)


def embedding_datalist(
    dataset_dir: str | os.PathLike | None = None,
    slice_dir: str | os.PathLike | None = None,
    datalist_file: str | os.PathLike | None = None,
    reduction: Any = None,
    max_slices: int | None = None,
) -> list[dict[str, Any]]:
    """The items to embed, from exactly one of ``dataset_dir``, ``slice_dir`` or ``datalist_file``.

    Every item gets ``id`` (``<volume>:<slice>`` for volume slices, the file path for slice files), ``volume``
    and ``slice`` (the slice index, or -1 for a slice file).

    Args:
        dataset_dir: folder of CT volumes; reduced with ``reduction`` (required then).
        slice_dir: folder of 2-D slice images (not recursive).
        datalist_file: JSON list of items (``image`` and optionally ``slice_index``); relative paths are taken
            relative to the file's folder.
        reduction: a :class:`~monai_lessmore.data.SliceReductionFilter` for ``dataset_dir``.
        max_slices: for ``dataset_dir``, at most this many slices, evenly spaced (quick looks).

    Raises:
        ValueError: none or several inputs given, an empty input, or a malformed datalist (the message names it).
    """
    given = {k: v for k, v in (("dataset_dir", dataset_dir), ("slice_dir", slice_dir), ("datalist_file", datalist_file))
             if v not in (None, "")}
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of dataset_dir (CT volumes), slice_dir (slice images) or datalist_file (JSON list), "
            f"got {sorted(given) or 'none'}: e.g. --dataset_dir /data/ct"
        )
    if dataset_dir not in (None, ""):
        if reduction is None:
            raise ValueError("dataset_dir needs a reduction (a SliceReductionFilter; method 'none' keeps every slice)")
        from monai_lessmore.ssl.data import build_pretrain_datalist

        items = build_pretrain_datalist(dataset_dir, reduction, max_slices=max_slices)
    elif slice_dir not in (None, ""):
        from monai_lessmore.classification.data import list_images

        files = list_images(slice_dir)
        if not files:
            raise ValueError(f"slice_dir {os.fspath(slice_dir)!r} holds no slice images (PNG, JPG, DICOM, NIfTI files)")
        items = [{"image": f} for f in files]
    else:
        path = Path(datalist_file)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"datalist_file {path}: cannot be read as JSON ({err})") from err
        if not isinstance(raw, list) or not raw or not all(isinstance(d, Mapping) and "image" in d for d in raw):
            raise ValueError(f"datalist_file {path}: expected a non-empty JSON list of {{'image': path[, 'slice_index': k]}}")
        items = []
        for d in raw:
            image = Path(os.fspath(d["image"]))
            item = dict(d, image=str(image if image.is_absolute() else path.parent / image))
            if "slice_index" in item:
                item["slice_index"] = int(item["slice_index"])
            items.append(item)
    out = []
    for d in items:
        d = dict(d)
        if "slice_index" in d:
            d["volume"], d["slice"] = str(d["image"]), int(d["slice_index"])
            d["id"] = f"{d['volume']}:{d['slice']}"
        else:
            d["volume"], d["slice"], d["id"] = str(d["image"]), -1, str(d["image"])
        out.append(d)
    return out


class ReadSliced(MapTransform):
    """Read the slice of each item: a volume slice (``slice_index`` present, min-max rendered as the pre-training
    bundle reads it) or a 2-D slice file; both as ``(1, H, W)`` float32.

    Args:
        keys: the image key(s). slice_key: key of the slice index. render: rendering of volume slices
            (``"minmax"``, as pre-training).
    """

    def __init__(self, keys: KeysCollection, slice_key: str = "slice_index", render: str | Sequence[float] = "minmax",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from monai_lessmore.classification.transforms import ReadClassificationImage
        from monai_lessmore.transforms.io.array import LoadSlice

        self.slice_key = slice_key
        self.volume_loader = LoadSlice(render=render)
        self.file_reader = ReadClassificationImage()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.slice_key in d:
                d[key] = self.volume_loader(d[key], d[self.slice_key])
            else:
                d[key] = self.file_reader(d[key])
            if d[key].ndim == 2:
                d[key] = d[key][None]
        return d


class EmbeddingWriter(FeatureWriter):
    """:class:`~monai_lessmore.classification.handlers.FeatureWriter` (``features.npy`` + ``features_ids.txt``, optionally
    ``features.csv``) plus ``index.csv``: ``row, id, volume, slice`` for every row of ``features.npy`` (``slice``
    is -1 for a slice file). The batch must carry ``id``, ``volume`` and ``slice`` (:func:`embedding_datalist`)."""

    def __init__(self, output_dir: str, formats: Sequence[str] = ("npy",)) -> None:
        super().__init__(output_dir, formats)
        self.volumes: list[str] = []
        self.slices: list[int] = []

    def reset(self, engine=None) -> None:  # noqa: D102
        super().reset(engine)
        self.volumes.clear()
        self.slices.clear()

    def collect(self, engine) -> None:  # noqa: D102
        super().collect(engine)
        batch = engine.state.batch
        n = len(self.ids) - len(self.volumes)
        vols = batch.get("volume") if isinstance(batch, dict) else None
        slices = batch.get("slice") if isinstance(batch, dict) else None
        self.volumes.extend([str(v) for v in vols] if vols is not None else [""] * n)
        self.slices.extend([int(s) for s in slices] if slices is not None else [-1] * n)

    def write(self, engine=None) -> dict[str, Path]:  # noqa: D102
        written = super().write(engine)
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["row", "id", "volume", "slice"])
        for row, (i, v, s) in enumerate(zip(self.ids, self.volumes, self.slices)):
            w.writerow([row, i, v, s])
        written["index"] = atomic_write_text(self.output_dir / "index.csv", text.getvalue())
        return written
