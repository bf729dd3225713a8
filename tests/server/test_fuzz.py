"""Property-based fuzzing of ModelInfer against one real server (hypothesis).

Requests are built directly with the generated protobuf, starting from a valid request for one
of a few tiny models and then mutated: wrong raw sizes and shapes, wrong or unknown datatypes,
BYTES framing garbage, huge and negative dimensions, NaN/Inf values, raw and typed contents
mixed, duplicate/missing/unknown inputs, unknown outputs, classification parameters, random
model names, versions and parameters.

The property, per request:
- OK only for a request that a small independent judge (`judge` below, written from the
  protocol rules, not from the server's code) calls valid, with outputs equal to an in-process
  ONNX Runtime run on the same inputs;
- otherwise the status the judge expects (NOT_FOUND for an unknown model or version,
  INVALID_ARGUMENT for everything about the tensors), with a non-empty message that is no
  Python traceback. INTERNAL is accepted in one case only: ONNX Runtime itself refuses inputs
  that passed validation. For these models (elementwise Add/Mul and Identity) that happens only
  when the two inputs of the unbatched add/mul model have batch sizes that do not broadcast
  (e.g. [2,4] + [3,4]): the model's ONNX shapes leave both first dimensions free and
  independent, and only ONNX Runtime knows they must agree. The in-process run fails for those
  too, and only then is INTERNAL with "ONNX Runtime failed" accepted.
- After every request the server still answers ServerReady = true and a known-good request.

Inputs that fuzzing found to fail (fixed since) are pinned with @example (PINNED), so every run
tries them. MODELPORT_FUZZ_SHRINK=1 turns hypothesis' shrinking on (minutes per failure here).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.server.background import BackgroundServer
from tests import models
from tests.server.configs import DYNAMIC_BATCHED_CONFIG

OK = "OK"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INTERNAL = grpc.StatusCode.INTERNAL
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
TIMEOUT = 30.0

# max_examples per test, sized so that the module (server start included) stays well under 60 s.
# Shrinking costs minutes here (every step is a few RPCs), so it is off unless asked for with
# MODELPORT_FUZZ_SHRINK=1; a failure still prints the whole failing request and the verdicts.
FUZZ = settings(
    max_examples=500,
    deadline=None,
    phases=tuple(Phase) if os.environ.get("MODELPORT_FUZZ_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate),
    database=None,  # no .hypothesis/ folder in the work tree; failing inputs are pinned with @example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


@dataclass(frozen=True)
class ModelSpec:
    """What the judge knows about a served model: inputs/outputs as name -> (datatype, width)
    for shape [-1, width], and max_batch_size (0: none)."""

    inputs: dict[str, tuple[str, int]]
    outputs: dict[str, tuple[str, int]]
    max_batch_size: int = 0


FP32_PAIR = {"a": ("FP32", 4), "b": ("FP32", 4)}
FP32_OUT = {"sum": ("FP32", 4), "prod": ("FP32", 4)}
MODELS: dict[str, ModelSpec] = {
    "add_mul": ModelSpec(FP32_PAIR, FP32_OUT),
    "add_mul_b4": ModelSpec(FP32_PAIR, FP32_OUT, max_batch_size=4),
    "strings": ModelSpec({"x": ("BYTES", 2)}, {"y": ("BYTES", 2)}),
    "int64": ModelSpec({"x": ("INT64", 3)}, {"y": ("INT64", 3)}),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-repo")
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.add_mul(), root, "add_mul_b4", config=DYNAMIC_BATCHED_CONFIG)
    models.save(models.identity(TensorProto.STRING, (None, 2)), root, "strings")
    models.save(models.identity(TensorProto.INT64, (None, 3)), root, "int64")
    return root


@pytest.fixture(scope="module")
def sessions(repo: Path) -> dict[str, ort.InferenceSession]:
    """The oracle: the same model files in an in-process ONNX Runtime session."""
    return {name: ort.InferenceSession(str(repo / name / "1" / "model.onnx")) for name in MODELS}


# ---------------------------------------------------------------- generating requests

HUGE = (2**31, 2**40, 2**62, 2**63 - 1)
dims = st.one_of(st.integers(0, 6), st.integers(-3, -1), st.sampled_from(HUGE), st.just(-(2**63)))
datatype_names = st.one_of(
    st.sampled_from(codec.DATATYPES),
    st.sampled_from(["", "FLOAT", "fp32", "TYPE_FP32", "STRING", "INT128", " FP32"]),
    st.text(max_size=6),
)
names = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # protobuf strings are UTF-8
versions = st.one_of(
    st.sampled_from(["", "1", "01", "2", "0", "-1", "latest", "1.0", " 1", "1 ", "99999999999999999999999"]),
    # str.isdigit() is true for these, int() accepts only the first two
    st.sampled_from(["\u0661", "\uff11", "\u00b2", "\u2460", "\u00b9"]),
    names,
)
floats32 = st.floats(width=32)  # NaN, +-Inf, subnormals, -0.0 included
parameter_values = st.one_of(
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: pb.InferParameter(string_param=v), names),
    st.just(pb.InferParameter()),  # no value at all
)
parameter_keys = st.one_of(
    st.sampled_from(["classification", "priority", "timeout", "binary_data_output", "sequence_id", ""]), names
)
class_counts = st.one_of(
    st.builds(
        lambda v: pb.InferParameter(int64_param=v),
        st.one_of(st.integers(-3, 6), st.just(-(2**63)), st.just(2**63 - 1)),
    ),
    st.builds(lambda v: pb.InferParameter(uint64_param=v), st.one_of(st.integers(0, 6), st.just(2**64 - 1))),
    parameter_values,
)


def framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def tensor_values(draw, datatype: str, rows: int, width: int) -> np.ndarray:
    if datatype == "FP32":
        return draw(hnp.arrays(np.float32, (rows, width), elements=floats32))
    if datatype == "INT64":
        return draw(hnp.arrays(np.int64, (rows, width)))
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6).map(lambda s: s.encode("utf-8"))
    items = draw(st.lists(st.one_of(text, st.binary(max_size=6)), min_size=rows * width, max_size=rows * width))
    array = np.empty(rows * width, dtype=object)
    array[:] = items
    return array.reshape(rows, width)


def add_input(request: pb.ModelInferRequest, name: str, datatype: str, array: np.ndarray, typed: bool) -> None:
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    if typed:
        tensor.contents.CopyFrom(_contents(datatype, array))
    else:
        request.raw_input_contents.append(codec.to_raw(array, datatype))


def _contents(datatype: str, array: np.ndarray) -> pb.InferTensorContents:
    field = codec.TYPED_FIELDS[datatype]
    values = list(array.reshape(-1)) if datatype == "BYTES" else array.reshape(-1).tolist()
    return pb.InferTensorContents(**{field: values})


@st.composite
def valid_requests(draw) -> pb.ModelInferRequest:
    """A well-formed request: known model, right inputs, datatypes and shapes, raw or typed,
    float values with NaN/Inf, sometimes requested outputs with classification. Mostly valid;
    the judge still decides (BYTES values may be non-UTF-8, a classification parameter may be
    no integer, the unbatched add/mul inputs may have batch sizes that do not broadcast)."""
    model = draw(st.sampled_from(sorted(MODELS)))
    spec = MODELS[model]
    request = pb.ModelInferRequest(
        model_name=model, model_version=draw(st.sampled_from(["", "1"])), id=draw(st.sampled_from(["", "r1", "é"]))
    )
    typed = draw(st.booleans())
    limit = spec.max_batch_size or 5
    rows = draw(st.integers(0, limit))
    for name, (datatype, width) in spec.inputs.items():
        if spec.max_batch_size == 0 and draw(st.integers(0, 9)) == 0:
            rows = draw(st.integers(0, 3))  # unbatched: inputs may differ (broadcast or not)
        add_input(request, name, datatype, tensor_values(draw, datatype, rows, width), typed)
    if draw(st.booleans()):
        for output in draw(st.lists(st.sampled_from(sorted(spec.outputs)), min_size=1, max_size=3)):
            requested = request.outputs.add(name=output)
            if draw(st.integers(0, 3)) == 0:
                requested.parameters["classification"].CopyFrom(draw(class_counts))
    return request


MUTATIONS = (
    "model", "version", "raw_size", "shape", "many_dims", "datatype", "bytes_garbage", "mixed", "duplicate",
    "missing", "rename", "unknown_output", "parameters", "raw_count", "wrong_field", "typed_count", "id",
)


@st.composite
def fuzzed_requests(draw) -> pb.ModelInferRequest:
    """A valid request with 1-3 mutations applied."""
    request = draw(valid_requests())
    kinds = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3))
    note(f"mutations: {kinds}")
    for kind in kinds:
        _mutate(draw, request, kind)
    return request


def _mutate(draw, request: pb.ModelInferRequest, kind: str) -> None:
    inputs, raw = request.inputs, request.raw_input_contents
    pick = lambda seq: draw(st.integers(0, len(seq) - 1)) if len(seq) else None  # noqa: E731
    i = pick(inputs)
    if kind == "model":
        request.model_name = draw(st.one_of(st.sampled_from(sorted(MODELS)), names))
    elif kind == "version":
        request.model_version = draw(versions)
    elif kind == "raw_size" and raw:
        j = pick(raw)
        data = raw[j]
        cut = draw(st.integers(1, 9))
        raw[j] = data[:-cut] if draw(st.booleans()) and data else data + draw(st.binary(min_size=1, max_size=9))
    elif kind == "shape" and i is not None:
        del inputs[i].shape[:]
        inputs[i].shape.extend(draw(st.lists(dims, max_size=4)))
    elif kind == "many_dims" and i is not None:
        n = draw(st.integers(63, 70))
        del inputs[i].shape[:]
        inputs[i].shape.extend([1] * (n - 2) + [draw(st.sampled_from([0, 1, 2**62])), draw(st.sampled_from([0, 1, 4]))])
    elif kind == "datatype" and i is not None:
        inputs[i].datatype = draw(datatype_names)
    elif kind == "bytes_garbage" and raw:
        j = pick(raw)
        raw[j] = draw(
            st.one_of(
                st.binary(max_size=40),
                st.lists(st.binary(max_size=5), max_size=8).map(framed),
                st.builds(
                    lambda a, b: a + b,
                    st.lists(st.binary(max_size=5), max_size=8).map(framed),
                    st.binary(min_size=1, max_size=5),
                ),
                st.sampled_from([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7fabc", struct.pack("<I", 2**31) * 2]),
            )
        )
    elif kind == "mixed" and i is not None:
        if raw:  # typed contents beside raw buffers
            inputs[i].contents.fp32_contents.extend(draw(st.lists(floats32, min_size=1, max_size=8)))
        else:  # a raw buffer beside typed contents
            raw.append(draw(st.binary(max_size=32)))
    elif kind == "duplicate" and i is not None:
        inputs.add().CopyFrom(inputs[i])
        if raw:
            raw.append(raw[i] if i < len(raw) else b"")
    elif kind == "missing" and i is not None:
        del inputs[i]
        if i < len(raw):
            del raw[i]
    elif kind == "rename" and i is not None:
        inputs[i].name = draw(st.one_of(st.sampled_from(["a", "b", "x", "y", "sum", ""]), names))
    elif kind == "unknown_output":
        request.outputs.add(name=draw(st.one_of(st.sampled_from(["sum", "prod", "y", "x", "a", ""]), names)))
    elif kind == "parameters":
        target = request.parameters if i is None or draw(st.booleans()) else inputs[i].parameters
        for key in draw(st.lists(parameter_keys, min_size=1, max_size=3)):
            target[key].CopyFrom(draw(parameter_values))
        if request.outputs and draw(st.booleans()):
            out = request.outputs[pick(request.outputs)]
            out.parameters[draw(parameter_keys)].CopyFrom(draw(parameter_values))
    elif kind == "raw_count" and raw:
        if draw(st.booleans()):
            raw.append(draw(st.binary(max_size=16)))
        else:
            del raw[pick(raw)]
    elif kind == "wrong_field" and i is not None and not raw:
        field = draw(st.sampled_from(sorted(set(codec.TYPED_FIELDS.values()))))
        values = {
            "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
            "int64_contents": st.integers(-(2**63), 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
            "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": floats32, "fp64_contents": st.floats(),
            "bytes_contents": st.binary(max_size=4),
        }[field]
        inputs[i].ClearField("contents")
        getattr(inputs[i].contents, field).extend(draw(st.lists(values, min_size=1, max_size=12)))
    elif kind == "typed_count" and i is not None and not raw:
        for field in sorted(set(codec.TYPED_FIELDS.values())):
            values = getattr(inputs[i].contents, field)
            if len(values):
                del values[-1]
                break
        else:
            inputs[i].contents.fp32_contents.append(1.0)
    elif kind == "id":
        request.id = draw(names)


# ---------------------------------------------------------------- the judge (independent of the server)


@dataclass(frozen=True)
class Verdict:
    """What may come back: OK (with these decoded inputs) and/or these status codes."""

    codes: frozenset
    inputs: dict | None = None  # name -> ndarray, when OK is possible

    @property
    def ok(self) -> bool:
        return OK in self.codes


def refuse(*codes) -> Verdict:
    return Verdict(frozenset(codes))


def judge(request: pb.ModelInferRequest) -> Verdict:
    """Decide from the protocol rules alone what the server must answer."""
    spec = MODELS.get(request.model_name)
    if spec is None:
        return refuse(NOT_FOUND)
    version, lenient = request.model_version, frozenset()
    if version:
        try:
            number = int(version) if version.isdigit() else None
        except ValueError:  # str.isdigit() is true for "²", which int() refuses
            number = None
        if number != 1:
            return refuse(NOT_FOUND)
        if not version.isascii():
            # Other scripts' digits ("١"): taking them for version 1 is lenient but harmless;
            # refusing them is right too. Any other error is not.
            lenient = frozenset({NOT_FOUND})
    inputs = _judge_inputs(request, spec)
    if inputs is None or not _judge_outputs(request, spec):
        return Verdict(frozenset({INVALID}) | lenient)
    return Verdict(frozenset({OK}) | lenient, inputs)


def _judge_inputs(request: pb.ModelInferRequest, spec: ModelSpec) -> dict[str, np.ndarray] | None:
    raw = list(request.raw_input_contents)
    typed_fields = set(codec.TYPED_FIELDS.values())
    has_typed = any(len(getattr(t.contents, f)) for t in request.inputs for f in typed_fields)
    if raw and (has_typed or len(raw) != len(request.inputs)):
        return None
    seen = [t.name for t in request.inputs]
    if len(set(seen)) != len(seen) or set(seen) != set(spec.inputs):
        return None
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        datatype, width = spec.inputs[tensor.name]
        shape = list(tensor.shape)
        if tensor.datatype != datatype or len(shape) != 2 or shape[1] != width or shape[0] < 0:
            return None
        count = shape[0] * width
        array = _judge_raw(raw[index], datatype, count) if raw else _judge_typed(tensor.contents, datatype, count)
        if array is None:
            return None
        if datatype == "BYTES" and not all(_utf8(item) for item in array):
            return None  # ONNX Runtime string tensors are text
        arrays[tensor.name] = array.reshape(shape)
    if spec.max_batch_size:
        batches = {a.shape[0] for a in arrays.values()}
        if len(batches) != 1 or batches.pop() > spec.max_batch_size:
            return None
    return arrays


def _judge_raw(data: bytes, datatype: str, count: int) -> np.ndarray | None:
    if datatype != "BYTES":
        itemsize = np.dtype(codec.NUMPY_DTYPES[datatype]).itemsize
        return np.frombuffer(data, codec.NUMPY_DTYPES[datatype]) if len(data) == count * itemsize else None
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        (size,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + size > len(data):
            return None
        items.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if len(items) != count:
        return None
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def _judge_typed(contents: pb.InferTensorContents, datatype: str, count: int) -> np.ndarray | None:
    field = codec.TYPED_FIELDS[datatype]
    if any(len(getattr(contents, f)) for f in set(codec.TYPED_FIELDS.values()) - {field}):
        return None
    values = list(getattr(contents, field))
    if len(values) != count:
        return None
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = values
        return out
    return np.asarray(values, dtype=codec.NUMPY_DTYPES[datatype]).reshape(count)


def _utf8(item: bytes) -> bool:
    try:
        item.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _judge_outputs(request: pb.ModelInferRequest, spec: ModelSpec) -> bool:
    for output in request.outputs:
        if output.name not in spec.outputs:
            return False
        k = _class_count(output)
        if k is None or k < 0 or (k > 0 and spec.outputs[output.name][0] == "BYTES"):
            return False
    return True


def _class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int | None:
    """The classification k asked for (0: none), or None if the parameter is not an integer."""
    if "classification" not in output.parameters:
        return 0
    param = output.parameters["classification"]
    which = param.WhichOneof("parameter_choice")
    return int(getattr(param, which)) if which in ("int64_param", "uint64_param") else None


# ---------------------------------------------------------------- the oracle


def run_oracle(session: ort.InferenceSession, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    feed = {}
    for name, array in inputs.items():
        if spec.inputs[name][0] == "BYTES":
            array = (
                np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
                if array.size
                else array.astype(str).astype(object)
            )
        feed[name] = array
    names = list(spec.outputs)
    results = dict(zip(names, session.run(names, feed)))
    for name, (datatype, _) in spec.outputs.items():
        if datatype == "BYTES":
            out = np.empty(results[name].shape, dtype=object)
            out.reshape(-1)[:] = [s.encode("utf-8") for s in results[name].reshape(-1)]
            results[name] = out
    return results


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Classification extension: per row, the k best "value:index" strings, best first."""
    rows = scores.reshape(scores.shape[0], int(np.prod(scores.shape[1:], dtype=np.int64)))
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, index in enumerate(row):
            out[r, c] = f"{rows[r, index]:f}:{index}".encode()
    return out


def same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    if want.dtype.kind == "f":
        return got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
    return np.array_equal(got, want)


# ---------------------------------------------------------------- the property


def infer(stub, request: pb.ModelInferRequest):
    try:
        return stub.ModelInfer(request, timeout=TIMEOUT), None
    except grpc.RpcError as err:
        return None, err


def looks_like_traceback(message: str) -> bool:
    return "Traceback (most recent call last)" in message or 'File "' in message or "\n  File " in message


def check(stub, sessions, request: pb.ModelInferRequest) -> None:
    verdict = judge(request)
    note(f"request: {request!r}")
    note(f"judge: {sorted(str(c) for c in verdict.codes)}")
    response, error = infer(stub, request)
    event(f"outcome: {'OK' if error is None else error.code().name}")
    spec = MODELS.get(request.model_name)
    oracle_error = None
    expected = None
    if verdict.ok and verdict.inputs is not None:
        try:
            expected = run_oracle(sessions[request.model_name], spec, verdict.inputs)
        except Exception as exc:  # ONNX Runtime itself refuses these inputs
            oracle_error = exc
    if error is not None:
        code, message = error.code(), error.details() or ""
        note(f"got: {code} {message!r}")
        assert message.strip(), f"{code} with an empty message"
        assert not looks_like_traceback(message), f"traceback in the message: {message!r}"
        if oracle_error is not None:
            ort_refusal = code == INTERNAL and "ONNX Runtime failed" in message
            assert ort_refusal or code in verdict.codes | {INVALID}, (code, message)
            return
        assert code in ALLOWED, f"{code.name} for this request: {message!r}"
        assert code in verdict.codes, f"expected {sorted(str(c) for c in verdict.codes)}, got {code.name}: {message!r}"
        return
    note(f"got OK: {response!r}")
    assert verdict.ok, f"the server answered OK; expected {sorted(str(c) for c in verdict.codes)}"
    assert oracle_error is None, f"OK, but in-process ONNX Runtime refuses these inputs: {oracle_error}"
    assert response.model_name == request.model_name and response.id == request.id
    outputs = codec.decode_response(response)
    wanted = {o.name: _class_count(o) for o in request.outputs} or {name: 0 for name in spec.outputs}
    variants: dict[str, set[int]] = {}
    for o in request.outputs:
        variants.setdefault(o.name, set()).add(_class_count(o))
    assert sorted(outputs) == sorted(wanted), (sorted(outputs), sorted(wanted))
    for name, got in outputs.items():
        options = variants.get(name, {0})  # a name asked twice may come back either way
        matches = [top_k(expected[name], k) if k else expected[name] for k in options]
        assert any(same(got, want) for want in matches), f"output {name}: got {got!r}, expected one of {matches!r}"


GOOD = codec.build_request("add_mul", {"a": np.ones((1, 4), np.float32), "b": np.full((1, 4), 2.0, np.float32)})


def still_healthy(stub) -> None:
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT).ready
    outputs = codec.decode_response(stub.ModelInfer(GOOD, timeout=TIMEOUT))
    np.testing.assert_array_equal(outputs["sum"], np.full((1, 4), 3.0, np.float32))
    np.testing.assert_array_equal(outputs["prod"], np.full((1, 4), 2.0, np.float32))


def _request(
    model: str, inputs: list[tuple[str, str, list[int], bytes]], outputs=(), version: str = ""
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, data in inputs:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(data)
    for output in outputs:
        msg.outputs.add().CopyFrom(output)
    return msg


def _classified(k: int) -> pb.ModelInferRequest.InferRequestedOutputTensor:
    out = pb.ModelInferRequest.InferRequestedOutputTensor(name="sum")
    out.parameters["classification"].int64_param = k
    return out


# Inputs found by fuzzing, pinned so that every run tries them.
EMPTY_PAIR = [("a", "FP32", [0, 4], b""), ("b", "FP32", [0, 4], b"")]
PINNED = [
    # zero elements, but dimensions whose product overflows numpy's index type
    _request("add_mul", [("a", "FP32", [2**62, 0], b""), ("b", "FP32", [0, 4], b"")]),
    _request("int64", [("x", "INT64", [0, 2**62, 4], b"")]),
    # more dimensions than numpy's 64
    _request("int64", [("x", "INT64", [1] * 65, struct.pack("<q", 7))]),
    # a version string that str.isdigit() accepts but int() does not
    _request("add_mul", EMPTY_PAIR, version="\u00b2"),
    # classification of an empty batch
    _request("add_mul", EMPTY_PAIR, outputs=[_classified(2)]),
    _request("add_mul_b4", EMPTY_PAIR, outputs=[_classified(1)]),
    # an empty batch at all (no classification): post-processing must cope with zero rows
    _request("int64", [("x", "INT64", [0, 3], b"")]),
    # a large integer output value: read as a class label, it must not size anything
    _request("int64", [("x", "INT64", [1, 3], np.array([[2**40, 1, 2]], "<i8").tobytes())]),
]


@settings(FUZZ, max_examples=1000)
@given(request=fuzzed_requests())
@example(request=PINNED[0])
@example(request=PINNED[1])
@example(request=PINNED[2])
@example(request=PINNED[3])
def test_malformed_requests_are_refused_cleanly(stub, sessions, request: pb.ModelInferRequest) -> None:
    check(stub, sessions, request)
    still_healthy(stub)


@FUZZ
@given(request=valid_requests())
@example(request=PINNED[4])
@example(request=PINNED[5])
@example(request=PINNED[6])
@example(request=PINNED[7])
def test_valid_requests_match_onnx_runtime(stub, sessions, request: pb.ModelInferRequest) -> None:
    check(stub, sessions, request)
    still_healthy(stub)


@settings(FUZZ, max_examples=60)
@given(requests=st.lists(st.one_of(valid_requests(), fuzzed_requests()), min_size=1, max_size=12))
def test_stream_answers_every_request(stub, sessions, requests: list[pb.ModelInferRequest]) -> None:
    """ModelStreamInfer: one response per request (error_message or outputs), the stream stays open."""
    for index, request in enumerate(requests):
        request.id = f"s{index}"
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=TIMEOUT))
    assert sorted(a.infer_response.id for a in answers) == sorted(r.id for r in requests)
    by_id = {a.infer_response.id: a for a in answers}
    for request in requests:
        answer, verdict = by_id[request.id], judge(request)
        if answer.error_message:
            message = answer.error_message
            assert not looks_like_traceback(message) and not message.startswith("internal error"), message
            ort_refusal = "ONNX Runtime failed" in message and request.model_name == "add_mul"
            assert verdict.codes != {OK} or ort_refusal, f"stream refused a valid request: {message!r}"
        else:
            assert verdict.ok, f"stream answered OK for {request!r}; expected {verdict.codes}"
    still_healthy(stub)


@pytest.fixture(scope="module")
def raw_channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    """A channel that sends bytes as they are, so requests need not be valid protobuf."""
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _parsed(data: bytes) -> pb.ModelInferRequest | None:
    try:
        return pb.ModelInferRequest.FromString(data)
    except Exception:  # DecodeError
        return None


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(st.binary(max_size=64), st.builds(lambda r, cut: r.SerializeToString()[:cut],
                                                          valid_requests(), st.integers(1, 200))))
@example(data=b"\xff\xff\xff\xff\x0f")  # a varint that never ends
# A truncated request that still parses: add_mul with a [4,4] and b [0,4] (ONNX Runtime refuses them).
@example(data=b"\n\x07add_mul\x12\x011\x1a\x02r1*\r\n\x01a\x12\x04FP32\x1a\x02\x04\x04*\r\n\x01b\x12\x04FP32\x1a\x02\x00\x04:@"
              + b"d\x92>\xd8" * 16 + b":\x00")
def test_bytes_that_are_not_a_request_get_invalid_argument(raw_channel, stub, sessions, data: bytes) -> None:
    """Random and truncated bytes on ModelInfer: INVALID_ARGUMENT when they are not protobuf;
    bytes that do parse are an ordinary request, held to the same judge as every other."""
    request = _parsed(data)
    if request is not None:
        check(stub, sessions, request)
    else:
        with pytest.raises(grpc.RpcError) as err:
            raw_channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(data, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert err.value.details().startswith("the request is not a valid inference.ModelInferRequest"), err.value
    still_healthy(stub)


@pytest.mark.parametrize("method,message", [
    ("/inference.GRPCInferenceService/ServerLive", "inference.ServerLiveRequest"),
    ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
    ("/inference.GRPCInferenceService/RepositoryIndex", "inference.RepositoryIndexRequest"),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", "inference.RepositoryModelLoadRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
    ("/modelport.v1.Feedback/ReportLabel", "modelport.v1.ReportLabelRequest"),
])
def test_every_service_refuses_unparseable_bytes(raw_channel, stub, method: str, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw_channel.unary_unary(method)(b"\xff\xff\xff\xff\x0f", timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.details().startswith(f"the request is not a valid {message}"), err.value.details()
    still_healthy(stub)


def test_reflection_stream_refuses_unparseable_bytes(raw_channel, stub) -> None:
    call = raw_channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as err:
        list(call(iter([b"\xff\xff\xff\xff\x0f"]), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    still_healthy(stub)


def test_stream_answers_what_came_before_a_malformed_message(raw_channel, stub) -> None:
    good = [codec.build_request("int64", {"x": np.full((1, 3), i, np.int64)}) for i in range(3)]
    for i, request in enumerate(good):
        request.id = f"g{i}"
    frames = [r.SerializeToString() for r in good] + [b"\xff\xff\xff\xff\x0f"]
    call = raw_channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
    answers = []
    with pytest.raises(grpc.RpcError) as err:
        for answer in call(iter(frames), timeout=TIMEOUT):
            answers.append(answer)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "not a valid inference.ModelInferRequest" in err.value.details()
    assert sorted(a.infer_response.id for a in answers) == ["g0", "g1", "g2"]  # nothing read was lost
    assert not any(a.error_message for a in answers)
    still_healthy(stub)


def test_no_nan_surprises(stub) -> None:
    """NaN and infinities go through arithmetic unchanged (IEEE semantics, no refusal)."""
    a = np.array([[math.nan, math.inf, -math.inf, -0.0]], np.float32)
    b = np.array([[1.0, -math.inf, -math.inf, 0.0]], np.float32)
    outputs = codec.decode_response(stub.ModelInfer(codec.build_request("add_mul", {"a": a, "b": b}), timeout=TIMEOUT))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(outputs["sum"], a + b)
        np.testing.assert_array_equal(outputs["prod"], a * b)
