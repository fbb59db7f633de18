"""``lessmore reduce``: reduce a whole dataset on disk, one volume at a time, in parallel, resumably.

Layout of the output folder::

    DIR/.lessmore-reduce.lock  the run's lock (PID and host of the run holding it); marks DIR as an output folder
    DIR/manifest.csv         one row per slice of every finished volume: volume,source,slice_index,kept,hash
    DIR/summary.json         parameters, per-volume counts, overall kept fraction, failures
    DIR/records/<volume>.json  per-volume result, written as soon as that volume is done (resume reads these)
    DIR/slices/<volume>/<volume>_<index>.png   with --export png: kept slices, 8-bit (the authors' layout)
    DIR/volumes/<volume>.nii.gz                with --export nifti: kept slices in HU

Every file is written atomically, the records, manifest and summary by the client process: workers (local processes
or Dask workers, see :mod:`monai_lessmore.cli.dask_backend`) return each volume's record and the client writes it as
soon as it arrives, so workers need no shared filesystem unless they export slices. Inputs are only read. A volume
that fails is reported in ``summary.json`` and on stderr while the others go on; the exit status is non-zero when
any failed. Re-running with the same settings skips the volumes whose record matches (same source content, same
settings, requested exports present).

Faults: one run at a time writes to an output folder (:func:`output_lock`; a second exits naming the first); an
output inside an input (or an input inside the output's exports) is refused before anything is written; local
worker processes exit when the client dies (parent-death signal on Linux, a watchdog on the parent elsewhere), and
a new run waits for those of a killed one before it starts; temporaries of killed processes are removed at the
start (:func:`~monai_lessmore.utils.files.remove_stale_temps`); a full disk stops the run with
:class:`DiskFullError` after cleaning up the failed exports, keeping every finished volume's record.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from monai_lessmore.cli.names import unique_volume_names, volume_name
from monai_lessmore.data.cache import settled, volume_stat
from monai_lessmore.io.discover import OUTPUT_MARKER, is_output_folder
from monai_lessmore.io.slice_folder import resolve_slice_volume, validate_order
from monai_lessmore.reduction.reducer import SliceReducer
from monai_lessmore.utils.cpus import available_cpus
from monai_lessmore.utils.files import (
    atomic_write_json,
    atomic_write_text,
    change_time_reliable,
    content_digest,
    current_umask,
    forget_file_digest,
    pid_alive,
    remove_stale_temps,
    temp_path,
)

__all__ = [
    "ReduceJob",
    "Executor",
    "local_executor",
    "volume_name",
    "process_volume",
    "output_lock",
    "OutputLocked",
    "DiskFullError",
    "MANIFEST_COLUMNS",
    "EXPORTS",
]

MANIFEST_COLUMNS = ("volume", "source", "slice_index", "kept", "hash")
EXPORTS = ("none", "png", "nifti")


def _export_png(out_dir: Path, name: str, u8: Any, kept: Iterable[int]) -> None:
    """Write the kept slices to ``slices/<name>/`` as a whole: a re-run with other settings replaces the folder, so
    no slice kept by an earlier run stays behind."""
    from PIL import Image

    parent = out_dir / "slices"
    final = parent / name
    tmp = temp_path(final)
    old = parent / f".{name}.{os.getpid()}.old"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    try:
        for k in kept:
            Image.fromarray(u8[k]).save(tmp / f"{name}_{k}.png")
            os.chmod(tmp / f"{name}_{k}.png", 0o666 & ~current_umask())
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        # a failed export (a full disk) gives its space back and leaves the previous export in place
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _export_nifti(out_dir: Path, name: str, vol: Any, kept: np.ndarray) -> None:
    import nibabel as nib

    data = vol.take(kept)  # (K, H, W) in the LPS view: rows anterior->posterior, columns right->left
    # stored as (W, H, K) so that the voxel axes run towards patient left, posterior, superior. The kept slices are
    # no longer evenly spaced: the header keeps the original spacing, the original positions are in the manifest.
    spacing = vol.meta.get("spacing") or (1.0, 1.0, 1.0)
    s_k, s_h, s_w = (float(v) for v in spacing)
    affine = np.diag([-s_w, -s_h, s_k, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(np.float32), affine)
    dest = out_dir / "volumes" / f"{name}.nii.gz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest, ".nii.gz")  # nibabel picks the format by the suffix
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _volume_warnings(vol: Any, result: Any) -> list[str]:
    """Things about a volume worth a look that are not errors: they go to its record and the summary."""
    out = []
    if result.n_slices == 1:
        out.append("single-slice volume: nothing to reduce, the slice is kept")
    elif all(h == "0000000000000000" for h in result.hashes):
        out.append("every slice renders constant (all hashes 0): one slice kept")
    missing = vol.meta.get("missing_indices") if isinstance(vol.meta, dict) else None
    if missing:
        shown = ", ".join(str(i) for i in list(missing)[:10])
        out.append(f"{len(missing)} slice indices missing from the folder ({shown}{', ...' if len(missing) > 10 else ''})")
    if getattr(vol, "kind", None) == "dicom" and isinstance(vol.meta, dict):
        out.extend(str(w) for w in vol.meta.get("warnings", []))
    return out


def process_volume(
    source: str,
    name: str,
    reducer_args: dict[str, Any],
    out_dir: str,
    export: str,
    order: str,
    *,
    write_record: bool = True,
) -> dict[str, Any]:
    """Load, reduce and export one volume; write its record. Top-level so process pools (and Dask) can run it.

    Args:
        write_record: write ``out_dir/records/<name>.json`` here; ``False`` when the caller (the client of a
            :class:`ReduceJob`) writes it from the returned record.

    Returns:
        The record (written to ``out_dir/records/<name>.json`` when ``write_record``).
    """
    from monai_lessmore.io import load_volume
    from monai_lessmore.utils.gzstream import cancel_readaheads, readahead_started

    cancel_readaheads(keep=source)  # a read-ahead of another volume (monai_lessmore.cli.readahead) is not needed now
    reducer = SliceReducer(**reducer_args)
    started = time.time()
    ahead = readahead_started(source)  # a read-ahead of this file that the reader may take: the read began then
    if ahead is not None:
        started = min(started, ahead)
    try:
        before = volume_stat(source)
    except OSError:
        before = None  # the load words it
    if os.path.isfile(source):  # the digest in the record must come from this read (see _source_stat)
        forget_file_digest(source)
    with warnings.catch_warnings():
        # the reader's warnings (DICOM position gaps, missing rescale) go to the record and the summary instead
        warnings.simplefilter("ignore", UserWarning)
        vol = load_volume(source, order=order, lazy=True).require_finite()
    streamed = getattr(vol, "streamed", False)
    # the digest of what is reduced: taken before the read, or for a .nii.gz read in a thread from the bytes it
    # inflated (no second read), once that thread has ended
    digest = None if streamed else content_digest(source, fresh=True)
    result = reducer.reduce(vol.slices(), rendered=vol.is_uint8_rendered)
    if digest is None:
        vol.finish_reading()
        digest = content_digest(source)
    out = Path(out_dir)
    if export == "png":
        _export_png(out, name, reducer.render(vol.slices(), rendered=vol.is_uint8_rendered), result.kept.tolist())
    elif export == "nifti":
        _export_nifti(out, name, vol, result.kept)
    record = {
        "volume": name,
        "source": str(source),
        "digest": digest,
        "params": {**reducer.params(), "order": order},
        "n_slices": result.n_slices,
        "kept": result.kept.tolist(),
        "hashes": result.hashes,
        "threshold": result.threshold,
        "slice_sources": vol.slice_sources,
        "exports": [] if export == "none" else [export],
        "warnings": _volume_warnings(vol, result),
        "seconds": round(result.seconds, 6),
        "resampled_to": None if result.resampled_to is None else list(result.resampled_to),
        "source_stat": _source_stat(source, before, started),
    }
    if write_record:
        atomic_write_json(out / "records" / f"{name}.json", record)
    return record


def _source_stat(source: str, before: Any, started: float) -> list[list[Any]] | None:
    """The stat of the source's files (:func:`~monai_lessmore.data.cache.volume_stat`) that a resumed run may
    trust its record's digest by, without reading the volume again: the files were unchanged from before the read
    to after it, and read long enough after their last change (:func:`~monai_lessmore.data.cache.settled`), as
    the reduction cache's stat index requires. ``None`` otherwise (a resumed run then reads and hashes it)."""
    if before is None or not settled(before[1], started) or not change_time_reliable(source):
        return None
    try:
        after = volume_stat(source)[0]
    except OSError:
        return None
    return after if after == before[0] else None


# --- executor hook (Dask scale-out) --------------------------------------------------------------------------
#: Runs ``process_volume(source, name, *args, write_record=False)`` for every ``(source, name)`` of a to-do list
#: and yields ``(source, name, get)`` as each volume finishes, where ``get()`` returns its record or raises its
#: error. The client writes each record as it arrives. See :func:`local_executor` and
#: :class:`monai_lessmore.cli.dask_backend.DaskExecutor`.
Executor = Callable[[Sequence[tuple[str, str]], tuple], Iterator[tuple[str, str, Callable[[], dict[str, Any]]]]]


def _share_cores(threads: int) -> None:
    """Limit this worker's torch (and compiled-kernel) threads, never above what it would use anyway; with fewer
    than two, its ``.nii.gz`` files are read before they are rendered, not in a thread alongside.

    A spawned worker has not imported torch yet, and a HASH run never does (importing it costs each worker ~2 s of
    CPU): ``OMP_NUM_THREADS``, which torch reads when it is imported, carries the limit. Where torch is already
    imported its intra-op thread count is set directly.
    """
    current = os.environ.get("OMP_NUM_THREADS", "")
    limit = max(1, min(threads, int(current)) if current.isdigit() and int(current) > 0 else threads)
    os.environ["OMP_NUM_THREADS"] = str(limit)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, min(limit, torch.get_num_threads())))
    if threads < 2 and "LESSMORE_STREAM_GZIP" not in os.environ:
        # with one core of its own a worker reads each .nii.gz first: inflating in a thread would only take turns
        # with the rendering (see monai_lessmore.utils.gzstream.stream_gzip_default)
        os.environ["LESSMORE_STREAM_GZIP"] = "0"
        nifti = sys.modules.get("monai_lessmore.io.nifti")
        if nifti is not None:
            nifti.STREAM_GZIP = False


#: Seconds between a worker's checks that its parent (the client) is alive, where no parent-death signal exists.
_WATCHDOG_INTERVAL = 0.5
#: File beside the lock that the local workers of a run hold shared: a new run waits until nobody holds it.
_WORKERS_LOCK = ".lessmore-reduce.workers"
#: Seconds a new run waits for the workers of a killed one to exit before it gives up.
_LEFTOVER_WAIT = 30.0
_worker_lock_fd: int | None = None


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies: a parent-death SIGKILL (Linux ``prctl``) and a watchdog thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_WATCHDOG_INTERVAL)
            # POSIX re-parents an orphan (getppid changes); Windows keeps the dead parent's PID, so ask about it
            if os.getppid() != parent or (sys.platform == "win32" and not pid_alive(parent)):
                os._exit(1)  # the client is gone: nobody will collect the results

    threading.Thread(target=watch, name="lessmore-parent-watchdog", daemon=True).start()


def _worker_init(threads: int, parent: int, workers_lock: str | None) -> None:
    """Process-pool initializer: exit with the client, hold the run's workers lock shared, share the cores."""
    global _worker_lock_fd
    _die_with_parent(parent)
    if workers_lock is not None:
        with contextlib.suppress(OSError, ImportError):
            import fcntl

            fd = os.open(workers_lock, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
            fcntl.flock(fd, fcntl.LOCK_SH)
            _worker_lock_fd = fd  # held until this process ends
    _share_cores(threads)


def local_executor(workers: int = 1) -> Executor:
    """The default executor: in this process (``workers == 1``) or a spawn-started process pool.

    The pool's workers exit when this process dies (also by ``kill -9``), and hold the output folder's workers
    lock while they live, so a new run into the same folder never overlaps with them.
    """

    def run(todo: Sequence[tuple[str, str]], args: tuple) -> Iterator[tuple[str, str, Callable[[], dict[str, Any]]]]:
        if workers == 1 or len(todo) <= 1:
            for source, name in todo:
                # process_volume is looked up at call time so tests can monkeypatch it
                yield source, name, lambda s=source, n=name: process_volume(s, n, *args, write_record=False)
            return
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        # spawn: workers must not inherit torch/BLAS thread pools from a forked parent; each gets its share of the
        # cores (torch's count, which the compiled SSIM/MI kernels follow too) instead of all of them
        threads = max(1, available_cpus() // workers)
        workers_lock = os.path.join(args[1], _WORKERS_LOCK)
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init,
            initargs=(threads, os.getpid(), workers_lock),
        )
        try:
            futures = {pool.submit(process_volume, s, n, *args, write_record=False): (s, n) for s, n in todo}
            for fut in as_completed(futures):
                s, n = futures[fut]
                yield s, n, fut.result
        finally:
            # stopped early (a full disk, Ctrl-C): drop the volumes not started, let the running ones end
            pool.shutdown(wait=True, cancel_futures=True)

    return run
# --- end executor hook -----------------------------------------------------------------------------------------


class OutputLocked(RuntimeError):
    """Another run writes to the output folder (its PID and host are in the message)."""


class DiskFullError(OSError):
    """The output filesystem is full: the run stopped; finished volumes keep their records (re-run to resume).

    Attributes:
        summary: the summary written to ``summary.json``, or ``None`` when even that could not be written.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(errno.ENOSPC, message)
        self.summary = summary

    def __str__(self) -> str:
        return str(self.strerror)


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _lock_owner(path: Path, wait: float = 2.0) -> dict[str, Any]:
    """What the lock file says about its holder; ``{}`` when it says nothing readable within ``wait`` seconds (the
    holder writes it right after taking the lock)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(owner, dict) and "pid" in owner:
                return owner
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def _locked_message(folder: Path, owner: dict[str, Any]) -> str:
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    if owner.get("started"):
        who += f", started {owner['started']}"
    return (
        f"{folder} is in use by another lessmore reduce run ({who}); wait for it to finish, or give another "
        "--output (two runs into one folder would mix their records and exported slices)"
    )


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Hold the lock of an output folder (created if needed) while the ``with`` block runs.

    The lock is ``folder/.lessmore-reduce.lock`` (:data:`~monai_lessmore.io.discover.OUTPUT_MARKER`), locked with
    ``flock`` and holding the PID, host and start time of its holder. The kernel releases it when the holder ends,
    however it ends, so the lock of a killed run is simply taken over. On a filesystem without ``flock`` the PID in
    the file decides: a live process of this host keeps the folder, a dead one's lock is taken over.

    Yields:
        What was written to the lock file (``pid``, ``host``, ``started``, ``command``).

    Raises:
        OutputLocked: another run (in any process, this one included) holds the lock; the message names it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OUTPUT_MARKER
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    flock = True
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            raise OutputLocked(_locked_message(folder, _lock_owner(path))) from None
        except (OSError, ImportError):  # no flock here (Windows, some network filesystems): the PID decides
            flock = False
            owner = _lock_owner(path, wait=0.0)
            pid = owner.get("pid")
            try:
                written = os.stat(path).st_mtime
            except OSError:
                written = None
            # a process that started after the holder wrote the file is not the holder (its PID was reused)
            if (
                isinstance(pid, int) and pid != os.getpid() and owner.get("host") == socket.gethostname()
                and pid_alive(pid, since=written)
            ):
                raise OutputLocked(_locked_message(folder, owner)) from None
        else:
            flock = True
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": sys.argv,
        }
        data = (json.dumps(info) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):  # a full disk must not lose the lock, only its description
            # written over the old text, then cut to length: a reader never finds it empty
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        yield info
    finally:
        if not flock:  # the PID is the lock there: a finished run gives it up
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


def _wait_for_leftover_workers(folder: Path, timeout: float | None = None) -> None:
    """Wait until no worker of an earlier (killed) run holds ``folder``'s workers lock (``timeout`` seconds at
    most, default :data:`_LEFTOVER_WAIT`)."""
    timeout = _LEFTOVER_WAIT if timeout is None else timeout
    try:
        import fcntl
    except ImportError:
        return
    path = folder / _WORKERS_LOCK
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OutputLocked(
                        f"worker processes of an earlier run into {folder} are still running after {timeout:g} s "
                        f"(they hold {path}); end them (e.g. `fuser -k {path}`) and run again"
                    ) from None
                time.sleep(0.1)
            except OSError:  # no flock on this filesystem
                return
    finally:
        os.close(fd)


def _check_paths(inputs: Sequence[str], output: str) -> None:
    """Refuse, before anything is written: missing inputs, an output under a file or where this user cannot write,
    an output inside an input and an input inside the output's exports."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a directory; give a new or existing folder")
    existing = out.absolute() if out.exists() else None
    for parent in out.absolute().parents:
        if existing is not None:
            break
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output {out}: {parent} is a file, not a folder; give an output folder path")
            existing = parent
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output {out}: cannot write to {existing} (permission denied); give an output folder you can write to"
        )
    real_out = os.path.realpath(out)
    for inp in inputs:
        exists = os.path.exists(inp)
        if not exists and resolve_slice_volume(inp) is None:
            raise ValueError(
                f"INPUT {inp} does not exist; give a volume file, a DICOM series folder, a slice folder (or "
                "'<slice folder>/<volume id>') or a folder of many volumes"
            )
        real_in = os.path.realpath(inp if exists else os.path.dirname(inp) or ".")
        if os.path.isdir(real_in) and (real_out == real_in or real_out.startswith(real_in.rstrip(os.sep) + os.sep)):
            raise ValueError(
                f"--output {out} is inside the input {inp}: a later run would read the outputs as new volumes; "
                "give an output folder outside every input"
            )
        for sub in ("slices", "volumes", "records"):
            area = os.path.join(real_out, sub)
            if real_in == area or real_in.startswith(area + os.sep):
                raise ValueError(
                    f"INPUT {inp} is inside the output folder {out} ({sub}/ is written by this run); give another "
                    "--output to reduce what an earlier run exported"
                )


@dataclass
class ReduceJob:
    """A ``lessmore reduce`` run (also usable from Python).

    Args:
        inputs: volume files, DICOM series folders, slice folders, or folders of many volumes.
        output: output folder (created; must not be an existing file).
        reducer_args: :class:`SliceReducer` arguments (validated here, before any work).
        export: ``"none"``, ``"png"`` or ``"nifti"``.
        workers: processes working on volumes in parallel (1 = in this process).
        order: slice order: ``"index"`` (anatomical), ``"filename"`` (slice folders: the authors' string sort) or
            ``"instance"`` (DICOM: InstanceNumber).
        progress: show a progress bar on stderr.
        executor: runs the volumes (:data:`Executor`); ``None`` = :func:`local_executor` with ``workers``. A
            :class:`~monai_lessmore.cli.dask_backend.DaskExecutor` spreads them over a Dask cluster.
        verify_digests: on a re-run, read and hash every finished volume to check its record, instead of trusting
            the stat its record keeps (``source_stat``; for file systems that do not keep change times).
    """

    inputs: Sequence[str]
    output: str
    reducer_args: dict[str, Any] = field(default_factory=dict)
    export: str = "none"
    workers: int = 1
    order: str = "index"
    progress: bool = True
    executor: Executor | None = None  # executor hook (Dask scale-out)
    verify_digests: bool = False

    def __post_init__(self) -> None:
        if self.export not in EXPORTS:
            raise ValueError(f"--export must be one of {', '.join(EXPORTS)}, got {self.export!r}")
        validate_order(self.order)
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"--workers must be a positive integer, got {self.workers!r}")
        if not self.inputs:
            raise ValueError("give at least one INPUT (a volume, a DICOM series folder, a slice folder or a dataset folder)")
        _check_paths(self.inputs, self.output)
        self.reducer = SliceReducer(**self.reducer_args)  # fail fast on bad settings

    # ------------------------------------------------------------------
    def discover(self) -> tuple[list[str], list[dict[str, str]]]:
        """Volume paths under every input, and a failure entry for each input that yields none."""
        from monai_lessmore.io import discover_volumes

        sources: list[str] = []
        failures: list[dict[str, str]] = []
        for inp in self.inputs:
            try:
                found = discover_volumes(inp)
            except Exception as exc:  # noqa: BLE001 - reported, the other inputs go on
                failures.append({"source": str(inp), "error": f"{type(exc).__name__}: {exc}"})
                continue
            if not found:
                if is_output_folder(inp):
                    error = ("the output folder of a lessmore reduce run, whose outputs are not volumes; give its slices/ "
                             "or volumes/ folder to reduce what it exported")
                else:
                    error = "no volumes found (NIfTI, DICOM series, NRRD/MHA or slice folders)"
                failures.append({"source": str(inp), "error": error})
            # absolute: Dask workers on other hosts resolve paths against their own working directory
            sources.extend(os.path.abspath(f) for f in found)
        seen: set[str] = set()
        unique = [s for s in sources if not (s in seen or seen.add(s))]
        return unique, failures

    def _params(self) -> dict[str, Any]:
        return {**self.reducer.params(), "order": self.order}

    def _resumable(self, record_path: Path, source: str) -> dict[str, Any] | None:
        try:
            with open(record_path, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return None
        want = json.loads(json.dumps(self._params()))
        have = record.get("params")
        if record.get("source") != source:
            return None
        if have != want:
            # --mixed-size only matters for volumes whose slices differ in size: a record of a volume that was not
            # resampled stays valid when only that option changed (e.g. added after such a volume was refused)
            def others(d: Any) -> Any:
                return {k: v for k, v in d.items() if k != "mixed_size"} if isinstance(d, dict) else d

            if not ("resampled_to" in record and record["resampled_to"] is None and others(have) == others(want)):
                return None
        if self.export != "none" and self.export not in record.get("exports", []):
            return None
        try:
            # the record's stat of the files, where it vouches for its digest, spares reading them (see _source_stat;
            # a stat taken on another host, a Dask worker's, usually differs in its device numbers: then it is read)
            stat = None if self.verify_digests else record.get("source_stat")
            if not (stat and os.name == "posix" and volume_stat(source)[0] == stat):
                if record.get("digest") != content_digest(source):
                    return None
        except OSError:
            return None
        return record

    def run(self, log=None) -> dict[str, Any]:
        """Run the job holding the output folder's lock; returns the summary (also written to ``summary.json``).

        Raises:
            OutputLocked: another run writes to the output folder (nothing was written).
            DiskFullError: the output filesystem filled up; the run stopped after the volumes in progress.
        """
        log = sys.stderr if log is None else log
        out = Path(self.output)
        with output_lock(out):
            _wait_for_leftover_workers(out)
            removed = [p for d in (out, out / "records", out / "slices", out / "volumes") for p in remove_stale_temps(d)]
            if removed:
                print(f"lessmore reduce: removed {len(removed)} temporary file(s) of an interrupted run", file=log)
            return self._run(out, log)

    def _run(self, out: Path, log) -> dict[str, Any]:
        from tqdm.autonotebook import tqdm  # tqdm.auto adds asyncio support: ~20 ms more start-up, unused

        start = time.perf_counter()
        sources, failures = self.discover()
        names = unique_volume_names(sources)
        records: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, str]] = []
        for source, name in zip(sources, names):
            rec = self._resumable(out / "records" / f"{name}.json", source)
            if rec is not None:
                records[name] = {**rec, "resumed": True}
            else:
                todo.append((source, name))
        args = (dict(self.reducer_args), str(out.resolve()), self.export, self.order)
        bar = tqdm(total=len(todo), desc="reducing", unit="vol", disable=not self.progress, file=log)
        disk_full: BaseException | None = None
        run_all = self.executor if self.executor is not None else local_executor(self.workers)
        volumes = run_all(todo, args)
        try:
            for source, name, get in volumes:
                disk_full = self._collect(records, failures, source, name, get, log, out, bar)
                bar.update()
                if disk_full is not None:
                    break  # every further volume would fail the same way
        finally:
            close = getattr(volumes, "close", None)
            if close is not None:
                close()  # cancels what has not started
            bar.close()
            # whatever happened, everything finished so far goes into the manifest and summary
            try:
                summary = self._write_outputs(out, sources, names, records, failures, time.perf_counter() - start)
            except OSError as exc:
                if not _is_disk_full(exc):
                    raise
                raise DiskFullError(self._disk_full_message(out, records, todo, written=False)) from None
        if disk_full is not None:
            raise DiskFullError(self._disk_full_message(out, records, todo, written=True), summary)
        return summary

    @staticmethod
    def _disk_full_message(out: Path, records, todo, *, written: bool) -> str:
        done = sum(1 for _, n in todo if n in records and not records[n].get("resumed"))
        return (
            f"disk full: no space left on the filesystem of {out}. {len(records)} volume(s) finished (this run: "
            f"{done} of {len(todo)}), their records are in {out / 'records'}; "
            + ("manifest.csv and summary.json list them. " if written else "manifest.csv and summary.json could not "
               "be written. ")
            + "Free some space (or give an --output with room) and run the same command again: it resumes."
        )

    @staticmethod
    def _collect(records, failures, source, name, get, log, out: Path, bar=None) -> BaseException | None:
        """Record one finished volume, or its failure (one short line now, in full in the summary); returns the
        error when it was a full disk."""
        try:
            record = get()
            atomic_write_json(out / "records" / f"{name}.json", record)  # the client writes every record
            records[name] = {**record, "resumed": False}
        except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the batch
            msg = f"{type(exc).__name__}: {exc}"
            failures.append({"source": source, "volume": name, "error": msg})
            line = f"lessmore reduce: failed {name}: {msg}"
            if len(line) > 100:
                line = line[:96] + "... (in full at the end)"
            if bar is not None and not bar.disable:
                bar.write(line, file=log)
            else:
                print(line, file=log)
            return exc if _is_disk_full(exc) else None
        return None

    def _write_outputs(self, out, sources, names, records, failures, seconds) -> dict[str, Any]:
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        per_volume: dict[str, Any] = {}
        n_total = n_kept = 0
        failed = {f["source"] for f in failures}
        pending = [s for s, n in zip(sources, names) if n not in records and s not in failed]
        for source, name in sorted(zip(sources, names), key=lambda t: t[1]):
            rec = records.get(name)
            if rec is None:
                continue
            kept = set(rec["kept"])
            slice_sources = rec.get("slice_sources") or [rec["source"]] * rec["n_slices"]
            for k in range(rec["n_slices"]):
                writer.writerow((name, slice_sources[k], k, int(k in kept), rec["hashes"][k]))
            n_total += rec["n_slices"]
            n_kept += len(kept)
            per_volume[name] = {
                "source": rec["source"],
                "n_slices": rec["n_slices"],
                "n_kept": len(kept),
                "kept_fraction": round(len(kept) / rec["n_slices"], 6),
                "threshold": rec.get("threshold"),
                "seconds": rec.get("seconds"),
                "resumed": rec.get("resumed", False),
                "warnings": rec.get("warnings", []),
            }
        summary = {
            "params": self._params(),
            "inputs": [str(i) for i in self.inputs],
            "export": self.export,
            "n_volumes": len(per_volume),
            "n_slices": n_total,
            "n_kept": n_kept,
            "kept_fraction": round(n_kept / n_total, 6) if n_total else None,
            "volumes": per_volume,
            "failures": failures,
            # an interrupted run (Ctrl-C, killed client) lists what it did not reach; re-running resumes them
            "complete": not pending,
            "pending": pending,
            "seconds": round(seconds, 3),
        }
        atomic_write_text(out / "manifest.csv", rows.getvalue())
        atomic_write_json(out / "summary.json", summary)
        return summary
