"""How many CPUs this process may really use: its affinity, and the CPU quota of its control group.

A container limited to two CPUs (``docker run --cpus 2``, a Kubernetes CPU limit) still sees every core of its host
in ``os.sched_getaffinity`` and ``os.cpu_count``; the limit is a cgroup quota (v2: ``cpu.max``, v1:
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). Sizing thread pools by the host's count then runs many threads that
take turns on a few CPUs. The rule here is the JDK's (``-XX:+UseContainerSupport``): the quota divided by the
period, rounded up, and never more than the affinity allows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(text: str | None, period_text: str | None = None) -> float | None:
    """CPUs allowed by one cgroup's quota: v2 ``"<quota> <period>"`` or ``"max <period>"``; v1 the two files'
    contents (``-1``: none). ``None`` when unlimited or unreadable."""
    if text is None:
        return None
    fields = text.split()
    if period_text is not None:
        fields = [fields[0] if fields else "", period_text]
    if len(fields) != 2 or fields[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(*, proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                     root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPUs this process's control group (and every group above it) allows, as a fraction (``1.5``), or
    ``None`` when no quota applies or the system has no cgroups (not Linux, no ``/sys/fs/cgroup``).

    Args:
        proc_cgroup: the process's ``/proc/<pid>/cgroup``, which names its group in each hierarchy.
        root: where the cgroup file systems are mounted (v2 at ``root``, v1 controllers in ``root/cpu`` or
            ``root/cpu,cpuacct``).
    """
    text = _read(Path(proc_cgroup))
    if text is None:
        return None
    root = Path(root)
    limits: list[float] = []
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if not hier or not group.startswith("/") or ".." in group.split("/"):  # the kernel writes neither
            continue
        if controllers == "":  # cgroup v2: one unified hierarchy
            base, files = root if (root / "cgroup.controllers").exists() else root / "unified", ("cpu.max",)
        elif "cpu" in controllers.split(","):
            base = next((root / d for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / d).is_dir()), None)
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if base is None:
                continue
        else:
            continue
        # the group as this process sees it, and each group above it (a limit on a parent applies too); inside a
        # container with its own cgroup namespace the group is "/" and its files are at the mount itself
        here = base / group.lstrip("/")
        for d in (here, *here.parents):
            if len(files) == 1:
                limit = _quota(_read(d / files[0]))
            else:
                limit = _quota(_read(d / files[0]), _read(d / files[1]))
            if limit is not None:
                limits.append(limit)
            if d == base:
                break
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
