"""Bytes that do not parse as the method's request message get INVALID_ARGUMENT.

grpcio parses requests before any handler runs and answers a parse failure with UNKNOWN
("Unexpected DecodeError"); on a stream the failure kills the reader and the call hangs until
its deadline. Servicers added through `TolerantRegistrar` parse instead: a bad message becomes a
`Malformed` value the wrapped handler turns into INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from .errors import InvalidInput, Malformed
from .handlers import like


class MalformedStreamMessage(InvalidInput):
    """Raised from a request stream at the message that failed to parse."""


class TolerantRegistrar:
    """Stands in for the gRPC server while servicers are added (the generated `add_*_to_server`
    functions): every method handler they register is replaced by one that parses requests
    tolerantly. Cheaper than an interceptor, which grpc.aio runs as extra coroutines per call.

    `parsers` replaces the generated deserializer of a method ("/package.Service/Method") by another
    (RepositoryModelLoad's reads uploads without copying them: modelport.protocol.load_request)."""

    def __init__(self, server: grpc.aio.Server, parsers: Mapping[str, Callable[[bytes], Any]] | None = None) -> None:
        self._server = server
        self._parsers = dict(parsers or {})

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_TolerantGenericHandler(h, self._parsers) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: _wrap(h, self._parsers.get(f"/{service}/{name}")) for name, h in handlers.items()}
        )


class _TolerantGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, parsers: Mapping[str, Callable[[bytes], Any]]) -> None:
        self._inner = inner
        self._parsers = parsers
        # Per method (grpc's handlers are stable objects): wrapped once, not on every call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        found = self._wrapped.get(details.method)
        if found is None or found[0] is not handler:
            found = self._wrapped[details.method] = (handler, _wrap(handler, self._parsers.get(details.method)))
        return found[1]


def _wrap(handler: grpc.RpcMethodHandler, parser: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """The same method, parsing its requests with `_tolerant` (around `parser` when given) and
    refusing the malformed ones."""
    parse = _tolerant(handler.request_deserializer, parser)
    if _checks_malformed(handler):  # errors.rpc_errors refuses Malformed itself: one coroutine less per call
        return like(handler, handler.unary_unary, parse)
    if handler.request_streaming:
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
        wrapped = _streaming(behavior)
    else:
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        wrapped = _unary(behavior, handler.response_streaming)
    return like(handler, wrapped, parse)


def _checks_malformed(handler: grpc.RpcMethodHandler) -> bool:
    unary = not handler.request_streaming and not handler.response_streaming
    return unary and getattr(handler.unary_unary, "checks_malformed", False)


def _tolerant(deserializer: Callable[[bytes], Any], parser: Callable[[bytes], Any] | None = None) -> Callable:
    name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = name.full_name if name is not None else "request message"
    read = parser or deserializer

    def parse(data: bytes) -> Any:
        try:
            return read(data)
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
