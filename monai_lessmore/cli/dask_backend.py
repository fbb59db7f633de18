"""Run ``lessmore reduce`` on a Dask cluster: one task per volume, records written by the client.

``lessmore reduce ... --dask --workers N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes
(one thread each) on this machine; ``--scheduler tcp://HOST:PORT`` connects to an existing cluster instead, which
is how HPC users run it (e.g. a ``dask_jobqueue.SLURMCluster`` started in a notebook or script, whose
``scheduler_address`` is passed here, or ``dask scheduler`` / ``dask worker`` started by hand).

What the workers need:

* the **inputs** at the same paths as on the client (a shared filesystem, as for any cluster job);
* ``monai-lessmore`` installed in the same version;
* **no** access to the output folder unless slices are exported: each worker runs the top-level
  :func:`monai_lessmore.cli.reduce.process_volume` with ``write_record=False`` and returns the record, and the client
  writes ``records/<volume>.json`` as soon as that volume completes (:func:`distributed.as_completed`), then
  ``manifest.csv`` and ``summary.json`` once at the end -- the same files, byte for byte in the manifest, as a
  local run. With ``--export png|nifti`` the workers write the exported slices themselves, so the output folder
  must then be on a filesystem the workers share; a worker that cannot see it fails that volume with a message
  saying so rather than writing the files on its own disk.

Failures: a task that raises is retried once (``retries=1``), then reported in ``summary.json`` like a local
failure. A worker that dies (killed, out of memory) has its running tasks moved to other workers by the scheduler
up to ``distributed.scheduler.allowed-failures`` times; a volume that still cannot finish is reported and every
other volume completes. Finished volumes' records are on disk as they arrive, so an interrupted run resumes.

The client holds the output folder's lock (:func:`monai_lessmore.cli.reduce.output_lock`) for the whole run, as a
local run does, so a second run into the same folder exits with status 2. A task that fails with a full disk
(``ENOSPC``) stops the run: the tasks not finished are cancelled and the run ends with
:class:`~monai_lessmore.cli.reduce.DiskFullError`. The workers of a ``--dask`` local cluster end with the client
(each worker process exits when the pipe from its parent closes); tasks of a killed client already running on an
existing cluster may still finish there, but nobody collects their results.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from monai_lessmore.cli.reduce import process_volume

__all__ = ["DaskExecutor", "SchedulerUnreachable", "connect", "dask_client", "DEFAULT_CONNECT_TIMEOUT"]

#: Seconds to wait for an existing scheduler before giving up (``--connect-timeout``).
DEFAULT_CONNECT_TIMEOUT = 10.0


class SchedulerUnreachable(ConnectionError):
    """The Dask scheduler given with ``--scheduler`` could not be reached (nothing has been written)."""


def connect(address: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A :class:`distributed.Client` connected to the scheduler at ``address``.

    Args:
        address: scheduler address, e.g. ``tcp://10.0.0.5:8786`` (what ``dask scheduler`` prints, or
            ``cluster.scheduler_address`` of a dask-jobqueue cluster).
        timeout: seconds to wait for the scheduler.

    Raises:
        SchedulerUnreachable: naming the address and how to fix it, when the address is malformed or nothing
            answers within ``timeout`` seconds.
    """
    from distributed import Client

    if not timeout > 0:
        raise ValueError(f"--connect-timeout must be a positive number of seconds, got {timeout!r}")
    hint = (
        "check that the scheduler is running and the address (tcp://HOST:PORT, as printed by `dask scheduler` or "
        "cluster.scheduler_address) is reachable from this machine, or use --dask to start a local cluster"
    )
    # check the syntax before a Client exists: a Client starts its event-loop thread first, which on a busy machine
    # can take longer than distributed's own start-up wait and then fails with an unhelpful AssertionError
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise SchedulerUnreachable(f"--scheduler {address!r} is not a valid scheduler address ({exc}); {hint}") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except ValueError as exc:
        raise SchedulerUnreachable(
            f"--scheduler {address!r} is not a valid scheduler address ({exc}); {hint}"
        ) from None
    except OSError as exc:  # includes TimeoutError
        raise SchedulerUnreachable(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); {hint}"
        ) from None


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, *, n_workers: int = 1, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Iterator[Any]:
    """A client of an existing cluster (``scheduler``) or of a fresh local one, closed on exit.

    Args:
        scheduler: address of an existing scheduler; ``None`` starts a :class:`distributed.LocalCluster` of
            ``n_workers`` processes with one thread each (no dashboard), shut down on exit.
        n_workers: worker processes of the local cluster.
        connect_timeout: seconds to wait for ``scheduler``.

    Raises:
        SchedulerUnreachable: see :func:`connect`.
    """
    if scheduler is not None:
        client = connect(scheduler, timeout=connect_timeout)
        try:
            yield client
        finally:
            client.close()
        return
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _run_on_worker(
    source: str, name: str, reducer_args: dict[str, Any], out_dir: str, export: str, order: str, *,
    task: Callable[..., dict[str, Any]] = process_volume,
) -> dict[str, Any]:
    """Worker side of one volume: check the output folder is visible when exporting, run ``task``."""
    if export != "none" and not Path(out_dir).is_dir():
        raise RuntimeError(
            f"--export {export} writes slices from the workers, but the output folder {out_dir} does not exist on "
            f"worker host {socket.gethostname()}; put --output on a filesystem shared by all workers, or use "
            "--export none (the records, manifest and summary need no shared filesystem)"
        )
    return task(source, name, reducer_args, out_dir, export, order, write_record=False)


class DaskExecutor:
    """Executor for :class:`~monai_lessmore.cli.reduce.ReduceJob` that runs one Dask task per volume.

    Args:
        client: a connected :class:`distributed.Client` (see :func:`dask_client`).
        retries: times a task that raised is run again before it is reported (``client.submit(retries=...)``).
        task: the function the workers run, with :func:`~monai_lessmore.cli.reduce.process_volume`'s signature
            (a top-level, importable function; replaced in tests).
    """

    def __init__(self, client: Any, *, retries: int = 1, task: Callable[..., dict[str, Any]] = process_volume) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        self.client = client
        self.retries = retries
        self.task = task

    def __call__(
        self, todo: Sequence[tuple[str, str]], args: tuple
    ) -> Iterator[tuple[str, str, Callable[[], dict[str, Any]]]]:
        """Submit every volume, then yield each as it completes (see :data:`monai_lessmore.cli.reduce.Executor`)."""
        from distributed import as_completed

        if not todo:
            return
        run = uuid.uuid4().hex[:8]
        futures = {}
        for source, name in todo:
            fut = self.client.submit(
                _run_on_worker, source, name, *args, task=self.task,
                key=f"lessmore-reduce-{name}-{run}", retries=self.retries, pure=False,
            )
            futures[fut.key] = (fut, source, name)
        try:
            for fut in as_completed([f for f, _, _ in futures.values()], loop=self.client.loop):
                _, source, name = futures.pop(fut.key)
                yield source, name, _result_getter(fut)
        finally:
            # an interrupted run (Ctrl-C, lost scheduler) must not leave tasks running on a shared cluster
            pending = [f for f, _, _ in futures.values()]
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(pending)


def _result_getter(fut: Any) -> Callable[[], dict[str, Any]]:
    def get() -> dict[str, Any]:
        from distributed import KilledWorker

        try:
            return fut.result()
        except KilledWorker as exc:
            raise RuntimeError(
                f"the Dask workers running this volume died ({exc}); it may need more memory per worker "
                "(dask-jobqueue memory=..., or fewer --workers on one machine) -- re-run to retry it"
            ) from None
        finally:
            fut.release()

    return get
