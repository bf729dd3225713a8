"""What the sync and async clients share: channel set-up and the plan of a `predict` call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from modelport.protocol.datatypes import NUMPY_DTYPES
from modelport.protocol.generated import feedback_pb2 as fb
from modelport.protocol.repository import GRPC_MESSAGE_LIMIT
from modelport.protocol.types import ModelMetadata

MIB = 1024 * 1024
# What the client lets gRPC send: its own ceiling (as tritonclient sets it). The server's receive
# limit is the one that counts; a client-side cap would only refuse model uploads (RepositoryModelLoad
# files) the server accepts.
SEND_LIMIT = GRPC_MESSAGE_LIMIT


@dataclass(frozen=True)
class ChannelSpec:
    """Everything needed to open a channel, sync or aio."""

    target: str
    options: tuple[tuple[str, object], ...]
    credentials: grpc.ChannelCredentials | None


def channel_spec(
    url: str | Sequence[str],
    *,
    ssl: bool = False,
    root_certificates: bytes | str | Path | None = None,
    private_key: bytes | str | Path | None = None,
    certificate_chain: bytes | str | Path | None = None,
    load_balancing: str | None = None,
    retries: int = 5,
    max_message_bytes: int = 64 * MIB,
    channel_options: Sequence[tuple[str, object]] = (),
) -> ChannelSpec:
    """Target, options and credentials for `url`: "host:port", "dns:///name:port", or a list
    of "ip:port" addresses (spread with round_robin unless told otherwise).

    Calls that end UNAVAILABLE or CANCELLED by the server (a replica draining or gone) are retried
    up to `retries` times with backoff, by gRPC itself; inference is stateless, so a retry is safe.
    `max_message_bytes` bounds what is received; what is sent is bounded by the server's limit only
    (SEND_LIMIT here), so an oversized request gets the server's RESOURCE_EXHAUSTED, naming its limit."""
    if not isinstance(url, str):
        addresses = list(url)
        if not addresses:
            raise ValueError("no address given")
        url = "ipv4:" + ",".join(addresses) if len(addresses) > 1 else addresses[0]
        load_balancing = load_balancing or ("round_robin" if len(addresses) > 1 else None)
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", SEND_LIMIT),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    service_config: dict[str, object] = {}
    if load_balancing:
        service_config["loadBalancingConfig"] = [{load_balancing: {}}]
    if retries > 0:
        service_config["methodConfig"] = [{
            "name": [{"service": "inference.GRPCInferenceService"}, {"service": "modelport.v1.Feedback"},
                     {"service": "modelport.v1.Rollout"}, {"service": "modelport.v1.Explain"}],
            "retryPolicy": {
                "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                # A replica that is shutting down cancels calls that reach it after its stop began
                # (CANCELLED from the server, not from us); like UNAVAILABLE, another replica can answer.
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        }]  # fmt: skip
    if service_config:
        options.append(("grpc.service_config", json.dumps(service_config)))
    options.extend(channel_options)
    credentials = None
    if ssl or root_certificates or certificate_chain:
        credentials = grpc.ssl_channel_credentials(
            _read(root_certificates), _read(private_key), _read(certificate_chain)
        )
    return ChannelSpec(url, tuple(options), credentials)


def is_http(url: object) -> bool:
    """Whether `url` names the HTTP/REST binding (http:// or https://) rather than a gRPC target."""
    if isinstance(url, str):
        return url.lower().startswith(("http://", "https://"))
    if any(isinstance(u, str) and is_http(u) for u in url or ()):  # type: ignore[union-attr]
        raise ValueError("over HTTP the client takes one URL; client-side load balancing over several "
                         "addresses is a gRPC feature (pass host:port addresses)")  # fmt: skip
    return False


def _read(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class PredictPlan:
    """How a Keras-like `predict(x)` maps onto a single-input, single-output model."""

    input_name: str
    datatype: str
    output_name: str


def predict_plan(meta: ModelMetadata) -> PredictPlan:
    """Check the model has one input and one output; predict() needs exactly that."""
    if len(meta.inputs) != 1 or len(meta.outputs) != 1:
        raise ValueError(
            f"predict() needs a model with one input and one output; model '{meta.name}' has inputs "
            f"{[t.name for t in meta.inputs]} and outputs {[t.name for t in meta.outputs]}: use infer()"
        )
    return PredictPlan(meta.inputs[0].name, meta.inputs[0].datatype, meta.outputs[0].name)


def prepare(plan: PredictPlan, x: object) -> np.ndarray:
    """`x` cast to the model's input datatype, as Keras would cast it."""
    if plan.datatype == "BYTES":
        return np.asarray(x, dtype=object)
    return np.asarray(x, dtype=NUMPY_DTYPES[plan.datatype])


def chunks(x: np.ndarray, batch_size: int | None) -> list[np.ndarray]:
    """`x` split along the batch axis (whole when batch_size is None)."""
    if not batch_size or len(x) <= batch_size:
        return [x]
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def label_request(model: str, request_id: str, truth: object) -> fb.ReportLabelRequest:
    """ReportLabel for `truth`, one value per row: integers (or booleans) are class labels, floats
    are regression targets."""
    values = np.ravel(np.asarray(truth))
    if values.dtype.kind == "f":
        return fb.ReportLabelRequest(model_name=model, id=request_id, targets=[float(v) for v in values])
    return fb.ReportLabelRequest(model_name=model, id=request_id, labels=[int(v) for v in values])
