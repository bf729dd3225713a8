"""Bearer-token authentication with scopes, as a gRPC server interceptor.

Token file (`--auth-token-file`): one `<token> <scope>[,<scope>]` per line; `#` comments. Scopes:
`inference` (inference, metadata, readiness, statistics, feedback) and `admin` (everything,
including repository load/unload and the settings RPCs). The file is reread when it changes.
Tokens are compared in constant time and never logged; refusals say no more than
UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from .handlers import like
from .logs import event

log = logging.getLogger(__name__)

ADMIN_METHODS = {
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
    "/inference.GRPCInferenceService/CudaSharedMemoryRegister",
    "/inference.GRPCInferenceService/CudaSharedMemoryUnregister",
    "/inference.GRPCInferenceService/TraceSetting",
    "/inference.GRPCInferenceService/LogSettings",
    "/modelport.v1.Rollout/RolloutRefresh",
}
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/"
)
SCOPES = {"inference", "admin"}


class TokenFile:
    """Tokens and their scopes, reread when the file changes (mtime/size)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple | None = None
        self._tokens: list[tuple[bytes, frozenset[str]]] = []
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        info = self.path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        tokens = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            scopes = frozenset(parts[1].split(",")) if len(parts) > 1 else frozenset()
            if len(parts) != 2 or not scopes <= SCOPES:
                raise ValueError(
                    f"{self.path}:{number}: expected '<token> <scope>[,<scope>]' with scopes {sorted(SCOPES)}"
                )
            tokens.append((parts[0].encode(), scopes))
        self._tokens, self._stamp = tokens, stamp
        event(log, logging.INFO, "auth_tokens_loaded", file=str(self.path), count=len(tokens))

    def scopes(self, token: bytes) -> frozenset[str] | None:
        """The scopes of `token`, or None when unknown. Every token is compared (no early exit)."""
        with self._lock:
            try:
                self._reload()
            except (OSError, ValueError) as exc:  # keep the last good tokens
                event(log, logging.WARNING, "auth_tokens_reload_failed", reason=str(exc))
            found = None
            for known, scopes in self._tokens:
                if hmac.compare_digest(known, token):
                    found = scopes
            return found


def required_scope(method: str) -> str:
    """The scope a method needs."""
    return "admin" if method in ADMIN_METHODS else "inference"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without a valid `authorization: Bearer <token>` of the right scope."""

    def __init__(self, tokens: TokenFile, open_health: bool = True) -> None:
        self._tokens = tokens
        self._open_health = open_health

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details
    ) -> grpc.RpcMethodHandler:
        method = details.method
        handler = await continuation(details)
        if handler is None or (self._open_health and method.startswith(OPEN_PREFIXES)):
            return handler
        token = _bearer(details.invocation_metadata)
        scopes = self._tokens.scopes(token) if token else None
        if scopes is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        needed = required_scope(method)
        if needed not in scopes and "admin" not in scopes:
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, f"this call needs the '{needed}' scope")
        return handler


def _bearer(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts."""

    async def abort(request_or_iterator, context):
        await context.abort(code, message)

    return like(handler, abort)
