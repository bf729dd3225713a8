"""What a RepositoryModelLoad that hands a server the model itself carries — Triton's `config`
(JSON of inference.ModelConfig) and `file:<version>/<name>` parameters, as tritonclient's
`load_model(name, config=..., files=...)` sends them — for both transports, and what a refused
upload means for the caller."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from modelport.protocol import load_request
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import GRPC_MESSAGE_LIMIT, UPLOAD_CONFIG, UPLOAD_ENVELOPE, UPLOAD_FILE_PREFIX

from .errors import InferenceServerError

FILE_PREFIX, CONFIG_PARAMETER = UPLOAD_FILE_PREFIX, UPLOAD_CONFIG

Config = str | Mapping[str, Any] | mc.ModelConfig | None
Files = Mapping[str, bytes | bytearray | memoryview] | None


def config_json(config: Config) -> str | None:
    """`config` as the JSON text Triton's `config` parameter holds: a string as it is, a dict as
    JSON, an inference.ModelConfig in protobuf's JSON mapping (field names as in config.pbtxt)."""
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, mc.ModelConfig):
        return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)
    if isinstance(config, Mapping):
        return json.dumps(config)
    raise TypeError(f"config must be JSON text, a dict or an inference.ModelConfig, not {type(config).__name__}")


def checked_files(files: Files) -> dict[str, bytes | bytearray | memoryview]:
    """`files` with every key a `file:` parameter name and every value bytes-like (not copied)."""
    checked = {}
    for key, data in (files or {}).items():
        if not isinstance(key, str) or not key.startswith(FILE_PREFIX):
            raise ValueError(f"files are named 'file:<version>/<name>' (e.g. 'file:1/model.onnx'), not {key!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"files[{key!r}] must be bytes, not {type(data).__name__}")
        checked[key] = memoryview(data).cast("B") if isinstance(data, memoryview) else data  # lengths in bytes
    return checked


def nbytes(files: Files) -> int:
    """The files' bytes together."""
    return sum(len(data) for data in (files or {}).values())


LOAD_METHOD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def grpc_request(name: str, config: Config = None, files: Files = None) -> bytes:
    """RepositoryModelLoad for `name`, with the upload's parameters when there is one, as wire
    bytes (modelport.protocol.load_request.encode: the files copied once, not twice as protobuf
    would; send with a method that does not serialize, LOAD_METHOD). ValueError when the files
    cannot travel in one gRPC message at all (2 GiB)."""
    request = load_request.LoadRequest(model_name=name)
    text = config_json(config)
    checked = checked_files(files)
    if nbytes(checked) + len(text or "") > GRPC_MESSAGE_LIMIT - UPLOAD_ENVELOPE:
        raise ValueError(
            f"model '{name}': the upload has {size(nbytes(checked))} of files, more than one gRPC message holds "
            "(2 GiB); publish it into the server's model repository instead (`modelport convert --model-repository`)"
        )
    if text is not None:
        request.parameters[CONFIG_PARAMETER] = load_request.Parameter("string_param", text)
    for key, data in checked.items():
        request.parameters[key] = load_request.Parameter("bytes_param", data)
    return load_request.encode(request)


def http_body(config: Config = None, files: Files = None) -> bytes:
    """The JSON body of POST /v2/repository/models/{name}/load: {"parameters": {"config": "...",
    "file:1/model.onnx": "<base64>"}}. Built from bytes, so the files are not copied again as
    Python strings."""
    parts = []
    text = config_json(config)
    if text is not None:
        parts.append(json.dumps(CONFIG_PARAMETER).encode() + b":" + json.dumps(text).encode())
    for key, data in checked_files(files).items():
        parts.append(json.dumps(key).encode() + b':"' + base64.b64encode(data) + b'"')
    return b'{"parameters":{' + b",".join(parts) + b"}}"


def explain_refusal(
    exc: InferenceServerError, name: str, files: Files, url: str, *, http: bool
) -> InferenceServerError:
    """`exc`, or, when the server refused the upload for its size before reading it (gRPC's
    "larger than max", HTTP 413), the same code with a message naming the upload's size and the
    limit to raise."""
    if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED or "larger than" not in exc.message or not files:
        return exc
    if "Sent message" in exc.message:  # this side's own channel option (channel_options=), not the server's
        return exc
    sent = "as base64 in a JSON body, a third larger" if http else "in one gRPC message"
    return InferenceServerError(
        exc.code,
        f"model '{name}': the upload ({size(nbytes(files))} of files, sent {sent}) is larger than the server at "
        f"{url} receives: {exc.message}. Raise the server's --max-upload-bytes (its gRPC and HTTP receive limits "
        "follow it; a server without that flag: --grpc-max-message-size), or deploy a smaller model "
        "(`modelport compress`)",
    )


def size(n: int) -> str:
    """Bytes for people: KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
