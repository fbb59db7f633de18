"""Atomic writes and content digests of volumes on disk.

Outputs are written to a temporary file in the destination folder and moved into place with :func:`os.replace`,
so a reader never sees half a file and an interrupted run leaves the previous version intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "content_digest", "volume_files"]

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename in the same folder).

    ``fsync=False`` skips flushing to the disk: readers still never see a partial file, but a power cut may lose
    it (fine for many small exports that a re-run recreates).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask), so outputs
        # stay readable by the other users of a shared cluster folder
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def volume_files(path: str | os.PathLike) -> list[Path]:
    """The files whose bytes make up a volume: the file itself, or every file of a folder (recursively, sorted).

    A slice-folder volume addressed as ``<folder>/<volume id>`` is made of the files ``<folder>/<volume id>_*``.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if p.parent.is_dir():
        # the same grouping of slice images into volumes as the reader (monai_lessmore.io.slice_folder)
        from monai_lessmore.io.slice_folder import scan_slice_folder

        members = sorted(Path(f.path) for f in scan_slice_folder(p.parent).get(p.name, []))
        if members:
            return members
    raise FileNotFoundError(f"{p} does not exist (expected a volume file, a folder, or '<slice folder>/<volume id>')")


_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _memo_lock:
        _memo[key] = digest
    return digest


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a volume's content: its bytes, or for a folder the names and bytes of its files.

    Within one process a file's digest is remembered by (path, size, modification time), so asking twice reads it
    once.
    """
    p = Path(path)
    files = volume_files(p)
    if len(files) == 1 and files[0] == p:
        return _file_digest(p)
    base = p if p.is_dir() else p.parent
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(base)).encode("utf-8") + b"\0" + _file_digest(f).encode("ascii") + b"\n")
    return h.hexdigest()
