"""The data plane: everything between a decoded request and its outputs.

Find the model and version, check readiness, validate the inputs against the signature, run
ONNX Runtime off the event loop, shape the outputs (classification). No protobuf here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classification import classify
from .config import PLATFORM
from .registry import ModelRegistry, ModelVersion
from .runtime import from_ort
from .signature import TensorSpec
from .types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from .validation import validate

# Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = ("classification",)


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

    def __init__(self, registry: ModelRegistry, version: str) -> None:
        self.registry = registry
        self._version = version
        self.draining = False  # set on shutdown: readiness turns false, in-flight work finishes

    def server_live(self) -> bool:
        """The process is up and answering."""
        return True

    def server_ready(self) -> bool:
        """Ready for traffic: not draining, and every model of the repository serving."""
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

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version a request goes to; NOT_FOUND / UNAVAILABLE errors otherwise.
        While draining, gRPC itself refuses new calls; one already accepted still runs."""
        return self.registry.get(name, version)

    async def infer(self, model: ModelVersion, request: InferenceRequest) -> InferenceResponse:
        """Validate and run one request on `model`."""
        validate(model.label, model.signature, model.spec.max_batch_size, request)
        wanted = request.outputs or [RequestedOutput(t.name) for t in model.signature.outputs]
        names = [w.name for w in wanted]
        results = await model.scheduler.submit(request.inputs, names, request.deadline)
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
        return InferenceResponse(model.name, str(model.version), request.id, outputs)

