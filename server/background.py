"""A server on a background thread with its own event loop: for tests, notebooks and benchmarks
that want a real gRPC server on a real port inside the current process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from .app import RunningServer, start_server
from .loop import loop_factory
from .settings import ServerSettings


class BackgroundServer:
    """`with BackgroundServer(repo) as server: Client(server.address)`; port 0 by default."""

    def __init__(self, model_repository: Path | str, **settings: Any) -> None:
        settings.setdefault("grpc_port", 0)
        settings.setdefault("metrics_port", 0)
        settings.setdefault("http_port", 0)
        settings.setdefault("host", "127.0.0.1")
        self.settings = ServerSettings(model_repository=Path(model_repository), **settings)
        self._loop = loop_factory(self.settings.event_loop)()
        self._thread = threading.Thread(target=self._loop.run_forever, name="modelport-server", daemon=True)
        self.running: RunningServer | None = None

    def start(self, timeout: float = 120.0) -> BackgroundServer:
        """Load the repository and start serving; returns once the port is bound."""
        self._thread.start()
        self.running = asyncio.run_coroutine_threadsafe(start_server(self.settings), self._loop).result(timeout)
        return self

    @property
    def address(self) -> str:
        """"host:port" to connect to."""
        assert self.running is not None, "server not started"
        return f"{self.settings.host}:{self.running.port}"

    @property
    def http_url(self) -> str:
        """"http://host:port" of the HTTP/REST binding."""
        assert self.running is not None and self.running.http_port, "server not started, or HTTP is off"
        return f"http://{self.settings.host}:{self.running.http_port}"

    def stop(self, grace: float | None = 0) -> None:
        """Drain within `grace` seconds, then stop the loop and its thread."""
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self._loop).result()
            self.running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
