"""The Open Inference Protocol's HTTP/REST binding: JSON bodies and the binary tensor data
extension, to and from the same InferenceRequest/InferenceResponse the gRPC codec makes. Shared by
the server's HTTP endpoint and the client's HTTP transport.

JSON tensors carry `data` as a (flat or nested) list in row-major order; BYTES elements are
strings. With the binary extension (as tritonclient.http sends it) the body is the JSON header
followed by the tensors' raw bytes in order: the header's length is in the
`Inference-Header-Content-Length` HTTP header and each binary tensor says its size in
`parameters.binary_data_size`. Raw bytes follow the gRPC wire rules (codec.from_raw / to_raw).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .codec import CodecError, as_wire_array, datatype_of, element_count, from_raw, to_raw
from .datatypes import NUMPY_DTYPES
from .types import InferenceRequest, InferenceResponse, ModelMetadata, RequestedOutput, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


# ---------------------------------------------------------------- requests (server side)


def decode_request(
    header: dict, binary: memoryview, model: str, version: str, max_elements: int = 0,
    deadline: float | None = None, nbytes: int = 0,
) -> InferenceRequest:  # fmt: skip
    """The body of `POST /v2/models/{model}[/versions/{version}]/infer` (split by split_body) as
    the data plane takes it. What makes its tensors undecodable is kept in `error`, as the gRPC
    codec does, so that the data plane reports it after finding the model."""
    decoded = InferenceRequest(model, version, str(header.get("id", "")), {}, deadline=deadline, nbytes=nbytes)
    try:
        decoded.inputs = _inputs(header, binary, max_elements)
        decoded.outputs = _requested(header)
    except CodecError as exc:
        decoded.error = str(exc)
    return decoded


def split_body(body: bytes, header_length: int | None) -> tuple[dict, memoryview]:
    """(the JSON header as a dict, the binary part after it); CodecError when the header is not
    a JSON object (nothing can be answered about such a body)."""
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise CodecError(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    try:
        header = json.loads(bytes(body[:header_length]) if header_length != len(body) else body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CodecError(f"the request body must be a JSON object, got {type(header).__name__}")
    return header, memoryview(body)[header_length:]


def _inputs(header: dict, binary: memoryview, max_elements: int) -> dict[str, Tensor]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise CodecError("the request needs a non-empty 'inputs' list")
    decoded: dict[str, Tensor] = {}
    offset = 0
    for item in inputs:
        name, datatype, shape = _tensor_header(item)
        where = f"input '{name}'"
        if name in decoded:
            raise CodecError(f"{where} appears more than once in the request")
        size = _parameters(item, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise CodecError(f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                 "binary bytes left in the body")  # fmt: skip
            if "data" in item:
                raise CodecError(f"{where} has both 'data' and binary_data_size; send one or the other")
            array = from_raw(bytes(binary[offset : offset + size]), datatype, shape, where, max_elements)
            offset += size
        elif "data" in item:
            array = from_json(item["data"], datatype, shape, where, max_elements)
        else:
            raise CodecError(f"{where} has neither 'data' nor parameters.binary_data_size")
        decoded[name] = (datatype, array)
    if offset != len(binary):
        raise CodecError(f"the body has {len(binary) - offset} binary bytes no input's binary_data_size accounts for")
    return decoded


def _tensor_header(item: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(item, dict):
        raise CodecError(f"every input must be a JSON object, got {type(item).__name__}")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise CodecError("every input needs a 'name' string")
    if not isinstance(datatype, str):
        raise CodecError(f"input '{name}' needs a 'datatype' string (e.g. FP32)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise CodecError(f"input '{name}' needs a 'shape' list of integers, got {shape!r}")
    return name, datatype, tuple(shape)


def _parameters(item: dict, where: str) -> dict:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise CodecError(f"{where}: 'parameters' must be a JSON object")
    return parameters


def _requested(header: dict) -> list[RequestedOutput]:
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise CodecError("'outputs' must be a list")
    wanted = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise CodecError("every requested output needs a 'name' string")
        count = _parameters(item, f"output '{item['name']}'").get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CodecError(f"output '{item['name']}': the classification parameter must be a non-negative "
                             f"integer, got {count!r}")  # fmt: skip
        wanted.append(RequestedOutput(item["name"], count))
    return wanted


def timeout_us(header: dict) -> int | None:
    """The request's `parameters.timeout` in microseconds (Triton's; tritonclient.http sends it)."""
    value = header.get("parameters", {}).get("timeout") if isinstance(header.get("parameters"), dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def from_json(data: Any, datatype: str, shape: Sequence[int], where: str, max_elements: int = 0) -> np.ndarray:
    """A JSON `data` list (flat or nested, row-major) as the wire array for `datatype`."""
    if datatype not in NUMPY_DTYPES:
        raise CodecError(f"{where}: unknown datatype '{datatype}'; expected one of {', '.join(NUMPY_DTYPES)}")
    count = element_count(shape, where, max_elements)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(item, str) for item in flat):
            raise CodecError(f"{where}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
    else:
        array = _numbers(data, datatype, where)
    if array.size != count:
        raise CodecError(f"{where}: data has {array.size} elements, expected {count} for shape {list(shape)}")
    return array.reshape(shape)


def _numbers(data: list, datatype: str, where: str) -> np.ndarray:
    flat = _flatten(data)
    target = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise CodecError(f"{where}: BOOL data must be true/false")
        return np.array(flat, dtype=np.bool_)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise CodecError(f"{where}: {datatype} data must be numbers")
    if datatype == "BF16":  # float values, kept as their upper 16 bits (rounded to nearest even)
        bits = np.array(flat, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    if target.kind in "iu":
        if not all(isinstance(v, int) or v.is_integer() for v in flat):
            raise CodecError(f"{where}: {datatype} data must be integers")
        try:  # from Python ints, so 64-bit values keep every digit
            return np.array([int(v) for v in flat], dtype=target)
        except OverflowError:
            raise CodecError(f"{where}: data holds values out of range for {datatype}") from None
    return np.array(flat, dtype=target)


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# ---------------------------------------------------------------- responses (server side)


def binary_outputs(body_header: dict) -> tuple[bool, dict[str, bool]]:
    """(request-level `binary_data_output`, {output name: its own `binary_data`})."""
    parameters = body_header.get("parameters", {}) if isinstance(body_header.get("parameters"), dict) else {}
    default = bool(parameters.get("binary_data_output", False))
    each = {}
    for item in body_header.get("outputs", []) or []:
        if isinstance(item, dict) and isinstance(item.get("parameters"), dict) and "binary_data" in item["parameters"]:
            each[item.get("name")] = bool(item["parameters"]["binary_data"])
    return default, each


def encode_response(
    response: InferenceResponse, binary_default: bool = False, binary: Mapping[str, bool] | None = None
) -> tuple[bytes, int | None]:
    """(body, header length or None when the body is all JSON) for an inference answer."""
    parts: list[bytes] = []
    outputs = [_entry(name, datatype, array, (binary or {}).get(name, binary_default), parts, f"output '{name}'")
               for name, (datatype, array) in response.outputs.items()]  # fmt: skip
    header: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": outputs}
    if response.id:
        header["id"] = response.id
    return _body(header, parts)


def _entry(name: str, datatype: str, array: np.ndarray, binary: bool, parts: list[bytes], where: str) -> dict:
    """One tensor's JSON entry: its data inline, or (binary) its size, its raw bytes appended to `parts`."""
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        raw = to_raw(array, datatype)
        entry["parameters"] = {"binary_data_size": len(raw)}
        parts.append(raw)
    else:
        entry["data"] = to_json(array, datatype, where)
    return entry


def _body(header: dict, parts: list[bytes]) -> tuple[bytes, int | None]:
    """(body, header length, or None when the body is all JSON)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return (b"".join([text, *parts]), len(text)) if parts else (text, None)


def to_json(array: np.ndarray, datatype: str, where: str) -> list:
    """A wire array as a flat JSON list (BYTES as UTF-8 strings, BF16 as floats)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        try:
            return [bytes(item).decode("utf-8") for item in flat]
        except UnicodeDecodeError:
            raise CodecError(f"{where} holds bytes that are not UTF-8: ask for it with parameters.binary_data "
                             "true") from None  # fmt: skip
    if datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    return flat.tolist()


# ---------------------------------------------------------------- client side


def encode_request(
    inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None, request_id: str = "",
    datatypes: Mapping[str, str] | None = None, binary: bool = True, binary_output: bool = True,
    timeout_s: float | None = None,
) -> tuple[bytes, int | None]:  # fmt: skip
    """(body, header length or None) of an inference request; `binary` sends inputs with the
    binary extension, `binary_output` asks for outputs that way."""
    entries, parts = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = (datatypes or {}).get(name) or datatype_of(array)
        entries.append(_entry(name, datatype, as_wire_array(array, datatype), binary, parts, f"input '{name}'"))
    header: dict[str, Any] = {"inputs": entries}
    if request_id:
        header["id"] = request_id
    parameters: dict[str, Any] = {"binary_data_output": binary_output}
    if timeout_s:
        parameters["timeout"] = int(timeout_s * 1e6)
    header["parameters"] = parameters
    if outputs:
        header["outputs"] = [{"name": name} for name in outputs]
    return _body(header, parts)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """An inference answer's outputs as {name: array}."""
    header, binary = split_body(body, header_length)
    result: dict[str, np.ndarray] = {}
    offset = 0
    for item in header.get("outputs", []):
        name, datatype, shape = item["name"], item["datatype"], tuple(item["shape"])
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            result[name] = from_raw(bytes(binary[offset : offset + size]), datatype, shape, f"output '{name}'")
            offset += size
        else:
            result[name] = from_json(item.get("data", []), datatype, shape, f"output '{name}'")
    return result


def metadata_json(meta: ModelMetadata) -> dict:
    """GET /v2/models/{name}: the JSON form of ModelMetadata."""

    def specs(items) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": specs(meta.inputs), "outputs": specs(meta.outputs)}  # fmt: skip


def metadata_from_json(data: dict) -> ModelMetadata:
    """The client's reading of GET /v2/models/{name}."""
    from .types import TensorSpec

    def specs(items) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items or [])

    return ModelMetadata(data["name"], tuple(data.get("versions", [])), data.get("platform", ""),
                         specs(data.get("inputs")), specs(data.get("outputs")))  # fmt: skip
