"""The protocol's values as small dataclasses: tensor specs, metadata, and one inference
request and response as the server's data plane sees them (numpy arrays, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .generated import feedback_pb2 as fb
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


@dataclass(frozen=True)
class VersionQuality:
    """Rolling quality of one model version over its window of labelled rows: classifier fields
    (kind "classification") or regressor fields (kind "regression")."""

    version: str
    kind: str
    count: int
    accuracy: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    classes: tuple[int, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()  # rows: true class, columns: predicted (empty above 64 classes)
    mae: float = 0.0
    rmse: float = 0.0
    r2: float = 0.0
    # The window's (predicted, true) pairs, oldest first, when asked for (rollout decisions).
    predicted: tuple[float, ...] = field(default=(), repr=False)
    truth: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        """The JSON shape `modelport quality --json` prints for a version."""
        if self.kind == "regression":
            return {"kind": self.kind, "count": self.count, "mae": self.mae, "rmse": self.rmse, "r2": self.r2}
        return {
            "kind": self.kind, "count": self.count, "accuracy": self.accuracy, "precision": self.precision,
            "recall": self.recall, "f1": self.f1, "confusion": [list(row) for row in self.confusion],
            "classes": list(self.classes),
        }  # fmt: skip

    def to_proto(self) -> fb.VersionQuality:
        """The protobuf message."""
        return fb.VersionQuality(
            version=self.version, kind=self.kind, count=self.count, accuracy=self.accuracy,
            precision=self.precision, recall=self.recall, f1=self.f1, classes=self.classes,
            confusion=[fb.ConfusionRow(counts=row) for row in self.confusion], mae=self.mae, rmse=self.rmse,
            r2=self.r2, predicted=self.predicted, truth=self.truth,
        )  # fmt: skip

    @classmethod
    def from_proto(cls, msg: fb.VersionQuality) -> VersionQuality:
        """From the protobuf message."""
        return cls(
            msg.version, msg.kind, msg.count, msg.accuracy, msg.precision, msg.recall, msg.f1, tuple(msg.classes),
            tuple(tuple(row.counts) for row in msg.confusion), msg.mae, msg.rmse, msg.r2, tuple(msg.predicted),
            tuple(msg.truth),
        )  # fmt: skip


@dataclass(frozen=True)
class ModelQuality:
    """GetQuality's answer: each version with labelled rows, by version."""

    model: str
    versions: dict[str, VersionQuality]

    def to_dict(self) -> dict:
        """{"model": ..., "versions": {"1": {...}, ...}}, as `modelport quality --json` prints it."""
        return {"model": self.model, "versions": {v: q.to_dict() for v, q in self.versions.items()}}

    @classmethod
    def from_proto(cls, msg: fb.GetQualityResponse) -> ModelQuality:
        """From the protobuf answer."""
        return cls(msg.model_name, {v.version: VersionQuality.from_proto(v) for v in msg.versions})
