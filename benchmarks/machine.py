"""The machine the suite runs on, and how busy processes keep its CPUs.

`machine_info()` describes the CPU, affinity, cgroup limit, memory, GPUs and software versions
for the header of results.md / results.json. `CpuMeter` reads /proc to say how many cores a
server's process tree and the load generator kept busy during a level.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """CPU, affinity, cgroup limit, memory, GPU and software versions."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    siblings = re.search(r"^siblings\s*:\s*(\d+)", cpuinfo, re.M)
    cores = re.search(r"^cpu cores\s*:\s*(\d+)", cpuinfo, re.M)
    per_core = int(siblings.group(1)) // int(cores.group(1)) if siblings and cores and int(cores.group(1)) else None
    affinity = sorted(os.sched_getaffinity(0))
    try:
        from modelport.server.cpus import cgroup_cpu_limit

        limit = cgroup_cpu_limit()
    except Exception:  # noqa: BLE001 - the client-only install has no server package
        limit = None
    mem = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    gpus = _gpus()
    info = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "affinity": cpu_text(affinity),
        "usable_cpus": len(affinity),
        "threads_per_core": per_core,
        "cgroup_cpu_limit": limit,
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpus": gpus,
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("modelport", "onnxruntime", "onnxruntime-gpu", "numpy", "grpcio", "protobuf", "onnx", "torch",
                      "torchvision")},
        "onnxruntime_providers": ort_providers(),
        "git": _git(),
    }  # fmt: skip
    ht = f", {per_core} thread(s) per core" if per_core else ""
    cg = f", cgroup limit {limit:g} CPUs" if limit else ""
    info["summary"] = (
        f"{model}; {info['logical_cpus']} logical CPUs (affinity {info['affinity']}{ht}{cg}); "
        f"{info['memory_gib']} GiB RAM; GPU: {', '.join(gpus) if gpus else 'none'}; host {info['host']}"
    )
    v = info["versions"]
    ort_name = "onnxruntime-gpu" if v["onnxruntime-gpu"] else "onnxruntime"
    info["software"] = (
        f"Python {info['python']}, {ort_name} {v[ort_name]} ({', '.join(info['onnxruntime_providers'])}), "
        f"grpcio {v['grpcio']}, numpy {v['numpy']}, torch {v['torch'] or '-'}, modelport {v['modelport']}"
        + (f" (git {info['git']})" if info["git"] else "")
    )
    return info


def ort_providers() -> list[str]:
    """The execution providers this onnxruntime offers; [] when it is not installed."""
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


def cpu_text(cpus: Sequence[int] | set[int] | None) -> str:
    """{0,1,2,5} -> "0-2,5" (taskset's list format); "" for none."""
    ordered, parts = sorted(cpus or []), []
    for cpu in ordered:
        if parts and cpu == parts[-1][1] + 1:
            parts[-1][1] = cpu
        else:
            parts.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(p.strip() for p in line.split(",")) for line in out.splitlines() if line.strip()]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- CPU accounting


class CpuMeter:
    """Busy cores of a server's process tree and of the rest of this script's children (the load
    generator) between start() and stop()."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = list(server_pids)

    def _sample(self) -> tuple[dict[int, float], dict[int, float]]:
        table = _proc_table()
        server = set().union(*(_tree(table, p) for p in self.server_pids)) if self.server_pids else set()
        client = _tree(table, os.getpid()) - server - {os.getpid()}
        return {p: table[p][1] for p in server if p in table}, {p: table[p][1] for p in client if p in table}

    def start(self) -> None:
        """Take the first CPU-time sample."""
        self.t0, (self.s0, self.c0) = time.perf_counter(), self._sample()

    def stop(self) -> dict[str, float]:
        """Busy cores since start(): server_cores, client_cores and the wall_s they were averaged over."""
        wall = time.perf_counter() - self.t0
        s1, c1 = self._sample()
        server = sum(v - self.s0.get(p, 0.0) for p, v in s1.items())
        client = sum(v - self.c0.get(p, 0.0) for p, v in c1.items())
        return {"server_cores": round(server / wall, 2), "client_cores": round(client / wall, 2),
                "wall_s": round(wall, 2)}


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "; rest[0] is field 3
        table[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


def _tree(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    """`root` and every descendant of it in `table`."""
    found, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found
