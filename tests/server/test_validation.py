"""Bad requests: each gets the right gRPC status and a message that names the model and the
tensor, and the server answers a good request right after every one of them.

The matrix goes through the raw stub, because tritonclient and the modelport client refuse some
of these requests before they leave the process; a few cases also go through both clients.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from modelport.client import Client, InferenceServerError
from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from tests import models
from tests.server.configs import BATCHED_CONFIG

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 3.0, dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validation-repo")
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.add_mul(), root, "add_mul_b4", config=BATCHED_CONFIG)
    models.save(models.scale(2.0), root, "scale", 1, config="version_policy: { all: {} }\n")
    models.save(models.scale(3.0), root, "scale", 2)
    models.save(models.identity(TensorProto.STRING, [None]), root, "strings")
    models.save(models.identity(TensorProto.INT8), root, "int8")
    models.save(models.identity(TensorProto.FLOAT16), root, "half")
    models.save(models.cast(TensorProto.BFLOAT16, TensorProto.FLOAT), root, "bf16")
    return root


# ---------------------------------------------------------------- request builders


def request(model: str = "add_mul", version: str = "", outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id="bad")
    for name in outputs:
        msg.outputs.add(name=name)
    return msg


def raw(msg: pb.ModelInferRequest, name: str, datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(data)
    return msg


def typed(msg: pb.ModelInferRequest, name: str, datatype: str, shape: list[int], **contents) -> pb.ModelInferRequest:
    msg.inputs.add(name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return msg


def f32(shape: tuple[int, ...], value: float = 1.0) -> bytes:
    return np.full(shape, value, dtype="<f4").tobytes()


def good_pair(model: str = "add_mul", version: str = "", outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    msg = request(model, version, outputs)
    raw(msg, "a", "FP32", [2, 4], A.tobytes())
    return raw(msg, "b", "FP32", [2, 4], B.tobytes())


def bytes_request(shape: list[int], data: bytes) -> pb.ModelInferRequest:
    return raw(request("strings"), "x", "BYTES", shape, data)


def length(n: int) -> bytes:
    return struct.pack("<I", n)


# ---------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    build: Callable[[], pb.ModelInferRequest]
    code: grpc.StatusCode
    model: str  # the model the request went to, to be named in the message
    needles: tuple[str, ...]  # more text the message must contain: the tensor, what was expected


def _mixed() -> pb.ModelInferRequest:
    msg = typed(request(), "a", "FP32", [2, 4], fp32_contents=A.reshape(-1).tolist())
    return raw(msg, "b", "FP32", [2, 4], B.tobytes())


def _raw_count(buffers: int) -> pb.ModelInferRequest:
    msg = request()
    msg.inputs.add(name="a", datatype="FP32", shape=[2, 4])
    msg.inputs.add(name="b", datatype="FP32", shape=[2, 4])
    msg.raw_input_contents.extend([A.tobytes()] * buffers)
    return msg


def _classification(param: pb.InferParameter) -> pb.ModelInferRequest:
    msg = good_pair()
    msg.outputs.add(name="prod").parameters["classification"].CopyFrom(param)
    return msg


CASES: dict[str, Case] = {
    "unknown_model": Case(lambda: good_pair("nope"), NOT_FOUND, "nope", ("not found", "add_mul")),
    "unserved_version": Case(lambda: good_pair("scale", "7"), NOT_FOUND, "scale", ("'7'", "served versions: 1, 2")),
    "version_not_a_number": Case(lambda: good_pair("scale", "latest"), NOT_FOUND, "scale", ("'latest'", "1, 2")),
    "missing_input": Case(
        lambda: raw(request(), "a", "FP32", [2, 4], A.tobytes()), INVALID, "add_mul", ("missing input 'b'",)
    ),
    "unknown_input": Case(
        lambda: raw(good_pair(), "c", "FP32", [2, 4], A.tobytes()), INVALID, "add_mul", ("unexpected input 'c'",)
    ),
    "wrong_datatype": Case(
        lambda: raw(raw(request(), "a", "FP64", [2, 4], A.astype("<f8").tobytes()), "b", "FP32", [2, 4], B.tobytes()),
        INVALID,
        "add_mul",
        ("input 'a'", "expected datatype FP32", "FP64"),
    ),
    "unknown_datatype": Case(
        lambda: raw(raw(request(), "a", "FLOAT", [2, 4], A.tobytes()), "b", "FP32", [2, 4], B.tobytes()),
        INVALID,
        "add_mul",
        ("input 'a'", "'FLOAT'"),
    ),
    "wrong_rank": Case(
        lambda: raw(raw(request(), "a", "FP32", [8], A.tobytes()), "b", "FP32", [8], B.tobytes()),
        INVALID,
        "add_mul",
        ("input 'a'", "[-1, 4]", "[8]"),
    ),
    "wrong_fixed_dimension": Case(
        lambda: raw(raw(request(), "a", "FP32", [2, 5], f32((2, 5))), "b", "FP32", [2, 5], f32((2, 5))),
        INVALID,
        "add_mul",
        ("input 'a'", "[-1, 4]", "[2, 5]"),
    ),
    "raw_size_mismatch": Case(
        lambda: raw(raw(request(), "a", "FP32", [2, 4], A.tobytes()[:-4]), "b", "FP32", [2, 4], B.tobytes()),
        INVALID,
        "add_mul",
        ("input 'a'", "28 bytes", "expected 32"),
    ),
    "mixed_raw_and_typed": Case(_mixed, INVALID, "add_mul", ("input 'a'", "raw_input_contents", "typed contents")),
    "too_few_raw_buffers": Case(lambda: _raw_count(1), INVALID, "add_mul", ("2 inputs", "1 raw_input_contents")),
    "too_many_raw_buffers": Case(lambda: _raw_count(3), INVALID, "add_mul", ("2 inputs", "3 raw_input_contents")),
    "bytes_truncated_length_prefix": Case(
        lambda: bytes_request([2], length(1) + b"a" + b"\x05\x00"), INVALID, "strings", ("input 'x'", "truncated")
    ),
    "bytes_length_beyond_buffer": Case(
        lambda: bytes_request([1], length(10) + b"abc"), INVALID, "strings", ("input 'x'", "10 bytes", "3 remain")
    ),
    "bytes_trailing_bytes": Case(
        lambda: bytes_request([1], length(1) + b"a" + b"zz"), INVALID, "strings", ("input 'x'", "2 bytes after")
    ),
    "bytes_not_utf8": Case(
        lambda: bytes_request([1], length(2) + b"\xff\xfe"), INVALID, "strings", ("input 'x'", "UTF-8")
    ),
    "typed_wrong_field": Case(
        lambda: typed(
            typed(request(), "a", "FP32", [2, 4], int_contents=list(range(8))),
            "b", "FP32", [2, 4], fp32_contents=B.reshape(-1).tolist(),
        ),
        INVALID,
        "add_mul",
        ("input 'a'", "contents.fp32_contents", "contents.int_contents"),
    ),
    "typed_element_count": Case(
        lambda: typed(
            typed(request(), "a", "FP32", [2, 4], fp32_contents=[1.0] * 7),
            "b", "FP32", [2, 4], fp32_contents=B.reshape(-1).tolist(),
        ),
        INVALID,
        "add_mul",
        ("input 'a'", "7 elements", "expected 8"),
    ),
    "typed_out_of_range": Case(
        lambda: typed(request("int8"), "x", "INT8", [1, 3], int_contents=[1, 300, -1]),
        INVALID,
        "int8",
        ("input 'x'", "out of range for INT8"),
    ),
    "fp16_typed_contents": Case(
        lambda: typed(request("half"), "x", "FP16", [1, 3], fp32_contents=[1.0, 2.0, 3.0]),
        INVALID,
        "half",
        ("input 'x'", "FP16 has no typed contents field", "raw_input_contents"),
    ),
    "bf16_typed_contents": Case(
        lambda: typed(request("bf16"), "x", "BF16", [1, 3], fp32_contents=[1.0, 2.0, 3.0]),
        INVALID,
        "bf16",
        ("input 'x'", "BF16 has no typed contents field"),
    ),
    "negative_dimension_raw": Case(
        lambda: raw(raw(request(), "a", "FP32", [-2, 4], A.tobytes()), "b", "FP32", [2, 4], B.tobytes()),
        INVALID,
        "add_mul",
        ("input 'a'", "negative dimension"),
    ),
    "negative_dimension_typed": Case(
        lambda: typed(
            typed(request(), "a", "FP32", [2, -4], fp32_contents=A.reshape(-1).tolist()),
            "b", "FP32", [2, 4], fp32_contents=B.reshape(-1).tolist(),
        ),
        INVALID,
        "add_mul",
        ("input 'a'", "negative dimension"),
    ),
    "duplicate_input": Case(
        lambda: raw(good_pair(), "a", "FP32", [2, 4], A.tobytes()), INVALID, "add_mul", ("input 'a'", "more than once")
    ),
    "unknown_requested_output": Case(
        lambda: good_pair(outputs=("sum", "nope")), INVALID, "add_mul", ("output 'nope'", "sum", "prod")
    ),
    "classification_not_integer": Case(
        lambda: _classification(pb.InferParameter(string_param="2")), INVALID, "add_mul", ("output 'prod'", "integer")
    ),
    "classification_negative": Case(
        lambda: _classification(pb.InferParameter(int64_param=-1)), INVALID, "add_mul", ("output 'prod'", ">= 0")
    ),
    "batch_over_max_batch_size": Case(
        lambda: raw(raw(request("add_mul_b4"), "a", "FP32", [5, 4], f32((5, 4))), "b", "FP32", [5, 4], f32((5, 4))),
        INVALID,
        "add_mul_b4",
        ("input 'a'", "batch size 5", "max_batch_size 4"),
    ),
    "inputs_with_different_batch_sizes": Case(
        lambda: raw(raw(request("add_mul_b4"), "a", "FP32", [2, 4], f32((2, 4))), "b", "FP32", [3, 4], f32((3, 4))),
        INVALID,
        "add_mul_b4",
        ("input 'b'", "batch size 3", "2"),
    ),
    "batched_model_without_batch_dimension": Case(
        lambda: raw(raw(request("add_mul_b4"), "a", "FP32", [4], f32((4,))), "b", "FP32", [4], f32((4,))),
        INVALID,
        "add_mul_b4",
        ("input 'a'", "[-1, 4]", "[4]"),
    ),
}


# Good requests for every model the matrix touches: each must still work after each bad case.
def _good_requests() -> dict[str, tuple[pb.ModelInferRequest, Callable[[dict[str, np.ndarray]], None]]]:
    def pair(out: dict[str, np.ndarray]) -> None:
        np.testing.assert_array_equal(out["sum"], A + B)
        np.testing.assert_array_equal(out["prod"], A * B)

    def strings(out: dict[str, np.ndarray]) -> None:
        assert out["y"].shape == (2,) and out["y"].tolist() == [b"ok", "é".encode()]

    bf16 = np.array([[0x3F80, 0xC020, 0x0000]], dtype=np.uint16)
    return {
        "add_mul": (good_pair(), pair),
        "add_mul_b4": (good_pair("add_mul_b4"), pair),
        "scale": (
            raw(request("scale", "1"), "x", "FP32", [1, 3], f32((1, 3), 1.5)),
            lambda out: np.testing.assert_array_equal(out["y"], np.full((1, 3), 3.0, np.float32)),
        ),
        "strings": (
            raw(request("strings"), "x", "BYTES", [2], length(2) + b"ok" + length(2) + "é".encode()),
            strings,
        ),
        "int8": (
            typed(request("int8"), "x", "INT8", [1, 3], int_contents=[-128, 0, 127]),
            lambda out: np.testing.assert_array_equal(out["y"], np.array([[-128, 0, 127]], np.int8)),
        ),
        "half": (
            raw(request("half"), "x", "FP16", [1, 3], np.array([[1, 2, 3]], "<f2").tobytes()),
            lambda out: np.testing.assert_array_equal(out["y"], np.array([[1, 2, 3]], np.float16)),
        ),
        "bf16": (
            raw(request("bf16"), "x", "BF16", [1, 3], bf16.tobytes()),
            lambda out: np.testing.assert_array_equal(out["y"], np.array([[1.0, -2.5, 0.0]], np.float32)),
        ),
    }


GOOD = _good_requests()


def assert_still_serving(stub: pb_grpc.GRPCInferenceServiceStub, *names: str) -> None:
    """Good requests to add_mul and to every model named succeed right now."""
    for name in dict.fromkeys(("add_mul", *names)):
        if name not in GOOD:
            continue
        msg, check = GOOD[name]
        check(codec.decode_response(stub.ModelInfer(msg, timeout=10)))


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_request_gets_status_and_clear_message(stub, case_id: str) -> None:
    case = CASES[case_id]
    assert_still_serving(stub, case.model)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(case.build(), timeout=10)
    error = caught.value
    message = error.details() or ""
    assert error.code() == case.code, f"{case_id}: got {error.code()} ({message})"
    assert f"'{case.model}'" in message, f"{case_id}: message does not name the model: {message!r}"
    for needle in case.needles:
        assert needle in message, f"{case_id}: {needle!r} not in {message!r}"
    assert "internal error" not in message and "Traceback" not in message
    assert_still_serving(stub, case.model)


def test_many_bad_requests_in_a_row_leave_the_server_healthy(stub) -> None:
    for _ in range(3):
        for case in CASES.values():
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(case.build(), timeout=10)
    assert_still_serving(stub, *GOOD)
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


# ---------------------------------------------------------------- through tritonclient


def _triton_inputs(a: np.ndarray, b: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    inputs = []
    for name, array in (("a", a), ("b", b)):
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _triton_good(peer: triton.InferenceServerClient) -> None:
    result = peer.infer("add_mul", _triton_inputs(A, B))
    np.testing.assert_array_equal(result.as_numpy("prod"), A * B)


TRITON_CASES = {
    "unknown_model": (lambda: ("nope", _triton_inputs(A, B), {}), "StatusCode.NOT_FOUND", ("'nope'",)),
    "unserved_version": (
        lambda: ("scale", [triton.InferInput("x", [1, 3], "FP32").set_data_from_numpy(np.ones((1, 3), np.float32))],
                 {"model_version": "9"}),
        "StatusCode.NOT_FOUND",
        ("'scale'", "'9'", "1, 2"),
    ),
    "wrong_datatype": (
        lambda: ("add_mul", _triton_inputs(A.astype(np.float64), B.astype(np.float64), "FP64"), {}),
        "StatusCode.INVALID_ARGUMENT",
        ("'add_mul'", "input 'a'", "FP32", "FP64"),
    ),
    "wrong_fixed_dimension": (
        lambda: ("add_mul", _triton_inputs(np.ones((2, 5), np.float32), np.ones((2, 5), np.float32)), {}),
        "StatusCode.INVALID_ARGUMENT",
        ("'add_mul'", "input 'a'", "[-1, 4]"),
    ),
    "batch_over_max_batch_size": (
        lambda: ("add_mul_b4", _triton_inputs(np.ones((5, 4), np.float32), np.ones((5, 4), np.float32)), {}),
        "StatusCode.INVALID_ARGUMENT",
        ("'add_mul_b4'", "input 'a'", "max_batch_size 4"),
    ),
    "unknown_requested_output": (
        lambda: ("add_mul", _triton_inputs(A, B), {"outputs": [triton.InferRequestedOutput("nope")]}),
        "StatusCode.INVALID_ARGUMENT",
        ("'add_mul'", "output 'nope'"),
    ),
}


@pytest.mark.parametrize("case_id", list(TRITON_CASES))
def test_tritonclient_sees_status_and_message(server, case_id: str) -> None:
    build, status, needles = TRITON_CASES[case_id]
    peer = triton.InferenceServerClient(server.address)
    try:
        model, inputs, kwargs = build()
        with pytest.raises(InferenceServerException) as caught:
            peer.infer(model, inputs, **kwargs)
        assert caught.value.status() == status, caught.value
        for needle in needles:
            assert needle in caught.value.message(), f"{needle!r} not in {caught.value.message()!r}"
        _triton_good(peer)
    finally:
        peer.close()


# ---------------------------------------------------------------- through the modelport client


CLIENT_CASES = {
    "unknown_model": (lambda c: c.infer("nope", {"a": A, "b": B}), NOT_FOUND, ("'nope'",)),
    "unserved_version": (
        lambda c: c.infer("scale", {"x": np.ones((1, 3), np.float32)}, version="3"),
        NOT_FOUND,
        ("'scale'", "'3'", "served versions: 1, 2"),
    ),
    "wrong_datatype": (
        lambda c: c.infer("add_mul", {"a": A.astype(np.float64), "b": B}),
        INVALID,
        ("'add_mul'", "input 'a'", "FP32", "FP64"),
    ),
    "missing_input": (lambda c: c.infer("add_mul", {"a": A}), INVALID, ("'add_mul'", "'b'")),
    "unknown_requested_output": (
        lambda c: c.infer("add_mul", {"a": A, "b": B}, outputs=["nope"]),
        INVALID,
        ("'add_mul'", "output 'nope'"),
    ),
    "inputs_with_different_batch_sizes": (
        lambda c: c.infer("add_mul_b4", {"a": np.ones((2, 4), np.float32), "b": np.ones((3, 4), np.float32)}),
        INVALID,
        ("'add_mul_b4'", "input 'b'", "batch size 3"),
    ),
}


@pytest.mark.parametrize("case_id", list(CLIENT_CASES))
def test_modelport_client_sees_status_and_message(server, case_id: str) -> None:
    call, code, needles = CLIENT_CASES[case_id]
    with Client(server.address, timeout=10) as client:
        with pytest.raises(InferenceServerError) as caught:
            call(client)
        assert caught.value.code == code, caught.value
        for needle in needles:
            assert needle in caught.value.message, f"{needle!r} not in {caught.value.message!r}"
        out = client.infer("add_mul", {"a": A, "b": B})
        np.testing.assert_array_equal(out["sum"], A + B)
