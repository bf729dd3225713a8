"""How much memory a model version may take, checked before it loads, and what it took.

A version that would not fit must be refused with a reason, not loaded until the kernel's OOM
killer ends the whole server (and every other model with it). Before a load the version folder's
files (model.onnx and its external weight files) are compared with what is left of the limit: a
session holds its weights in memory, about as many bytes as the files, once per instance.

The default limit is what the container may use (its cgroup's memory limit; the machine's RAM
outside a container) less a margin for the server itself and request buffers, shared among the
worker processes (each loads every model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
# The margin kept for the server itself, requests and ONNX Runtime's working memory: 10 % of the
# limit, at least 256 MiB.
MARGIN_SHARE = 0.10
MIN_MARGIN = 256 * MIB
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything above 2**60 is that.
_UNLIMITED = 1 << 60
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def container_limit(root: Path = _CGROUP_ROOT) -> int | None:
    """The cgroup's memory limit in bytes (v2 memory.max, else v1 memory.limit_in_bytes), or None
    when there is none."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _UNLIMITED else value
    return None


def physical_memory() -> int:
    """The machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_limit(workers: int = 1, root: Path = _CGROUP_ROOT) -> int:
    """What one server process's models may take by default: the container's limit (or RAM) less
    the margin, divided among `workers` processes."""
    total = container_limit(root) or physical_memory()
    margin = max(int(total * MARGIN_SHARE), MIN_MARGIN)
    return max(total - margin, 0) // max(workers, 1)


def resident_bytes() -> int:
    """This process's resident memory (VmRSS) in bytes; 0 where /proc is missing."""
    return _status_kib("VmRSS") * 1024


def _status_kib(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in a version folder (model.onnx, its external weight files and the
    small metadata beside them)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class MemoryBudget:
    """The per-process limit for model memory; 0 turns the check off."""

    limit: int

    def refusal(self, where: str, files: int, instances: int) -> str | None:
        """Why a version whose files take `files` bytes, loaded into `instances` sessions, does not
        fit now (None when it does)."""
        if self.limit <= 0:
            return None
        need = files * max(instances, 1)
        in_use = resident_bytes()
        if in_use + need <= self.limit:
            return None
        copies = f" ({instances} instances x {human(files)})" if instances > 1 else ""
        return (
            f"{where} needs about {human(need)} of memory{copies} but only {human(max(self.limit - in_use, 0))} of the "
            f"model memory limit {human(self.limit)} is free ({human(in_use)} in use); refused before loading so "
            "the server keeps serving. Raise the container's memory limit or --model-memory-limit, unload another "
            "model, use fewer instances, or make the model smaller (modelport compress --method fp16 or int8-dynamic)"
        )


def human(nbytes: float) -> str:
    """1.5 GiB, 300.0 MiB, 12 KiB."""
    for unit, size in (("GiB", GIB), ("MiB", MIB)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes / 1024:.0f} KiB"
