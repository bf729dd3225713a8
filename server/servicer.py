"""The gRPC servicer: decode, one call to the data plane, encode. Nothing else lives here.

Domain errors become gRPC status codes in `errors.rpc_errors`, the one place that does so.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from modelport.protocol.load_request import LoadRequest

from . import uploads
from .dataplane import DataPlane
from .errors import InvalidInput, ModelportError, Unimplemented, rpc_errors, status_of
from .statistics import Duration
from .versions import ModelVersion

log = logging.getLogger(__name__)
STREAM_WINDOW = 64  # requests of one stream running at once

# RPCs the protocol declares that modelport answers UNIMPLEMENTED, and what to do instead.
_NO_SHARED_MEMORY = "shared-memory tensors are not supported: send the tensors in the request (raw_input_contents)"
NOT_IMPLEMENTED = {
    "SystemSharedMemoryStatus": _NO_SHARED_MEMORY,
    "SystemSharedMemoryRegister": _NO_SHARED_MEMORY,
    "SystemSharedMemoryUnregister": _NO_SHARED_MEMORY,
    "CudaSharedMemoryStatus": _NO_SHARED_MEMORY,
    "CudaSharedMemoryRegister": _NO_SHARED_MEMORY,
    "CudaSharedMemoryUnregister": _NO_SHARED_MEMORY,
    "TraceSetting": "tracing is not supported: the server's Prometheus histograms time every phase of a request",
    "LogSettings": "log settings are fixed at start: use --log-level and --log-format",
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on top of a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    @rpc_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.server_live())

    @rpc_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.server_ready())

    @rpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    @rpc_errors
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        info = self._dp.server_metadata()
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=info.extensions)

    @rpc_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        return self._dp.model_metadata(request.name, request.version).to_proto()

    @rpc_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        decoded = codec.decode_request(request, self._dp.limits.max_tensor_elements, _deadline(context))
        return codec.encode_response(await self._dp.infer(decoded))

    async def ModelStreamInfer(self, requests, context) -> None:
        """Bidirectional stream: requests run concurrently (up to STREAM_WINDOW at once) and
        responses go back as they complete, each carrying its request's id; an error becomes
        that response's error_message and the stream stays open."""
        responses: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                result = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
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

    @rpc_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._dp.model_version(request.name, request.version).config)

    @rpc_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        versions = self._dp.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[statistics_message(v) for v in versions])

    @rpc_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(name=m.name, version=m.version, state=m.state, reason=m.reason)
                    for m in self._dp.repository_index(request.ready)]
        )  # fmt: skip

    @rpc_errors
    async def RepositoryModelLoad(self, request: LoadRequest, context) -> pb.RepositoryModelLoadResponse:
        # Parsed by modelport.protocol.load_request (app.add_services): files stay in gRPC's buffer.
        config, files = _upload(request)
        await self._dp.load_model(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    @rpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context
    ) -> pb.RepositoryModelUnloadResponse:
        _no_parameters(request.model_name, request.parameters, allowed=("unload_dependents",))
        await self._dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _not_implemented(name: str, alternative: str):
    async def handler(self, request, context):
        raise Unimplemented(f"{name} is not implemented by modelport: {alternative}")

    handler.__name__ = handler.__qualname__ = name
    return rpc_errors(handler)


for _name, _alternative in NOT_IMPLEMENTED.items():
    setattr(InferenceServicer, _name, _not_implemented(_name, _alternative))


def _no_parameters(model: str, parameters, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise InvalidInput(f"model '{model}': repository parameters {unknown} are not supported")


def _upload(request: LoadRequest) -> tuple[str | None, dict[str, memoryview]]:
    """An upload's `config` (string_param, JSON) and files (`file:<path>`, bytes_param), as
    tritonclient's load_model(name, config=..., files=...) sends them."""
    name, config, files = request.model_name, None, {}
    for key, value in request.parameters.items():
        if key == uploads.CONFIG_PARAMETER:
            if value.kind != "string_param":
                raise InvalidInput(f"model '{name}': the 'config' parameter must be a string_param holding JSON of "
                                   f"inference.ModelConfig, got {value.kind}")  # fmt: skip
            config = value.value
        elif key.startswith(uploads.FILE_PREFIX):
            if value.kind != "bytes_param":
                raise InvalidInput(f"model '{name}': parameter '{key}' must be a bytes_param holding the file's "
                                   f"bytes, got {value.kind}")  # fmt: skip
            files[key] = value.value
        else:
            raise InvalidInput(f"model '{name}': repository parameter '{key}' is not supported (expected 'config' "
                               "and 'file:<version>/<name>')")  # fmt: skip
    return config, files


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def statistics_message(version: ModelVersion) -> pb.ModelStatistics:
    """One version's statistics as the protocol's message (gRPC, and the HTTP binding's JSON)."""
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
