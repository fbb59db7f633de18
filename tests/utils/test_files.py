from __future__ import annotations

import json
import os

import numpy as np
import pytest

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_json, content_digest, volume_files


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    dest = tmp_path / "sub" / "out.json"
    atomic_write_json(dest, {"a": 1})
    atomic_write_json(dest, {"a": 2})
    assert json.loads(dest.read_text()) == {"a": 2}
    assert os.listdir(dest.parent) == ["out.json"]


def test_failed_write_keeps_previous_version(tmp_path, monkeypatch):
    dest = tmp_path / "out.bin"
    atomic_write_bytes(dest, b"old")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_content_digest_follows_content_not_name(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 100)
    assert content_digest(a) == content_digest(b)
    b.write_bytes(b"y" * 100)
    assert content_digest(a) != content_digest(b)


def test_folder_and_slice_volume_digests(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"one")
    (series / "2.dcm").write_bytes(b"two")
    before = content_digest(series)
    (series / "2.dcm").write_bytes(b"TWO")
    assert content_digest(series) != before
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(3):
        (slices / f"vol_{i}.png").write_bytes(bytes([i]))
    (slices / "other_0.png").write_bytes(b"z")
    assert [p.name for p in volume_files(slices / "vol")] == ["vol_0.png", "vol_1.png", "vol_2.png"]
    digest = content_digest(slices / "vol")
    (slices / "other_0.png").write_bytes(b"changed")
    assert content_digest(slices / "vol") == digest  # another volume's file does not count
    with pytest.raises(FileNotFoundError, match="does not exist"):
        content_digest(tmp_path / "missing")


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "summary.json", {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# --- temporaries of killed processes ----------------------------------------------------------------------------
def _dead_pid() -> int:
    """The PID of a process that has finished (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    import subprocess
    import sys

    # lives until the test closes its stdin (no fixed sleep that a slow machine could outlast)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, live_pid):
    from monai_lessmore.utils.files import remove_stale_temps, temp_path

    dead = _dead_pid()
    # the names the writers of this package use, for a dead writer ...
    stale = [
        f".manifest.csv.{dead}-a1b2_c3d.tmp",  # atomic_write_bytes
        f".phantom_00.{dead}.tmp",  # exported slice folder being filled
        f".phantom_00.{dead}.old",  # previous export being swapped out
        f".vol.nii.gz.{dead}.tmp.nii.gz",  # NIfTI export
        f"checkpoint.pt.tmp{dead}",  # checkpoint writer
        f"vol.npy.{dead}.tmp",  # slice store
    ]
    # ... of a live one, of this process, and files that merely look alike
    kept = [
        f".manifest.csv.{live_pid}-zz9_x8yw.tmp",
        f".phantom_01.{live_pid}.tmp",
        f"checkpoint.pt.tmp{os.getpid()}",
        "phantom_00",
        "notes.tmp",
        "checkpoint.pt",
        ".phantom_00.tmp",
    ]
    for name in stale + kept:
        if name.startswith(".phantom_0") and not name.endswith("old"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "phantom_00_3.png").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    assert temp_path(tmp_path / "phantom_00") == tmp_path / f".phantom_00.{os.getpid()}.tmp"
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_atomic_writer_temporaries_are_recognised_while_writing(tmp_path, monkeypatch):
    from monai_lessmore.utils.files import is_stale_temp

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_json(tmp_path / "summary.json", {})
    (name,) = seen
    assert name.startswith(f".summary.json.{os.getpid()}-") and name.endswith(".tmp")
    # the same name with a dead writer's PID is stale; with ours it is not
    dead = _dead_pid()
    ours = tmp_path / name
    ours.write_bytes(b"x")
    theirs = tmp_path / name.replace(f".{os.getpid()}-", f".{dead}-")
    theirs.write_bytes(b"x")
    assert not is_stale_temp(ours) and is_stale_temp(theirs)


def test_reused_pid_does_not_protect_an_older_temporary(tmp_path, live_pid, monkeypatch):
    import time

    import monai_lessmore.utils.files as files

    if files._proc_start_time(live_pid) is None:
        pytest.skip("process start times are not readable here (no /proc)")
    tmp = tmp_path / f".phantom_00.{live_pid}.tmp"
    tmp.mkdir()
    assert not files.is_stale_temp(tmp)  # the live process may be writing it
    assert files.pid_alive(live_pid, since=time.time()) and not files.pid_alive(_dead_pid())
    # the process holding the PID started an hour after the temporary was last touched: it cannot have written it
    later = time.time() + 3600
    monkeypatch.setattr(files, "_proc_start_time", lambda pid: later if pid == live_pid else None)
    assert files.is_stale_temp(tmp)
    assert files.pid_alive(live_pid) and not files.pid_alive(live_pid, since=time.time())


def test_a_live_writers_folder_moved_aside_is_not_stale(tmp_path, live_pid):
    """A writer swaps the previous export out as ``.NAME.PID.old``: the folder keeps the mtime of the earlier
    export (before this writer started), yet the rename happened while the writer ran."""
    import time

    from monai_lessmore.utils.files import _proc_start_time, is_stale_temp

    if _proc_start_time(live_pid) is None:
        pytest.skip("process start times are not readable here (no /proc)")
    final = tmp_path / "phantom_00"
    final.mkdir()
    (final / "phantom_00_1.png").write_bytes(b"x")
    old = _proc_start_time(live_pid) - 3600
    os.utime(final, (old, old))  # exported an hour before the live writer started
    moved = tmp_path / f".phantom_00.{live_pid}.old"
    os.replace(final, moved)
    if moved.lstat().st_ctime < time.time() - 60:
        pytest.skip("this filesystem does not update ctime on rename")
    assert not is_stale_temp(moved)


def test_pid_alive_on_windows_never_signals(monkeypatch):
    """``os.kill(pid, 0)`` terminates the process on Windows: the probe asks the kernel instead."""
    import ctypes

    import monai_lessmore.utils.files as files

    def no_kill(*args):
        raise AssertionError("os.kill called")

    class Kernel32:
        def __init__(self, running):
            self.running, self.closed = running, []

        def OpenProcess(self, access, inherit, pid):
            return 0 if pid == 99999 else 1000 + pid

        def GetExitCodeProcess(self, handle, code):
            ctypes.cast(code, ctypes.POINTER(ctypes.c_ulong)).contents.value = 259 if handle - 1000 in self.running else 0
            return 1

        def CloseHandle(self, handle):
            self.closed.append(handle)

    kernel32 = Kernel32(running={4242})
    monkeypatch.setattr(files.sys, "platform", "win32")
    monkeypatch.setattr(files.os, "kill", no_kill)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: 87, raising=False)  # ERROR_INVALID_PARAMETER: no such PID
    assert files.pid_alive(4242) is True
    assert files.pid_alive(4243) is False  # exited, handle still open somewhere
    assert files.pid_alive(99999) is False
    assert kernel32.closed == [1000 + 4242, 1000 + 4243]


@pytest.mark.skipif(os.name != "posix", reason="change times are those of POSIX systems")
@pytest.mark.parametrize(
    "where, expected",
    [("/data/ct/a.nii.gz", True), ("/mnt/remote/ct/a.nii.gz", False), ("/mnt/remote/local/a.nii.gz", True),
     ("/mnt/remote", False), ("/mnt/remoteX/a", True), ("/mnt/share/a", False), ("/mnt/my dir/a", False)],
)
def test_change_time_reliable_by_the_mount_table(tmp_path, where, expected):
    from monai_lessmore.utils.files import change_time_reliable

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/remote rw - fuse.sshfs host:/x rw,user_id=0\n"
        "41 40 8:2 / /mnt/remote/local rw - xfs /dev/sdb1 rw\n"
        "42 22 0:51 / /mnt/share rw - 9p share rw,trans=virtio\n"
        "43 22 0:52 / /mnt/my\\040dir rw - fuse.rclone remote: rw\n"
        "odd line\n"
    )
    assert change_time_reliable(where, mountinfo=mountinfo) is expected


def test_change_time_reliable_without_a_mount_table(tmp_path):
    from monai_lessmore.utils.files import change_time_reliable

    assert change_time_reliable(tmp_path, mountinfo=tmp_path / "missing") is (os.name == "posix")


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_a_detached_header_s_volume_includes_its_data_file(tmp_path, suffix):
    """Editing only the data file of a .mhd/.nhdr volume changes its digest (resume and the cache rely on it)."""
    import itk

    from monai_lessmore.utils.files import content_digest, detached_data_files, volume_files

    path = tmp_path / f"vol{suffix}"
    itk.imwrite(itk.image_from_array(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)), str(path),
                compression=False)
    (data,) = detached_data_files(path)
    assert data.is_file() and data.parent == tmp_path and volume_files(path) == [path, data]
    before = content_digest(path, fresh=True)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert content_digest(path, fresh=True) != before


@pytest.mark.parametrize(
    "header, names",
    [
        ("NDims = 3\nElementDataFile = LOCAL\n", []),
        ("NDims = 3\nElementDataFile = LIST\na.raw\nb.raw\n\n", ["a.raw", "b.raw"]),
        ("NDims = 3\nElementDataFile = s%03d.raw 1 3 1\n", ["s001.raw", "s002.raw", "s003.raw"]),
        ("NDims = 3\nElementDataFile = s%d.raw 4 0 -2\n", ["s4.raw", "s2.raw", "s0.raw"]),
        ("NDims = 3\nElementDataFile = ../raw/data file.raw\n", ["../raw/data file.raw"]),
        ("NDims = 3\nElementDataFile = s%d.raw x y\n", []),
        ("NDims = 3\n", []),
    ],
)
def test_detached_data_files_of_a_metaimage_header(tmp_path, header, names):
    from monai_lessmore.utils.files import detached_data_files

    path = tmp_path / "v.mhd"
    path.write_text(header)
    assert detached_data_files(path) == [tmp_path / n for n in names]


def test_detached_data_files_of_an_nrrd_header_and_other_files(tmp_path):
    from monai_lessmore.utils.files import detached_data_files

    nhdr = tmp_path / "v.nhdr"
    nhdr.write_text("NRRD0004\ntype: short\ndimension: 3\ndatafile: v.raw.gz\n\n")
    assert detached_data_files(nhdr) == [tmp_path / "v.raw.gz"]
    other = tmp_path / "v.nii.gz"
    other.write_bytes(b"ElementDataFile = x.raw\n")
    assert detached_data_files(other) == [] and detached_data_files(tmp_path / "missing.mhd") == []
