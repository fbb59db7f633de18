"""`lessmore reduce` on a Dask cluster: same manifest as the local run, resume, unreachable scheduler, failures.

One LocalCluster of two worker processes (one thread each) serves the module; the tests that kill workers run last.
The tasks injected with ``DaskExecutor(task=...)`` are top-level functions of this module, imported by the workers.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from monai_lessmore.cli.dask_backend import DaskExecutor, SchedulerUnreachable, connect  # noqa: E402
from monai_lessmore.cli.main import main  # noqa: E402
from monai_lessmore.cli.reduce import ReduceJob, process_volume  # noqa: E402
from monai_lessmore.phantom import write_phantom_dataset  # noqa: E402

HASH6 = {"method": "hash", "threshold": 6, "algorithm": "leader"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_phantom_dataset(root / "ph", n_volumes=3, slices=(40, 80), size=32)
    return root / "ph"


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    import dask

    # a task whose worker dies twice is given up (KilledWorker) instead of after the default 3 retries: quicker
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cl, distributed.Client(cl, set_as_default=False) as client:
            yield cl, client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --- tasks run on the workers (signature of process_volume) ------------------------------------------------------
def _attempt_dir(out_dir: str) -> Path:
    folder = Path(out_dir).parent / "attempts"
    folder.mkdir(exist_ok=True)
    return folder


def fail_phantom_01(source, name, *args, **kwargs):
    (_attempt_dir(args[1]) / f"{name}.{os.getpid()}.{time.monotonic_ns()}").touch()
    if name == "phantom_01":
        raise ValueError("simulated bad volume phantom_01")
    return process_volume(source, name, *args, **kwargs)


def slow_first_attempt_of_phantom_01(source, name, *args, **kwargs):
    """Records its pid, then sleeps on the first attempt of phantom_01 so the test can kill its worker."""
    folder = _attempt_dir(args[1])
    if name == "phantom_01" and not any(folder.glob("phantom_01.*")):
        (folder / f"phantom_01.{os.getpid()}").write_text(str(os.getpid()))
        time.sleep(60)
    return process_volume(source, name, *args, **kwargs)


def disk_full_on_phantom_01(source, name, *args, **kwargs):
    if name == "phantom_01":
        raise OSError(errno.ENOSPC, "No space left on device", f"{args[1]}/slices/.{name}.tmp")
    return process_volume(source, name, *args, **kwargs)


def die_on_phantom_01(source, name, *args, **kwargs):
    if name == "phantom_01":
        os._exit(1)  # the worker process dies with the task, every time
    return process_volume(source, name, *args, **kwargs)


# --- same manifest, resume --------------------------------------------------------------------------------------
def test_local_cluster_flag_gives_the_same_manifest(dataset, local_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reduce", str(dataset), "-o", str(out), "--dask", "--workers", "2", "--no-progress"]) == 0
    assert (out / "manifest.csv").read_bytes() == (local_run / "manifest.csv").read_bytes()
    assert "with 2 workers" in capsys.readouterr().err
    a, b = summary_of(local_run), summary_of(out)
    for s in (a, b):
        s.pop("seconds")
        for v in s["volumes"].values():
            v.pop("seconds")
    assert a == b
    # the client wrote every record, identical to the local run's but for the timing
    for rec in (local_run / "records").iterdir():
        mine, theirs = json.loads(rec.read_text()), json.loads((out / "records" / rec.name).read_text())
        assert {**mine, "seconds": 0} == {**theirs, "seconds": 0}


def test_scheduler_run_resumes_finished_volumes(cluster, dataset, local_run, tmp_path):
    cl, _ = cluster
    out = tmp_path / "out"
    args = ["reduce", str(dataset), "-o", str(out), "--scheduler", cl.scheduler_address, "--no-progress"]
    assert main(args) == 0
    assert (out / "manifest.csv").read_bytes() == (local_run / "manifest.csv").read_bytes()
    assert not any(v["resumed"] for v in summary_of(out)["volumes"].values())
    # an interrupted run: one record lost, no manifest yet -> only that volume is computed again
    (out / "records" / "phantom_01.json").unlink()
    (out / "manifest.csv").unlink()
    assert main(args) == 0
    assert (out / "manifest.csv").read_bytes() == (local_run / "manifest.csv").read_bytes()
    resumed = {n: v["resumed"] for n, v in summary_of(out)["volumes"].items()}
    assert resumed == {"phantom_00": True, "phantom_01": False, "phantom_02": True}


def test_export_on_the_cluster(cluster, dataset, tmp_path):
    out = tmp_path / "out"
    args = ["reduce", str(dataset), "-o", str(out), "--scheduler", cluster[0].scheduler_address, "--no-progress"]
    assert main([*args, "--export", "png"]) == 0
    assert len(list((out / "slices").rglob("*.png"))) == summary_of(out)["n_kept"]


def test_export_needs_the_output_folder_on_the_worker(dataset, tmp_path):
    from monai_lessmore.cli.dask_backend import _run_on_worker

    with pytest.raises(RuntimeError, match="does not exist on worker host .*shared by all workers"):
        _run_on_worker(str(dataset / "phantom_00.nii.gz"), "phantom_00", HASH6, str(tmp_path / "nowhere"), "png", "index")
    assert not (tmp_path / "nowhere").exists()


# --- bad input --------------------------------------------------------------------------------------------------
def test_unreachable_scheduler_exits_2_and_writes_nothing(dataset, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["reduce", str(dataset), "-o", str(out), "--scheduler", address, "--connect-timeout", "1"])
    assert code == 2
    assert time.perf_counter() - start < 15
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address} within 1 s" in err
    assert "--dask" in err and "check that the scheduler is running" in err
    assert not out.exists()


@pytest.mark.parametrize("address", ["nonsense", "tcp://127.0.0.1:notaport"])
def test_malformed_scheduler_address(address):
    with pytest.raises(SchedulerUnreachable, match="is not a valid scheduler address"):
        connect(address, timeout=1)


def test_scheduler_with_workers_or_dask_is_rejected(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reduce", str(dataset), "-o", str(out), "--scheduler", "tcp://127.0.0.1:1", "--workers", "4"]) == 2
    assert "--workers applies to local runs and --dask" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["reduce", str(dataset), "-o", str(out), "--scheduler", "tcp://127.0.0.1:1", "--dask"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not out.exists()


def test_executor_rejects_bad_retries(cluster):
    with pytest.raises(ValueError, match="retries must be an integer >= 0, got -1"):
        DaskExecutor(cluster[1], retries=-1)


def test_failing_task_is_retried_once_then_reported(cluster, dataset, local_run, tmp_path):
    out = tmp_path / "out"
    job = ReduceJob([str(dataset)], str(out), HASH6, progress=False, executor=DaskExecutor(cluster[1], task=fail_phantom_01))
    summary = job.run()
    assert list(summary["volumes"]) == ["phantom_00", "phantom_02"]
    (failure,) = summary["failures"]
    assert failure["volume"] == "phantom_01" and "simulated bad volume phantom_01" in failure["error"]
    assert len(list((tmp_path / "attempts").glob("phantom_01.*"))) == 2  # retries=1
    expected = [r for r in (local_run / "manifest.csv").read_text().splitlines() if not r.startswith("phantom_01,")]
    assert (out / "manifest.csv").read_text().splitlines() == expected
    assert sorted(p.name for p in (out / "records").iterdir()) == ["phantom_00.json", "phantom_02.json"]


def test_scheduler_run_holds_the_output_lock(cluster, dataset, tmp_path, capsys):
    from monai_lessmore.cli.reduce import output_lock

    out = tmp_path / "out"
    args = ["reduce", str(dataset), "-o", str(out), "--scheduler", cluster[0].scheduler_address, "--no-progress"]
    with output_lock(out):  # another run writes there
        assert main(args) == 2
        assert f"in use by another lessmore reduce run (pid {os.getpid()}" in capsys.readouterr().err
        assert not (out / "records").exists()
    assert main(args) == 0


def test_disk_full_on_a_worker_stops_the_run(cluster, dataset, tmp_path):
    from monai_lessmore.cli.reduce import DiskFullError

    out = tmp_path / "out"
    job = ReduceJob([str(dataset)], str(out), HASH6, progress=False,
                    executor=DaskExecutor(cluster[1], task=disk_full_on_phantom_01, retries=0))
    with pytest.raises(DiskFullError, match="disk full.*run the same command again") as exc:
        job.run()
    summary = exc.value.summary  # the manifest and summary could still be written here
    assert summary is not None and summary["complete"] is False
    assert [f["volume"] for f in summary["failures"]] == ["phantom_01"]
    # the volumes that finished before it (in any order on the cluster) have their records; the rest are pending
    assert sorted(p.stem for p in (out / "records").glob("*.json")) == sorted(summary["volumes"])
    assert "phantom_01" not in summary["volumes"]
    pending = [Path(p).name.split(".")[0] for p in summary["pending"]]
    assert sorted([*summary["volumes"], *pending, "phantom_01"]) == ["phantom_00", "phantom_01", "phantom_02"]


# --- workers dying (last: they restart workers of the shared cluster) -----------------------------------------------
def test_worker_killed_while_running_is_retried_elsewhere(cluster, dataset, local_run, tmp_path):
    attempts = tmp_path / "attempts"
    killed: list[int] = []

    def kill_when_started():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for f in attempts.glob("phantom_01.*") if attempts.is_dir() else []:
                pid = int(f.read_text() or 0)
                if pid:
                    os.kill(pid, signal.SIGKILL)  # the worker process dies in the middle of the task
                    killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    out = tmp_path / "out"
    executor = DaskExecutor(cluster[1], task=slow_first_attempt_of_phantom_01)
    summary = ReduceJob([str(dataset)], str(out), HASH6, progress=False, executor=executor).run()
    killer.join(5)
    assert killed, "the worker running phantom_01 was not killed"
    assert summary["failures"] == []
    assert (out / "manifest.csv").read_bytes() == (local_run / "manifest.csv").read_bytes()


def test_volume_that_keeps_killing_workers_is_reported(cluster, dataset, local_run, tmp_path):
    out = tmp_path / "out"
    executor = DaskExecutor(cluster[1], task=die_on_phantom_01)
    summary = ReduceJob([str(dataset)], str(out), HASH6, progress=False, executor=executor).run()
    failed = {f["volume"]: f["error"] for f in summary["failures"]}
    assert "the Dask workers running this volume died" in failed["phantom_01"]
    # a volume queued on the same worker may share its fate (it is then reported too); every volume is accounted
    # for, and the manifest holds exactly the finished ones, as the local run wrote them
    assert "phantom_01" not in summary["volumes"]
    assert set(summary["volumes"]) | set(failed) == {"phantom_00", "phantom_01", "phantom_02"}
    assert all("died" in e for e in failed.values())
    finished = tuple(f"{n}," for n in summary["volumes"])
    expected = [r for r in (local_run / "manifest.csv").read_text().splitlines() if r.startswith(("volume,", *finished))]
    assert (out / "manifest.csv").read_text().splitlines() == expected
    assert sorted(p.stem for p in (out / "records").iterdir()) == sorted(summary["volumes"])
