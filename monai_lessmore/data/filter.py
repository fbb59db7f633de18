"""Dataset filter: turn a MONAI datalist of CT volumes into one item per kept 2D slice.

Drop-in for existing pipelines::

    datalist = [{"image": "ct_001.nii.gz", "label": 1}, ...]
    slices = SliceReductionFilter(method="hash", threshold=6, cache_dir="cache")(datalist)
    # [{"image": "ct_001.nii.gz", "label": 1, "slice_index": 0}, {"image": ..., "slice_index": 17}, ...]
    ds = monai.data.Dataset(slices, transform=Compose([LoadSliced("image"), ...]))

Every other key of an item is carried over to each of its slices. ``slice_index`` is the position in the volume's
slice order as :func:`monai_lessmore.io.load_volume` returns it (inferior to superior for NIfTI/DICOM), which is
what :class:`~monai_lessmore.transforms.LoadSliced` reads lazily.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from monai_lessmore.data.cache import ReductionCache, params_digest
from monai_lessmore.io.load import SLICE_STORE_SUFFIX, detect_volume_kind
from monai_lessmore.io.slice_folder import validate_order
from monai_lessmore.reduction.presets import merge_reduction_config
from monai_lessmore.reduction.reducer import SliceReducer

__all__ = ["SliceReductionFilter", "reduce_volume_file", "reduce_datalist"]

logger = logging.getLogger(__name__)


def reduce_volume_file(
    source: str | os.PathLike,
    reducer: SliceReducer,
    *,
    order: str = "index",
    cache: ReductionCache | None = None,
    slice_store_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Reduce one volume on disk, using ``cache`` when given.

    With ``slice_store_dir``, the kept slices of a NIfTI/NRRD/MetaImage volume are also written there once, as one
    uncompressed ``(K, H, W)`` float32 file (see :class:`SliceReductionFilter`); the record then has ``store``.

    Returns:
        A JSON-serialisable record: ``source``, ``params``, ``n_slices``, ``kept``, ``hashes``, ``threshold``,
        ``seconds``, ``cached`` (whether it came from the cache) and ``slice_sources`` (one file per slice, or
        ``None``).
    """
    from monai_lessmore.io import load_volume
    from monai_lessmore.utils.files import content_digest

    params = {**reducer.params(), "order": order}
    digest = None
    try:
        if cache is not None:  # its stat index gives the digest of a volume seen before without reading it
            digest = cache.digest(source)
        elif slice_store_dir is not None:
            digest = content_digest(source)
    except OSError:
        if os.path.exists(source):  # a file of the volume is missing or unreadable (e.g. the .raw a .mhd names):
            load_volume(str(source), order=order, lazy=True)  # the reader's error names it and the fix
        raise
    store = None
    if slice_store_dir is not None and detect_volume_kind(source)[0] in _STORED_KINDS:
        key = params_digest(params)[:12]
        store = os.path.join(os.fspath(slice_store_dir), f"{digest[:32]}_{key}{SLICE_STORE_SUFFIX}")  # type: ignore[index]
    if cache is not None:
        hit = cache.get(source, params, digest)
        if hit is not None:
            if store is not None:
                if not os.path.isfile(store):
                    _write_store(store, load_volume(str(source), order=order, lazy=True).take(hit["kept"]))
                hit = {**hit, "store": store}
            return {**hit, "source": str(source), "cached": True}
    # stored dtype and order (lazy): rendered slice by slice, only the kept slices ever converted to float32
    vol = load_volume(str(source), order=order, lazy=True).require_finite()
    result = reducer.reduce(vol.slices(), rendered=vol.is_uint8_rendered)
    if store is not None and not os.path.isfile(store):
        _write_store(store, vol.take(result.kept))
    record = {
        "source": str(source),
        "params": params,
        "n_slices": result.n_slices,
        "kept": result.kept.tolist(),
        "hashes": result.hashes,
        "threshold": result.threshold,
        "seconds": round(result.seconds, 6),
        "slice_sources": vol.slice_sources,
    }
    if cache is not None:
        cache.put(record, digest)
    if store is not None:
        record = {**record, "store": store}
    return {**record, "cached": False}


#: volume kinds whose single-slice reads are costly (a .nii.gz is decompressed up to the slice, NRRD/MHA are read
#: whole): their kept slices are worth storing uncompressed. DICOM and slice folders already hold one file per slice.
_STORED_KINDS = ("nifti", "itk")


def _write_store(path: str, kept_slices: Any) -> None:
    """Write the kept slices ``(K, H, W)`` as float32 ``.npy`` atomically
    (:func:`monai_lessmore.utils.files.atomic_open`)."""
    import numpy as np

    from monai_lessmore.utils.files import atomic_open

    with atomic_open(path, fsync=False) as fh:  # a lost store is rebuilt from the volume on the next run
        np.save(fh, np.ascontiguousarray(kept_slices, dtype=np.float32), allow_pickle=False)


class SliceReductionFilter:
    """Callable that maps a datalist of volumes to a datalist of kept slices.

    Constructor arguments are JSON-serialisable so a bundle config can build it by its dotted ``_target_``
    ``monai_lessmore.data.SliceReductionFilter``.

    Args:
        image_key: key of the volume path in each item.
        slice_key: key added to each output item with the slice index.
        cache_dir: folder of the persistent reduction cache (``None``: no cache).
        order: slice order: ``"index"`` (anatomical), ``"filename"`` (slice folders: the authors' string sort) or
            ``"instance"`` (DICOM: InstanceNumber).
        on_error: ``"raise"`` (default) stops at the first unreadable volume; ``"skip"`` logs it, leaves its items
            out and records it in :attr:`failures`.
        slice_store_dir: optional folder for the kept slices of NIfTI/NRRD/MetaImage volumes, written once per volume
            (and settings) as one uncompressed ``(K, H, W)`` float32 ``.slices.npy``. Their items then read from it:
            ``image`` is the store file, ``slice_index`` the position in it, and the volume and its slice index are
            kept as ``source_image`` / ``source_slice_index``; the items of volumes without a store (DICOM, slice
            folders) carry the same two keys (their own volume and index), so a batch may mix both kinds. A training
            epoch then costs one memory-mapped read per slice instead of decompressing a ``.nii.gz`` up to the slice
            (tens to hundreds of ms for a 512x512 volume). :class:`~monai_lessmore.transforms.LoadSliced` reads both
            kinds of item alike.
        duplicates: drop all but one volume of each group of duplicate volumes (the same scan twice, see
            :mod:`monai_lessmore.duplicates`): the path of a ``duplicates.csv`` written by ``lessmore duplicates``,
            or a dictionary of search options (``threshold`` 6, ``min_fraction`` 0.5, ``scope`` ``"dataset"``;
            ``{}`` = these defaults) to find them among the datalist's volumes after reducing them. The volume
            kept is the one with the most slices (ties: the smallest ``lessmore reduce`` volume name). The
            groups are in :attr:`duplicate_groups`, the dropped sources in :attr:`dropped_duplicates`.
        cache_stat_index: with ``cache_dir``, find a volume seen before, unchanged, by its files' stat instead of
            reading it (:class:`~monai_lessmore.data.ReductionCache`; never on Windows, FUSE, 9p or VirtualBox
            mounts); ``False`` for any other file system whose change time is not set by every write.
        config: reduction settings from a preset name (``"hash6"``, ``"ssim10"`` ...) or a YAML/JSON file
            (:mod:`monai_lessmore.reduction.presets`); ``reducer_args`` override it.
        reducer_args: everything else is passed to :class:`~monai_lessmore.reduction.SliceReducer` (``method``,
            ``threshold``, ``fraction``, ``algorithm``, ...). ``method="none"`` is accepted as ``"all"``.
    """

    def __init__(
        self,
        image_key: str = "image",
        slice_key: str = "slice_index",
        cache_dir: str | os.PathLike | None = None,
        order: str = "index",
        on_error: str = "raise",
        slice_store_dir: str | os.PathLike | None = None,
        duplicates: str | os.PathLike | dict[str, Any] | None = None,
        config: str | os.PathLike | dict[str, Any] | None = None,
        cache_stat_index: bool = True,
        **reducer_args: Any,
    ) -> None:
        self.reducer = SliceReducer(**merge_reduction_config(config, reducer_args))
        validate_order(order)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_key = image_key
        self.slice_key = slice_key
        self.order = order
        self.on_error = on_error
        self.cache = None if cache_dir is None else ReductionCache(cache_dir, stat_index=cache_stat_index)
        self.slice_store_dir = None if slice_store_dir is None else os.fspath(slice_store_dir)
        if duplicates is not None and not isinstance(duplicates, (str, os.PathLike, dict)):
            raise ValueError(f"duplicates must be a duplicates.csv path or a dict of options, got {duplicates!r}")
        if isinstance(duplicates, dict):  # bad options fail here, not after reducing the whole datalist
            from monai_lessmore.duplicates.select import check_duplicate_options

            check_duplicate_options(duplicates)
        self.duplicates = duplicates
        self.failures: list[dict[str, str]] = []
        self.records: list[dict[str, Any]] = []
        self.duplicate_groups: list[dict[str, Any]] = []
        self.dropped_duplicates: list[str] = []

    def __call__(self, datalist: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self.failures, self.records = [], []
        self.duplicate_groups, self.dropped_duplicates = [], []
        for i, item in enumerate(datalist):
            if not isinstance(item, dict) or self.image_key not in item:
                raise ValueError(f"datalist item {i} has no key {self.image_key!r}; set image_key= to the volume key")
            source = item[self.image_key]
            try:
                record = reduce_volume_file(source, self.reducer, order=self.order, cache=self.cache,
                                            slice_store_dir=self.slice_store_dir)
            except Exception as exc:  # noqa: BLE001 - reported per volume, per on_error
                if self.on_error == "raise":
                    raise
                logger.warning("skipping %s: %s", source, exc)
                self.failures.append({"source": str(source), "error": f"{type(exc).__name__}: {exc}"})
                continue
            self.records.append(record)
            if record.get("store"):
                out.extend(
                    {**item, self.image_key: record["store"], self.slice_key: pos, "source_image": source,
                     "source_slice_index": int(k)}
                    for pos, k in enumerate(record["kept"])
                )
            else:  # the same keys as store items: a batch may mix both kinds (NIfTI + slice folders)
                out.extend({**item, self.slice_key: int(k), "source_image": source, "source_slice_index": int(k)}
                           for k in record["kept"])
        if self.duplicates is not None:
            from monai_lessmore.duplicates.select import duplicates_to_drop

            drop, self.duplicate_groups = duplicates_to_drop(self.records, self.duplicates)
            self.dropped_duplicates = sorted(drop)
            before = len(out)
            out = [it for it in out if str(it.get("source_image", it[self.image_key])) not in drop]
            logger.info("dropped %d duplicate volumes: %d of %d kept slices", len(drop), before - len(out), before)
        return out


def reduce_datalist(datalist: Sequence[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    """Functional form of :class:`SliceReductionFilter`: ``reduce_datalist(datalist, method="hash", threshold=6)``."""
    return SliceReductionFilter(**kwargs)(datalist)
