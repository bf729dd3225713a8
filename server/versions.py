"""A loaded model version, and what tells whether its files changed on disk."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from modelport.client._proto import model_config_pb2 as mc

from . import config as cfg
from .drift import DriftTracker
from .scheduler import BatchingScheduler, DirectScheduler
from .signature import Signature
from .statistics import VersionStats


def fingerprint(model_dir: Path, version: int, filename: str) -> tuple:
    """Size and mtime of everything a version is built from: its folder's files and the model's
    config and labels. A changed fingerprint means the version must be reloaded."""
    paths = sorted(p for p in (model_dir / str(version)).rglob("*") if p.is_file())
    paths += [p for p in (model_dir / cfg.CONFIG_FILE, model_dir / cfg.LABELS_FILE) if p.is_file()]
    stamp = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        stamp.append((str(path.relative_to(model_dir)), info.st_size, info.st_mtime_ns))
    return tuple(stamp)


@dataclass(eq=False)
class ModelVersion:
    """One loaded version: sessions behind a scheduler, signature, effective config, statistics.

    `in_flight` counts requests that resolved to this version and have not finished; a retired
    version is closed only once it drops to zero, so a swap never cuts a request off.
    """

    name: str
    version: int
    spec: cfg.ModelSpec
    config: mc.ModelConfig
    signature: Signature
    scheduler: DirectScheduler | BatchingScheduler
    stats: VersionStats
    stamp: tuple
    drift: DriftTracker | None = None
    in_flight: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """How messages name this version."""
        return f"model '{self.name}' version {self.version}"

    def acquire(self) -> "ModelVersion":
        """Count a request in (call on the event loop, in the same step that resolved it)."""
        self.in_flight += 1
        return self

    def release(self) -> None:
        """Count a request out."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def close_when_idle(self) -> None:
        """Wait for in-flight requests to finish, then stop the sessions' threads."""
        if self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self.scheduler.close()
