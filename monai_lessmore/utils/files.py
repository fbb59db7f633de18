"""Atomic writes, cleanup of temporaries left by killed runs, file hashes and content digests of volumes on disk.

Outputs are written to a temporary file in the destination folder and moved into place with :func:`os.replace`,
so a reader never sees half a file and an interrupted run leaves the previous version intact. A temporary's name
holds the PID of the process writing it (:func:`temp_path`), so a later run can tell the temporaries of a process
that was killed (``kill -9``, out of memory, power cut) from those of one still running, and remove them with
:func:`remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "content_digest",
    "volume_files",
    "temp_path",
    "is_stale_temp",
    "remove_stale_temps",
    "pid_alive",
    "current_umask",
    "file_hash",
    "remember_file_digest",
    "known_file_digest",
    "forget_file_digest",
    "change_time_reliable",
    "mount_entries",
]

_CHUNK = 1 << 20


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` atomically when the ``with`` block ends without error.

    The data goes to a temporary file in the same folder (``.NAME.PID-XXXXXXXX.tmp``), renamed over ``path`` at the
    end or deleted on any error, so a reader never sees half a file and a failed write leaves the previous version
    intact. Use it for writers that stream (``torch.save(obj, fh)``, ``np.save(fh, array)``, a ``ZipFile``).
    ``fsync=False`` skips flushing to the disk: readers still never see a partial file, but a power cut may lose it
    (fine for many small exports that a re-run recreates).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=".tmp", dir=dest.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask), so outputs
        # stay readable by the other users of a shared cluster folder
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (``hash_type``: any :func:`hashlib.new` name, e.g.
    ``"sha256"`` or one of MONAI's ``SUPPORTED_HASH_TYPES``)."""
    try:
        h = hashlib.new(hash_type)
    except ValueError:
        raise ValueError(f"unknown hash_type {hash_type!r} (e.g. 'sha256')") from None
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def volume_files(path: str | os.PathLike) -> list[Path]:
    """The files whose bytes make up a volume: the file itself, or every file of a folder (recursively, sorted).

    A slice-folder volume addressed as ``<folder>/<volume id>`` is made of the files ``<folder>/<volume id>_*``; a
    detached MetaImage or NRRD header (``.mhd``, ``.nhdr``) of itself and the data files it names
    (:func:`detached_data_files`).
    """
    p = Path(path)
    if p.is_file():
        return [p, *detached_data_files(p)]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if p.parent.is_dir():
        # the same grouping of slice images into volumes as the reader (monai_lessmore.io.slice_folder)
        from monai_lessmore.io.slice_folder import scan_slice_folder

        members = sorted(Path(f.path) for f in scan_slice_folder(p.parent).get(p.name, []))
        if members:
            return members
    raise FileNotFoundError(f"{p} does not exist (expected a volume file, a folder, or '<slice folder>/<volume id>')")


#: the header field that names the data files of a detached header, by suffix (MetaIO; NRRD 0004+ and older)
_DATA_FILE_FIELD = {".mhd": re.compile(r"^\s*ElementDataFile\s*=\s*(.*?)\s*$"),
                    ".nhdr": re.compile(r"^\s*data ?file\s*:\s*(.*?)\s*$", re.IGNORECASE)}


def detached_data_files(header: str | os.PathLike) -> list[Path]:
    """The data files a detached MetaImage (``.mhd``: ``ElementDataFile``) or NRRD (``.nhdr``: ``data file``)
    header names, relative to its folder: one file, a ``LIST`` of files on the lines after the field, or a
    ``printf`` pattern with its first, last and step numbers. Empty for other files, ``LOCAL`` data and headers
    that cannot be read (then the reader words the problem)."""
    h = Path(header)
    field = _DATA_FILE_FIELD.get(h.suffix.lower())
    if field is None:
        return []
    try:
        with open(h, "rb") as fh:
            lines = fh.read(1 << 16).decode("latin-1").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        m = field.match(line)
        if m is None:
            continue
        value = m.group(1)
        parts = value.split()
        if not parts or parts[0].upper() == "LOCAL":
            return []
        if parts[0].upper() == "LIST":
            names = [ln.strip() for ln in lines[i + 1:] if ln.strip()]
        elif "%" in parts[0] and len(parts) >= 3:
            try:
                first, last = int(parts[1]), int(parts[2])
                step = int(parts[3]) if len(parts) >= 4 else 1
                names = [parts[0] % k for k in range(first, last + (1 if step > 0 else -1), step)] if step else []
            except (ValueError, TypeError):
                return []
        else:
            names = [value]
        return [h.parent / n for n in names[:100_000]]
    return []


# --- temporaries of killed processes --------------------------------------------------------------------------
#: The temporary names this package's writers use beside their destination ``NAME``, with the writer's PID:
#: ``.NAME.PID-XXXXXXXX.tmp`` (:func:`atomic_write_bytes`), ``.NAME.PID.tmp`` / ``.NAME.PID.old`` (whole folders
#: swapped into place, e.g. exported slices), ``.NAME.PID.tmp.nii.gz`` (writers that need the real suffix), and
#: ``NAME.tmpPID`` / ``NAME.PID.tmp`` (checkpoints and slice stores). The PID is the last number before the marker.
_TEMP_NAME = re.compile(
    r"^(?:\.(?P<a>.+)\.(?P<pid_a>\d+)(?:-[A-Za-z0-9_]+)?\.(?:tmp|old)(?:\.[A-Za-z0-9]+)*"
    r"|(?P<b>.+)\.tmp(?P<pid_b>\d+)"
    r"|(?P<c>.+)\.(?P<pid_c>\d+)\.tmp)$"
)
#: Seconds of tolerance when comparing a process's start time with a temporary's modification time (the boot time
#: in ``/proc/stat`` has one-second resolution).
_START_SLACK = 2.0


def temp_path(dest: str | os.PathLike, suffix: str = "") -> Path:
    """The name of this process's temporary for ``dest``: ``.NAME.PID.tmp`` (+ ``suffix``) in the same folder.

    Use it for temporaries that are folders or need a fixed name (a writer that must see a ``.nii.gz`` suffix);
    :func:`remove_stale_temps` recognises it once the process is gone.
    """
    dest = Path(dest)
    return dest.parent / f".{dest.name}.{os.getpid()}.tmp{suffix}"


def _temp_owner(name: str) -> int | None:
    m = _TEMP_NAME.match(name)
    if m is None:
        return None
    return int(m["pid_a"] or m["pid_b"] or m["pid_c"])


def _proc_start_time(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from ``/proc`` (Linux), or ``None`` where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):  # a zombie has finished: it writes nothing any more
            return float("inf")
        ticks = int(fields[19])
        with open("/proc/stat", "rb") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _win_pid_alive(pid: int) -> bool:
    """Windows: whether ``pid`` runs (``os.kill(pid, 0)`` would terminate it there, not probe it)."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists but belongs to someone else
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether a process with this PID runs on this host (a zombie counts as finished).

    Args:
        pid: the process ID.
        since: a wall-clock time (``time.time()``, a file's modification time) at which the process in question
            was already running, e.g. when it wrote a file. A process holding the PID that started later is
            another one (the PID was reused) and does not count. Ignored where start times cannot be read.
    """
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _win_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        alive = True
    except OSError as exc:
        alive = exc.errno != errno.ESRCH
    else:
        alive = True
    if not alive:
        return False
    started = _proc_start_time(pid)
    if started == float("inf"):
        return False
    return since is None or started is None or started <= since + _START_SLACK


def _last_touched(path: Path) -> float:
    """When ``path`` was last written, renamed or had its times set: a later ``st_ctime`` wins over ``st_mtime``
    (a folder moved into place keeps an old mtime; copies and ``os.utime`` can set any mtime)."""
    st = path.lstat()
    return max(st.st_mtime, st.st_ctime)


def is_stale_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of this package's temporaries (see :func:`temp_path`) whose writer is gone.

    Its writer is gone when no process has its PID, or when the process that has it now started after the
    temporary was last written or renamed (the PID was reused: a writer starts before it writes). Temporaries of this
    process and of live processes that may have written them are never stale. PIDs are those of this host: give
    folders that only this host's processes write into, or hold a lock that keeps other writers out.
    """
    p = Path(path)
    pid = _temp_owner(p.name)
    if pid is None or pid == os.getpid():
        return False
    try:
        touched = _last_touched(p)
    except OSError:
        return False
    return not pid_alive(pid, since=touched)


def remove_stale_temps(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporaries (files or folders) of dead processes directly in ``folder``.

    Call it at the start of a run on the folders it writes into, e.g. after a ``kill -9`` during an export or a
    checkpoint write left a ``.NAME.PID.tmp`` folder or a ``NAME.tmpPID`` file behind. What
    :func:`is_stale_temp` does not call stale (other files, temporaries of live processes) is left alone.

    Args:
        folder: the folder to clean; a missing folder is fine (nothing to do).
        recursive: also clean the sub-folders (not descending into the temporaries themselves).

    Returns:
        The paths removed, sorted.
    """
    removed: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        path = Path(entry.path)
        if is_stale_temp(path):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(path)
        elif recursive and entry.is_dir(follow_symlinks=False):
            removed.extend(remove_stale_temps(path, recursive=True))
    return sorted(removed)


_memo: dict[tuple[str, int, int, int, int, int], str] = {}
_memo_lock = threading.Lock()


def _digest_key(path: Path, st: os.stat_result | None = None) -> tuple[str, int, int, int, int, int]:
    # the inode and change time too: a file replaced by another of the same size and modification time (a copy
    # with preserved times, an unpacked archive) or written in place and re-dated is another key
    st = path.stat() if st is None else st
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def mount_entries(mountinfo: str) -> list[tuple[str, str, str, str]]:
    """``(mount root, mount point, file-system type, super options)`` of each line of a ``/proc/<pid>/mountinfo``
    text, the kernel's octal escapes (space, tab, newline, backslash) undone; odd lines are skipped."""
    entries = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3:
            root, point = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f) for f in fields[3:5])
            entries.append((root, point, tail[0], tail[2]))
    return entries


#: file-system types whose change time is not set by every write (FUSE mounts such as sshfs, s3fs, rclone and
#: gcsfuse report the modification time as it; 9p and VirtualBox shares depend on their host)
UNRELIABLE_CHANGE_TIME = ("fuse", "9p", "vboxsf")


def change_time_reliable(path: str | os.PathLike, *, mountinfo: str | os.PathLike = "/proc/self/mountinfo") -> bool:
    """Whether every write to ``path`` sets its change time (``st_ctime``) to the current time, as POSIX requires:
    on POSIX systems, unless ``path`` lies on a mount of :data:`UNRELIABLE_CHANGE_TIME` (by the mount table;
    without one, as on macOS, it is taken as reliable). Never on Windows, whose ``st_ctime`` is the creation
    time."""
    if os.name != "posix":
        return False
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
            mounts = mount_entries(fh.read())
    except OSError:
        return True
    real = os.path.realpath(path)
    best = None
    for _, point, fstype, _ in mounts:  # the last of the longest matching mount points is the one in use
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best[0]):
                best = (point, fstype)
    return best is None or not best[1].startswith(UNRELIABLE_CHANGE_TIME)


def remember_file_digest(path: str | os.PathLike, digest: str, st: os.stat_result) -> None:
    """Record ``digest``, the SHA-256 of the file ``path`` computed by a reader from the bytes it read, for
    :func:`content_digest`; ``st`` is the file's ``os.stat`` taken before that read (a file changed since then has
    another key, so it is hashed anew)."""
    with _memo_lock:
        _memo[_digest_key(Path(path), st)] = digest


def forget_file_digest(path: str | os.PathLike) -> None:
    """Forget what this process remembers of the file ``path``'s digest, whatever its stat: the next reader hashes
    it afresh."""
    resolved = str(Path(path).resolve())
    with _memo_lock:
        for key in [k for k in _memo if k[0] == resolved]:
            del _memo[key]


def known_file_digest(path: str | os.PathLike, st: os.stat_result) -> str | None:
    """The SHA-256 of the file ``path`` with stat ``st`` if this process has taken or been given it
    (:func:`content_digest`, :func:`remember_file_digest`), else ``None``; nothing is read."""
    with _memo_lock:
        return _memo.get(_digest_key(Path(path), st))


def _file_digest(path: Path, fresh: bool = False) -> str:
    key = _digest_key(path)
    if not fresh:
        with _memo_lock:
            hit = _memo.get(key)
        if hit is not None:
            return hit
    digest = file_hash(path)
    with _memo_lock:
        _memo[key] = digest
    return digest


def content_digest(path: str | os.PathLike, *, fresh: bool = False) -> str:
    """SHA-256 of a volume's content: its bytes, or for a folder the names and bytes of its files.

    Within one process a file's digest is remembered by its path and stat (device, inode, size, modification and
    change times), so asking twice reads it once; the ``.nii.gz`` reader records the digest of the bytes it
    inflated (:func:`remember_file_digest`), so asking after a volume was read does not read it again.

    Args:
        path: a file, a folder, or a slice-folder volume ``<folder>/<volume id>``.
        fresh: read every file now, whatever this process remembers (the result is remembered all the same).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    files = volume_files(p)
    if len(files) == 1 and files[0] == p:
        return _file_digest(p, fresh)
    base = p if p.is_dir() else p.parent
    h = hashlib.sha256()
    for f in files:
        name = os.path.relpath(f, base)  # a detached header's data file may lie outside its folder
        h.update(name.encode("utf-8", "surrogateescape") + b"\0" + _file_digest(f, fresh).encode("ascii") + b"\n")
    return h.hexdigest()
