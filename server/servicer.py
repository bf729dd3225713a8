"""The gRPC servicer: decode, call the data plane, encode. Nothing else lives here.

Domain errors become gRPC status codes in `_rpc`, the one place that does so.
"""

from __future__ import annotations

import asyncio
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
from .logs import event
from .signature import TensorSpec
from .statistics import Duration
from .types import InferenceRequest, RequestedOutput
from .versions import ModelVersion

log = logging.getLogger(__name__)
R = TypeVar("R")
STREAM_WINDOW = 64  # requests of one stream running at once


def _rpc(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Run an RPC handler, turning any error into a status with a clear message."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            code, message = status_of(exc)
            event(log, logging.INFO, "request_failed", rpc=method.__name__, code=code.name, message=message)
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
        return await self._infer(request, _deadline(context))

    async def ModelStreamInfer(self, requests, context) -> None:
        """Bidirectional stream: requests run concurrently (up to STREAM_WINDOW at once) and
        responses go back as they complete, each carrying its request's id; an error becomes
        that response's error_message and the stream stays open."""
        responses: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                result = pb.ModelStreamInferResponse(infer_response=await self._infer(request, _deadline(context)))
            except Exception as exc:
                code, message = status_of(exc)
                if not isinstance(exc, ModelportError):
                    log.exception("stream request failed unexpectedly")
                result = pb.ModelStreamInferResponse(error_message=message)
                result.infer_response.id = request.id
                result.infer_response.model_name = request.model_name
            finally:
                window.release()
            await responses.put(result)

        async def read() -> None:
            ended: BaseException | None = None
            try:
                async for request in requests:
                    await window.acquire()
                    task = asyncio.get_running_loop().create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except Exception as exc:  # e.g. a malformed message: answer what was read, then end with it
                ended = exc
            while tasks:
                await asyncio.gather(*list(tasks))
            await responses.put(ended)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (response := await responses.get()) is not None:
                if isinstance(response, BaseException):
                    raise response
                await context.write(response)
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        nbytes = request.ByteSize()
        model = self._dp.acquire(request.model_name, request.model_version, nbytes)
        try:
            self._dp.check_shapes(model, [(t.name, list(t.shape)) for t in request.inputs])
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
                deadline=deadline,
            )
            result = await self._dp.infer(model, decoded)
        finally:
            self._dp.release(model, nbytes)
        response = pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
        return codec.encode_outputs(response, result.outputs)

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._dp.model_version(request.name, request.version).config)

    @_rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        versions = self._dp.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(v) for v in versions])

    @_rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        rows = self._dp.repository_index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(name=n, version=v, state=state, reason=reason) for n, v, state, reason in rows]
        )

    @_rpc
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        _no_parameters(request.model_name, request.parameters, allowed=())
        await self._dp.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context
    ) -> pb.RepositoryModelUnloadResponse:
        _no_parameters(request.model_name, request.parameters, allowed=("unload_dependents",))
        await self._dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _no_parameters(model: str, parameters, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise InvalidInput(f"model '{model}': repository parameters {unknown} are not supported")


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _statistics(version: ModelVersion) -> pb.ModelStatistics:
    s = version.stats
    return pb.ModelStatistics(
        name=version.name,
        version=str(version.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for size, b in sorted(s.batches.items())
        ],
    )


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
