"""CPUs a process may use: affinity and cgroup quota (v1 and v2), read from fake cgroup trees."""

from __future__ import annotations

import os

import pytest

from monai_lessmore.utils import cpus
from monai_lessmore.utils.cpus import available_cpus, cgroup_cpu_limit


def _tree(tmp_path, proc: str, mounts: list[tuple[str, str, str, str]], files: dict[str, str]):
    """A fake cgroup file system: ``mounts`` are (mount root, mount folder under tmp_path, fs type, super options)."""
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    lines = [f"{30 + i} 23 0:{40 + i} {root} {str(tmp_path / point).replace(' ', chr(92) + '040')} rw,relatime - "
             f"{fs} {fs} {opts}" for i, (root, point, fs, opts) in enumerate(mounts)]
    lines.insert(0, f"29 23 0:28 / {tmp_path} rw,relatime - tmpfs tmpfs rw,mode=755")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "proc_cgroup").write_text(proc)
    return {"proc_cgroup": tmp_path / "proc_cgroup", "mountinfo": tmp_path / "mountinfo"}


V2 = [("/", "cg", "cgroup2", "rw,nsdelegate")]
V1 = [("/", "cg/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"), ("/", "cg/memory", "cgroup", "rw,memory")]


@pytest.mark.parametrize(
    "proc, mounts, files, expected",
    [
        # cgroup v2 inside a container with its own namespace: the group is "/" (docker run --cpus 1.5)
        ("0::/\n", V2, {"cg/cpu.max": "150000 100000"}, 1.5),
        ("0::/\n", V2, {"cg/cpu.max": "max 100000"}, None),
        # v2 on a host: the process's group and its parents; the tighter limit wins
        ("0::/kubepods/pod1/ctr\n", V2,
         {"cg/kubepods/cpu.max": "400000 100000", "cg/kubepods/pod1/cpu.max": "200000 100000",
          "cg/kubepods/pod1/ctr/cpu.max": "max 100000"},
         2.0),
        # v1, the controllers mounted together; a quota on a parent group
        ("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n", V1,
         {"cg/cpu,cpuacct/docker/cpu.cfs_quota_us": "300000", "cg/cpu,cpuacct/docker/cpu.cfs_period_us": "100000",
          "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1", "cg/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"},
         3.0),
        # v1 without a quota (-1), as on a plain host
        ("3:cpu,cpuacct:/\n", V1, {"cg/cpu,cpuacct/cpu.cfs_quota_us": "-1", "cg/cpu,cpuacct/cpu.cfs_period_us": "1"},
         None),
        # v1 seen from a container without its own cgroup namespace: /proc names the host's path, the mount's root
        # is that group, mounted at the mount point
        ("3:cpu,cpuacct:/docker/abc\n", [("/docker/abc", "cg/cpu", "cgroup", "rw,cpu,cpuacct")],
         {"cg/cpu/cpu.cfs_quota_us": "50000", "cg/cpu/cpu.cfs_period_us": "100000"}, 0.5),
        # a group outside the mount's root counts as the mount itself
        ("3:cpu:/elsewhere/abc\n", [("/docker/abc", "cg/cpu", "cgroup", "rw,cpu")],
         {"cg/cpu/cpu.cfs_quota_us": "100000", "cg/cpu/cpu.cfs_period_us": "100000"}, 1.0),
        # a hybrid host (v1 controllers plus an empty v2 mount): the v1 cpu controller holds the quota
        ("1:cpu:/\n0::/\n", [("/", "cg/cpu", "cgroup", "rw,cpu"), ("/", "cg/unified", "cgroup2", "rw")],
         {"cg/cpu/cpu.cfs_quota_us": "250000", "cg/cpu/cpu.cfs_period_us": "100000"}, 2.5),
        # groups outside this cgroup namespace are written with "/..": the mount itself, never above it or a sibling
        ("0::/../../x\n", V2, {"cpu.max": "100000 100000", "cg/x/cpu.max": "200000 100000", "cg/cpu.max": "3 1"}, 3.0),
        # mount points with a space (escaped \040 by the kernel) and with non-ASCII names (not escaped)
        ("0::/\n", [("/", "my cg", "cgroup2", "rw")], {"my cg/cpu.max": "150000 100000"}, 1.5),
        ("0::/\n", [("/", "Données", "cgroup2", "rw")], {"Données/cpu.max": "250000 100000"}, 2.5),
        # unreadable or odd contents: no limit rather than an error
        ("0::/\n", V2, {"cg/cpu.max": "garbage"}, None),
        ("0::/\n", V2, {"cg/cpu.max": "0 100000"}, None),
        ("0::/\n", [], {"cg/cpu.max": "100000 100000"}, None),  # no cgroup mount
        ("", V2, {}, None),
    ],
)
def test_cgroup_cpu_limit(tmp_path, proc, mounts, files, expected):
    assert cgroup_cpu_limit(**_tree(tmp_path, proc, mounts, files)) == expected


def test_cgroup_cpu_limit_without_cgroups(tmp_path):
    assert cgroup_cpu_limit(proc_cgroup=tmp_path / "missing", mountinfo=tmp_path / "missing") is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every file")
def test_unreadable_cgroup_files_give_no_limit(tmp_path):
    t = _tree(tmp_path, "0::/\n", V2, {"cg/cpu.max": "100000 100000"})
    (tmp_path / "cg").chmod(0o000)
    try:
        assert cgroup_cpu_limit(**t) is None
    finally:
        (tmp_path / "cg").chmod(0o755)


@pytest.mark.parametrize("limit, expected", [(None, 8), (1.5, 2), (0.2, 1), (2.0, 2), (64.0, 8)])
def test_available_cpus_is_the_affinity_lowered_to_the_quota_rounded_up(monkeypatch, limit, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: limit)
    assert available_cpus() == expected


def test_available_cpus_on_this_machine():
    n = available_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
