"""Generated protocol code: fresh, and wire-identical to the upstream Triton client's."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as upstream_config
from tritonclient.grpc import service_pb2 as upstream_service

from modelport.protocol.generated import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "generated"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerate from protos/ and compare byte for byte: edit the .proto, then `make protos`."""
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.name for p in tmp_path.glob("*.py"))
    assert fresh == sorted(p.name for p in GENERATED.glob("*.py"))
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, GENERATED, fresh, shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch + errors}: run `make protos`"


def _field_facts(field: FieldDescriptor) -> tuple:
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.message_type.full_name if field.message_type else None,
        field.enum_type.full_name if field.enum_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


def _messages(descriptor) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(message: Descriptor) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            walk(nested)

    for message in descriptor.message_types_by_name.values():
        walk(message)
    return found


@pytest.mark.parametrize(
    "ours, theirs, must_cover",
    [(grpc_service_pb2, upstream_service, True), (model_config_pb2, upstream_config, False)],
    ids=["grpc_service", "model_config"],
)
def test_messages_match_upstream(ours, theirs, must_cover: bool) -> None:
    """Every field we define has upstream's number and type; the service proto defines them all."""
    mine, upstream = _messages(ours.DESCRIPTOR), _messages(theirs.DESCRIPTOR)
    assert set(mine) <= set(upstream), f"messages upstream lacks: {set(mine) - set(upstream)}"
    if must_cover:
        assert set(mine) == set(upstream), f"messages we lack: {set(upstream) - set(mine)}"
    compared = 0
    for name, message in mine.items():
        theirs_fields = upstream[name].fields_by_name
        for field in message.fields:
            assert field.name in theirs_fields, f"{name}.{field.name} is not upstream"
            assert _field_facts(field) == _field_facts(theirs_fields[field.name]), f"{name}.{field.name} differs"
            compared += 1
        if must_cover:
            assert set(message.fields_by_name) == set(theirs_fields), f"{name} fields differ"
    assert compared > 50


def test_enums_match_upstream() -> None:
    for enum in model_config_pb2.DESCRIPTOR.enum_types_by_name.values():
        theirs = upstream_config.DESCRIPTOR.enum_types_by_name[enum.name]
        assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in theirs.values]


def test_service_matches_upstream() -> None:
    mine = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = upstream_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == "inference.GRPCInferenceService"
    facts = lambda s: {  # noqa: E731
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in s.methods
    }
    assert facts(mine) == facts(theirs)


def test_wire_compatible_round_trip() -> None:
    """A request serialised by our classes parses into upstream's with the same content."""
    ours = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="3", id="r")
    tensor = ours.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.parameters["p"].int64_param = 7
    ours.raw_input_contents.append(b"\x00" * 8)
    theirs = upstream_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.inputs[0].shape, theirs.inputs[0].parameters["p"].int64_param) == ("m", [1, 2], 7)
    assert theirs.SerializeToString() == ours.SerializeToString()
