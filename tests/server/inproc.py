"""Helpers for the in-process server tests (data plane, registry, schedulers; no gRPC). Each test
runs one coroutine with asyncio.run, so everything async shares one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import numpy as np

from modelport.protocol import codec
from modelport.protocol.types import InferenceRequest, RequestedOutput, Tensor
from modelport.server.dataplane import DataPlane, Limits
from modelport.server.loader import LoaderSettings
from modelport.server.observers import Observer
from modelport.server.registry import ModelRegistry


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the event loop run until `predicate()` holds (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def until_past(deadline: float) -> None:
    """Let the event loop run until time.monotonic() has passed `deadline`."""
    await until(lambda: time.monotonic() > deadline, "the deadline has passed",
                timeout=deadline - time.monotonic() + 10)


async def within(awaitable, seconds: float = 10.0):
    """Await something that must not wait on a held instance: should it (a request that ought
    to be refused at once got queued behind the held run), the test fails instead of hanging."""
    return await asyncio.wait_for(awaitable, seconds)


def tensors(**arrays: np.ndarray) -> dict[str, Tensor]:
    """{name: (datatype, array)} with each datatype read from the array."""
    return {name: (codec.datatype_of(array), array) for name, array in arrays.items()}


def request(
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    version: str = "",
    request_id: str = "",
    outputs: Sequence[str | tuple[str, int]] = (),
    **fields,
) -> InferenceRequest:
    """An InferenceRequest as the codec would decode it; outputs are names or (name, class_count)."""
    wanted = [RequestedOutput(*o) if isinstance(o, tuple) else RequestedOutput(o) for o in outputs]
    return InferenceRequest(model, version, request_id, tensors(**inputs), wanted, **fields)


@contextlib.asynccontextmanager
async def loaded(root: Path, loader: LoaderSettings | None = None) -> AsyncIterator[ModelRegistry]:
    """A ModelRegistry with every model of `root` loaded; closed on the way out."""
    registry = ModelRegistry(root, loader)
    await registry.load_all()
    try:
        yield registry
    finally:
        await within(registry.close(), 30)


@contextlib.asynccontextmanager
async def serving(
    root: Path,
    limits: Limits | None = None,
    observers: Sequence[Observer] = (),
    loader: LoaderSettings | None = None,
) -> AsyncIterator[DataPlane]:
    """A DataPlane over every model of `root`, loaded; the registry is closed on the way out
    (bounded: a request never released would hang it)."""
    async with loaded(root, loader) as registry:
        yield DataPlane(registry, limits, observers=observers, server_version="test")
