"""Bytes that do not parse as the method's request message get INVALID_ARGUMENT.

grpcio parses requests before any handler runs and answers a parse failure with UNKNOWN
("Unexpected DecodeError"); on a stream the failure kills the reader and the call hangs until
its deadline. This interceptor parses instead: a bad message becomes a `Malformed` value the
wrapped handler turns into INVALID_ARGUMENT naming the message type, on every service.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import InvalidInput
from .handlers import like


@dataclass(frozen=True)
class Malformed:
    """What a request that failed to parse is replaced by."""

    message: str


class MalformedStreamMessage(InvalidInput):
    """Raised from a request stream at the message that failed to parse."""


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Wrap every method so that unparseable request bytes end the call with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        # Per method handler (grpc's are stable objects): built once, not on every call.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None or wrapped[0] is not handler:
            if len(self._wrapped) > 1024:  # handlers built per call by someone else: do not grow
                self._wrapped.clear()
            wrapped = self._wrapped[id(handler)] = (handler, _wrap(handler))
        return wrapped[1]


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method, parsing its requests with `_tolerant` and refusing the malformed ones."""
    parse = _tolerant(handler.request_deserializer)
    if handler.request_streaming:
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
        wrapped = _streaming(behavior)
    else:
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        wrapped = _unary(behavior, handler.response_streaming)
    return like(handler, wrapped, parse)


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = name.full_name if name is not None else "request message"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            return Malformed(f"the request is not a valid {type_name}: {exc}")

    return parse


def _unary(behavior: Callable, response_streaming: bool) -> Callable:
    if response_streaming:

        async def unary_stream(request, context):
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result  # a handler that writes with context.write()

        return unary_stream

    async def unary_unary(request, context):
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return unary_unary


def _streaming(behavior: Callable) -> Callable:
    """Requests reach the handler until one is malformed; the call then ends INVALID_ARGUMENT."""

    async def checked(requests: AsyncIterator) -> AsyncIterator:
        async for request in requests:
            if isinstance(request, Malformed):
                raise MalformedStreamMessage(request.message)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream_out(requests, context):
            try:
                async for response in behavior(checked(requests), context):
                    yield response
            except MalformedStreamMessage as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return stream_out

    async def stream_in(requests, context):
        try:
            return await behavior(checked(requests), context)
        except MalformedStreamMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return stream_in
