"""modelport's Python client for the KServe v2 / Open Inference Protocol gRPC API.

    from modelport.client import Client
    with Client("localhost:8001") as client:
        y = client.predict("mlp", x)
"""

from modelport.protocol.types import ModelIndexEntry, ModelMetadata, ServerMetadata, TensorSpec

from .aio import AsyncClient, AsyncModel
from .client import Client, Model
from .errors import InferenceServerError

TensorInfo = TensorSpec  # the name this type had before it moved to modelport.protocol

__all__ = [
    "AsyncClient",
    "AsyncModel",
    "Client",
    "InferenceServerError",
    "Model",
    "ModelIndexEntry",
    "ModelMetadata",
    "ServerMetadata",
    "TensorInfo",
    "TensorSpec",
]
