"""modelport.protocol.load_request reads RepositoryModelLoadRequest as protobuf does, without
copying the files: random requests agree field by field with protobuf's parse (hypothesis), and
whatever bytes protobuf refuses, it refuses with ValueError."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.protocol import load_request
from modelport.protocol.generated import grpc_service_pb2 as pb

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ("bool_param", "int64_param", "string_param", "bytes_param")
VALUES = {
    "bool_param": st.booleans(),
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "string_param": st.text(max_size=40),
    "bytes_param": st.binary(max_size=300),
}
PARAMETER = st.one_of(st.none(), *(st.tuples(st.just(kind), VALUES[kind]) for kind in KINDS))


def protobuf_view(message: pb.RepositoryModelLoadRequest) -> tuple:
    """(model, repository, {key: (kind, value)}) as protobuf parsed it."""
    parameters = {}
    for key, value in message.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        parameters[key] = (kind, getattr(value, kind) if kind else None)
    return message.model_name, message.repository_name, parameters


def our_view(request: load_request.LoadRequest) -> tuple:
    parameters = {key: (p.kind, bytes(p.value) if isinstance(p.value, memoryview) else p.value)
                  for key, p in request.parameters.items()}  # fmt: skip
    return request.model_name, request.repository_name, parameters


@FUZZ
@given(model=st.text(max_size=30), repository=st.text(max_size=10),
       parameters=st.dictionaries(st.text(max_size=20), PARAMETER, max_size=6))  # fmt: skip
def test_random_requests_read_as_protobuf_reads_them(model, repository, parameters) -> None:
    message = pb.RepositoryModelLoadRequest(model_name=model, repository_name=repository)
    for key, parameter in parameters.items():
        entry = message.parameters[key]
        if parameter is not None:
            setattr(entry, parameter[0], parameter[1])
    data = message.SerializeToString()
    assert our_view(load_request.parse(data)) == protobuf_view(pb.RepositoryModelLoadRequest.FromString(data))


def test_files_are_views_of_the_received_bytes_not_copies() -> None:
    content = bytes(range(256)) * 4096
    data = pb.RepositoryModelLoadRequest(model_name="m", parameters={
        "file:1/model.onnx": pb.ModelRepositoryParameter(bytes_param=content)}).SerializeToString()  # fmt: skip
    value = load_request.parse(data).parameters["file:1/model.onnx"].value
    assert isinstance(value, memoryview) and value.obj is data and value == content


@pytest.mark.parametrize("data", [b"\x10\x01", b"\x1a\x04\x12\x02\x20\x01", b"\x1a\x02\x10\x01",
                                  b"\x1a\x04\x12\x02\x0a\x00"])  # fmt: skip
def test_known_fields_of_another_wire_type_are_unknown_fields_as_in_protobuf(data: bytes) -> None:
    assert our_view(load_request.parse(data)) == protobuf_view(pb.RepositoryModelLoadRequest.FromString(data))


def test_unknown_fields_are_skipped_and_a_repeated_key_keeps_the_last() -> None:
    first = pb.RepositoryModelLoadRequest(model_name="m", parameters={"k": pb.ModelRepositoryParameter(int64_param=1)})
    second = pb.RepositoryModelLoadRequest(parameters={"k": pb.ModelRepositoryParameter(string_param="two")})
    unknown = b"\x48\x07" + b"\x52\x03abc" + b"\x5d\x00\x00\x00\x00" + b"\x59" + bytes(8)  # fields 9-11, all wire types
    data = first.SerializeToString() + unknown + second.SerializeToString()
    expected = pb.RepositoryModelLoadRequest.FromString(data)
    assert our_view(load_request.parse(data)) == protobuf_view(expected) == ("m", "", {"k": ("string_param", "two")})


@FUZZ
@given(data=st.binary(max_size=64))
def test_bytes_protobuf_refuses_are_refused(data: bytes) -> None:
    try:
        expected = protobuf_view(pb.RepositoryModelLoadRequest.FromString(data))
    except DecodeError:
        with pytest.raises(ValueError):
            load_request.parse(data)
        return
    assert our_view(load_request.parse(data)) == expected


@pytest.mark.parametrize("data", [b"\x12\x05ab", b"\x1a\x02\x12\x05", b"\xff\xff\xff\xff\x0f", b"\x12\x02\xff\xfe",
                                  b"\x0b", b"\x1a\x03\x0a\x01\xff"])  # fmt: skip
def test_malformed_requests_raise_value_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.RepositoryModelLoadRequest.FromString(data)
    with pytest.raises(ValueError):
        load_request.parse(data)


@FUZZ
@given(model=st.text(max_size=30), repository=st.text(max_size=10),
       parameters=st.dictionaries(st.text(max_size=20), PARAMETER, max_size=6))  # fmt: skip
def test_encode_writes_what_protobuf_writes(model, repository, parameters) -> None:
    message = pb.RepositoryModelLoadRequest(model_name=model, repository_name=repository)
    ours = load_request.LoadRequest(model, repository)
    for key, parameter in parameters.items():
        entry = message.parameters[key]
        if parameter is not None:
            setattr(entry, parameter[0], parameter[1])
        ours.parameters[key] = load_request.Parameter(*parameter) if parameter is not None else load_request.Parameter()
    data = load_request.encode(ours)
    assert protobuf_view(pb.RepositoryModelLoadRequest.FromString(data)) == protobuf_view(message)
    assert our_view(load_request.parse(data)) == protobuf_view(message)
