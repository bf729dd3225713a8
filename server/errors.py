"""Domain errors and the one place where they become gRPC status codes (and HTTP statuses).

The data plane raises these; `rpc_errors` maps them for every servicer. Messages name the model,
the tensor and what was expected, because that message is all a remote caller sees.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from .logs import event

log = logging.getLogger("modelport.server.servicer")
R = TypeVar("R")


class ModelportError(Exception):
    """Base of every error a request can end in; `code` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ModelportError):
    """Unknown model, or a version that is not served."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ModelportError):
    """Bad shape, datatype, size or framing in a request."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotReady(ModelportError):
    """The model exists but cannot serve right now."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ModelportError):
    """Back-pressure: the model's queue is at its limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ModelportError):
    """The caller's deadline passed before the request could run."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotAllowed(ModelportError):
    """The operation is not allowed in the server's current mode."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelLoadError(ModelportError):
    """A model version could not be loaded (bad file, bad config)."""

    code = grpc.StatusCode.INTERNAL


class ModelTooLarge(ModelLoadError):
    """A version whose files do not fit in what is left of --model-memory-limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AlreadyExists(ModelportError):
    """Something that is never overwritten (a published version) already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class InferenceFailed(ModelportError):
    """ONNX Runtime failed while running a request that passed validation."""

    code = grpc.StatusCode.INTERNAL


class StoreUnavailable(ModelportError):
    """The feedback store cannot be reached (labels cannot be paired now); inference is unaffected."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ModelportError):
    """An RPC the protocol declares and modelport does not implement."""

    code = grpc.StatusCode.UNIMPLEMENTED


# The HTTP status of each gRPC status code, as Triton's HTTP server maps the same errors (not
# found 404, unavailable 503, unimplemented 501, internal 500, the caller's mistakes 400), plus
# the statuses HTTP has for what Triton has no code for.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.CANCELLED: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status an error with gRPC status `code` is answered with."""
    return HTTP_STATUS.get(code, 500)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller receives for `exc`."""
    if isinstance(exc, ModelportError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Malformed:
    """What a request whose bytes do not parse as the method's message is replaced by (see
    malformed.TolerantRegistrar); `message` says what failed to parse."""

    message: str


def rpc_errors(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Run a unary RPC handler, turning any error into a status with a clear message: a domain
    error is logged in one line; anything else is a bug, logged with its traceback, and the
    caller gets INTERNAL while the server keeps serving. A Malformed request is INVALID_ARGUMENT
    (checked here, so the tolerant registrar need not wrap these handlers once more)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext) -> R:
        try:
            if type(request) is Malformed:
                raise InvalidInput(request.message)
            return await method(self, request, context)
        except ModelportError as exc:
            code, message = status_of(exc)
            event(log, logging.INFO, "request_failed", rpc=method.__name__, code=code.name, message=message)
        except Exception as exc:
            code, message = status_of(exc)
            log.exception("request failed unexpectedly: rpc=%s", method.__name__)
        await context.abort(code, message)

    wrapper.checks_malformed = True  # type: ignore[attr-defined]
    return wrapper
