"""The event loop the server runs on: uvloop where it is installed (the server extra installs it
on Linux and macOS), else asyncio's own. grpc.aio runs on any asyncio loop; uvloop's is faster
at the per-request work grpc.aio hands to it (measured: ~7 % more requests/s for a small model
on 2 cores, benchmarks/README.md), which is where a small model's throughput goes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

KINDS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str = "auto"):
    """A callable that makes a new event loop of `kind` (auto: uvloop if importable)."""
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ImportError(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop, or use --event-loop asyncio)"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, Any], kind: str = "auto") -> Any:
    """asyncio.run(main) on a new loop of `kind`."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """'uvloop' or 'asyncio', for the start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
