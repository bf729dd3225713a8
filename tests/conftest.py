"""Shared fixtures: real modelport servers on port 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelport.server.background import BackgroundServer


@pytest.fixture
def start_server() -> Iterator[Callable[..., str]]:
    """`address = start_server(repository, **settings)`: a real gRPC server in this process,
    on a free loopback port, stopped when the test ends."""
    servers: list[BackgroundServer] = []

    def start(repository: Path, **settings) -> str:
        server = BackgroundServer(repository, **settings).start()
        servers.append(server)
        return server.address

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[BackgroundServer]:
    """One real server for a test module, serving that module's `repo` fixture."""
    running = BackgroundServer(repo).start()
    yield running
    running.stop()
