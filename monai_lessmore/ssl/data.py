"""Pre-training data: ``dataset_dir`` of CT volumes -> slice reduction -> one item per kept 2D slice.

The reduction is :class:`monai_lessmore.data.SliceReductionFilter` (HASH-6 by default in the bundle, any method,
or ``method="none"`` for the paper's baseline ALL); slices are then read lazily by
:class:`monai_lessmore.transforms.LoadSliced`. Every failure says what was found and how to fix it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

__all__ = ["build_pretrain_datalist", "check_batch_size"]

logger = logging.getLogger(__name__)


def build_pretrain_datalist(
    dataset_dir: str | os.PathLike,
    reduction: Any,
    *,
    max_slices: int | None = None,
    image_key: str = "image",
) -> list[dict[str, Any]]:
    """Discover the volumes under ``dataset_dir`` and reduce them to a datalist of kept slices.

    Args:
        dataset_dir: folder of NIfTI files, DICOM series folders, NRRD/MHA files or slice folders (recursive).
        reduction: a :class:`~monai_lessmore.data.SliceReductionFilter` (or any callable datalist -> datalist).
        max_slices: keep at most this many of the reduced slices, evenly spaced over the list (tiny test runs).
        image_key: datalist key of the volume path.

    Returns:
        ``[{"image": <volume>, "slice_index": k}, ...]``.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: no readable volume, or the reduction kept no slice (the message gives the counts).
    """
    from monai_lessmore.io import discover_volumes

    root = os.fspath(dataset_dir)
    if not os.path.exists(root):
        raise FileNotFoundError(f"dataset_dir {root!r} does not exist; point --dataset_dir at a folder of CT volumes")
    volumes = discover_volumes(root)
    if not volumes:
        raise ValueError(
            f"dataset_dir {root!r} holds no readable volumes (looked for NIfTI, DICOM series, NRRD/MHA and folders of "
            f"<volume>_<index>.png|jpg slices); point --dataset_dir at CT data"
        )
    items = reduction([{image_key: str(v)} for v in volumes])
    failures = list(getattr(reduction, "failures", []))
    records = list(getattr(reduction, "records", []))
    if not items:
        total = sum(int(r.get("n_slices", 0)) for r in records)
        params = getattr(getattr(reduction, "reducer", None), "params", lambda: {})()
        if not records:
            raise ValueError(
                f"none of the {len(volumes)} volumes found in dataset_dir {root!r} could be read "
                f"({len(failures)} failed; first: {failures[0]['error'] if failures else 'unknown'})"
            )
        raise ValueError(
            f"the reduction kept 0 of {total} slices from {len(records)} volumes in {root!r} (reduction {params}); "
            f"relax the reduction (e.g. a larger threshold, or method 'none' for ALL) or add data"
        )
    if failures:
        logger.warning("%d of %d volumes could not be read and were left out", len(failures), len(volumes))
    total = sum(int(r.get("n_slices", 0)) for r in records)
    kept = len(items)
    if max_slices is not None and 0 < int(max_slices) < len(items):
        pick = np.linspace(0, len(items) - 1, int(max_slices)).round().astype(int)
        items = [items[i] for i in pick]
    used = f"{len(items)} evenly spaced of the " if len(items) < kept else ""
    logger.info("pre-training on %s%d slices kept of %d from %d volumes in %s", used, kept, total, len(records), root)
    return items


def check_batch_size(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Return ``batch_size`` after checking that one full batch per process fits in the data (drop_last loaders).

    Raises:
        ValueError: the batch is larger than the (per-process share of the) dataset.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_rank = num_items // max(1, world_size)
    if int(batch_size) > per_rank:
        where = f" per process ({world_size} processes)" if world_size > 1 else ""
        raise ValueError(
            f"batch_size {batch_size} is larger than the {per_rank} slices available{where} after reduction "
            f"({num_items} in total): lower --batch_size to at most {max(per_rank, 1)}, use a weaker reduction, or add data"
        )
    return int(batch_size)
