"""The gRPC servicer: decode, call the data plane, encode. Nothing else lives here.

Domain errors become gRPC status codes in `_rpc`, the one place that does so.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from modelport.client import codec
from modelport.client._proto import grpc_service_pb2 as pb
from modelport.client._proto import grpc_service_pb2_grpc as pb_grpc

from .dataplane import DataPlane
from .errors import InvalidInput, ModelportError, status_of
from .signature import TensorSpec
from .types import InferenceRequest, RequestedOutput

log = logging.getLogger(__name__)
R = TypeVar("R")


def _rpc(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Run an RPC handler, turning any error into a status with a clear message."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            code, message = status_of(exc)
            log.info("request failed: rpc=%s code=%s message=%s", method.__name__, code.name, message)
        except Exception as exc:  # a bug: keep serving, tell the caller, log the trace
            code, message = status_of(exc)
            log.exception("request failed unexpectedly: rpc=%s", method.__name__)
        await context.abort(code, message)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on top of a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.server_live())

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.server_ready())

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        info = self._dp.server_metadata()
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=info.extensions)

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        info = self._dp.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=info.versions,
            platform=info.platform,
            inputs=[_tensor_metadata(t) for t in info.inputs],
            outputs=[_tensor_metadata(t) for t in info.outputs],
        )

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        model = self._dp.resolve(request.model_name, request.model_version)
        try:
            inputs = codec.decode_inputs(request)
        except codec.CodecError as exc:
            raise InvalidInput(f"{model.label}: {exc}") from None
        decoded = InferenceRequest(
            model=request.model_name,
            version=request.model_version,
            id=request.id,
            inputs=inputs,
            outputs=[RequestedOutput(o.name, _class_count(model.label, o)) for o in request.outputs],
            deadline=_deadline(context),
        )
        result = await self._dp.infer(model, decoded)
        response = pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
        return codec.encode_outputs(response, result.outputs)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def _class_count(label: str, output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    param = output.parameters.get("classification")
    if param is None:
        return 0
    which = param.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(param, which))
    raise InvalidInput(f"{label}: output '{output.name}': the classification parameter must be an integer, got {which}")
