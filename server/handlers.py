"""Build a gRPC method handler shaped like another one (for wrappers that replace a method)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


def like(
    handler: grpc.RpcMethodHandler, behavior: Callable, request_deserializer: Callable[[bytes], Any] | None = None
) -> grpc.RpcMethodHandler:
    """A handler with `handler`'s streaming kind and serializers that runs `behavior`; it parses
    requests with `request_deserializer` when given."""
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
