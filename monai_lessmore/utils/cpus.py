"""How many CPUs this process may really use: its affinity, and the CPU quota of its control group.

A container limited to two CPUs (``docker run --cpus 2``, a Kubernetes CPU limit) still sees every core of its host
in ``os.sched_getaffinity`` and ``os.cpu_count``; the limit is a cgroup quota (v2: ``cpu.max``, v1:
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). Sizing thread pools by the host's count then runs many threads that
take turns on a few CPUs. The rule here is the JDK's (``-XX:+UseContainerSupport``): the quota divided by the
period, rounded up, and never more than the affinity allows. The group's folder is found as the JDK and Go's
``automaxprocs`` find it: the cgroup mount of the hierarchy (``/proc/self/mountinfo``) and the process's group in it
(``/proc/self/cgroup``), relative to the mount's root; every group above it up to the mount counts too.
"""

from __future__ import annotations

import math
import os

from monai_lessmore.utils.files import mount_entries

__all__ = ["available_cpus", "cgroup_cpu_limit"]


def _read(path: str) -> str | None:
    try:  # mount points are bytes (other than the kernel's octal escapes): keep them as they are
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return None


def _quota(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs one group's quota allows (``quota / period``); ``None`` when unlimited (``max``, ``-1``) or unreadable."""
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _group_limit(folder: str, v2: bool) -> float | None:
    if v2:  # "<quota> <period>" or "max <period>"
        fields = (_read(os.path.join(folder, "cpu.max")) or "").split()
        return _quota(*fields) if len(fields) == 2 else None
    return _quota(_read(os.path.join(folder, "cpu.cfs_quota_us")), _read(os.path.join(folder, "cpu.cfs_period_us")))


def _cpu_mounts(mountinfo: str) -> dict[bool, tuple[str, str]]:
    """``{v2: (mount root, mount point)}`` of the cgroup v2 mount and the v1 mount holding the ``cpu`` controller."""
    mounts: dict[bool, tuple[str, str]] = {}
    for root, point, fstype, options in mount_entries(mountinfo):
        if fstype == "cgroup2":
            mounts.setdefault(True, (root, point))
        elif fstype == "cgroup" and "cpu" in options.split(","):
            mounts.setdefault(False, (root, point))
    return mounts


def cgroup_cpu_limit(
    *, proc_cgroup: str | os.PathLike = "/proc/self/cgroup", mountinfo: str | os.PathLike = "/proc/self/mountinfo"
) -> float | None:
    """The CPUs this process's control group, and every group above it, allow.

    Args:
        proc_cgroup: the process's ``/proc/<pid>/cgroup`` (its group in each hierarchy).
        mountinfo: the process's ``/proc/<pid>/mountinfo`` (where each hierarchy is mounted, and from which group).

    Returns:
        The tightest quota as a number of CPUs (``1.5``), or ``None`` when no quota applies or the system has no
        cgroups (not Linux, no cgroup mount, files not readable). Never raises.
    """
    groups, mounted = _read(os.fspath(proc_cgroup)), _read(os.fspath(mountinfo))
    if groups is None or mounted is None:
        return None
    mounts = _cpu_mounts(mounted)
    limits: list[float] = []
    for line in groups.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        v2 = controllers == ""
        if v2 not in mounts or (not v2 and "cpu" not in controllers.split(",")) or not group.startswith("/"):
            continue
        root, point = mounts[v2]
        # the group relative to the mount: a container's own namespace mounts its group as "/"; a group outside the
        # mount's root (the host's path, seen from a container without its own cgroup namespace) is the mount itself
        root = root.rstrip("/")
        rel = group[len(root):] if group == root or group.startswith(root + "/") else ""
        parts = [p for p in rel.split("/") if p]
        if ".." in parts:  # a group outside this process's cgroup namespace (written "/.."): not under the mount
            parts = []
        for depth in range(len(parts), -1, -1):  # the group, then each group above it, up to the mount
            limit = _group_limit(os.path.join(point, *parts[:depth]), v2)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity (``os.sched_getaffinity``; ``os.cpu_count`` where that does not
    exist), lowered to its cgroup CPU quota rounded up (:func:`cgroup_cpu_limit`); at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
