"""Persistent cache of per-volume reductions, keyed by the volume's content and the reduction settings.

A second run over the same data with the same settings reads the kept indices from here and does no hashing.
Entries are small JSON files written atomically, safe to share between processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from monai_lessmore.utils.files import atomic_write_json, content_digest

__all__ = ["ReductionCache", "params_digest"]

CACHE_FORMAT = 1


def params_digest(params: dict[str, Any]) -> str:
    """Short stable digest of JSON-serialisable settings."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class ReductionCache:
    """Cache of reduction results in ``cache_dir``.

    Args:
        cache_dir: folder for the entries (created on first write). It must not be an existing file.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ValueError(f"cache_dir {self.cache_dir} exists and is not a directory; choose another path")

    def entry_path(self, digest: str, params: dict[str, Any]) -> Path:
        return self.cache_dir / digest[:2] / f"{digest}-{params_digest(params)}.json"

    def get(self, source: str | os.PathLike, params: dict[str, Any], digest: str | None = None) -> dict | None:
        """The cached record for ``source`` under ``params``, or ``None``. A corrupt entry counts as a miss."""
        digest = digest or content_digest(source)
        path = self.entry_path(digest, params)
        try:
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return None
        if record.get("format") != CACHE_FORMAT or record.get("params") != json.loads(json.dumps(params)):
            return None
        return record

    def put(self, record: dict[str, Any], digest: str) -> Path:
        """Store ``record`` (must hold ``params``) under ``digest``; returns the entry path."""
        record = {**record, "format": CACHE_FORMAT, "digest": digest}
        return atomic_write_json(self.entry_path(digest, record["params"]), record)
