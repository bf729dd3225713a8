"""A loaded model version: what serves it and what is kept about it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.types import RequestedOutput

from . import config as cfg
from .drift import DriftTracker
from .observers import Sampler
from .scheduler import BatchingScheduler, DirectScheduler
from .signature import Signature
from .statistics import VersionStats


@dataclass(frozen=True)
class LoadFootprint:
    """What loading a version cost: seconds, the resident memory it added (the process's RSS
    after less before: loads run one at a time per model, so another model loading at the same
    moment would count here too) and its files' bytes."""

    seconds: float = 0.0
    memory_bytes: int = 0
    file_bytes: int = 0


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
    stamp: tuple  # repository.version_stamp when it was loaded
    sampler: Sampler
    drift: DriftTracker | None = None
    footprint: LoadFootprint = field(default_factory=LoadFootprint)
    in_flight: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)
    # What a request that names no outputs gets: all of them (kept, not rebuilt per request).
    default_outputs: list[RequestedOutput] = field(init=False, repr=False)
    default_output_names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.default_outputs = [RequestedOutput(t.name) for t in self.signature.outputs]
        self.default_output_names = [t.name for t in self.signature.outputs]

    @property
    def where(self) -> str:
        """How messages name this version."""
        return f"model '{self.name}' version {self.version}"

    def acquire(self) -> ModelVersion:
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
