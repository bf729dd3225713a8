"""modelport's Python client for the KServe v2 / Open Inference Protocol gRPC API.

    from modelport.client import Client
    with Client("localhost:8001") as client:
        y = client.predict("mlp", x)

    from modelport.client import load_model      # deploy a Keras (or ONNX) model, then use it
    model = load_model("model.h5", url="localhost:8001", name="mlp")
    predictions = model.predict(x)
"""

from modelport.protocol.types import ModelIndexEntry, ModelMetadata, ServerMetadata, TensorSpec

from .aio import AsyncClient, AsyncModel
from .client import Client, Model
from .deploy import load_model
from .errors import InferenceServerError
from .packaging import ConvertExtraMissing

TensorInfo = TensorSpec  # the name this type had before it moved to modelport.protocol

__all__ = [
    "AsyncClient",
    "AsyncModel",
    "Client",
    "ConvertExtraMissing",
    "InferenceServerError",
    "Model",
    "ModelIndexEntry",
    "ModelMetadata",
    "ServerMetadata",
    "TensorInfo",
    "TensorSpec",
    "load_model",
]
