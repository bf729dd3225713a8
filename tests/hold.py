"""Hold a model instance inside its run, so tests of queues, deadlines and limits depend on no
timing: the real session still runs, once the test lets it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


class Held:
    """`entered` is set when a run has started (and is waiting); `release()` lets every run go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    def wait_entered(self, timeout: float = 60.0) -> None:
        assert self.entered.wait(timeout), "no run started"


def hold(instance, monkeypatch: pytest.MonkeyPatch) -> Held:
    """Make every run of `instance` wait for `release()`; it runs on the instance's thread
    (never inline on the event loop, which a held run would block)."""
    held = Held()
    real_run = instance.model.run

    def held_run(inputs, outputs):
        held.entered.set()
        assert held._release.wait(60), "the test never released the run"
        return real_run(inputs, outputs)

    monkeypatch.setattr(instance, "cost_ns", None)
    monkeypatch.setattr(instance.model, "run", held_run)
    return held


@contextlib.contextmanager
def held_server(repository: Path, model: str, monkeypatch: pytest.MonkeyPatch, **settings) -> Iterator[tuple]:
    """A BackgroundServer on `repository` with `model`'s first instance held: (server, version,
    Held). Released (and stopped) on the way out, whatever happened."""
    from modelport.server.background import BackgroundServer

    with BackgroundServer(repository, **settings) as server:
        version = server.running.dataplane.registry.get(model)
        held = hold(version.scheduler.instances[0], monkeypatch)
        try:
            yield server, version, held
        finally:
            held.release()
