"""`lessmore reduce` under faults: bad paths, our own output as input, a second run, a killed client, a full disk,
temporaries left by killed runs, and how failures are printed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monai_lessmore.cli.main import main
from monai_lessmore.io import discover_volumes
from monai_lessmore.phantom import write_phantom_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_phantom_dataset(root / "ph", n_volumes=3, slices=(40, 80), size=32)
    return root / "ph"


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --- paths ------------------------------------------------------------------------------------------------------
def test_output_equal_to_or_inside_an_input_is_refused(dataset, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(dataset, data)
    before = tree(data)
    for output in (data / "out", data, data / "a" / "b"):
        assert main(["reduce", str(data), "--output", str(output), "--export", "png", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "inside the input" in err and str(data) in err
        assert tree(data) == before  # nothing written
    # the same through a symlinked path, and when the output is inside a second input
    link = tmp_path / "link"
    link.symlink_to(data)
    assert main(["reduce", str(dataset / "phantom_00.nii.gz"), str(link), "-o", str(data / "out"), "--no-progress"]) == 2
    assert tree(data) == before


def test_input_inside_the_exported_slices_of_the_output_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    vol = dataset / "phantom_00.nii.gz"
    assert main(["reduce", str(vol), "-o", str(out), "--export", "png", "--no-progress"]) == 0
    exported = out / "slices" / "phantom_00"
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    # reducing the exported slices into the same output would export them over themselves
    assert main(["reduce", str(exported), "-o", str(out), "--export", "png", "--no-progress"]) == 2
    assert "inside the output" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before
    # into another output it is fine
    assert main(["reduce", str(exported), "-o", str(tmp_path / "other"), "--no-progress"]) == 0


def test_our_own_output_folders_are_never_discovered(dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(dataset, root / "ph")
    volumes = discover_volumes(root)
    assert len(volumes) == 3
    # an output folder next to the data, with exported slices (which alone would be volumes)
    assert main(["reduce", str(root / "ph"), "-o", str(root / "run"), "--export", "png", "--no-progress"]) == 0
    assert discover_volumes(root) == volumes
    assert discover_volumes(root / "run") == []
    # the exported slices themselves are still a volume when asked for explicitly
    assert discover_volumes(root / "run" / "slices") == [str(root / "run" / "slices" / f"phantom_0{i}" / f"phantom_0{i}") for i in range(3)]
    # an output of a version that wrote no marker is known by its layout
    for marker in (root / "run").glob(".lessmore*"):
        marker.unlink()
    assert discover_volumes(root) == volumes
    # so a second run over the whole root keeps the names and records of the first
    out = tmp_path / "out2"
    assert main(["reduce", str(root), "-o", str(out), "--no-progress"]) == 0
    assert sorted(summary_of(out)["volumes"]) == ["phantom_00", "phantom_01", "phantom_02"]


def test_output_under_a_regular_file_exits_2(dataset, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["reduce", str(dataset), "--output", str(afile / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(afile) in err and "is a file" in err
    assert afile.read_text() == "keep"


def test_output_where_we_cannot_write_exits_2(dataset, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root may write anywhere: let the permission check see what a user would
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
        for output in (locked, locked / "new" / "sub"):
            assert main(["reduce", str(dataset), "--output", str(output), "--no-progress"]) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err and "cannot write to" in err and str(locked) in err
    finally:
        locked.chmod(0o700)


def test_nonexistent_input_exits_2_before_anything_is_written(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing"
    assert main(["reduce", str(dataset), str(missing), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not out.exists()
    # a slice-folder volume address is not a path on disk but is a valid input
    folder = tmp_path / "slices"
    assert main(["reduce", str(dataset / "phantom_00.nii.gz"), "-o", str(tmp_path / "o1"), "--export", "png", "--no-progress"]) == 0
    shutil.copytree(tmp_path / "o1" / "slices" / "phantom_00", folder)
    assert main(["reduce", str(folder / "phantom_00"), "-o", str(tmp_path / "o2"), "--no-progress"]) == 0


# --- lock -------------------------------------------------------------------------------------------------------
def _env(*extra: Path) -> dict:
    """The environment of a subprocess that imports this checkout (and ``extra`` folders)."""
    paths = [str(p) for p in extra] + [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _live_process() -> subprocess.Popen:
    """A process that lives until its stdin is closed (no fixed sleep that a slow machine could outlast)."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def _end(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.kill()
    proc.wait()


HOLD_LOCK = """
import sys
from monai_lessmore.cli.reduce import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes stdin
"""


@pytest.fixture
def locked_output(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield out, proc.pid
    finally:
        _end(proc)


def test_second_run_into_a_locked_output_exits_2_naming_the_first(dataset, locked_output, capsys):
    out, pid = locked_output
    assert main(["reduce", str(dataset), "-o", str(out), "--threshold", "12", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"pid {pid}" in err and socket.gethostname() in err
    assert not (out / "records").exists() and not (out / "manifest.csv").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(dataset, tmp_path):
    from monai_lessmore.io.discover import OUTPUT_MARKER

    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 0
    assert summary_of(out)["complete"] is True


def test_lock_is_released_and_reusable_in_one_process(dataset, tmp_path):
    from monai_lessmore.cli.reduce import OutputLocked, output_lock

    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            with output_lock(out):
                pass
    with output_lock(out):  # released on exit
        pass


def _no_flock(monkeypatch):
    """A filesystem without flock (NFS mounted ``nolock``, some FUSE filesystems): flock fails with ENOLCK."""
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    import monai_lessmore.utils.files as files
    from monai_lessmore.cli.reduce import OutputLocked, output_lock
    from monai_lessmore.io.discover import OUTPUT_MARKER

    _no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    marker = out / OUTPUT_MARKER
    live = _live_process()
    try:
        marker.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputLocked, match=f"pid {live.pid}"):  # its holder runs
            with output_lock(out):
                pass
        if files._proc_start_time(live.pid) is not None:
            # the same PID, but held by a process that started after the lock was written: the PID was reused
            written = marker.stat().st_mtime
            monkeypatch.setattr(files, "_proc_start_time", lambda pid: written + 3600)
            with output_lock(out) as info:
                assert json.loads(marker.read_text())["pid"] == info["pid"] == os.getpid()
            monkeypatch.undo()
            _no_flock(monkeypatch)
    finally:
        _end(live)
    with output_lock(out):  # the holder is dead now
        pass
    assert marker.read_text() == ""  # a finished run leaves no PID that a later process could be taken for


def test_lock_works_without_fcntl_and_pwrite(tmp_path, monkeypatch):
    """Windows has neither fcntl nor os.pwrite: the lock falls back to the PID and still records its holder."""
    from monai_lessmore.cli.reduce import output_lock
    from monai_lessmore.io.discover import OUTPUT_MARKER

    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError
    monkeypatch.delattr(os, "pwrite", raising=False)
    out = tmp_path / "out"
    with output_lock(out) as info:
        assert json.loads((out / OUTPUT_MARKER).read_text()) == json.loads(json.dumps(info))


# --- temporaries of killed runs -----------------------------------------------------------------------------------
def test_stale_temporaries_are_removed_at_start(dataset, tmp_path):
    out = tmp_path / "out"
    vol = str(dataset / "phantom_00.nii.gz")
    assert main(["reduce", vol, "-o", str(out), "--export", "png", "--no-progress"]) == 0
    dead = dead_pid()
    stale = [
        out / "slices" / f".phantom_00.{dead}.tmp",
        out / "slices" / f".phantom_00.{dead}.old",
        out / "records" / f".phantom_00.json.{dead}-q1w2e3r4.tmp",
        out / f".manifest.csv.{dead}-a1s2d3f4.tmp",
        out / "volumes" / f".phantom_00.nii.gz.{dead}.tmp.nii.gz",
    ]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.name.endswith(".tmp") and p.parent.name == "slices" or p.name.endswith(".old"):
            p.mkdir()
            (p / "phantom_00_1.png").write_bytes(b"\x89PNG" + b"x" * 1000)
        else:
            p.write_bytes(b"x" * 1000)
    live = _live_process()
    try:
        busy = out / "slices" / f".phantom_01.{live.pid}.tmp"
        busy.mkdir()
        assert main(["reduce", vol, "-o", str(out), "--export", "png", "--no-progress"]) == 0
        assert not any(p.exists() for p in stale)
        assert busy.exists()  # a live process's temporary is never touched
    finally:
        _end(live)


# --- killed client ----------------------------------------------------------------------------------------------
def _descendants(pid: int) -> set[int]:
    """PIDs of every process below ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return {p.pid for p in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


#: Imported by the client and its pool workers (the pickled task refers to it): each worker exports the first slice
#: of its first volume, says so, and then holds right there, inside the export, until it is killed -- so the
#: client is killed at a known point, with both workers mid-export, whatever the machine's speed.
HOLD_IN_EXPORT = """
import os, time
from pathlib import Path

from PIL import Image

from monai_lessmore.cli import reduce

_save = Image.Image.save


def _save_then_hold(self, fp, *args, **kwargs):
    _save(self, fp, *args, **kwargs)
    Path(os.environ["LESSMORE_TEST_HOLDING"], str(os.getpid())).touch()
    deadline = time.monotonic() + 600  # bounded, should the kill never come
    while time.monotonic() < deadline:
        time.sleep(0.1)


def process_volume(*args, **kwargs):
    Image.Image.save = _save_then_hold
    return _process_volume(*args, **kwargs)


_process_volume = reduce.process_volume
"""

RUN_HELD = """
import sys

import lessmore_hold
from monai_lessmore.cli import reduce
from monai_lessmore.cli.main import main

reduce.process_volume = lessmore_hold.process_volume  # what the pool submits
sys.exit(main(sys.argv[1:]))
"""


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds:g} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list the worker processes")
def test_killed_client_takes_its_workers_with_it_and_the_rerun_completes(tmp_path):
    data = tmp_path / "data"
    write_phantom_dataset(data, n_volumes=4, slices=(20, 30), size=32)
    hooks, holding = tmp_path / "hooks", tmp_path / "holding"
    hooks.mkdir()
    holding.mkdir()
    (hooks / "lessmore_hold.py").write_text(HOLD_IN_EXPORT)
    out = tmp_path / "out"
    args = ["reduce", str(data), "-o", str(out), "--export", "png", "--threshold", "0", "--no-progress"]
    env = {**_env(hooks), "LESSMORE_TEST_HOLDING": str(holding)}
    workers: set[int] = set()
    log = tmp_path / "client.log"
    with log.open("w") as stderr:
        client = subprocess.Popen([sys.executable, "-c", RUN_HELD, *args, "--workers", "2"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def both_hold() -> bool:
            if client.poll() is not None:
                pytest.fail(f"the run ended (status {client.returncode}) before it was killed:\n{log.read_text()}")
            return len(os.listdir(holding)) == 2

        _wait_for(both_hold, 300, "both workers started exporting")  # generous: two spawns import torch
        held = {int(name) for name in os.listdir(holding)}
        workers = _descendants(client.pid)
        assert held <= workers
        client.send_signal(signal.SIGKILL)
        client.wait()
        _wait_for(lambda: not any(_alive(p) for p in workers), 60, "worker processes ended with the killed client")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for p in workers:  # reparented by now: not below the client any more
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    # killed inside the export: each worker left its temporary folder and no volume has a record
    temporaries = sorted((out / "slices").iterdir())  # .phantom_0X.PID.tmp
    assert len(temporaries) == 2 and all(t.is_dir() and t.name.endswith(".tmp") for t in temporaries)
    assert {int(t.name.split(".")[2]) for t in temporaries} == held
    assert not (out / "records").exists() or not any((out / "records").iterdir())
    # the re-run (in this process: quicker) cleans them up, resumes nothing and completes, every slice exported once
    assert main(args) == 0
    summary = summary_of(out)
    assert summary["complete"] and summary["n_volumes"] == 4
    assert not [p for p in out.rglob(".*") if not p.name.startswith(".lessmore-reduce.")]
    assert sum(1 for _ in (out / "slices").rglob("*.png")) == summary["n_kept"]


# --- disk full --------------------------------------------------------------------------------------------------
def test_disk_full_is_reported_and_the_rerun_completes(dataset, tmp_path, monkeypatch, capsys):
    """ENOSPC simulated in this process: from the second export on the disk is full, and so it stays for the
    manifest. Finished volumes keep their records; no temporary of a failed export stays; exit 1 saying so."""
    from PIL import Image

    out = tmp_path / "out"
    real_save = Image.Image.save
    state = {"pngs": 0}

    def save(self, fp, *args, **kwargs):
        state["pngs"] += 1
        if state["pngs"] > 3:  # the first volume keeps 3 slices with --count 3
            Path(fp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    import monai_lessmore.utils.files as files

    real_write = files.atomic_write_bytes

    def write(path, data, **kwargs):
        if state["pngs"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(files, "atomic_write_bytes", write)
    args = ["reduce", str(dataset), "-o", str(out), "--count", "3", "--export", "png", "--no-progress"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "disk full" in captured.err.lower()
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in (out / "records").glob("*.json")) == ["phantom_00.json"]
    assert [p.name for p in (out / "slices").iterdir()] == ["phantom_00"]  # no temporary folder of a failed export
    monkeypatch.undo()  # space freed
    assert main(args) == 0
    summary = summary_of(out)
    assert summary["complete"] and summary["volumes"]["phantom_00"]["resumed"] is True
    assert sum(not v["resumed"] for v in summary["volumes"].values()) == 2


@pytest.fixture
def small_filesystem(tmp_path):
    """A 400 kB tmpfs at ``tmp_path/small``; skips where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8)")
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        res = None
    if res is None or res.returncode or not os.path.ismount(mnt):
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
        why = "mount timed out" if res is None else (res.stderr.strip() or "not mounted")
        pytest.skip(f"cannot mount a small tmpfs here: {why}")
    try:
        yield mnt
    finally:
        res = subprocess.run(["umount", "-l", str(mnt)], capture_output=True, text=True, timeout=60)
        assert not os.path.ismount(mnt), f"could not unmount the test tmpfs {mnt}: {res.stderr.strip()}"


@pytest.mark.slow
def test_real_full_filesystem(tmp_path, small_filesystem, capsys):
    data = tmp_path / "data"
    write_phantom_dataset(data, n_volumes=8, slices=(20, 30), size=96)  # ~0.1 MB of PNG per volume
    out = small_filesystem / "out"
    args = ["reduce", str(data), "-o", str(out), "--threshold", "0", "--export", "png", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "disk full" in err.lower() and "Traceback" not in err
    records = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert records, "no volume finished before the disk was full"
    assert len(records) < 8
    # every finished volume's export is complete; no temporary of a failed export is left
    exported = sorted(p.name for p in (out / "slices").iterdir())
    assert set(records) <= set(exported) and not [n for n in exported if n.startswith(".")]
    # free space (grow the filesystem) and run again: it resumes the finished volumes and completes
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_filesystem)], check=True)
    assert main(args) == 0
    summary = summary_of(out)
    assert summary["complete"] and summary["n_volumes"] == 8
    assert sorted(n for n, v in summary["volumes"].items() if v["resumed"]) == records
    assert not [p for p in out.rglob(".*") if not p.name.startswith(".lessmore-reduce.")]


# --- how failures are printed ----------------------------------------------------------------------------------
def test_each_failure_is_printed_once_in_full_and_briefly_while_running(dataset, tmp_path, monkeypatch, capsys):
    import monai_lessmore.cli.reduce as job

    detail = "method 'ssim' compares slices pixel by pixel, but this volume's slices differ in size " + "x" * 300

    def fail(source, name, *args, **kwargs):
        raise ValueError(f"{name}: {detail}")

    monkeypatch.setattr(job, "process_volume", fail)
    assert main(["reduce", str(dataset), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    for name in ("phantom_00", "phantom_01", "phantom_02"):
        assert err.count(f"{name}: {detail}") == 1  # in full, once
        short = [line for line in err.splitlines() if name in line and detail not in line]
        assert len(short) == 1 and len(short[0]) <= 120  # one short line while running


def test_a_new_run_waits_for_the_workers_of_a_killed_one(dataset, tmp_path, monkeypatch, capsys):
    """A worker of an earlier run that is still alive holds the folder's workers lock (shared): the new run waits
    for it, and gives up (exit 2, saying so) when it does not end. (flock locks of two open files conflict within
    one process too, so the "worker" is a file descriptor here.)"""
    import fcntl

    import monai_lessmore.cli.reduce as job

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / job._WORKERS_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        monkeypatch.setattr(job, "_LEFTOVER_WAIT", 0.3)
        assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 2
        assert "still running" in capsys.readouterr().err
        assert not (out / "records").exists()
        # the "worker" ends while the new run waits: after the run's third try to take the workers lock, so the
        # test shows that it waited and then went on, however slow the machine
        monkeypatch.setattr(job, "_LEFTOVER_WAIT", 300.0)
        real_flock, tries = fcntl.flock, []
        workers_lock = os.fstat(fd).st_ino

        def flock(f, op):
            if f != fd and op == fcntl.LOCK_EX | fcntl.LOCK_NB and os.fstat(f).st_ino == workers_lock:
                tries.append(f)
                if len(tries) == 3:
                    real_flock(fd, fcntl.LOCK_UN)
            return real_flock(f, op)

        monkeypatch.setattr(fcntl, "flock", flock)
        assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 0
        assert len(tries) == 3  # refused twice while the worker lived, taken once it had ended
    finally:
        os.close(fd)
