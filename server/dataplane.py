"""The data plane: everything between a decoded request and its outputs, in one call.

`infer` finds the model and version, admits the request (pending and in-flight limits), raises
what the codec found wrong with it, validates it against the signature, hands it to the
model's scheduler, shapes the outputs (classification), keeps statistics, tells the observers
and releases what it admitted. Also the model-repository operations behind the repository
RPCs. No protobuf here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from modelport.protocol.repository import PLATFORM
from modelport.protocol.rollout import Rollout
from modelport.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    ModelIndexEntry,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)

from . import uploads
from .classification import classify
from .errors import InvalidInput, ModelNotFound, ModelportError, NotAllowed, QueueFull
from .observers import Inference, Observer
from .registry import ModelRegistry
from .settings import ServerSettings
from .uploads import Uploads
from .validation import validate
from .versions import ModelVersion

log = logging.getLogger(__name__)

# Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = ("classification", "model_repository", "model_repository(unload_dependents)", "schedule_policy",
              "model_configuration", "statistics")  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Request limits: the server settings of the same names."""

    max_tensor_elements: int
    max_pending_requests: int
    default_request_timeout: float
    max_inflight_bytes: int  # 0: unbounded
    # Largest request (its tensors' bytes). gRPC enforces it too, except when uploads raise the
    # server's receive limit (uploads.UploadSettings.grpc_receive_limit); 0: unbounded.
    max_message_bytes: int = 0

    @classmethod
    def of(cls, settings: ServerSettings) -> Limits:
        """From the server's settings (ServerSettings.defaults() for the defaults)."""
        return cls(settings.max_tensor_elements, settings.max_pending_requests, settings.default_request_timeout,
                   settings.max_inflight_bytes, settings.max_message_bytes)  # fmt: skip


def package_version() -> str:
    """modelport's version, as ServerMetadata reports it."""
    try:
        return version("modelport")
    except PackageNotFoundError:
        return "0.0.0"


class DataPlane:
    """The server's behaviour, independent of gRPC."""

    def __init__(
        self,
        registry: ModelRegistry,
        limits: Limits | None = None,
        control_mode: str = "none",
        observers: Sequence[Observer] = (),
        server_version: str | None = None,
        uploads: Uploads | None = None,
    ) -> None:
        self.registry = registry
        self.uploads = uploads  # RepositoryModelLoad with files; None: uploads refused
        self.limits = limits or Limits.of(ServerSettings.defaults())
        self.control_mode = control_mode
        self.observers = list(observers)  # told about every successful request, in this order
        self.draining = False  # set on shutdown: readiness turns false, in-flight work finishes
        self._version = server_version or package_version()
        self._inflight_bytes = 0  # request bytes admitted and not yet answered
        self._failed_observers: set[int] = set()

    # ------------------------------------------------------------ health and metadata

    def server_live(self) -> bool:
        """The process is up and answering."""
        return True

    def server_ready(self) -> bool:
        """Ready for traffic: not draining, and every model meant to be loaded serving."""
        return not self.draining and self.registry.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether this model (version) takes requests; false for unknown ones."""
        return not self.draining and self.registry.is_ready(name, version)

    def server_metadata(self) -> ServerMetadata:
        """Name, version and extensions."""
        return ServerMetadata("modelport", self._version, EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Signature of a served version (-1 for dynamic dimensions) and all served versions."""
        model = self.registry.get(name, version)
        versions = tuple(str(v) for v in self.registry.versions(name))
        return ModelMetadata(name, versions, PLATFORM, model.signature.inputs, model.signature.outputs)

    def model_version(self, name: str, version: str = "") -> ModelVersion:
        """A served version (for its config), without counting a request."""
        return self.registry.get(name, version)

    @property
    def inflight_bytes(self) -> int:
        """Bytes of the requests admitted and not yet answered (what --max-inflight-bytes bounds)."""
        return self._inflight_bytes

    # ------------------------------------------------------------ inference

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Admit, run and release one request. NOT_FOUND / UNAVAILABLE for a model that is not
        served, RESOURCE_EXHAUSTED past the limits, INVALID_ARGUMENT for what the codec or the
        signature refuse, and whatever the scheduler or the run end in."""
        model = self.registry.resolve(request.model, request.version, request.id)
        start = time.perf_counter_ns()
        try:
            self._admit(model, request.nbytes)
        except ModelportError as exc:
            model.stats.record_failure(time.perf_counter_ns() - start, exc.code.name)
            raise
        try:
            return await self._run(model, request, start)
        finally:
            self._inflight_bytes -= request.nbytes
            model.release()

    def _admit(self, model: ModelVersion, nbytes: int) -> None:
        """Count the request in (a swap or unload of `model` waits for it), or refuse it when the
        model's pending requests or the server's bytes in flight are at their limits."""
        limits = self.limits
        if limits.max_message_bytes and nbytes > limits.max_message_bytes:
            raise QueueFull(f"{model.where}: the request ({nbytes} bytes of tensors) is larger than max "
                            f"({limits.max_message_bytes} bytes, --grpc-max-message-size); send fewer rows per "
                            "request or raise that limit")  # fmt: skip
        if limits.max_pending_requests and model.in_flight >= limits.max_pending_requests:
            raise QueueFull(
                f"{model.where}: {model.in_flight} requests are already pending "
                f"(limit {limits.max_pending_requests}); retry later"
            )
        # Back-pressure on memory: a flood of large requests is refused, not queued (the refused
        # request's bytes are freed at once).
        if (
            limits.max_inflight_bytes
            and self._inflight_bytes
            and self._inflight_bytes + nbytes > limits.max_inflight_bytes
        ):
            raise QueueFull(
                f"{model.where}: the server holds {self._inflight_bytes} bytes of requests in flight and this one "
                f"has {nbytes} (limit {limits.max_inflight_bytes}, --max-inflight-bytes); retry later"
            )
        self._inflight_bytes += nbytes
        model.acquire()

    async def _run(self, model: ModelVersion, request: InferenceRequest, start: int) -> InferenceResponse:
        if request.deadline is None and self.limits.default_request_timeout:
            request.deadline = time.monotonic() + self.limits.default_request_timeout
        try:
            if request.error:
                raise InvalidInput(f"{model.where}: {request.error}")
            validate(model.where, model.signature, model.spec.max_batch_size, request)
            if request.outputs:
                wanted, names = request.outputs, [w.name for w in request.outputs]
            else:
                wanted, names = model.default_outputs, model.default_output_names
            results, timing = await model.scheduler.submit(request.inputs, names, request.deadline)
            output_start = time.perf_counter_ns()
            outputs = _shape_outputs(model, wanted, results)
            output_ns = time.perf_counter_ns() - output_start
        except ModelportError as exc:
            model.stats.record_failure(time.perf_counter_ns() - start, exc.code.name)
            raise
        rows = next(iter(request.inputs.values()))[1].shape[0] if model.spec.max_batch_size > 0 else 1
        model.stats.record_success(time.perf_counter_ns() - start, timing, output_ns, rows)
        if self.observers:
            self._observe(Inference(model, request, results, model.sampler.tick()))
        return InferenceResponse(model.name, str(model.version), request.id, outputs)

    def _observe(self, inference: Inference) -> None:
        """Tell every observer; one that fails never fails the request (its first failure is
        logged with the traceback, later ones at debug level)."""
        for observer in self.observers:
            try:
                observer.observe(inference)
            except Exception:
                if id(observer) in self._failed_observers:
                    log.debug("observer %s failed again", type(observer).__name__, exc_info=True)
                else:
                    self._failed_observers.add(id(observer))
                    log.exception("observer %s failed; the request was answered", type(observer).__name__)

    # ------------------------------------------------------------ statistics and repository

    def statistics(self, name: str = "", version: str = "") -> list[ModelVersion]:
        """Served versions whose statistics are asked for ('' = all models / all versions)."""
        if not name:
            return self.registry.served()
        if version:
            return [self.registry.get(name, version)]
        if not self.registry.versions(name):
            self.registry.get(name)  # raises the right NOT_FOUND / UNAVAILABLE
        return [self.registry.get(name, str(v)) for v in self.registry.versions(name)]

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model folder and version with its state (and why, when it is not READY)."""
        rows = [ModelIndexEntry(*row) for row in self.registry.index()]
        return [row for row in rows if row.state == "READY"] if ready_only else rows

    async def refresh_model(self, name: str) -> None:
        """Reread a served model's folder now (its rollout.json above all), in any control mode:
        `modelport rollout` pushes a change this way instead of waiting for the next poll."""
        if name not in self.registry.names():
            raise ModelNotFound(f"model '{name}' is not served here")
        await self.registry.load(name)

    def rollout_status(self, name: str) -> tuple[Rollout | None, ModelVersion | None, list[ModelVersion]]:
        """(the model's rollout, the version unversioned requests default to, every served version)."""
        rollout = self.registry.rollout(name)
        served = [self.registry.get(name, str(v)) for v in self.registry.versions(name)]
        wanted = rollout.default_version() if rollout is not None else None
        default = next((v for v in served if v.version == wanted), served[-1]) if served else None
        return rollout, default, served

    async def load_model(
        self, name: str, config: str | None = None, files: Mapping[str, bytes | memoryview] | None = None
    ) -> None:
        """RepositoryModelLoad. With an upload (`files` by their `file:` names, and/or `config`,
        JSON of inference.ModelConfig): the upload becomes the model (server/uploads.py says in
        which modes). Without: reload the model's files, in explicit mode only, as in Triton (an
        uploaded model rereads its upload)."""
        if config is not None or files:
            if self.uploads is None:
                raise NotAllowed(f"model '{name}': this server takes no uploads")
            await self.uploads.load(uploads.parse(name, config, files or {}, self.uploads.settings.max_bytes))
            return
        self._check_explicit("load")
        await self.registry.load(name)

    async def unload_model(self, name: str) -> None:
        """RepositoryModelUnload: explicit mode only, as in Triton (an uploaded model's files go
        with it)."""
        self._check_explicit("unload")
        if name not in self.registry.names():
            raise ModelNotFound(f"model '{name}' is not loaded")
        await self.registry.unload(name)

    def _check_explicit(self, what: str) -> None:
        if self.control_mode != "explicit":
            raise NotAllowed(
                f"explicit model {what} is not allowed with --model-control-mode {self.control_mode}; "
                "start the server with --model-control-mode explicit"
            )


def _shape_outputs(
    model: ModelVersion, wanted: list[RequestedOutput], results: dict[str, np.ndarray]
) -> dict[str, Tensor]:
    """The requested outputs as the caller gets them: as computed, or top-k classes."""
    outputs: dict[str, Tensor] = {}
    for want in wanted:
        spec = model.signature.output(want.name)
        array = results[want.name]
        if want.class_count:
            # Rows are examples when the model batches, or when the first dimension is free.
            batched = model.spec.max_batch_size > 0 or (len(spec.shape) > 1 and spec.shape[0] == -1)
            outputs[want.name] = (
                "BYTES", classify(model.where, want.name, array, want.class_count, spec.labels, batched)
            )
        else:
            outputs[want.name] = (spec.datatype, array)
    return outputs
