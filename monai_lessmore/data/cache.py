"""Persistent cache of per-volume reductions, keyed by the volume's content and the reduction settings.

A second run over the same data with the same settings reads the kept indices from here and does no hashing.
Entries are small JSON files written atomically, safe to share between processes.

The content digest of a volume is itself remembered in a stat index (``cache_dir/stat/*.stat``, JSON), as git's
index remembers the hash of a file: by the path and the device, inode, size, modification and change times of each
of its files. A volume seen before, unchanged, is then not read at all to find its entry; any write to a file changes
its change time, which no tool can set back, and a copy or a re-extracted dataset is a new inode, read once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from monai_lessmore.utils.files import atomic_open, atomic_write_json, content_digest, volume_files

__all__ = ["ReductionCache", "params_digest"]

CACHE_FORMAT = 1
#: seconds a volume's files must have been unchanged, when its digest is taken, for the digest to enter the stat
#: index: a write within a file system's timestamp granularity of the previous one could leave the stat as it was
#: (git calls such index entries "racy" and checks them by content)
SETTLED_SECONDS = 2.0


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

    def digest(self, source: str | os.PathLike) -> str:
        """:func:`~monai_lessmore.utils.files.content_digest` of ``source``, from the stat index when every file
        of the volume is as it was when the digest was last taken (nothing is read), else computed and recorded.

        Raises:
            FileNotFoundError: ``source`` does not exist (as :func:`~monai_lessmore.utils.files.content_digest`).
        """
        p = Path(source)
        before = _stat_key(p)
        index = self.cache_dir / "stat" / f"{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:32]}.stat"
        try:
            with open(index, encoding="utf-8") as fh:
                entry = json.load(fh)
            if entry["path"] == str(p.resolve()) and entry["files"] == before:
                return str(entry["digest"])
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or corrupt: taken anew
            pass
        digest = content_digest(source)
        now = time.time()
        settled = all(now - max(f[4], f[5]) / 1e9 >= SETTLED_SECONDS for f in before)
        if settled and _stat_key(p) == before:  # unchanged while it was read
            with contextlib.suppress(OSError), atomic_open(index, fsync=False) as fh:  # a lost entry: read again
                fh.write(json.dumps({"path": str(p.resolve()), "files": before, "digest": digest}).encode())
        return digest

    def get(self, source: str | os.PathLike, params: dict[str, Any], digest: str | None = None) -> dict | None:
        """The cached record for ``source`` under ``params``, or ``None``. A corrupt entry counts as a miss."""
        digest = digest or self.digest(source)
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


def _stat_key(path: Path) -> list[list[Any]]:
    """What identifies the content of each file of a volume without reading it: its name under the volume, device,
    inode, size, modification and change times (nanoseconds)."""
    base = path if path.is_dir() else path.parent
    out = []
    for f in volume_files(path):
        st = f.stat()
        out.append([str(f.relative_to(base)), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return out
