"""Shared fixtures (real modelport servers on port 0) and the `slow` marker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelport.server.background import BackgroundServer

# Marked `slow` by where they live: soak, fuzz-heavy, TensorFlow (converter), Prometheus and
# Kubernetes tests. `make test` runs everything; `pytest -m "not slow"` is the quick loop.
SLOW = (
    "tests/converter/",
    "tests/k8s/",
    "tests/server/test_soak.py",
    "tests/server/test_fuzz.py",
    "tests/protocol/test_codec_fuzz.py",
    "tests/server/test_prometheus.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests under SLOW."""
    root = Path(config.rootpath)
    for item in items:
        where = Path(item.path).relative_to(root).as_posix()
        if where.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator:
    """One real redis-server for the session (tests/redis_server.py); use distinct model names."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
