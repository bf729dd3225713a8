"""`modelport bench` against the HTTP/REST binding (`--url http://host:8000`): the same closed
loop, windows, latencies and error counts as over gRPC (bench.py), on aiohttp's asyncio client.

The request is turned once into the binary-extension body (modelport.protocol.rest; or JSON,
for servers without the extension: `HttpInfer` from `http_infer(..., binary=False)`) and its
headers, and sent as those bytes on every call; answers are read, not decoded. HTTP/1.1 carries
one request at a time per connection, so each outstanding request has its own keep-alive
connection: at concurrency C there are C connections ("channels" in the results). A request's
deadline rides in its body (the `timeout` parameter, µs) as gRPC's rides in its metadata. An
error answer counts under the gRPC status its HTTP status stands for (NOT_FOUND, ...), so the
two transports' results read alike.

aiohttp comes with the server extra, not with the client install: without it this says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType

from modelport.protocol import codec, rest
from modelport.protocol.generated import grpc_service_pb2 as pb

from ._http import error_message, model_path, status_code
from .bench import _LoadGenerator, _Window

CONNECT_SECONDS = 10.0


class MissingAiohttp(RuntimeError):
    """aiohttp's client is needed to load an HTTP endpoint and is not installed."""

    exit_code = 2  # the `modelport` command's exit code: a setup problem, like a missing file


def require_aiohttp() -> ModuleType:
    """The aiohttp module, or MissingAiohttp saying how to get it."""
    try:
        import aiohttp
    except ImportError:
        raise MissingAiohttp(
            "`modelport bench` on an http:// URL needs aiohttp's asyncio client, which is not installed: "
            "pip install aiohttp (the server extra, modelport[server], has it), or bench the gRPC port"
        ) from None
    return aiohttp


@dataclass(frozen=True)
class HttpInfer:
    """An inference request as HTTP: path (from the base URL), body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


def http_infer(
    request: bytes | pb.ModelInferRequest, timeout: float | None = None, *, binary: bool = True
) -> HttpInfer:
    """The HTTP/REST form of a ModelInferRequest (what bench.infer_request makes): the same
    tensors with the binary extension and binary outputs asked for (JSON both ways with
    `binary=False`, for servers without the extension), the deadline as `timeout`."""
    message = pb.ModelInferRequest.FromString(request) if isinstance(request, bytes) else request
    tensors = codec.decode_inputs(message)
    body, length = rest.encode_request(
        {name: array for name, (_, array) in tensors.items()},
        datatypes={name: datatype for name, (datatype, _) in tensors.items()},
        outputs=[o.name for o in message.outputs],
        request_id=message.id,
        timeout_s=timeout,
        binary=binary,
        binary_output=binary,
    )
    headers = {"Content-Type": rest.JSON_TYPE} if length is None else {
        "Content-Type": rest.BINARY_TYPE, rest.HEADER_LENGTH: str(length)}  # fmt: skip
    return HttpInfer(model_path(message.model_name, message.model_version) + "/infer", body, headers)


class HttpLoadGenerator(_LoadGenerator):
    """bench's load generator with one aiohttp session (one keep-alive connection) per
    outstanding request instead of gRPC channels; levels, windows and workers as in bench.py."""

    def __init__(self, url: str, request: bytes | HttpInfer, timeout: float | None, per_channel: int = 1) -> None:
        self._aiohttp = require_aiohttp()
        super().__init__(url, b"", timeout, 1)  # HTTP/1.1: one outstanding request per connection
        infer = request if isinstance(request, HttpInfer) else http_infer(request, timeout)
        self._base = url.rstrip("/")
        self._target, self._body, self._headers = self._base + infer.path, infer.body, infer.headers
        self._sessions: list = []

    async def _ensure_channels(self, count: int) -> None:
        aiohttp = self._aiohttp
        new = []
        while len(self._sessions) < count:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False)  # fmt: skip
            self._sessions.append(session)
            self._calls.append(self._poster(session))
            new.append(session)
        if new:  # connect before the clock starts; an unreachable server shows up as errors
            await asyncio.gather(*(self._connect(s) for s in new))

    async def _connect(self, session) -> None:
        try:
            async with asyncio.timeout(CONNECT_SECONDS), session.get(self._base + "/v2/health/live") as response:
                await response.read()
        except Exception:  # noqa: BLE001 - the load itself reports what is wrong
            pass

    def _poster(self, session) -> Callable[[], Awaitable[tuple[int, bytes]]]:
        target, body, headers = self._target, self._body, self._headers

        async def post() -> tuple[int, bytes]:
            async with session.post(target, data=body, headers=headers) as response:
                return response.status, await response.read()

        return post

    async def _worker(self, call: Callable[[], Awaitable[tuple[int, bytes]]], window: _Window) -> None:
        client_error, clock = self._aiohttp.ClientError, time.perf_counter
        while (sent := clock()) < window.end:
            try:
                status, body = await call()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except TimeoutError:
                window.failure(clock(), "DEADLINE_EXCEEDED", f"no answer within {self.timeout} s")
            except client_error as exc:
                window.failure(clock(), "UNAVAILABLE", f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - count anything else, keep the load going
                window.failure(clock(), "CLIENT_ERROR", f"{type(exc).__name__}: {exc}")
            else:
                if status == 200:
                    window.success(sent, clock())
                else:
                    window.failure(clock(), status_code(status).name, error_message(body, status))

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()
