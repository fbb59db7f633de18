"""Persistent cache of per-volume reductions, keyed by the volume's content and the reduction settings.

A second run over the same data with the same settings reads the kept indices from here and does no hashing.
Entries are small JSON files written atomically, safe to share between processes.

The content digest of a volume is itself remembered in a stat index (``cache_dir/stat/*.stat``, JSON), as git's
index remembers the hash of a file: by the volume's resolved path and, for each of its files, its name, device,
inode, size, modification and change times. A volume seen before, unchanged, is then found without being read.
On POSIX systems every write to a file sets its change time to the current time and no call sets it back, so a
file rewritten in place has another stat, and a copy or a re-extracted dataset has other inodes: each is read once.
A digest enters the index only when the bytes it was taken from were read at least :data:`SETTLED_SECONDS` after
the files last changed (git's "racy" entries: a write within the timestamp granularity of the previous one would
not show in the stat). The stat is taken through an open file descriptor, so NFS revalidates it (close-to-open).
The index is not used where these guarantees do not hold: on Windows (its ``st_ctime`` is the creation time) and
for volumes on FUSE mounts whose change time is only the modification time (sshfs, s3fs, rclone, gcsfuse: a
same-size rewrite with its times restored, ``rsync -t --inplace``, would look unchanged), 9p and VirtualBox
shares (:func:`~monai_lessmore.utils.files.change_time_reliable`, by the mount table); ``stat_index=False`` turns it
off for any other such file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from monai_lessmore.utils.files import (
    atomic_open,
    atomic_write_json,
    change_time_reliable,
    content_digest,
    known_file_digest,
    remember_file_digest,
    volume_files,
)

__all__ = ["ReductionCache", "params_digest", "volume_stat", "settled"]

CACHE_FORMAT = 1
#: seconds between a volume's last change (its files' change times) and the start of the read that took its
#: digest, at least, for the digest to enter the stat index: more than any file system's timestamp granularity
#: (FAT: 2 s) and than a modest clock skew between an NFS server and its client
SETTLED_SECONDS = 5.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_clock = time.time  # the wall clock that file times are compared with (tests replace it)


def params_digest(params: dict[str, Any]) -> str:
    """Short stable digest of JSON-serialisable settings."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class ReductionCache:
    """Cache of reduction results in ``cache_dir``.

    Args:
        cache_dir: folder for the entries (created on first write). It must not be an existing file.
        stat_index: find the digest of a volume seen before, unchanged, from its files' stat instead of reading
            it (see the module docstring for when that holds); never on Windows. ``False``: read every volume.
    """

    def __init__(self, cache_dir: str | os.PathLike, stat_index: bool = True) -> None:
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ValueError(f"cache_dir {self.cache_dir} exists and is not a directory; choose another path")
        if not isinstance(stat_index, bool):  # a config's "false" would otherwise count as True
            raise ValueError(f"stat_index must be True or False, got {stat_index!r}")
        self.stat_index = stat_index and os.name == "posix"

    def entry_path(self, digest: str, params: dict[str, Any]) -> Path:
        return self.cache_dir / digest[:2] / f"{digest}-{params_digest(params)}.json"

    def digest(self, source: str | os.PathLike) -> str:
        """The content digest of a volume, from the stat index when it was seen before unchanged.

        Args:
            source: a volume (file, folder or slice-folder volume).

        Returns:
            :func:`~monai_lessmore.utils.files.content_digest` of ``source``. On an index miss the volume is read
            and, when its files had settled (:data:`SETTLED_SECONDS`) and did not change while read, its digest
            is added to the index (a failed write only costs a read next time).

        Raises:
            FileNotFoundError: ``source`` does not exist.
        """
        p = Path(source)
        if not self.stat_index or not change_time_reliable(p):
            return content_digest(source)
        started = _clock()
        before, stats = volume_stat(p)
        resolved = os.fsencode(p.resolve())
        index = self.cache_dir / "stat" / f"{hashlib.sha256(resolved).hexdigest()[:32]}.stat"
        entry = _read_index(index)
        if entry is not None and entry["path"] == os.fsdecode(resolved) and entry["files"] == before:
            if len(stats) == 1 and p.is_file() and known_file_digest(p, stats[0]) is None:  # a reader need not hash it
                remember_file_digest(p, entry["digest"], stats[0])
            return entry["digest"]
        digest = content_digest(source, fresh=True)  # from bytes read after `started`, not remembered ones
        try:
            unchanged = volume_stat(p)[0] == before
        except OSError:
            unchanged = False
        if unchanged and settled(stats, started):
            record = {"path": os.fsdecode(resolved), "files": before, "digest": digest}
            with contextlib.suppress(OSError), atomic_open(index, fsync=False) as fh:
                fh.write(json.dumps(record).encode("ascii"))
        return digest

    def get(self, source: str | os.PathLike, params: dict[str, Any], digest: str | None = None) -> dict | None:
        """The cached record for ``source`` under ``params``, or ``None``. A corrupt entry counts as a miss.

        Without ``digest`` it is taken by :meth:`digest` (which may add to the stat index).
        """
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


def _read_index(path: Path) -> dict[str, Any] | None:
    """A stat index entry, or ``None`` when there is none or it is not one (then it is taken anew)."""
    try:
        with open(path, encoding="ascii") as fh:  # written by json.dumps: ASCII, other characters escaped
            entry = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return None
    if not isinstance(entry.get("files"), list):
        return None
    return entry if isinstance(entry.get("digest"), str) and _SHA256.fullmatch(entry["digest"]) else None


def settled(stats: list[os.stat_result], started: float) -> bool:
    """Whether files with these stats, read from wall-clock time ``started`` on, were read at least
    :data:`SETTLED_SECONDS` after their last change (their change time): then a later write shows in their stat.
    Never on systems other than POSIX, whose change time is not set by every write."""
    return os.name == "posix" and all(started - st.st_ctime_ns / 1e9 >= SETTLED_SECONDS for st in stats)


def volume_stat(path: str | os.PathLike) -> tuple[list[list[Any]], list[os.stat_result]]:
    """What identifies the content of each file of a volume without reading it (its name under the volume, device,
    inode, size, modification and change times in nanoseconds), and the files' stats. Each is taken with the file
    open (``fstat``): NFS revalidates a file's attributes when it is opened.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    base = path if path.is_dir() else path.parent
    key, stats = [], []
    for f in volume_files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        key.append([os.path.relpath(f, base), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
        stats.append(st)
    return key, stats
