"""Every datatype ONNX Runtime serves round-trips exactly through an Identity model: raw through
the modelport client, raw through tritonclient, and typed `contents` through the raw stub. Also
requested outputs, request ids, the classification extension and message-size limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto

from modelport.client import Client, InferenceServerError
from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from modelport.server.background import BackgroundServer
from tests import models

MIB = 1024 * 1024
SHAPE = (2, 3)

ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
TYPED = [dt for dt in ONNX_TYPES if dt not in ("FP16", "BF16")]
TEXTS = ["", "plain ascii", "héllo wörld", "日本語テキスト", "emoji 🙂👍", "Ωμέγα"]

# BF16 bit patterns: 1, -2.5, -0, +inf, smallest subnormal, largest finite; pi-ish, -inf, NaN,
# +0, ~1/3, smallest normal. Cast(bf16 -> fp32) is exact: the pattern shifted left by 16 bits.
BF16_BITS = np.array(
    [[0x3F80, 0xC020, 0x8000, 0x7F80, 0x0001, 0x7F7F], [0x4049, 0xFF80, 0x7FC0, 0x0000, 0x3EAB, 0x0080]],
    dtype=np.uint16,
).reshape(4, 3)
BF16_AS_FP32 = (BF16_BITS.astype(np.uint32) << 16).view(np.float32)


def values(datatype: str) -> np.ndarray:
    """Six values of `datatype` in shape (2, 3) that exercise its edges."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([t.encode("utf-8") for t in TEXTS], dtype=object).reshape(SHAPE)
    dtype = codec.NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        row = [info.min, info.max, 0, 1, info.max // 3, 7] if dtype.kind == "u" else [
            info.min, info.max, 0, 1, -1, info.min // 3,
        ]
        return np.array(row, dtype=dtype).reshape(SHAPE)
    info = np.finfo(dtype)
    return np.array([-0.0, info.max, -np.inf, info.smallest_subnormal, np.nan, 1 / 3], dtype=dtype).reshape(SHAPE)


def assert_exact(got: np.ndarray, expected: np.ndarray) -> None:
    """Same shape, same dtype, same values (bit for bit for numbers, NaN included)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if expected.dtype == object:
        assert [bytes(x) for x in got.reshape(-1)] == list(expected.reshape(-1))
        return
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert np.array_equal(got, expected, equal_nan=expected.dtype.kind == "f")
    assert got.tobytes() == expected.tobytes()


def model_name(datatype: str) -> str:
    return f"id_{datatype.lower()}"


# ---------------------------------------------------------------- repository and server


LABELS = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datatypes-repo")
    for datatype, onnx_type in ONNX_TYPES.items():
        models.save(models.identity(onnx_type), root, model_name(datatype))
    models.save(models.cast(TensorProto.BFLOAT16, TensorProto.FLOAT), root, "bf16_to_fp32")
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.scale(1.0, width=3), root, "classifier")
    (root / "classifier" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    models.save(models.identity(TensorProto.FLOAT, [None, 224, 224, 3]), root, "image")
    return root


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[Client]:
    with Client(server.address, timeout=30) as connected:
        yield connected


@pytest.fixture(scope="module")
def peer(server: BackgroundServer) -> Iterator[triton.InferenceServerClient]:
    upstream = triton.InferenceServerClient(server.address)
    yield upstream
    upstream.close()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_raw_round_trip_modelport_client(client: Client, datatype: str) -> None:
    x = values(datatype)
    out = client.infer(model_name(datatype), {"x": x})
    assert list(out) == ["y"]
    assert_exact(out["y"], x)


def test_bytes_from_str_array_are_sent_as_utf8(client: Client) -> None:
    x = np.array(TEXTS).reshape(SHAPE)  # numpy unicode array: the client encodes UTF-8
    out = client.infer("id_bytes", {"x": x})
    assert out["y"].shape == SHAPE
    assert [b.decode("utf-8") for b in out["y"].reshape(-1)] == TEXTS


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_raw_round_trip_tritonclient(peer: triton.InferenceServerClient, datatype: str) -> None:
    x = values(datatype)
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = peer.infer(model_name(datatype), [tensor])
    response = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", datatype, list(SHAPE))]
    assert_exact(result.as_numpy("y"), x)


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_round_trip(stub: pb_grpc.GRPCInferenceServiceStub, datatype: str) -> None:
    x = values(datatype)
    request = pb.ModelInferRequest(model_name=model_name(datatype))
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(SHAPE))
    getattr(tensor.contents, codec.TYPED_FIELDS[datatype]).extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", datatype, list(SHAPE))]
    assert_exact(codec.decode_response(response)["y"], x)


def test_bf16_raw_via_stub_is_the_16_bit_pattern(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = codec.build_request("bf16_to_fp32", {"x": BF16_BITS}, datatypes={"x": "BF16"})
    assert request.inputs[0].datatype == "BF16"
    assert request.raw_input_contents[0] == BF16_BITS.astype("<u2").tobytes()
    response = stub.ModelInfer(request, timeout=30)
    assert [(o.name, o.datatype) for o in response.outputs] == [("y", "FP32")]
    assert_exact(codec.decode_response(response)["y"], BF16_AS_FP32)


def test_bf16_via_tritonclient(peer: triton.InferenceServerClient) -> None:
    x = BF16_BITS.view(ml_dtypes.bfloat16)
    tensor = triton.InferInput("x", list(x.shape), "BF16")
    tensor.set_data_from_numpy(x)
    result = peer.infer("bf16_to_fp32", [tensor])
    assert_exact(result.as_numpy("y"), BF16_AS_FP32)


def test_bf16_metadata_reports_bf16(client: Client) -> None:
    meta = client.model_metadata("bf16_to_fp32")
    assert [(t.name, t.datatype) for t in meta.inputs] == [("x", "BF16")]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("y", "FP32")]


# ---------------------------------------------------------------- outputs, ids, classification

A = np.array([[1, 5, 2, 3], [9, 1, 4, 2]], dtype=np.float32)
B = np.array([[2, 1, 4, 3], [1, 1, 1, 3]], dtype=np.float32)  # prod = [[2,5,8,9],[9,1,4,6]]


def test_requested_outputs_are_honoured(client: Client, peer: triton.InferenceServerClient, stub) -> None:
    out = client.infer("add_mul", {"a": A, "b": B}, outputs=["prod"])
    assert list(out) == ["prod"]
    np.testing.assert_array_equal(out["prod"], A * B)

    request = codec.build_request("add_mul", {"a": A, "b": B}, outputs=["prod"])
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["prod"] and len(response.raw_output_contents) == 1

    inputs = []
    for name, array in (("a", A), ("b", B)):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = peer.infer("add_mul", inputs, outputs=[triton.InferRequestedOutput("sum")])
    assert [o.name for o in result.get_response().outputs] == ["sum"]
    np.testing.assert_array_equal(result.as_numpy("sum"), A + B)
    assert result.as_numpy("prod") is None

    everything = client.infer("add_mul", {"a": A, "b": B})
    assert list(everything) == ["sum", "prod"]


def test_request_id_is_echoed(stub, peer: triton.InferenceServerClient) -> None:
    request = codec.build_request("add_mul", {"a": A, "b": B}, request_id="req-42 ✓")
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "req-42 ✓"
    assert response.model_name == "add_mul" and response.model_version == "1"

    tensor = triton.InferInput("x", [1, 3], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
    result = peer.infer("id_int32", [tensor], request_id="triton-7")
    assert result.get_response().id == "triton-7"

    no_id = stub.ModelInfer(codec.build_request("add_mul", {"a": A, "b": B}), timeout=30)
    assert no_id.id == ""


def _top(rows: np.ndarray, k: int, labels: list[str] | None = None) -> list[list[bytes]]:
    expected = []
    for row in rows:
        order = np.argsort(-row, kind="stable")[:k]
        expected.append(
            [(f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")).encode() for i in order]
        )
    return expected


def test_classification_value_index(peer: triton.InferenceServerClient) -> None:
    inputs = []
    for name, array in (("a", A), ("b", B)):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = peer.infer("add_mul", inputs, outputs=[triton.InferRequestedOutput("prod", class_count=2)])
    (output,) = result.get_response().outputs
    assert (output.name, output.datatype, list(output.shape)) == ("prod", "BYTES", [2, 2])
    got = result.as_numpy("prod")
    assert got.shape == (2, 2)
    assert got.tolist() == [[b"9.000000:3", b"8.000000:2"], [b"9.000000:0", b"6.000000:3"]]
    assert got.tolist() == _top(A * B, 2)


def test_classification_with_labels(peer: triton.InferenceServerClient) -> None:
    x = np.array([[1.0, 4.0, 2.0], [8.0, 0.5, 0.25]], dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = peer.infer("classifier", [tensor], outputs=[triton.InferRequestedOutput("y", class_count=2)])
    got = result.as_numpy("y")
    assert got.tolist() == [[b"4.000000:1:dog", b"2.000000:2:bird"], [b"8.000000:0:cat", b"0.500000:1:dog"]]
    assert got.tolist() == _top(x, 2, LABELS)


def test_classification_count_larger_than_classes_is_clamped(peer: triton.InferenceServerClient) -> None:
    x = np.array([[1.0, 4.0, 2.0]], dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = peer.infer("classifier", [tensor], outputs=[triton.InferRequestedOutput("y", class_count=10)])
    assert result.as_numpy("y").tolist() == _top(x, 3, LABELS)


# ---------------------------------------------------------------- message size


def test_imagenet_batch_of_64_fits_default_limit(client: Client) -> None:
    x = np.random.default_rng(0).random((64, 224, 224, 3), dtype=np.float32)
    assert x.nbytes == 38_535_168  # ~38.5 MB, under the default 64 MiB
    out = client.infer("image", {"x": x})
    assert out["y"].shape == x.shape and np.array_equal(out["y"], x)


def test_message_over_the_limit_is_refused(tmp_path: Path, start_server) -> None:
    models.save(models.identity(TensorProto.FLOAT, [None, 224, 224, 3]), tmp_path, "image")
    address = start_server(tmp_path, max_message_bytes=1 * MIB)
    big = np.ones((4, 224, 224, 3), dtype=np.float32)  # ~2.3 MiB
    small = np.ones((1, 224, 224, 3), dtype=np.float32)  # ~0.6 MiB
    with Client(address, timeout=30) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.infer("image", {"x": big})
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
        assert "larger than max" in caught.value.message, caught.value.message
        # The refusal closes nothing: the same server and channel answer a request that fits.
        np.testing.assert_array_equal(client.infer("image", {"x": small})["y"], small)
    peer = triton.InferenceServerClient(address)
    try:
        tensor = triton.InferInput("x", list(big.shape), "FP32")
        tensor.set_data_from_numpy(big)
        with pytest.raises(triton.InferenceServerException) as upstream:
            peer.infer("image", [tensor])
        assert upstream.value.status() == "StatusCode.RESOURCE_EXHAUSTED", upstream.value
    finally:
        peer.close()
