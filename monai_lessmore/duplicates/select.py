"""Which volumes of a datalist to drop as duplicates: from a ``duplicates.csv`` or computed from the hashes.

Used by :class:`monai_lessmore.data.SliceReductionFilter` (``duplicates=``). Volumes are named as ``lessmore reduce``
names them, so a filter and a reduce run of the same data keep the same volume of each group.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_lessmore.duplicates.volumes import DEFAULT_MIN_FRACTION, VolumeSet, duplicate_groups, find_duplicates

__all__ = ["duplicates_to_drop", "check_duplicate_options", "DUPLICATE_OPTIONS"]

#: keys of the ``duplicates`` dictionary of :class:`~monai_lessmore.data.SliceReductionFilter`
DUPLICATE_OPTIONS = ("threshold", "min_fraction", "scope", "num_threads")


def check_duplicate_options(options: dict[str, Any]) -> dict[str, Any]:
    """The search options of ``duplicates={...}`` with their defaults, validated before anything is reduced.

    Raises:
        ValueError: an unknown option or a bad value, naming the option and what it accepts.
    """
    from monai_lessmore.duplicates.run import SCOPES

    unknown = sorted(set(options) - set(DUPLICATE_OPTIONS))
    if unknown:
        raise ValueError(f"duplicates: unknown option(s) {unknown}; use {', '.join(DUPLICATE_OPTIONS)}")
    out = {"threshold": 6, "min_fraction": DEFAULT_MIN_FRACTION, "scope": "dataset", "num_threads": 1, **options}
    t = out["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= 64:
        raise ValueError(f"duplicates['threshold'] must be an integer Hamming distance 0..64, got {t!r}")
    f = out["min_fraction"]
    if isinstance(f, bool) or not isinstance(f, (int, float, np.number)) or not 0.0 < f <= 1.0:
        raise ValueError(f"duplicates['min_fraction'] must be a number in (0, 1], got {f!r}")
    if out["scope"] not in SCOPES:
        raise ValueError(f"duplicates['scope'] must be one of {', '.join(SCOPES)}, got {out['scope']!r}")
    n = out["num_threads"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"duplicates['num_threads'] must be a positive integer or None, got {n!r}")
    return out


def _norm(path: Any) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def duplicates_to_drop(records: Sequence[dict[str, Any]], duplicates: Any) -> tuple[set[str], list[dict[str, Any]]]:
    """The sources (as in ``records``) of the volumes to drop, and the groups (volume names).

    Args:
        records: one per volume, with ``source``, ``hashes`` (every slice) and optionally ``kept`` and
            ``slice_sources`` (the records of :func:`monai_lessmore.data.reduce_volume_file`).
        duplicates: the path of a ``duplicates.csv`` written by ``lessmore duplicates`` (its volumes are matched
            to the records by source path, else by volume name), or a dictionary of search options
            (``threshold`` default 6, ``min_fraction`` default 0.5, ``scope`` default ``"dataset"``,
            ``num_threads``) to find the duplicates among the records themselves; ``{}`` = the defaults.

    Raises:
        ValueError: an unknown option or bad value (:func:`check_duplicate_options`), or a csv file that does not exist or lacks the duplicates columns.
    """
    from monai_lessmore.cli.names import unique_volume_names
    from monai_lessmore.duplicates.run import scope_keys

    sources = [str(r["source"]) for r in records]
    names = unique_volume_names(sources)
    by_name = dict(zip(names, sources))
    n_slices = {n: int(r["n_slices"]) for n, r in zip(names, records)}
    if isinstance(duplicates, dict):
        options = check_duplicate_options(duplicates)
        if not records:
            return set(), []
        vs = VolumeSet(names, [r["hashes"] for r in records], sources, [len(r.get("kept", ())) for r in records])
        first = [(r.get("slice_sources") or [r["source"]])[0] for r in records]
        first = [first[names.index(n)] for n in vs.names]
        groups_ids, _ = scope_keys(vs, first, options["scope"])
        found = find_duplicates(vs, threshold=int(options["threshold"]), min_fraction=float(options["min_fraction"]),
                                groups=groups_ids, num_threads=options["num_threads"])
        groups = found["groups"]
    elif isinstance(duplicates, (str, os.PathLike)):
        path = Path(duplicates)
        if not path.is_file():
            raise ValueError(f"duplicates={str(path)!r} does not exist; give the duplicates.csv written by "
                             "`lessmore duplicates RUN_DIR`, or a dict of options ({} to compute them)")
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        need = {"volume_a", "volume_b", "slices_a", "slices_b"}
        if rows and not need <= set(rows[0]):
            raise ValueError(f"{path} lacks the columns {sorted(need - set(rows[0]))}; is it a duplicates.csv?")
        by_path = {_norm(s): n for n, s in zip(names, sources)}

        def local(name: str, source: str | None) -> str | None:
            if source and _norm(source) in by_path:
                return by_path[_norm(source)]
            return name if name in by_name else None

        pairs = []
        for r in rows:
            a, b = local(r["volume_a"], r.get("source_a")), local(r["volume_b"], r.get("source_b"))
            if a is not None and b is not None and a != b:
                pairs.append((a, b))
                n_slices.setdefault(a, int(r["slices_a"]))
                n_slices.setdefault(b, int(r["slices_b"]))
        groups = duplicate_groups(pairs, n_slices, present=names)
    else:
        raise ValueError(f"duplicates must be a duplicates.csv path or a dict of options, got {duplicates!r}")
    drop = {by_name[n] for g in groups for n in g["drop"]}
    return drop, groups
