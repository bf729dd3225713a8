"""The data plane: everything between a decoded request and its outputs.

Find the model and version, check readiness, validate the inputs against the signature, hand
the request to the model's scheduler, shape the outputs (classification), keep statistics.
Also the model-repository operations behind the repository RPCs. No protobuf here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .classification import classify
from .config import PLATFORM
from .errors import InvalidInput, ModelNotFound, ModelportError, NotAllowed, QueueFull
from .metrics import Metrics
from .quality import QualityMonitor
from .registry import ModelRegistry
from .runtime import from_ort
from .signature import TensorSpec
from .types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from .validation import validate
from .versions import ModelVersion

@dataclass(frozen=True)
class Limits:
    """Request limits (the server settings of the same names)."""

    max_tensor_elements: int = 256 * 1024 * 1024
    max_pending_requests: int = 4096
    default_request_timeout: float = 0.0
    max_inflight_bytes: int = 1024 * 1024 * 1024  # 0: unbounded


MAX_CLASSES = 1000  # predicted-class counters are kept for outputs up to this wide


def _probabilities(scores: np.ndarray) -> bool:
    return float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


# Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = ("classification", "model_repository", "model_repository(unload_dependents)", "schedule_policy",
              "model_configuration", "statistics")


@dataclass(frozen=True)
class ServerInfo:
    """ServerMetadata's answer."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """ModelMetadata's answer."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class DataPlane:
    """The server's behaviour, independent of gRPC."""

    def __init__(
        self,
        registry: ModelRegistry,
        version: str,
        control_mode: str = "none",
        metrics: Metrics | None = None,
        quality: QualityMonitor | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self._inflight_bytes = 0  # request bytes acquired and not yet released
        self.metrics = metrics
        self.quality = quality
        self._version = version
        self.control_mode = control_mode
        self.draining = False  # set on shutdown: readiness turns false, in-flight work finishes

    def server_live(self) -> bool:
        """The process is up and answering."""
        return True

    def server_ready(self) -> bool:
        """Ready for traffic: not draining, and every model meant to be loaded serving."""
        return not self.draining and self.registry.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether this model (version) takes requests; false for unknown ones."""
        return not self.draining and self.registry.is_ready(name, version)

    def server_metadata(self) -> ServerInfo:
        """Name, version and extensions."""
        return ServerInfo("modelport", self._version, EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelInfo:
        """Signature of a served version (-1 for dynamic dimensions) and all served versions."""
        model = self.registry.get(name, version)
        versions = tuple(str(v) for v in self.registry.versions(name))
        return ModelInfo(name, versions, PLATFORM, model.signature.inputs, model.signature.outputs)

    def model_version(self, name: str, version: str = "") -> ModelVersion:
        """A served version (for its config), without counting a request."""
        return self.registry.get(name, version)

    def check_shapes(self, model: ModelVersion, shapes: list[tuple[str, list[int]]]) -> None:
        """Refuse tensors larger than the server's limit before anything is allocated for them."""
        limit = self.limits.max_tensor_elements
        for name, shape in shapes:
            count = 1
            for dim in shape:
                count *= max(dim, 0)
            if count > limit:
                raise InvalidInput(
                    f"{model.label}: input '{name}' declares shape {shape} ({count} elements); the server's limit is {limit}"
                )

    def acquire(self, name: str, version: str = "", nbytes: int = 0) -> ModelVersion:
        """The version a request of `nbytes` goes to, counted in until `release()`: a swap or
        unload waits for it. NOT_FOUND / UNAVAILABLE, or RESOURCE_EXHAUSTED when the model's
        pending requests or the server's bytes in flight are at their limits."""
        model = self.registry.get(name, version)
        if self.limits.max_pending_requests and model.in_flight >= self.limits.max_pending_requests:
            raise QueueFull(
                f"{model.label}: {model.in_flight} requests are already pending (limit {self.limits.max_pending_requests}); retry later"
            )
        # Back-pressure on memory: a flood of large requests is refused, not queued (the refused
        # request's bytes are freed at once).
        limit = self.limits.max_inflight_bytes
        if limit and self._inflight_bytes and self._inflight_bytes + nbytes > limit:
            raise QueueFull(
                f"{model.label}: the server holds {self._inflight_bytes} bytes of requests in flight and this one "
                f"has {nbytes} (limit {limit}, --max-inflight-bytes); retry later"
            )
        self._inflight_bytes += nbytes
        return model.acquire()

    @property
    def inflight_bytes(self) -> int:
        """Bytes of the requests acquired and not yet released (what --max-inflight-bytes bounds)."""
        return self._inflight_bytes

    def release(self, model: ModelVersion, nbytes: int = 0) -> None:
        """The request that acquired `model` (with `nbytes`) is answered."""
        self._inflight_bytes -= nbytes
        model.release()

    async def infer(self, model: ModelVersion, request: InferenceRequest) -> InferenceResponse:
        """Validate and run one request on `model` (acquired by the caller)."""
        start = time.perf_counter_ns()
        if request.deadline is None and self.limits.default_request_timeout:
            request.deadline = time.monotonic() + self.limits.default_request_timeout
        try:
            validate(model.label, model.signature, model.spec.max_batch_size, request)
            wanted = request.outputs or [RequestedOutput(t.name) for t in model.signature.outputs]
            results, timing = await model.scheduler.submit(request.inputs, [w.name for w in wanted], request.deadline)
            output_start = time.perf_counter_ns()
            outputs = self._shape_outputs(model, wanted, results)
            output_ns = time.perf_counter_ns() - output_start
        except ModelportError as exc:
            model.stats.record_failure(time.perf_counter_ns() - start, exc.code.name)
            raise
        rows = next(iter(request.inputs.values()))[1].shape[0] if model.spec.max_batch_size > 0 else 1
        total_ns = time.perf_counter_ns() - start
        model.stats.record_success(total_ns, timing, output_ns, rows)
        model.stats.record_output(timing.batch_size, output_ns)
        if request.id and self.quality is not None:
            self._remember(model, request.id, results)
        if model.drift is not None:
            model.drift.observe(request.inputs)
        if model.drift is not None and model.drift.sampled:
            self._count_classes(model, results)
        return InferenceResponse(model.name, str(model.version), request.id, outputs)

    def _remember(self, model: ModelVersion, request_id: str, results: dict) -> None:
        """Keep the predicted classes (from the model's first output) for labelled feedback."""
        first = next((t.name for t in model.signature.outputs if t.name in results), None)
        spec = model.signature.output(first) if first else None
        if spec is not None and spec.datatype not in ("BYTES", "BF16"):
            self.quality.remember(model.name, request_id, np.asarray(results[first]))

    def _count_classes(self, model: ModelVersion, results: dict) -> None:
        """The distribution of predicted classes, for classifier-shaped first outputs ([N, C]
        scores, or [N, 1] probabilities). On the hot path: a few numpy calls, no Python loop."""
        spec = model.signature.outputs[0]
        scores = results.get(spec.name)
        if scores is None or scores.ndim != 2 or scores.dtype.kind != "f" or not scores.shape[0]:
            return
        width = scores.shape[1]
        if width == 1:
            if not _probabilities(scores):
                return  # a regression output
            positive = int(np.count_nonzero(scores > 0.5))  # as evaluate and Keras count class 1
            counts: tuple[int, ...] | np.ndarray = (scores.shape[0] - positive, positive)
        elif width <= MAX_CLASSES:
            counts = np.bincount(scores.argmax(axis=1), minlength=width)
        else:
            return
        model.stats.record_classes(counts)

    @staticmethod
    def _shape_outputs(model: ModelVersion, wanted: list[RequestedOutput], results: dict) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        for want in wanted:
            spec = model.signature.output(want.name)
            array = from_ort(spec.datatype, np.asarray(results[want.name]))
            if want.class_count:
                # Rows are examples when the model batches, or when the first dimension is free.
                batched = model.spec.max_batch_size > 0 or (len(spec.shape) > 1 and spec.shape[0] == -1)
                array = classify(model.label, want.name, array, want.class_count, spec.labels, batched)
                outputs[want.name] = ("BYTES", array)
            else:
                outputs[want.name] = (spec.datatype, array)
        return outputs

    def statistics(self, name: str = "", version: str = "") -> list[ModelVersion]:
        """Served versions whose statistics are asked for ('' = all models / all versions)."""
        if not name:
            return self.registry.served()
        if version:
            return [self.registry.get(name, version)]
        if not self.registry.versions(name):
            self.registry.get(name)  # raises the right NOT_FOUND / UNAVAILABLE
        return [self.registry.get(name, str(v)) for v in self.registry.versions(name)]

    def repository_index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model folder and version."""
        rows = self.registry.index()
        return [row for row in rows if row[2] == "READY"] if ready_only else rows

    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: explicit mode only, as in Triton."""
        self._check_explicit("load")
        await self.registry.load(name)

    async def unload_model(self, name: str) -> None:
        """RepositoryModelUnload: explicit mode only, as in Triton."""
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
