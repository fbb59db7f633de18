"""The names ``lessmore reduce`` gives its volumes: ``records/<name>.json``, ``slices/<name>/``, the manifest's
``volume`` column. Standard library only, so that the command line can look for a volume's record before it
imports numpy (:mod:`monai_lessmore.cli.readahead`)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

__all__ = ["VOLUME_SUFFIXES", "volume_name", "unique_volume_names", "possible_volume_names"]

#: suffixes dropped from a file's name to name its volume (the longest first where one ends another)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def volume_name(source: str | os.PathLike) -> str:
    """A volume's name from its path: the file name without its volume suffix, the series folder's name, or the
    volume id of ``<slice folder>/<volume id>``."""
    name = Path(source).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^\w.\-]+", "_", name) or "volume"


def _suffixed(name: str, source: str | os.PathLike) -> str:
    # a stable suffix from the path keeps the name the same on every re-run (resume relies on it)
    return f"{name}-{hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:8]}"


def unique_volume_names(sources: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`volume_name` of each of ``sources``; where two or more share one, each gets a suffix from its
    resolved path."""
    names = [volume_name(s) for s in sources]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [n if counts[n] == 1 else _suffixed(n, s) for n, s in zip(names, sources)]


def possible_volume_names(source: str | os.PathLike) -> tuple[str, str]:
    """The two names :func:`unique_volume_names` may give ``source``, whatever the other sources of its run:
    its plain name, and the suffixed one."""
    name = volume_name(source)
    return name, _suffixed(name, source)
