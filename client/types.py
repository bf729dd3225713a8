"""Answers of the metadata calls as small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from ._proto import grpc_service_pb2 as pb


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata answers for a model."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_proto(cls, msg: pb.ModelMetadataResponse) -> "ModelMetadata":
        """Convert the protobuf answer."""
        tensors = lambda items: tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in items)  # noqa: E731
        return cls(msg.name, tuple(msg.versions), msg.platform, tensors(msg.inputs), tensors(msg.outputs))


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
