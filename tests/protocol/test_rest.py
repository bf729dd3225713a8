"""The HTTP/REST codec (modelport.protocol.rest) on its own: JSON and binary tensors both ways,
and the checks that turn a bad body into a message naming the tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelport.protocol import rest
from modelport.protocol.codec import CodecError
from modelport.protocol.types import InferenceResponse

ARRAYS = {
    "BOOL": np.array([[True, False], [False, True]]),
    "INT8": np.array([[-128, 127], [0, 1]], np.int8),
    "UINT64": np.array([[0, 2**64 - 1], [7, 2**63]], np.uint64),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, -1]], np.int64),
    "FP16": np.array([[0.5, -2.0], [65504, 0.0]], np.float16),
    "FP32": np.array([[1.5, -0.0], [3.25e38, 1e-30]], np.float32),
    "FP64": np.array([[1 / 3, -1e300], [0.0, 2.5]], np.float64),
    "BYTES": np.array([[b"", b"plain"], ["héllo".encode(), "日本".encode()]], dtype=object),
}


def round_trip(datatype: str, binary: bool) -> np.ndarray:
    body, length = rest.encode_request({"x": ARRAYS[datatype]}, datatypes={"x": datatype}, binary=binary)
    header, tail = rest.split_body(body, length)
    request = rest.decode_request(header, tail, "m", "", max_elements=100)
    assert request.error == "", request.error
    return request.inputs["x"][1]


@pytest.mark.parametrize("datatype", list(ARRAYS))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requests_round_trip_exactly(datatype: str, binary: bool) -> None:
    got, want = round_trip(datatype, binary), ARRAYS[datatype]
    assert got.shape == want.shape
    if datatype == "BYTES":
        assert list(got.reshape(-1)) == list(want.reshape(-1))
    else:
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_responses_round_trip_with_id_and_order(binary: bool) -> None:
    outputs = {"b": ("INT64", ARRAYS["INT64"]), "a": ("BYTES", ARRAYS["BYTES"])}
    body, length = rest.encode_response(InferenceResponse("m", "3", "r-1", outputs), binary_default=binary)
    assert (length is not None) == binary
    header = json.loads(body[:length] if length else body)
    assert (header["model_name"], header["model_version"], header["id"]) == ("m", "3", "r-1")
    decoded = rest.decode_response(body, length)
    assert list(decoded) == ["b", "a"]
    assert decoded["b"].tobytes() == ARRAYS["INT64"].tobytes()
    assert list(decoded["a"].reshape(-1)) == list(ARRAYS["BYTES"].reshape(-1))


def test_nested_json_data_and_bf16_as_floats() -> None:
    nested = rest.from_json([[1, 2, 3], [4, 5, 6]], "INT32", (2, 3), "input 'x'")
    assert nested.tolist() == [[1, 2, 3], [4, 5, 6]] and nested.dtype == np.int32
    bits = rest.from_json([1.0, -2.5], "BF16", (2,), "input 'x'")
    assert bits.tolist() == [0x3F80, 0xC020]
    assert rest.to_json(bits, "BF16", "output 'y'") == [1.0, -2.5]


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1, 2, 3], "FP32", (2, 2), "input 'x': data has 3 elements, expected 4 for shape [2, 2]"),
        ([1.5, 2], "INT32", (2,), "INT32 data must be integers"),
        ([300], "INT8", (1,), "out of range for INT8"),
        ([1, 0], "BOOL", (2,), "BOOL data must be true/false"),
        (["a"], "FP32", (1,), "FP32 data must be numbers"),
        ([True], "FP32", (1,), "FP32 data must be numbers"),
        ([1], "BYTES", (1,), "BYTES data must be strings"),
        ([1], "FP8", (1,), "unknown datatype 'FP8'"),
        ([1], "FP32", (-1,), "negative dimension"),
    ],
)
def test_bad_json_data_names_the_tensor(data, datatype, shape, message) -> None:
    with pytest.raises(CodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rest.from_json(data, datatype, shape, "input 'x'")


def test_bad_bodies() -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        rest.split_body(b"{nope", None)
    with pytest.raises(CodecError, match="must be a JSON object"):
        rest.split_body(b"[1]", None)
    with pytest.raises(CodecError, match="Inference-Header-Content-Length is 9 but the body has 2 bytes"):
        rest.split_body(b"{}", 9)
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    assert "does not fit the 4 binary bytes" in rest.decode_request(header, memoryview(b"\0" * 4), "m", "").error
    extra = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    assert "2 binary bytes no input" in rest.decode_request(extra, memoryview(b"\0" * 6), "m", "").error
    twice = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}
    assert "appears more than once" in rest.decode_request(twice, memoryview(b""), "m", "").error
    classification = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                      "outputs": [{"name": "y", "parameters": {"classification": "3"}}]}  # fmt: skip
    assert "classification parameter must be a non-negative integer" in rest.decode_request(
        classification, memoryview(b""), "m", "").error
    with pytest.raises(CodecError, match="not UTF-8"):
        rest.to_json(np.array([b"\xff"], dtype=object), "BYTES", "output 'y'")


def test_element_limit_is_checked_before_decoding() -> None:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1000, 1000], "data": [0]}]}
    assert "the server's limit is 100" in rest.decode_request(header, memoryview(b""), "m", "", max_elements=100).error


def test_timeout_and_binary_output_parameters() -> None:
    assert rest.timeout_us({"parameters": {"timeout": 5000}}) == 5000
    assert rest.timeout_us({"parameters": {"timeout": "5000"}}) is None and rest.timeout_us({}) is None
    asked = {"parameters": {"binary_data_output": True},
             "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}  # fmt: skip
    default, each = rest.binary_outputs(asked)
    assert default is True and each == {"y": False}
