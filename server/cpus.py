"""How many CPUs this process may really use, and how to share them among sessions.

A container's CPU limit is a cgroup quota, not the host's core count: ONNX Runtime's default of
one thread per host core oversubscribes a pod limited to 2 CPUs on a 64-core node, which costs
far more than it gains. So threads are sized from min(cgroup quota, CPU affinity).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None if unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text().strip())
            return None if quota <= 0 else quota / int(period_file.read_text().strip())
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can use: affinity, capped by the cgroup quota (rounded up)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return max(1, min(affinity, math.ceil(limit)) if limit else affinity)


def intra_op_threads(cpus: int, workers: int = 1, instances: int = 1) -> int:
    """ONNX Runtime intra-op threads for one session: the CPUs divided among worker processes
    and model instances, at least one."""
    return max(1, cpus // max(1, workers * instances))
