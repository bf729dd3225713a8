"""Thread sizing follows the cgroup quota and affinity, not the host's core count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelport.server import cpus


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) == 1.5
    assert cpus.usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs -> 2 threads


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    assert cpus.usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, folder: str) -> None:
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) == 1.0
    assert cpus.usable_cpus(tmp_path) == 1


def test_cgroup_v1_unlimited_and_absent(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "nowhere") is None


def test_affinity_caps_a_large_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("6400000 100000\n")  # 64 CPUs of quota
    assert cpus.usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "cpu_count, workers, instances, expected",
    [(16, 1, 1, 16), (16, 8, 1, 2), (16, 4, 2, 2), (2, 4, 1, 1), (8, 1, 3, 2)],
)
def test_threads_divided_among_workers_and_instances(cpu_count: int, workers: int, instances: int,
                                                      expected: int) -> None:
    assert cpus.intra_op_threads(cpu_count, workers, instances) == expected
