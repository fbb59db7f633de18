"""``lessmore duplicates RUN_DIR``: duplicate volumes of a ``lessmore reduce`` run.

Reads ``RUN_DIR/summary.json`` (volumes, their sources and kept counts) and ``RUN_DIR/manifest.csv`` (the dHash of
every slice), searches all slices for pairs within the Hamming threshold across volumes
(:func:`monai_lessmore.duplicates.search.near_pairs`), and writes

* ``RUN_DIR/duplicates.csv``: one row per pair of duplicate volumes (:data:`~monai_lessmore.duplicates.volumes.
  DUPLICATE_COLUMNS`);
* ``RUN_DIR/duplicates.json``: the settings, the groups with the volume kept and those dropped, and how many
  slices dropping them removes beyond the within-volume reduction.

Scopes: ``dataset`` compares every volume with every other; ``study`` / ``patient`` only volumes of one study /
patient. Their key is the DICOM ``StudyInstanceUID`` / ``PatientID`` read from the first slice file of a DICOM
series (the manifest's ``source`` column) when it can be read; for other volumes (NIfTI, NRRD/MHA, slice folders)
or unreadable files it is the folder above the series (the folder holding the volume file or series folder). The
summary says how many volumes got each kind of key.

Both outputs are written atomically; the run's other files are only read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_lessmore.duplicates.search import block_task
from monai_lessmore.duplicates.volumes import DEFAULT_MIN_FRACTION, DUPLICATE_COLUMNS, VolumeSet, find_duplicates
from monai_lessmore.utils.files import atomic_write_json, atomic_write_text

__all__ = ["DuplicatesError", "load_run", "scope_keys", "run_duplicates", "DaskSearch", "SCOPES"]

SCOPES = ("dataset", "study", "patient")
_DICOM_TAG = {"study": "StudyInstanceUID", "patient": "PatientID"}


class DuplicatesError(ValueError):
    """The run folder cannot be read (names the file and the fix)."""


def load_run(run_dir: str | os.PathLike) -> tuple[VolumeSet, list[str]]:
    """The volumes of a reduce run and the first slice file of each (for the DICOM scope keys).

    Raises:
        DuplicatesError: no ``summary.json`` / ``manifest.csv``, or a malformed manifest row.
    """
    from monai_lessmore.reduction.dhash import hex_to_hash

    run = Path(run_dir)
    summary_path, manifest_path = run / "summary.json", run / "manifest.csv"
    for p in (summary_path, manifest_path):
        if not p.is_file():
            raise DuplicatesError(
                f"{p} not found: RUN_DIR must be the --output folder of a finished `lessmore reduce` run "
                f"(run `lessmore reduce INPUT... --output {run}` first)"
            )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        volumes = summary["volumes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DuplicatesError(f"{summary_path} is not a reduce summary ({exc}); re-run `lessmore reduce`") from None
    per: dict[str, list[str]] = {}
    first: dict[str, tuple[int, str]] = {}
    with open(manifest_path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        want = ["volume", "source", "slice_index", "kept", "hash"]
        if header != want:
            raise DuplicatesError(f"{manifest_path}: header {header} is not the reduce manifest's {want}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 5 or len(row[4]) != 16:
                raise DuplicatesError(f"{manifest_path} line {line}: expected 5 columns ending in a 16-hex-digit "
                                      f"hash, got {row}; re-run `lessmore reduce` to rewrite it")
            name = row[0]
            per.setdefault(name, []).append(row[4])
            if name not in first:
                first[name] = (line, row[1])
    missing = sorted(set(volumes) - set(per))
    if missing:
        raise DuplicatesError(f"{manifest_path} has no slices of {missing[:3]} listed in {summary_path}; "
                              "the run was interrupted while writing -- re-run `lessmore reduce`")
    names = sorted(per)
    try:
        hashes = [hex_to_hash(per[n]) for n in names]
    except ValueError as exc:
        raise DuplicatesError(f"{manifest_path}: {exc}") from None
    sources = [str(volumes.get(n, {}).get("source", first[n][1])) for n in names]
    kept = [int(volumes.get(n, {}).get("n_kept", len(per[n]))) for n in names]
    vs = VolumeSet(names, hashes, sources, kept)
    return vs, [first[n][1] for n in vs.names]


def _dicom_value(path: str, tag: str) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[tag])
        value = ds.get(tag)
    except Exception:  # noqa: BLE001 - not DICOM, unreadable, or pydicom missing: fall back to the folder
        return None
    return str(value) if value not in (None, "") else None


def scope_keys(vs: VolumeSet, first_slices: Sequence[str], scope: str) -> tuple[np.ndarray, dict[str, int]]:
    """The scope id of every volume and how many volumes got each kind of key.

    Returns:
        ``(ids, counts)``: int32 ids (equal within a scope) and e.g. ``{"StudyInstanceUID": 3, "folder": 17}``.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope == "dataset":
        return np.zeros(len(vs.names), dtype=np.int32), {"dataset": len(vs.names)}
    tag = _DICOM_TAG[scope]
    keys, counts = [], {tag: 0, "folder": 0}
    for source, first in zip(vs.sources, first_slices):
        value = None
        if first and Path(source).is_dir():  # a DICOM series folder: its slice files carry the tag
            value = _dicom_value(first, tag)
        if value is not None:
            keys.append(f"{tag}:{value}")
            counts[tag] += 1
        else:
            # the folder above the series: of a series folder, a volume file, or <slice folder>/<volume id>
            keys.append("folder:" + os.path.dirname(os.path.abspath(source or first)))
            counts["folder"] += 1
    uniq = {k: t for t, k in enumerate(sorted(set(keys)))}
    return np.array([uniq[k] for k in keys], dtype=np.int32), counts


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=DUPLICATE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run_duplicates(
    run_dir: str | os.PathLike,
    *,
    threshold: int = 6,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    scope: str = "dataset",
    num_threads: int | None = 1,
    executor: Any = None,
) -> dict[str, Any]:
    """Find duplicate volumes of a reduce run; write ``duplicates.csv`` and ``duplicates.json``; return the latter.

    Raises:
        DuplicatesError: see :func:`load_run`.
        ValueError: bad ``threshold``, ``min_fraction`` or ``scope``.
    """
    start = time.perf_counter()
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    vs, first = load_run(run_dir)
    reduce_summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    warnings = []
    if reduce_summary.get("complete") is False:
        warnings.append(f"the reduce run is incomplete ({len(reduce_summary.get('pending', []))} volumes pending): "
                        "their duplicates are not searched; finish it with the same `lessmore reduce` command")
    groups, scope_counts = scope_keys(vs, first, scope)
    found = find_duplicates(vs, threshold=threshold, min_fraction=min_fraction, groups=groups,
                            num_threads=num_threads, executor=executor)
    kept = dict(zip(vs.names, vs.n_kept or vs.n_slices.tolist()))
    n_slices = dict(zip(vs.names, vs.n_slices.tolist()))
    dropped = sorted(n for g in found["groups"] for n in g["drop"])
    kept_total = int(sum(kept.values()))
    removed_kept = int(sum(kept[n] for n in dropped))
    summary = {
        "params": {"threshold": int(threshold), "min_fraction": float(min_fraction), "scope": scope},
        "scope_keys": scope_counts,
        "n_volumes": len(vs.names),
        "n_slices": int(vs.n_slices.sum()),
        "n_slice_pairs": found["n_slice_pairs"],
        "n_blank_slices": found["n_blank_slices"],
        "n_duplicate_pairs": len(found["rows"]),
        "groups": found["groups"],
        "n_dropped_volumes": len(dropped),
        "n_dropped_slices": int(sum(n_slices[n] for n in dropped)),
        # what pre-training loses by dropping the duplicates, beyond what the within-volume reduction removed
        "kept_slices": kept_total,
        "kept_slices_after_duplicates": kept_total - removed_kept,
        "removed_kept_slices": removed_kept,
        "search": found["search"],
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
    }
    run = Path(run_dir)
    atomic_write_text(run / "duplicates.csv", _csv_text(found["rows"]))
    atomic_write_json(run / "duplicates.json", summary)
    summary["rows"] = found["rows"]
    return summary


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def print_summary(summary: dict[str, Any], run_dir: str | os.PathLike, out: Any = None) -> None:
    """The short stdout summary of :func:`run_duplicates`."""
    out = sys.stdout if out is None else out
    p, s = summary["params"], summary["search"]
    keys = ", ".join(f"{v} by {k}" for k, v in summary["scope_keys"].items() if v)
    blank = summary.get("n_blank_slices", 0)
    blank = f" ({blank} blank, hash 0: not compared)" if blank else ""
    print(f"{summary['n_volumes']} volumes, {summary['n_slices']} slices{blank}; scope {p['scope']} ({keys})", file=out)
    print(f"{summary['n_slice_pairs']} slice pairs within Hamming {p['threshold']} across volumes "
          f"({s.get('plan', '')}; {s.get('checked', 0)} candidates, {s['seconds']:.2f} s)", file=out)
    rows = summary["rows"]
    print(f"{_count(len(rows), 'duplicate volume pair')} (matched fraction >= {p['min_fraction']:g} of either volume)", file=out)
    for r in rows[:20]:
        print(f"  {r['volume_a']} ~ {r['volume_b']}: matched {100 * r['fraction_a']:.0f} % / "
              f"{100 * r['fraction_b']:.0f} %, offset {r['offset']}, median distance {r['median_distance']:g}", file=out)
    if len(rows) > 20:
        print(f"  ... {len(rows) - 20} more in duplicates.csv", file=out)
    print(f"{_count(len(summary['groups']), 'group')}: keeping the volume with the most slices of each drops "
          f"{_count(summary['n_dropped_volumes'], 'volume')}; that removes {summary['removed_kept_slices']} of the "
          f"{summary['kept_slices']} slices kept by the within-volume reduction "
          f"(-> {summary['kept_slices_after_duplicates']})", file=out)
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=out)
    run = Path(run_dir)
    print(f"wrote {run / 'duplicates.csv'} and {run / 'duplicates.json'}", file=out)


class DaskSearch:
    """Executor for :func:`~monai_lessmore.duplicates.search.near_pairs` that runs its pieces as Dask tasks.

    The hashes, volume and scope ids are sent to the workers once (``client.scatter(..., broadcast=True)``; 16
    bytes per slice) and every task runs :func:`~monai_lessmore.duplicates.search.block_task` on some pieces of
    the search; the pieces never overlap, so the union of the results is the exact answer. Nothing is written by
    the workers: the client writes the outputs.

    Args:
        client: a connected :class:`distributed.Client`.
        retries: times a failing task is run again.
    """

    def __init__(self, client: Any, *, retries: int = 1) -> None:
        self.client = client
        self.retries = retries
        self.n_workers = max(1, len(client.scheduler_info().get("workers", {})))

    def __call__(self, hashes, volumes, groups, plan, shares):  # noqa: ANN001 - see near_pairs
        data = self.client.scatter([hashes, volumes, groups], broadcast=True)
        futures = [self.client.submit(block_task, *data, plan, share, retries=self.retries, pure=False)
                   for share in shares]
        try:
            return self.client.gather(futures)
        finally:
            self.client.cancel(futures)
