"""Fuzzing the codec alone (hypothesis): whatever bytes, shapes and datatypes arrive, the codec
either returns arrays that agree with what was declared or raises `codec.CodecError` — never
another exception — and never allocates more than the data it was given justifies.

The server turns CodecError into INVALID_ARGUMENT; any other exception would surface as
INTERNAL, so "only CodecError" is what keeps bad input a client error. Bounded: the whole module
runs in a few seconds.
"""

from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree; failing inputs are pinned with @example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

HUGE = (2**31, 2**32, 2**40, 2**62, 2**63 - 1)
# Allocation allowed beyond the input: a BYTES element costs a list slot, an object-array slot
# and a bytes header (~50 bytes for a 5-byte framed element), so 16 bytes per input byte plus a
# fixed allowance for numpy/protobuf bookkeeping is generous yet far below any "declared size".
ALLOC_PER_BYTE = 16
ALLOC_FIXED = 256 * 1024
SLOW = 1.0  # seconds: any single decode of these small inputs taking longer is a failure

datatypes = st.one_of(
    st.sampled_from(codec.DATATYPES),
    st.sampled_from(["", "FLOAT", "fp32", "TYPE_FP32", "STRING", "INT128", "BYTES ", "\x00"]),
    st.text(max_size=8),
)
dims = st.one_of(
    st.integers(0, 5),
    st.integers(-3, -1),
    st.sampled_from(HUGE),
    st.sampled_from((-(2**63), -(2**40))),
)
shapes = st.one_of(
    st.lists(dims, max_size=5),
    # numpy's ndarray has at most 64 dimensions: a request may declare more.
    st.integers(63, 70).map(lambda n: [1] * n),
    st.tuples(st.integers(63, 70), st.sampled_from([0, 1, 2])).map(lambda t: [1] * (t[0] - 1) + [t[1]]),
)


def framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


raw_data = st.one_of(
    st.binary(max_size=64),
    st.lists(st.binary(max_size=6), max_size=12).map(framed),
    st.builds(lambda a, b: a + b, st.lists(st.binary(max_size=4), max_size=4).map(framed), st.binary(max_size=6)),
    st.sampled_from([b"", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f" + b"x" * 8, b"\x00" * 8]),
)


def bounded(call, budget_bytes: int):
    """Run `call`, returning (result or exception); fail if it allocates more than `budget_bytes`
    beyond what it returns' own input justifies, or takes longer than SLOW."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        try:
            result = call()
        except Exception as exc:  # judged by the caller
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert peak <= budget_bytes, f"allocated {peak} bytes for {budget_bytes} allowed"
    assert elapsed < SLOW, f"took {elapsed:.2f}s"
    return result


def budget(n_bytes: int) -> int:
    return ALLOC_FIXED + ALLOC_PER_BYTE * n_bytes


def only_codec_error(result) -> bool:
    """True if `result` is a CodecError (a refusal), False if it is a value; anything else fails."""
    if isinstance(result, BaseException):
        assert isinstance(result, codec.CodecError), f"{type(result).__name__} instead of CodecError: {result}"
        assert str(result), "empty CodecError message"
        return True
    return False


def check_array(array, datatype: str, shape) -> None:
    assert isinstance(array, np.ndarray)
    assert array.shape == tuple(shape), (array.shape, shape)
    assert array.dtype == codec.NUMPY_DTYPES[datatype], (array.dtype, datatype)
    if datatype == "BYTES":
        assert all(isinstance(item, bytes) for item in array.reshape(-1))


# ---------------------------------------------------------------- from_raw


@FUZZ
@given(raw=raw_data, datatype=datatypes, shape=shapes)
@example(raw=b"", datatype="FP32", shape=[2**62, 0])  # zero elements, dims that overflow numpy's size
@example(raw=b"", datatype="BYTES", shape=[0, 2**62, 4])
@example(raw=b"\x00" * 4, datatype="FP32", shape=[1] * 65)  # more dimensions than numpy supports
@example(raw=b"\x00" * 4, datatype="BYTES", shape=[1] * 65)
@example(raw=b"\x00" * 8, datatype="FP32", shape=[2**40])  # declared count far beyond the data
@example(raw=b"\x00" * 8, datatype="BYTES", shape=[2**40])
def test_from_raw(raw: bytes, datatype: str, shape: list[int]) -> None:
    result = bounded(lambda: codec.from_raw(raw, datatype, shape, "input 'x'"), budget(len(raw)))
    if only_codec_error(result):
        return
    check_array(result, datatype, shape)
    if datatype == "BYTES":
        assert codec.serialize_bytes(result) == raw  # exactly the buffer, nothing left over
    else:
        assert result.tobytes() == raw


@FUZZ
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([d for name, d in codec.NUMPY_DTYPES.items() if name not in ("BYTES", "BF16")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
    ),
)
def test_from_raw_round_trips_every_numeric_array(array: np.ndarray) -> None:
    datatype = codec.datatype_of(array)
    decoded = codec.from_raw(codec.to_raw(array, datatype), datatype, list(array.shape))
    check_array(decoded, datatype, array.shape)
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


# ---------------------------------------------------------------- deserialize_bytes


@FUZZ
@given(raw=raw_data, count=st.one_of(st.integers(0, 16), st.sampled_from(HUGE)))
@example(raw=b"\x00" * 8, count=2**40)  # two empty elements, then nothing: must stop at once
@example(raw=b"\xff\xff\xff\xff", count=1)  # a length prefix of 4 GiB with no data
def test_deserialize_bytes(raw: bytes, count: int) -> None:
    result = bounded(lambda: codec.deserialize_bytes(raw, count, "input 'x'"), budget(len(raw)))
    if only_codec_error(result):
        return
    check_array(result, "BYTES", (count,))
    assert codec.serialize_bytes(result) == raw


@FUZZ
@given(items=st.lists(st.binary(max_size=20), max_size=20))
def test_bytes_framing_round_trips(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    assert list(codec.deserialize_bytes(codec.serialize_bytes(array), len(items))) == items


# ---------------------------------------------------------------- from_contents

int32s = st.integers(-(2**31), 2**31 - 1)
contents_fields = {
    "bool_contents": st.lists(st.booleans(), max_size=8),
    "int_contents": st.lists(int32s, max_size=8),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=8),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=8),
    "fp32_contents": st.lists(st.floats(width=32), max_size=8),
    "fp64_contents": st.lists(st.floats(), max_size=8),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=8),
}


@st.composite
def tensor_contents(draw) -> pb.InferTensorContents:
    """Mostly one field (sometimes several), with any values."""
    fields = draw(st.lists(st.sampled_from(sorted(contents_fields)), min_size=0, max_size=3, unique=True))
    return pb.InferTensorContents(**{f: draw(contents_fields[f]) for f in fields})


def contents_size(contents: pb.InferTensorContents) -> int:
    return len(contents.SerializeToString())


@FUZZ
@given(contents=tensor_contents(), datatype=datatypes, shape=shapes)
@example(contents=pb.InferTensorContents(), datatype="FP32", shape=[2**62, 0])
@example(contents=pb.InferTensorContents(), datatype="BYTES", shape=[0, 2**62, 4])
@example(contents=pb.InferTensorContents(fp32_contents=[1.0]), datatype="FP32", shape=[1] * 65)
@example(contents=pb.InferTensorContents(fp32_contents=[1.0] * 8), datatype="FP32", shape=[2**40])
@example(contents=pb.InferTensorContents(int_contents=[300]), datatype="INT8", shape=[1])
def test_from_contents(contents: pb.InferTensorContents, datatype: str, shape: list[int]) -> None:
    result = bounded(lambda: codec.from_contents(contents, datatype, shape, "input 'x'"),
                     budget(contents_size(contents)))
    if only_codec_error(result):
        return
    check_array(result, datatype, shape)
    field = codec.TYPED_FIELDS[datatype]
    values = list(getattr(contents, field))
    flat = result.reshape(-1)
    if datatype == "BYTES":
        assert list(flat) == values
    elif datatype in ("FP32", "FP64"):
        np.testing.assert_array_equal(flat, np.asarray(values, dtype=codec.NUMPY_DTYPES[datatype]))
    else:  # integers and BOOL: every value survives exactly (out-of-range ones were refused)
        assert [int(v) for v in flat] == [int(v) for v in values]


# ---------------------------------------------------------------- decode_inputs


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    """A request with 0-3 inputs (names may repeat), each raw or typed or neither, any datatype
    and shape, and any number of raw buffers."""
    request = pb.ModelInferRequest(model_name="m")
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["a", "b", "c", ""])), datatype=draw(datatypes), shape=draw(shapes)
        )
        if draw(st.booleans()):
            tensor.contents.CopyFrom(draw(tensor_contents()))
    raw_count = draw(st.one_of(st.just(len(request.inputs)), st.integers(0, 4)))
    request.raw_input_contents.extend(draw(st.lists(raw_data, min_size=raw_count, max_size=raw_count)))
    return request


@FUZZ
@given(request=infer_requests())
@example(
    request=pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="a", datatype="FP32", shape=[2**62, 0])]
    )
)
@example(
    request=pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="a", datatype="INT8", shape=[1] * 65)],
        raw_input_contents=[b"\x01"],
    )
)
def test_decode_inputs(request: pb.ModelInferRequest) -> None:
    result = bounded(lambda: codec.decode_inputs(request), budget(request.ByteSize()))
    if only_codec_error(result):
        return
    assert list(result) == [t.name for t in request.inputs]  # unique names, in order
    for tensor in request.inputs:
        datatype, array = result[tensor.name]
        assert datatype == tensor.datatype
        check_array(array, datatype, list(tensor.shape))
    uses_raw = len(request.raw_input_contents) > 0
    assert not (uses_raw and any(codec._has_values(t.contents) for t in request.inputs)), "mixed raw and typed accepted"
    assert not uses_raw or len(request.raw_input_contents) == len(request.inputs)


# ---------------------------------------------------------------- fail fast on declared sizes


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "INT64", "BOOL"])
def test_declared_count_far_beyond_the_data_fails_fast(datatype: str) -> None:
    """2**40 elements declared, 8 bytes sent: refused at once, with nothing allocated for them."""
    result = bounded(lambda: codec.from_raw(b"\x00" * 8, datatype, [2**40], "input 'x'"), budget(8))
    assert only_codec_error(result)
    result = bounded(lambda: codec.deserialize_bytes(b"\x00" * 8, 2**40, "input 'x'"), budget(8))
    assert only_codec_error(result)
    result = bounded(
        lambda: codec.from_contents(pb.InferTensorContents(), datatype, [2**40, 2**20], "input 'x'"), budget(0)
    )
    assert only_codec_error(result)
