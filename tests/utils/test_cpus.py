"""CPUs a process may use: affinity and cgroup quota (v1 and v2), read from fake cgroup trees."""

from __future__ import annotations

import os

import pytest

from monai_lessmore.utils import cpus
from monai_lessmore.utils.cpus import available_cpus, cgroup_cpu_limit


def _tree(tmp_path, proc: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    root.mkdir(exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc)
    return {"proc_cgroup": tmp_path / "proc_cgroup", "root": root}


@pytest.mark.parametrize(
    "proc, files, expected",
    [
        # cgroup v2 inside a container with its own namespace: the group is "/" (docker run --cpus 1.5)
        ("0::/\n", {"cgroup.controllers": "cpu io memory", "cpu.max": "150000 100000"}, 1.5),
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "max 100000"}, None),
        # v2 on a host: the process's group and its parents; the tighter limit wins
        ("0::/kubepods/pod1/ctr\n",
         {"cgroup.controllers": "cpu", "kubepods/cpu.max": "400000 100000", "kubepods/pod1/cpu.max": "200000 100000",
          "kubepods/pod1/ctr/cpu.max": "max 100000"},
         2.0),
        # v1, the controllers mounted together
        ("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
         {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"},
         3.0),
        # v1 without a quota (-1), as on a plain host
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        # v1 where the container sees its own group at the mount but /proc names the host's path for it
        ("1:cpu:/docker/abc\n", {"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
        # unreadable or odd contents: no limit rather than an error
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "garbage"}, None),
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "0 100000"}, None),
        ("", {}, None),
    ],
)
def test_cgroup_cpu_limit(tmp_path, proc, files, expected):
    assert cgroup_cpu_limit(**_tree(tmp_path, proc, files)) == expected


def test_cgroup_cpu_limit_without_cgroups(tmp_path):
    assert cgroup_cpu_limit(proc_cgroup=tmp_path / "missing", root=tmp_path) is None


def test_group_outside_the_mount_is_not_followed(tmp_path):
    # a limit above the mount point (here planted in the parent folder) never counts
    t = _tree(tmp_path, "1:cpu:/../..\n", {"cpu/cpu.cfs_period_us": "100000"})
    (tmp_path / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(**t) is None


@pytest.mark.parametrize("limit, expected", [(None, 8), (1.5, 2), (0.2, 1), (2.0, 2), (64.0, 8)])
def test_available_cpus_is_the_affinity_lowered_to_the_quota_rounded_up(monkeypatch, limit, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: limit)
    assert available_cpus() == expected


def test_available_cpus_on_this_machine():
    n = available_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
