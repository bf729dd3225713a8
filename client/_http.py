"""The HTTP side of the client's transport: one base URL, a small pool of keep-alive connections
(the standard library's http.client, so the client install needs nothing new), retries as the
gRPC channel makes them, and HTTP statuses mapped onto the gRPC status codes that
`InferenceServerError` carries, so that callers handle one kind of error whatever the transport.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import grpc

from ._common import MIB, _read
from .errors import InferenceServerError

# The inverse of the server's errors.http_status (Triton's statuses). 400 carries both
# INVALID_ARGUMENT and FAILED_PRECONDITION there; it reads back as INVALID_ARGUMENT.
HTTP_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A reused keep-alive connection the server has closed meanwhile fails like this before any
# answer; the request is sent again on a new connection (as urllib3 does).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP error status (UNKNOWN for ones the protocol does not use)."""
    return HTTP_CODES.get(status, grpc.StatusCode.UNKNOWN)


def error_message(body: bytes, status: int, reason: str = "") -> str:
    """The server's explanation: the `error` of a JSON body (the protocol's), else the text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    text = body.decode("utf-8", "replace").strip()
    return text[:1000] or f"HTTP {status} {reason}".strip()


def model_path(name: str, version: str = "") -> str:
    """/v2/models/{name}[/versions/{version}], quoted."""
    path = f"/v2/models/{quote(name, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def repository_path(name: str, action: str) -> str:
    """/v2/repository/models/{name}/{action} (load, unload), quoted."""
    return f"/v2/repository/models/{quote(name, safe='')}/{action}"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def json(self):
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


def raise_for_status(answer: Answer) -> Answer:
    """`answer`, or InferenceServerError with its status's code and the server's message."""
    if answer.status >= 400:
        raise InferenceServerError(status_code(answer.status), error_message(answer.body, answer.status, answer.reason))
    return answer


class HttpTransport:
    """Requests to one server's HTTP/REST port over pooled keep-alive connections; thread-safe
    (a connection serves one request at a time, and there are as many as there are callers).

    Calls that fail to connect, or that the server answers 503, are retried up to `retries`
    times with backoff within the call's timeout, as the gRPC channel retries UNAVAILABLE."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ssl: bool = False,
        root_certificates: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        retries: int = 5,
        max_message_bytes: int = 64 * MIB,
        load_balancing: str | None = None,
        channel_options: object = (),
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad HTTP URL '{url}': use http://host:port or https://host:port")
        tls = parts.scheme.lower() == "https"
        if not tls and (ssl or root_certificates or private_key or certificate_chain):
            raise ValueError(f"TLS options given with '{url}': use an https:// URL")
        if load_balancing or channel_options:
            raise ValueError("load_balancing and channel_options are gRPC channel options; they do not apply to "
                             f"'{url}' (HTTP/REST)")  # fmt: skip
        self.url = f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"
        self._host = parts.hostname
        self._port = parts.port or (443 if tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._context = tls_context(root_certificates, private_key, certificate_chain) if tls else None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._attempts = 1 + max(0, min(retries, 4))  # gRPC caps attempts at 5
        self._max_bytes = max_message_bytes
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ calls

    def call(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
             timeout: float | None = None) -> Answer:  # fmt: skip
        """`request`, raising InferenceServerError for an error status."""
        return raise_for_status(self.request(method, path, body, headers, timeout))

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                timeout: float | None = None) -> Answer:  # fmt: skip
        """Send one request and read its answer, whatever its status. InferenceServerError
        UNAVAILABLE when the server cannot be reached, DEADLINE_EXCEEDED when it does not answer
        within `timeout` seconds (None: wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = 0.05
        for attempt in range(self._attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                answer = self._send(method, path, body, headers, left)
            except _Unreachable as exc:
                if attempt == self._attempts - 1:
                    raise InferenceServerError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
                failure: _Unreachable | Answer = exc
            else:
                if answer.status != 503 or attempt == self._attempts - 1:
                    return answer
                failure = answer
            if deadline is not None and time.monotonic() + backoff >= deadline:
                break
            time.sleep(backoff)
            backoff = min(2 * backoff, 1.0)
        if isinstance(failure, Answer):
            return failure
        raise InferenceServerError(grpc.StatusCode.UNAVAILABLE, str(failure))

    def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None,
              timeout: float | None) -> Answer:  # fmt: skip
        merged = {**self._headers, **(headers or {})}
        for _ in range(2):  # a second time only when a reused connection turned out closed
            connection, reused = self._take()
            try:
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                connection.request(method, self._prefix + path, body=body, headers=merged)
                response = connection.getresponse()
                length = response.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > self._max_bytes:
                    raise _TooLarge(int(length))
                data = response.read()
            except TimeoutError:
                connection.close()
                within = f" within {timeout:g} s" if timeout is not None else " (the connection timed out)"
                message = f"no answer from {self.url}{within}"
                raise InferenceServerError(grpc.StatusCode.DEADLINE_EXCEEDED, message) from None
            except _TooLarge as exc:
                connection.close()
                raise InferenceServerError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           f"the answer has {exc.size} bytes, more than max_message_bytes "
                                           f"({self._max_bytes})") from None  # fmt: skip
            except _STALE as exc:
                connection.close()
                if reused:  # the server closed its idle connections (or restarted): drop the others too
                    self.close()
                    continue
                raise _Unreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, TLS handshake, not HTTP
                connection.close()
                raise _Unreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
            if response.will_close:
                connection.close()
            else:
                self._give(connection)
            return Answer(response.status, response.reason, response.headers, data)
        raise _Unreachable(f"cannot reach {self.url}: the connection was closed")

    # ------------------------------------------------------------ connections

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._context is not None:
            return http.client.HTTPSConnection(self._host, self._port, context=self._context), False
        return http.client.HTTPConnection(self._host, self._port), False

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(connection)

    def close(self) -> None:
        """Close the idle connections (ones in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _Unreachable(Exception):
    """No HTTP answer: refused, reset, TLS failure, not an HTTP server."""


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def tls_context(
    root_certificates: bytes | str | Path | None,
    private_key: bytes | str | Path | None,
    certificate_chain: bytes | str | Path | None,
) -> ssl.SSLContext:
    """A client TLS context like gRPC's ssl_channel_credentials: the given roots (PEM, bytes or a
    path; the system's when None) and, for mutual TLS, the client's key and certificate chain."""
    roots = _read(root_certificates)
    context = ssl.create_default_context(cadata=roots.decode() if roots else None)
    if bool(private_key) != bool(certificate_chain):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    if certificate_chain and private_key:
        with _as_file(certificate_chain) as chain, _as_file(private_key) as key:
            context.load_cert_chain(chain, key)
    return context


@contextlib.contextmanager
def _as_file(value: bytes | str | Path) -> Iterator[str]:
    """A path for `value`: itself when it is one, else a private temporary file (load_cert_chain
    reads files only), removed afterwards."""
    if not isinstance(value, bytes):
        yield str(value)
        return
    handle, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(value)
        yield path
    finally:
        os.unlink(path)
