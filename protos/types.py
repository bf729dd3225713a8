"""The protocol's values as small dataclasses: tensor specs, metadata, and one inference
request and response as the server's data plane sees them (numpy arrays, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .generated import grpc_service_pb2 as pb

# A tensor as it travels: its protocol datatype and its data (BYTES: object array of bytes).
Tensor = tuple[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model. `shape` is the full shape a request carries, batch
    dimension included when the model batches; -1 marks a dimension of any size. `labels` are
    the class names of a classifier output (labels.txt), when the server knows them."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def accepts_shape(self, shape: tuple[int, ...] | list[int]) -> bool:
        """Same rank, and equal wherever this spec fixes a dimension."""
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):  # a loop, not all(...): this runs for every input of every request
            if want != -1 and want != got:
                return False
        return True


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata answers for a model."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_proto(cls, msg: pb.ModelMetadataResponse) -> ModelMetadata:
        """Convert the protobuf answer."""

        def specs(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return cls(msg.name, tuple(msg.versions), msg.platform, specs(msg.inputs), specs(msg.outputs))

    def to_proto(self) -> pb.ModelMetadataResponse:
        """The protobuf answer."""

        def specs(items: tuple[TensorSpec, ...]) -> list:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in items
            ]

        return pb.ModelMetadataResponse(
            name=self.name, versions=self.versions, platform=self.platform,
            inputs=specs(self.inputs), outputs=specs(self.outputs),
        )  # fmt: skip


@dataclass(frozen=True)
class ServerMetadata:
    """What ServerMetadata answers."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelIndexEntry:
    """One row of RepositoryIndex: a model (version) and its state."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class RequestedOutput:
    """An output the caller asked for; `class_count` > 0 asks for top-k classification."""

    name: str
    class_count: int = 0


@dataclass
class InferenceRequest:
    """One decoded ModelInferRequest.

    `error` is what made the request undecodable ('' when none). The codec does not raise it:
    the data plane does, after finding the model, so that an unknown model is NOT_FOUND
    whatever its tensors hold and the message names the model version."""

    model: str
    version: str
    id: str
    inputs: dict[str, Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() after which the caller no longer waits
    nbytes: int = 0  # size of the request on the wire (what --max-inflight-bytes counts)
    error: str = ""


@dataclass
class InferenceResponse:
    """The outputs of one request, in the order they are returned."""

    model: str
    version: str
    id: str
    outputs: dict[str, Tensor]
