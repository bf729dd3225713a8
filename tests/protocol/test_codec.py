"""The codec: every datatype round-trips raw and typed; framing and size errors are caught."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, np.pi, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, np.pi, 1e308]], dtype=np.float64),
    "BF16": np.array([[0x3F80, 0x4000, 0xC040]], dtype=np.uint16),  # 1.0, 2.0, -3.0
    "BYTES": np.array([[b"", b"abc", "héllo".encode()]], dtype=object),
}


@pytest.mark.parametrize("datatype", codec.DATATYPES)
def test_raw_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    raw = codec.to_raw(array, datatype)
    back = codec.from_raw(raw, datatype, array.shape)
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", sorted(codec.TYPED_FIELDS))
def test_typed_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    contents = pb.InferTensorContents()
    getattr(contents, codec.TYPED_FIELDS[datatype]).extend(array.reshape(-1).tolist())
    back = codec.from_contents(contents, datatype, array.shape)
    assert back.tolist() == array.tolist()
    assert back.dtype == codec.NUMPY_DTYPES[datatype]


def test_raw_is_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int32)
    assert codec.to_raw(array) == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0])
    big = array.astype(">i4")
    assert codec.to_raw(big, "INT32") == codec.to_raw(array)
    assert codec.to_raw(np.asfortranarray(array)) == codec.to_raw(array)


def test_bytes_framing_is_four_byte_le_length() -> None:
    raw = codec.serialize_bytes(np.array([b"ab", b""], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert codec.serialize_bytes(np.array(["é"])) == b"\x02\x00\x00\x00\xc3\xa9"


@pytest.mark.parametrize(
    "raw, count, message",
    [
        (b"\x02\x00\x00", 1, "truncated length prefix"),
        (b"\x05\x00\x00\x00ab", 1, "declares 5 bytes but only 2 remain"),
        (b"\x01\x00\x00\x00ab", 1, "1 bytes after the last of 1 elements"),
        (b"\x01\x00\x00\x00a", 2, "ends after 1 of 2 elements"),
    ],
)
def test_malformed_bytes(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(codec.CodecError, match=message):
        codec.deserialize_bytes(raw, count, "input 'x'")


def test_raw_size_mismatch_names_tensor_and_sizes() -> None:
    with pytest.raises(codec.CodecError, match=r"input 'x': raw data is 8 bytes, expected 12"):
        codec.from_raw(b"\x00" * 8, "FP32", [1, 3], "input 'x'")


def test_negative_dimension_and_unknown_datatype() -> None:
    with pytest.raises(codec.CodecError, match="negative dimension"):
        codec.from_raw(b"", "FP32", [-1, 3], "input 'x'")
    with pytest.raises(codec.CodecError, match="unknown datatype 'FP8'"):
        codec.from_raw(b"", "FP8", [0], "input 'x'")


def test_typed_errors() -> None:
    contents = pb.InferTensorContents(fp32_contents=[1.0, 2.0])
    with pytest.raises(codec.CodecError, match="has 2 elements, expected 3"):
        codec.from_contents(contents, "FP32", [3])
    with pytest.raises(codec.CodecError, match="must use contents.int64_contents, got contents.fp32_contents"):
        codec.from_contents(contents, "INT64", [2])
    with pytest.raises(codec.CodecError, match="no typed contents field"):
        codec.from_contents(contents, "FP16", [2])
    with pytest.raises(codec.CodecError, match="out of range for INT8"):
        codec.from_contents(pb.InferTensorContents(int_contents=[300]), "INT8", [1])


def test_decode_inputs_rejects_mixed_and_miscounted() -> None:
    request = codec.build_request("m", {"a": np.zeros((1, 2), np.float32), "b": np.zeros((1, 2), np.float32)})
    request.inputs[1].contents.fp32_contents.extend([0.0, 0.0])
    with pytest.raises(codec.CodecError, match="mixes raw_input_contents with typed contents"):
        codec.decode_inputs(request)
    request = codec.build_request("m", {"a": np.zeros((1, 2), np.float32)})
    request.raw_input_contents.append(b"")
    with pytest.raises(codec.CodecError, match="1 inputs but 2 raw_input_contents"):
        codec.decode_inputs(request)


def test_request_response_round_trip() -> None:
    inputs = {name: SAMPLES[name] for name in ("FP32", "BYTES", "BOOL")}
    request = codec.build_request("m", inputs, version="2", outputs=["y"], request_id="r1")
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r1")
    assert [o.name for o in request.outputs] == ["y"]
    decoded = codec.decode_inputs(request)
    assert {k: v[0] for k, v in decoded.items()} == {"FP32": "FP32", "BYTES": "BYTES", "BOOL": "BOOL"}
    response = codec.encode_outputs(pb.ModelInferResponse(), decoded)
    out = codec.decode_response(response)
    for name, array in inputs.items():
        assert out[name].tolist() == array.tolist()


def test_datatype_of_numpy() -> None:
    assert codec.datatype_of(np.zeros(1, np.float32)) == "FP32"
    assert codec.datatype_of(np.array(["a"])) == "BYTES"
    assert codec.datatype_of(np.zeros(1, np.uint16)) == "UINT16"
    with pytest.raises(codec.CodecError):
        codec.datatype_of(np.zeros(1, np.complex64))
