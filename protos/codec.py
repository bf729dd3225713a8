"""The one codec between protobuf tensors and numpy arrays, shared by client and server.

It also makes the wire checks, once: element counts (non-negative, within the server's limit),
byte sizes against shape x datatype, BYTES framing, raw and typed contents not mixed.

Wire rules (KServe v2 / Open Inference Protocol): raw tensors are row-major little-endian with no
padding; BOOL is one byte per element; BYTES elements are each a 4-byte little-endian length
followed by the bytes. Typed `contents` carry each datatype in a fixed field; FP16 and BF16 have
no typed field and travel raw only. Internally a tensor is a numpy array: BYTES is an object array
of `bytes`, BF16 is the raw 16-bit pattern as `uint16` (numpy has no bfloat16).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from .datatypes import DATATYPES, NUMPY_DTYPES
from .generated import grpc_service_pb2 as pb
from .types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor


class CodecError(ValueError):
    """A tensor could not be encoded or decoded; the message names the tensor."""


# datatype -> the InferTensorContents field that may carry it (FP16/BF16 have none).
TYPED_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The protobuf type of each typed field: values are read at this width, then narrowed.
_FIELD_DTYPES: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype for a numpy array (str/bytes/object arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if name != "BF16" and dtype.kind == kind and dtype.itemsize == array.dtype.itemsize:
            return name
    raise CodecError(f"numpy dtype {array.dtype} has no protocol datatype")


def element_count(shape: Sequence[int], tensor: str = "tensor", limit: int = 0) -> int:
    """Number of elements of `shape`; negative dimensions are an error, and so is a count over
    `limit` (when given: the server's --max-tensor-elements)."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise CodecError(f"{tensor}: shape {list(shape)} has a negative dimension")
        count *= dim
    if limit and count > limit:
        raise CodecError(f"{tensor} declares shape {list(shape)} ({count} elements); the server's limit is {limit}")
    return count


# ---------------------------------------------------------------- BYTES framing


def serialize_bytes(array: np.ndarray) -> bytes:
    """Frame every element (bytes or str) as a 4-byte LE length followed by its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, count: int, tensor: str = "tensor") -> np.ndarray:
    """Parse `count` length-prefixed elements; the buffer must hold exactly those.

    Elements are collected as they parse, so a huge declared count costs nothing before the
    buffer runs out."""
    items: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise CodecError(
                f"{tensor}: BYTES data ends after {i} of {count} elements (truncated length prefix)"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise CodecError(
                f"{tensor}: BYTES element {i} declares {length} bytes but only {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise CodecError(f"{tensor}: BYTES data has {len(view) - offset} bytes after the last of {count} elements")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


# ---------------------------------------------------------------- numpy <-> raw / typed


def from_raw(
    raw: bytes, datatype: str, shape: Sequence[int], tensor: str = "tensor", max_elements: int = 0
) -> np.ndarray:
    """Decode one raw tensor, checking its byte size against shape x datatype (and the element
    count against `max_elements`, when given, before anything is allocated)."""
    dtype = _dtype(datatype, tensor)
    count = element_count(shape, tensor, max_elements)
    if datatype == "BYTES":
        return _reshape(deserialize_bytes(raw, count, tensor), shape, tensor)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise CodecError(
            f"{tensor}: raw data is {len(raw)} bytes, expected {expected} "
            f"({count} elements of {datatype} for shape {list(shape)})"
        )
    return _reshape(np.frombuffer(raw, dtype=dtype), shape, tensor)


def _reshape(array: np.ndarray, shape: Sequence[int], tensor: str) -> np.ndarray:
    # An empty tensor may still declare a dimension numpy cannot represent ([0, 2**63 - 1]).
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise CodecError(f"{tensor}: shape {list(shape)} cannot be represented: {exc}") from None


def to_raw(array: np.ndarray, datatype: str | None = None) -> bytes:
    """Encode one array as raw protocol bytes."""
    datatype = datatype or datatype_of(array)
    if datatype == "BYTES":
        return serialize_bytes(array)
    dtype = NUMPY_DTYPES[datatype]
    # tobytes() writes row-major whatever the array's layout; only another dtype needs a cast.
    if isinstance(array, np.ndarray) and array.dtype == dtype:
        return array.tobytes()
    return np.asarray(array, dtype=dtype).tobytes()


def from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: Sequence[int], tensor: str = "tensor", max_elements: int = 0
) -> np.ndarray:
    """Decode typed `contents`, checking that the field fits the datatype and the count the shape."""
    dtype = _dtype(datatype, tensor)
    count = element_count(shape, tensor, max_elements)
    field = TYPED_FIELDS.get(datatype)
    if field is None:
        raise CodecError(f"{tensor}: datatype {datatype} has no typed contents field; send it in raw_input_contents")
    for other in set(TYPED_FIELDS.values()) - {field}:
        if len(getattr(contents, other)):
            raise CodecError(f"{tensor}: datatype {datatype} must use contents.{field}, got contents.{other}")
    values = getattr(contents, field)
    if len(values) != count:
        raise CodecError(
            f"{tensor}: contents.{field} has {len(values)} elements, expected {count} for shape {list(shape)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return _reshape(array, shape, tensor)
    # Range-checked narrowing: int_contents for INT8 must fit in INT8, and so on.
    wide = np.fromiter(values, dtype=_FIELD_DTYPES[field], count=count)
    array = wide.astype(dtype)
    if dtype.kind in "iu" and not np.array_equal(array, wide):
        raise CodecError(f"{tensor}: contents.{field} holds values out of range for {datatype}")
    return _reshape(array, shape, tensor)


def _dtype(datatype: str, tensor: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise CodecError(f"{tensor}: unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}") from None


def as_wire_array(array: np.ndarray, datatype: str) -> np.ndarray:
    """Cast an array to the dtype that carries `datatype` (str arrays become UTF-8 bytes)."""
    if datatype == "BYTES":
        if array.dtype.kind == "O" and all(isinstance(x, bytes) for x in array.reshape(-1)):
            return array
        out = np.empty(array.shape, dtype=object)
        flat = out.reshape(-1)
        for i, item in enumerate(array.reshape(-1)):
            flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        return out
    return np.asarray(array, dtype=NUMPY_DTYPES[datatype])


# ---------------------------------------------------------------- whole messages


def decode_request(
    request: pb.ModelInferRequest, max_elements: int = 0, deadline: float | None = None
) -> InferenceRequest:
    """A ModelInferRequest as the data plane takes it. What makes it undecodable is kept in
    `error` rather than raised (the data plane raises it once it has found the model)."""
    decoded = InferenceRequest(request.model_name, request.model_version, request.id, {}, deadline=deadline)
    try:
        decoded.inputs = decode_inputs(request, max_elements)
        # The tensors' bytes and an estimate of the rest, not request.ByteSize(): upb computes
        # that by serialising the whole message again (47 ms for a 40 MB request).
        decoded.nbytes = len(request.model_name) + len(request.id) + sum(
            _tensor_bytes(array) + len(name) + len(datatype) + 8 * array.ndim + 16
            for name, (datatype, array) in decoded.inputs.items()
        )
        if request.outputs:
            decoded.outputs = requested_outputs(request)
    except CodecError as exc:
        decoded.error = str(exc)
    return decoded


def _tensor_bytes(array: np.ndarray) -> int:
    """Bytes a decoded tensor took on the wire (BYTES: each element's length and its 4-byte prefix)."""
    if array.dtype.kind != "O":
        return array.nbytes
    return sum(len(item) + 4 for item in array.reshape(-1))


def requested_outputs(request: pb.ModelInferRequest) -> list[RequestedOutput]:
    """The outputs a request names, with the classification extension's count (0: none)."""
    wanted = []
    for output in request.outputs:
        count = 0
        param = output.parameters.get("classification")
        if param is not None:
            which = param.WhichOneof("parameter_choice")
            if which not in ("int64_param", "uint64_param"):
                raise CodecError(
                    f"output '{output.name}': the classification parameter must be an integer, got {which}"
                )
            count = int(getattr(param, which))
        wanted.append(RequestedOutput(output.name, count))
    return wanted


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """The ModelInferResponse for the data plane's answer (outputs always raw)."""
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    return encode_outputs(message, response.outputs)


def decode_inputs(request: pb.ModelInferRequest, max_elements: int = 0) -> dict[str, Tensor]:
    """All input tensors of a request as {name: (datatype, array)}.

    Raw and typed contents may not be mixed in one request; the number of raw buffers must
    equal the number of inputs; names must be unique; no tensor may declare more than
    `max_elements` elements (when given).
    """
    # One pass over the inputs, with the shape as a tuple: iterating protobuf's repeated fields
    # costs more than decoding a small tensor, and this runs for every request.
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        typed = next((t for t in inputs if t.HasField("contents") and _has_values(t.contents)), None)
        if typed is not None:  # the likelier cause of the miscount: say that
            raise _mixed(f"input '{typed.name}'")
        raise CodecError(
            f"request has {len(inputs)} inputs but {len(raw)} raw_input_contents buffers; expected one buffer per input"
        )
    decoded: dict[str, Tensor] = {}
    for i, tensor in enumerate(inputs):
        name, datatype = tensor.name, tensor.datatype
        where = f"input '{name}'"
        if name in decoded:
            raise CodecError(f"{where} appears more than once in the request")
        shape = tuple(tensor.shape)
        if not raw:
            array = from_contents(tensor.contents, datatype, shape, where, max_elements)
        elif tensor.HasField("contents") and _has_values(tensor.contents):
            raise _mixed(where)
        else:
            array = from_raw(raw[i], datatype, shape, where, max_elements)
        decoded[name] = (datatype, array)
    return decoded


def _mixed(where: str) -> CodecError:
    return CodecError(f"request mixes raw_input_contents with typed contents ({where}); use one or the other")


def _has_values(contents: pb.InferTensorContents) -> bool:
    return any(len(getattr(contents, f)) for f in set(TYPED_FIELDS.values()))


def encode_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, Tensor]) -> pb.ModelInferResponse:
    """Append every output to `response` as raw_output_contents (always raw)."""
    raw = response.raw_output_contents
    for name, (datatype, array) in outputs.items():
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(to_raw(array, datatype))
    return response


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    datatypes: Mapping[str, str] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input raw; `datatypes` overrides the inferred datatype."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = (datatypes or {}).get(name) or datatype_of(array)
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(to_raw(as_wire_array(array, datatype), datatype))
    for name in outputs or ():
        request.outputs.add().name = name
    return request


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs of a ModelInferResponse as {name: array}, raw or typed."""
    result: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, tensor in enumerate(response.outputs):
        where = f"output '{tensor.name}'"
        if raw:
            result[tensor.name] = from_raw(raw[i], tensor.datatype, list(tensor.shape), where)
        else:
            result[tensor.name] = from_contents(tensor.contents, tensor.datatype, list(tensor.shape), where)
    return result
