"""Variable-length batching (parameters pad_inputs, pad_outputs, pad_buckets): requests of
different lengths merge into one padded run and each gets back exactly what it would get alone;
buckets fix the lengths runs see; what may not merge never does; config mistakes fail the load
with their reason, and a request whose padded inputs disagree is refused with INVALID_ARGUMENT.

The model (`varlen`) is an embedding lookup with a per-token output and a masked mean, so padding
with mask 0 changes nothing but the run's shape, which its `ran` output reports per row."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.client import AsyncClient, InferenceServerError
from modelport.server import scheduler as scheduler_module
from modelport.server.config import model_spec, read_config
from modelport.server.errors import InvalidInput
from modelport.server.padding import PaddedAxis, Padder, Padding, fill_value, parse
from modelport.server.registry import ModelRegistry
from modelport.server.runtime import OnnxModel, SessionOptions
from modelport.server.scheduler import BatchingPolicy, BatchingScheduler, Instance
from modelport.server.statistics import VersionStats
from tests import models
from tests.hold import hold
from tests.server.inproc import request, serving, until, within

VOCAB, HIDDEN, TOKEN_OUT = 50, 4, 3
WHERE = "model 'text' version 1"
PAD = """
parameters { key: "pad_inputs" value { string_value: "ids:0=0, mask:0=0" } }
parameters { key: "pad_outputs" value { string_value: "tokens:0" } }
"""
CONFIG = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n" + PAD


def varlen_model() -> onnx.ModelProto:
    """ids, mask INT64 [batch, seq] -> tokens FP32 [batch, seq, 3] (embedding @ w), pooled FP32
    [batch, 4] (mean of the embeddings where mask is 1), ran INT64 [batch, 2] (the shape of ids
    in the run that computed the row)."""
    rng = np.random.default_rng(0)
    consts = {
        "table": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "w": rng.standard_normal((HIDDEN, TOKEN_OUT)).astype(np.float32),
        "seq_axis": np.array([1], np.int64), "last": np.array([-1], np.int64),
        "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "two": np.array([2], np.int64),
    }  # fmt: skip
    node = helper.make_node
    nodes = [
        node("Gather", ["table", "ids"], ["emb"]),
        node("MatMul", ["emb", "w"], ["tokens"]),
        node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        node("Mul", ["emb", "mask3"], ["masked"]),
        node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        node("ReduceSum", ["maskf", "seq_axis"], ["count"], keepdims=1),
        node("Div", ["summed", "count"], ["pooled"]),
        node("Shape", ["ids"], ["shape"]),
        node("Unsqueeze", ["shape", "zero"], ["shape_row"]),
        node("Slice", ["shape", "zero", "one"], ["rows"]),
        node("Concat", ["rows", "two"], ["ran_shape"], axis=0),
        node("Expand", ["shape_row", "ran_shape"], ["ran"]),
    ]
    return models.graph_model(
        nodes,
        [("ids", TensorProto.INT64, ["batch", "seq"]), ("mask", TensorProto.INT64, ["batch", "seq"])],
        [("tokens", TensorProto.FLOAT, ["batch", "seq", TOKEN_OUT]), ("pooled", TensorProto.FLOAT, ["batch", HIDDEN]),
         ("ran", TensorProto.INT64, ["batch", 2])],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )  # fmt: skip


def with_features_model() -> onnx.ModelProto:
    """ids INT64 [batch, seq] (padded) and x FP32 [batch, width] (not): y = 2x, ran = ids' shape."""
    consts = {"two_f": np.array(2.0, np.float32), "zero": np.array([0], np.int64),
              "one": np.array([1], np.int64), "two": np.array([2], np.int64)}  # fmt: skip
    node = helper.make_node
    nodes = [
        node("Mul", ["x", "two_f"], ["y"]),
        node("Shape", ["ids"], ["shape"]),
        node("Unsqueeze", ["shape", "zero"], ["shape_row"]),
        node("Slice", ["shape", "zero", "one"], ["rows"]),
        node("Concat", ["rows", "two"], ["ran_shape"], axis=0),
        node("Expand", ["shape_row", "ran_shape"], ["ran"]),
    ]
    return models.graph_model(
        nodes,
        [("ids", TensorProto.INT64, ["batch", "seq"]), ("x", TensorProto.FLOAT, ["batch", "width"])],
        [("y", TensorProto.FLOAT, ["batch", "width"]), ("ran", TensorProto.INT64, ["batch", 2])],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )


def text(rows: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A request of `rows` rows of `length` tokens, each row with its own real length (mask 1
    then 0: a request may carry its own padding, which the model also ignores)."""
    ids = rng.integers(1, VOCAB, (rows, length)).astype(np.int64)
    mask = np.zeros((rows, length), np.int64)
    for row in range(rows):
        mask[row, : rng.integers(1, length + 1)] = 1
    return {"ids": ids * mask, "mask": mask}


@functools.cache
def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def alone(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the model computes for `inputs` by themselves (ONNX Runtime, no server)."""
    names = [o.name for o in session(path).get_outputs()]
    return dict(zip(names, session(path).run(names, inputs)))


def assert_as_alone(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The same outputs as a run of the request alone: shapes exactly, values to float rounding
    (a longer reduction may add the same terms in another order)."""
    for name in ("tokens", "pooled"):
        if name in got:
            assert got[name].shape == expected[name].shape, name
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)


def batcher(tmp_path: Path, model: onnx.ModelProto, padding: Padding, **policy) -> BatchingScheduler:
    path = models.save(model, tmp_path, "text")
    instance = Instance(OnnxModel(path, SessionOptions(intra_op_threads=1), WHERE), 0)
    outputs = [t.name for t in instance.model.signature.outputs]
    policy = BatchingPolicy(**{"max_batch_size": 16, **policy}, padding=padding)
    return BatchingScheduler(WHERE, [instance], VersionStats(), policy, outputs)


TEXT_PADDING = Padding((PaddedAxis("ids", 0, "0"), PaddedAxis("mask", 0, "0")), (PaddedAxis("tokens", 0),))


def submit(scheduler: BatchingScheduler, inputs: dict[str, np.ndarray], outputs: Sequence[str] = ()):
    tensors = {name: ("FP32" if a.dtype == np.float32 else "INT64", a) for name, a in inputs.items()}
    return asyncio.ensure_future(scheduler.submit(tensors, list(outputs) or ["tokens", "pooled", "ran"]))


async def run_held(scheduler: BatchingScheduler, monkeypatch, first: dict, queued: list[dict]) -> list:
    """Run `first` and hold it while `queued` requests wait, then let all go: the queued ones
    are batched as the batcher sees fit, deterministically."""
    held = hold(scheduler.instances[0], monkeypatch)
    try:
        head = submit(scheduler, first)
        await asyncio.to_thread(held.wait_entered)
        waiting = [submit(scheduler, inputs) for inputs in queued]
        await until(lambda: sum(not p.future.done() for p in scheduler._queue) == len(queued), "all are queued")
    finally:
        held.release()
    answers = await asyncio.gather(head, *waiting)
    await scheduler.close()
    return answers[1:]


# ---------------------------------------------------------------- merging and cutting back


def test_requests_of_different_lengths_run_once_padded_and_get_their_own_answer(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, varlen_model(), TEXT_PADDING)
    rng = np.random.default_rng(1)
    queued = [text(rows, length, rng) for rows, length in [(1, 3), (2, 7), (1, 5), (3, 1)]]
    answers = asyncio.run(run_held(scheduler, monkeypatch, text(1, 2, rng), queued))
    path = tmp_path / "text" / "1" / "model.onnx"
    for inputs, (results, timing) in zip(queued, answers):
        assert_as_alone(results, alone(path, inputs))
        assert results["tokens"].shape == (*inputs["ids"].shape, TOKEN_OUT)  # cut back to its own length
        assert results["ran"].tolist() == [[7, 7]] * len(inputs["ids"])  # 7 rows, padded to the longest (7)
        assert timing.batch_size == 7
    assert scheduler.stats.execution_count == 2  # the held request, then all four together


def test_many_concurrent_requests_of_random_lengths(tmp_path: Path) -> None:
    models.save(varlen_model(), tmp_path, "text", config=CONFIG)
    rng = np.random.default_rng(2)
    sent = [text(int(rng.integers(1, 4)), int(rng.integers(1, 40)), rng) for _ in range(80)]

    async def run():
        async with serving(tmp_path) as plane:
            answers = await asyncio.gather(*(plane.infer(request("text", inputs)) for inputs in sent))
            return answers, plane.model_version("text").stats.execution_count

    answers, executions = asyncio.run(run())
    path = tmp_path / "text" / "1" / "model.onnx"
    padded_runs = 0
    for inputs, answer in zip(sent, answers):
        outputs = {name: array for name, (_, array) in answer.outputs.items()}
        assert_as_alone(outputs, alone(path, inputs))
        rows, length = outputs["ran"][0]
        padded_runs += int(length > inputs["ids"].shape[1])
    assert executions < len(sent) // 2, f"{executions} runs for {len(sent)} requests: they were not merged"
    assert padded_runs > 0, "no request ran padded"


def test_buckets_fix_the_lengths_runs_see_and_keep_buckets_apart(tmp_path: Path, monkeypatch) -> None:
    padding = Padding(TEXT_PADDING.inputs, TEXT_PADDING.outputs, buckets=(4, 8))
    scheduler = batcher(tmp_path, varlen_model(), padding)
    rng = np.random.default_rng(3)
    lengths = [3, 6, 2, 11, 5, 9, 4]
    queued = [text(1, length, rng) for length in lengths]
    answers = asyncio.run(run_held(scheduler, monkeypatch, text(1, 1, rng), queued))
    path = tmp_path / "text" / "1" / "model.onnx"
    ran = {}
    for length, inputs, (results, _) in zip(lengths, queued, answers):
        assert_as_alone(results, alone(path, inputs))
        ran[length] = results["ran"][0].tolist()
    # Each bucket ran once, at the bucket's length; past the last bucket, at the longest.
    assert ran == {3: [3, 4], 2: [3, 4], 4: [3, 4], 6: [2, 8], 5: [2, 8], 11: [2, 11], 9: [2, 11]}
    assert scheduler.stats.execution_count == 4  # the held one, then one run per bucket


def test_a_full_batch_of_work_in_other_buckets_ends_the_wait(tmp_path: Path, monkeypatch) -> None:
    """The queue delay is for a batch to fill; when enough requests wait, in any bucket, the
    head's bucket runs at once (waiting would only leave the instance idle)."""
    padding = Padding(TEXT_PADDING.inputs, TEXT_PADDING.outputs, buckets=(4, 8))
    scheduler = batcher(tmp_path, varlen_model(), padding, max_batch_size=2, max_queue_delay_s=60.0)
    rng = np.random.default_rng(8)
    queued = [text(1, 3, rng), text(1, 7, rng), text(1, 6, rng)]  # bucket 4 alone, then bucket 8 twice
    head = text(2, 2, rng)  # a full batch by itself: it runs (and holds) at once
    answers = asyncio.run(within(run_held(scheduler, monkeypatch, head, queued), 30))
    assert [results["ran"][0].tolist() for results, _ in answers] == [[1, 4], [2, 8], [2, 8]]


def test_padding_rows_and_lengths_together(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, varlen_model(), TEXT_PADDING, preferred_batch_sizes=(4, 8), pad_batches=True)
    rng = np.random.default_rng(4)
    queued = [text(2, 3, rng), text(3, 6, rng)]
    answers = asyncio.run(run_held(scheduler, monkeypatch, text(1, 2, rng), queued))
    path = tmp_path / "text" / "1" / "model.onnx"
    for inputs, (results, timing) in zip(queued, answers):
        assert_as_alone(results, alone(path, inputs))
        assert results["ran"][0].tolist() == [8, 6] and timing.batch_size == 5  # 5 rows padded to 8


def test_different_unpadded_shapes_never_merge(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, with_features_model(), Padding((PaddedAxis("ids", 0),)))
    rng = np.random.default_rng(5)
    queued = [
        {"ids": np.ones((1, 2 + i), np.int64), "x": rng.normal(size=(1, 2 + i % 2)).astype(np.float32)}
        for i in range(6)
    ]  # widths of x 2, 3, 2, 3, 2, 3; lengths of ids 2 to 7

    async def run(monkeypatch):
        held = hold(scheduler.instances[0], monkeypatch)
        try:
            head = submit(scheduler, {"ids": np.ones((1, 1), np.int64), "x": np.ones((1, 4), np.float32)}, ["y"])
            await asyncio.to_thread(held.wait_entered)
            waiting = [submit(scheduler, inputs, ["y", "ran"]) for inputs in queued]
            await until(lambda: len(scheduler._queue) == 6, "all are queued")
        finally:
            held.release()
        answers = await asyncio.gather(head, *waiting)
        await scheduler.close()
        return answers[1:]

    answers = asyncio.run(run(monkeypatch))
    for i, (inputs, (results, _)) in enumerate(zip(queued, answers)):
        np.testing.assert_array_equal(results["y"], 2 * inputs["x"])
        assert results["ran"][0].tolist() == [3, 6 if i % 2 == 0 else 7]  # its own width's three, padded
    assert scheduler.stats.execution_count == 3


def test_models_without_pad_parameters_keep_the_fixed_shape_path(tmp_path: Path) -> None:
    path = models.save(models.batch_probe(), tmp_path, "m")
    instance = Instance(OnnxModel(path, SessionOptions(intra_op_threads=1), WHERE), 0)
    scheduler = BatchingScheduler(WHERE, [instance], VersionStats(), BatchingPolicy(8), ["y", "n"])
    assert scheduler._padder is None and scheduler._merge is scheduler_module._merge
    instance.close()


# ---------------------------------------------------------------- refused requests


def test_a_request_whose_padded_inputs_disagree_is_refused(tmp_path: Path) -> None:
    models.save(varlen_model(), tmp_path, "text", config=CONFIG)
    bad = {"ids": np.ones((1, 5), np.int64), "mask": np.ones((1, 4), np.int64)}
    good = text(1, 4, np.random.default_rng(6))

    async def run():
        async with serving(tmp_path) as plane:
            with pytest.raises(InvalidInput) as refused:
                await plane.infer(request("text", bad))
            answer = await plane.infer(request("text", good))  # the model still serves
            return str(refused.value), answer, plane.model_version("text").stats.execution_count

    message, answer, executions = asyncio.run(run())
    assert message == (
        f"{WHERE}: input 'mask' has length 4 along its padded axis 0 but input 'ids' has length 5 "
        "along axis 0; the axes in parameter pad_inputs must all have the request's length"
    )
    assert answer.outputs["tokens"][1].shape == (1, 4, TOKEN_OUT) and executions == 1


# ---------------------------------------------------------------- through gRPC


def test_through_grpc_concurrent_lengths_merge_and_a_bad_request_is_invalid_argument(
    tmp_path: Path, start_server
) -> None:
    models.save(varlen_model(), tmp_path, "text", config=CONFIG)
    address = start_server(tmp_path)
    rng = np.random.default_rng(7)
    sent = [text(1, int(rng.integers(1, 30)), rng) for _ in range(40)]

    async def run():
        async with AsyncClient(address) as client:
            answers = await asyncio.gather(*(client.infer("text", inputs) for inputs in sent))
            with pytest.raises(InferenceServerError) as refused:
                await client.infer("text", {"ids": np.ones((1, 3), np.int64), "mask": np.ones((1, 2), np.int64)})
            return answers, refused.value

    answers, refused = asyncio.run(run())
    path = tmp_path / "text" / "1" / "model.onnx"
    for inputs, outputs in zip(sent, answers):
        assert_as_alone(outputs, alone(path, inputs))
    assert max(int(a["ran"][0, 0]) for a in answers) > 1, "no request was merged with another"
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'text'" in refused.message and "input 'mask' has length 2" in refused.message


# ---------------------------------------------------------------- the configuration


def load_error(tmp_path: Path, model: onnx.ModelProto, config: str) -> str:
    models.save(model, tmp_path, "text", config=config)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert not registry.is_ready("text")
    return " ".join(reason for *_, reason in registry.index())


BATCHING = "max_batch_size: 8\ndynamic_batching { }\n"
# The config fixes the length the ONNX model leaves free: no longer a padded axis.
FIXED_IDS = (
    'input [{ name: "ids" data_type: TYPE_INT64 dims: [ 8 ] }, { name: "mask" data_type: TYPE_INT64 dims: [ -1 ] }]\n'
)


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


@pytest.mark.parametrize(
    "config, reason",
    [
        (param("pad_inputs", "nope:0"),
         "parameter pad_inputs: 'nope' is not an input of the model; it has ['ids', 'mask']"),
        (param("pad_inputs", "ids:1"), "axis 1 of input 'ids' is not a dynamic dimension: its dims are [-1]"),
        (FIXED_IDS + param("pad_inputs", "ids:0"),
         "axis 0 of input 'ids' is not a dynamic dimension: its dims are [8]"),
        (param("pad_inputs", "ids:0=abc"), "pad value 'abc' of input 'ids' does not read as INT64"),
        (param("pad_inputs", "ids:0=1.5"), "pad value '1.5' of input 'ids' does not read as INT64"),
        (param("pad_inputs", "ids:0=1, ids:0=2"), "parameter pad_inputs names 'ids' axis 0 twice"),
        (param("pad_inputs", "ids"), "parameter pad_inputs: 'ids' is not NAME:AXIS[=VALUE]"),
        (param("pad_inputs", "ids:-1"), "'ids:-1' is not NAME:AXIS[=VALUE] (AXIS counts in the tensor's dims"),
        (param("pad_inputs", " , "), "parameter pad_inputs names no input"),
        (param("pad_inputs", "ids:0") + param("pad_outputs", "nope:0"), "'nope' is not an output of the model"),
        (param("pad_inputs", "ids:0") + param("pad_outputs", "pooled:0"),
         "axis 0 of output 'pooled' is not a dynamic dimension: its dims are [4]"),
        (param("pad_inputs", "ids:0") + param("pad_outputs", "tokens:0=1"), "'tokens:0=1' is not NAME:AXIS ("),
        (param("pad_inputs", "ids:0") + param("pad_buckets", "32,x"),
         "parameter pad_buckets must be positive integers, got '32,x'"),
        (param("pad_inputs", "ids:0") + param("pad_buckets", "0"), "parameter pad_buckets must be positive integers"),
        (param("pad_outputs", "tokens:0"), "parameter pad_outputs needs parameter pad_inputs too"),
    ],
)  # fmt: skip
def test_config_mistakes_fail_the_load_with_their_reason(tmp_path: Path, config: str, reason: str) -> None:
    assert reason in load_error(tmp_path, varlen_model(), BATCHING + config)


def test_pad_inputs_without_dynamic_batching_fails_the_load(tmp_path: Path) -> None:
    reason = load_error(tmp_path, varlen_model(), "max_batch_size: 8\n" + param("pad_inputs", "ids:0"))
    assert "parameter pad_inputs needs dynamic_batching" in reason


def test_parameters_read_into_the_batching_policy(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(
        BATCHING
        + param("pad_inputs", "ids:0=3 , mask:0")
        + param("pad_outputs", "tokens:0")
        + param("pad_buckets", "64, 16,32,16")
    )
    padding = model_spec("text", read_config(tmp_path)).batching.padding
    assert padding == Padding((PaddedAxis("ids", 0, "3"), PaddedAxis("mask", 0, "")), (PaddedAxis("tokens", 0),),
                              (16, 32, 64))  # fmt: skip
    assert [padding.bucket(n) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, -1]


def test_tensorflow_style_names_keep_their_colons() -> None:
    padding = parse("m", {"pad_inputs": " input_1:0 :0 = 7", "pad_outputs": "dense/BiasAdd:0:1"})
    assert padding.inputs == (PaddedAxis("input_1:0", 0, "7"),)
    assert padding.outputs == (PaddedAxis("dense/BiasAdd:0", 1),)


# ---------------------------------------------------------------- pad values and merging by hand


@pytest.mark.parametrize(
    "text, datatype, value",
    [("", "INT64", 0), ("-1", "INT32", -1), ("255", "UINT8", 255), ("true", "BOOL", True), ("0", "BOOL", False),
     ("-inf", "FP32", -np.inf), ("0.5", "FP16", 0.5), ("1", "BF16", 0x3F80), ("[PAD]", "BYTES", b"[PAD]"),
     ("", "BYTES", b"")],
)  # fmt: skip
def test_pad_values_read_as_their_datatype(text: str, datatype: str, value) -> None:
    assert fill_value(text, datatype) == value


@pytest.mark.parametrize("text, datatype", [("256", "UINT8"), ("-1", "UINT32"), ("yes", "BOOL"), ("x", "FP32")])
def test_pad_values_that_do_not_read(text: str, datatype: str) -> None:
    with pytest.raises(ValueError):
        fill_value(text, datatype)


def test_merge_pads_strings_and_rows_and_cut_takes_each_length_back() -> None:
    padder = Padder(WHERE, Padding((PaddedAxis("words", 0, "[PAD]"),), (PaddedAxis("echo", 0),)))
    first = {"words": ("BYTES", np.array([[b"a", b"b"]], dtype=object))}
    second = {"words": ("BYTES", np.array([[b"c", b"d", b"e"]], dtype=object))}
    merged = padder.merge([first, second], [1, 1], rows=3)
    assert merged["words"][1].tolist() == [[b"a", b"b", b"[PAD]"], [b"c", b"d", b"e"], [b"[PAD]"] * 3]
    echoed = {"echo": merged["words"][1][0:1], "other": np.zeros((1, 3))}
    cut = padder.cut(echoed, first)
    assert cut["echo"].tolist() == [[b"a", b"b"]] and cut["other"].shape == (1, 3)
    assert padder.merge([second], [1], rows=1) == second  # nothing to pad: the request as it is


def test_the_benchmark_encoder_ignores_padding() -> None:
    """benchmarks/varlen.py's encoder (attention with the mask as a bias, GELU, LayerNorm, masked
    pooling) answers a padded request as it answers it alone: what its pad parameters assert."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from varlen import encoder

    encoder_session = ort.InferenceSession(
        encoder(vocab=100, hidden=32, blocks=1, max_len=16).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ids = np.random.default_rng(9).integers(1, 100, (1, 5)).astype(np.int64)
    alone_out = encoder_session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    padded_ids = np.zeros((1, 9), np.int64)
    padded_ids[:, :5] = ids
    mask = (padded_ids != 0).astype(np.int64)
    padded_out = encoder_session.run(None, {"input_ids": padded_ids, "attention_mask": mask})
    np.testing.assert_allclose(padded_out[0], alone_out[0], rtol=1e-4, atol=1e-5)  # pooled logits
    np.testing.assert_allclose(padded_out[1][:, :5], alone_out[1], rtol=1e-4, atol=1e-5)  # per token
