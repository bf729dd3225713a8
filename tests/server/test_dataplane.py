"""The data plane in process, one `infer` call per request, on real tiny ONNX sessions and no
gRPC: outputs, requested outputs and classification, NOT_FOUND / UNAVAILABLE / INVALID_ARGUMENT,
the pending and in-flight-bytes limits, deadlines, statistics, the observers (quality, drift,
predicted classes) and the codec round trip around one call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.server.dataplane import DataPlane, Limits
from modelport.server.drift import DriftObserver
from modelport.server.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NotAllowed,
    QueueFull,
)
from modelport.server.feedback_store import MemoryStore
from modelport.server.loader import LoaderSettings
from modelport.server.observers import Inference, PredictedClassCounter
from modelport.server.quality import QualityMonitor
from modelport.server.registry import ModelRegistry
from modelport.server.settings import ServerSettings
from tests import models
from tests.hold import hold
from tests.server.configs import BATCHED_CONFIG
from tests.server.inproc import request, serving, until, until_past, within

A = np.array([[1, 5, 2, 3], [9, 1, 4, 2]], dtype=np.float32)
B = np.array([[2, 1, 4, 3], [1, 1, 1, 3]], dtype=np.float32)  # A * B = [[2, 5, 8, 9], [9, 1, 4, 6]]
X = np.array([[1.0, 4.0, 2.0], [8.0, 0.5, 0.25]], dtype=np.float32)
LABELS = ["cat", "dog", "bird"]
# A 4-feature, 3-class softmax classifier.
WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)
DEFAULTS = Limits.of(ServerSettings.defaults())


def limits(**changes) -> Limits:
    return dataclasses.replace(DEFAULTS, **changes)


def loader(**changes) -> LoaderSettings:
    return dataclasses.replace(LoaderSettings.of(ServerSettings.defaults()), **changes)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataplane-repo")
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.add_mul(), root, "add_mul_b4", config=BATCHED_CONFIG)
    models.save(models.scale(2.0), root, "scale", 1, config="version_policy: { all: {} }\n")
    models.save(models.scale(3.0), root, "scale", 2)
    models.save(models.scale(1.0), root, "classifier")
    (root / "classifier" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    models.save(models.gather_rows(), root, "gather")
    models.save(models.identity(TensorProto.STRING, [None]), root, "strings")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return root


def assert_released(dataplane: DataPlane, *names: str) -> None:
    """Nothing admitted is left counted: no request in flight on the versions, no bytes held."""
    for name in names:
        for version in dataplane.registry.versions(name):
            assert dataplane.registry.get(name, str(version)).in_flight == 0, (name, version)
    assert dataplane.inflight_bytes == 0


# ---------------------------------------------------------------- success


def test_outputs_equal_numpy_for_every_version_and_batching(repo: Path) -> None:
    async def run():
        async with serving(repo) as dp:
            response = await dp.infer(request("add_mul", {"a": A, "b": B}, request_id="r-1"))
            assert (response.model, response.version, response.id) == ("add_mul", "1", "r-1")
            assert list(response.outputs) == ["sum", "prod"]  # the model's order when none are named
            for name, expected in (("sum", A + B), ("prod", A * B)):
                datatype, array = response.outputs[name]
                assert datatype == "FP32" and array.dtype == np.float32
                np.testing.assert_array_equal(array, expected)

            batched = await dp.infer(request("add_mul_b4", {"a": A[:1], "b": B[:1]}))
            np.testing.assert_array_equal(batched.outputs["prod"][1], (A * B)[:1])

            newest = await dp.infer(request("scale", {"x": X}))
            first = await dp.infer(request("scale", {"x": X}, version="1"))
            assert newest.version == "2" and first.version == "1"
            np.testing.assert_array_equal(newest.outputs["y"][1], 3 * X)
            np.testing.assert_array_equal(first.outputs["y"][1], 2 * X)
            assert_released(dp, "add_mul", "add_mul_b4", "scale")

    asyncio.run(run())


def test_requested_outputs_come_back_alone_and_in_the_order_asked(repo: Path) -> None:
    async def run():
        async with serving(repo) as dp:
            only = await dp.infer(request("add_mul", {"a": A, "b": B}, outputs=["prod"]))
            assert list(only.outputs) == ["prod"]
            np.testing.assert_array_equal(only.outputs["prod"][1], A * B)
            swapped = await dp.infer(request("add_mul", {"a": A, "b": B}, outputs=["prod", "sum"]))
            assert list(swapped.outputs) == ["prod", "sum"]
            np.testing.assert_array_equal(swapped.outputs["sum"][1], A + B)

    asyncio.run(run())


def test_classification_extension(repo: Path) -> None:
    async def run():
        async with serving(repo) as dp:
            mixed = await dp.infer(request("add_mul", {"a": A, "b": B}, outputs=["sum", ("prod", 2)]))
            labelled = await dp.infer(request("classifier", {"x": X}, outputs=[("y", 2)]))
            clamped = await dp.infer(request("classifier", {"x": X[:1]}, outputs=[("y", 10)]))
            return mixed, labelled, clamped

    mixed, labelled, clamped = asyncio.run(run())
    np.testing.assert_array_equal(mixed.outputs["sum"][1], A + B)  # unclassified outputs stay numbers
    datatype, top = mixed.outputs["prod"]
    assert datatype == "BYTES" and top.shape == (2, 2)
    assert top.tolist() == [[b"9.000000:3", b"8.000000:2"], [b"9.000000:0", b"6.000000:3"]]
    assert labelled.outputs["y"][1].tolist() == [
        [b"4.000000:1:dog", b"2.000000:2:bird"],
        [b"8.000000:0:cat", b"0.500000:1:dog"],
    ]
    assert clamped.outputs["y"][1].tolist() == [[b"4.000000:1:dog", b"2.000000:2:bird", b"1.000000:0:cat"]]


# ---------------------------------------------------------------- what is not served


def test_unknown_model_version_and_unready_model(repo: Path) -> None:
    async def run():
        async with serving(repo) as dp:
            with pytest.raises(ModelNotFound) as unknown:
                await dp.infer(request("nope", {"x": X}))
            assert "model 'nope' is not found" in unknown.value.message
            assert "'add_mul'" in unknown.value.message and "'broken'" not in unknown.value.message
            # A request the codec could not decode is still NOT_FOUND when its model is unknown.
            with pytest.raises(ModelNotFound):
                await dp.infer(request("nope", {"x": X}, error="input 'x' has a negative dimension"))
            for version in ("3", "0", "x", "-1", "²"):
                with pytest.raises(ModelNotFound) as no_version:
                    await dp.infer(request("scale", {"x": X}, version=version))
                assert f"no served version '{version}'; served versions: 1, 2" in no_version.value.message
            with pytest.raises(ModelNotReady) as unready:
                await dp.infer(request("broken", {"x": X}))
            assert "model 'broken' is not ready" in unready.value.message
            assert "ONNX Runtime cannot load" in unready.value.message
            for version in (1, 2):
                stats = dp.registry.get("scale", str(version)).stats
                assert stats.fail.count == 0 and stats.failures == {}  # no version reached: nothing counted
            assert_released(dp, "scale")

    asyncio.run(run())


# ---------------------------------------------------------------- invalid requests


def test_codec_error_is_invalid_input_naming_the_model_version(repo: Path) -> None:
    message = codec.build_request("scale", {"x": X}, version="1")
    decoded = codec.decode_request(message, max_elements=4)  # X has 6 elements
    assert "the server's limit is 4" in decoded.error

    async def run():
        async with serving(repo) as dp:
            with pytest.raises(InvalidInput) as caught:
                await dp.infer(decoded)
            assert caught.value.message == f"model 'scale' version 1: {decoded.error}"
            stats = dp.registry.get("scale", "1").stats
            assert stats.failures == {"INVALID_ARGUMENT": 1} and stats.success.count == 0
            assert stats.execution_count == 0  # it never reached the session
            assert_released(dp, "scale")

    asyncio.run(run())


BAD_REQUESTS = {
    "wrong datatype": ("add_mul", {"a": A.astype(np.float64), "b": B}, (),
                       "input 'a': expected datatype FP32, got FP64"),
    "wrong width": ("add_mul", {"a": A[:, :3], "b": B[:, :3]}, (), "input 'a': expected shape [-1, 4]"),
    "wrong rank": ("add_mul", {"a": A.reshape(-1), "b": B}, (), "input 'a': expected shape [-1, 4]"),
    "missing input": ("add_mul", {"a": A}, (), "missing input 'b'; the model expects inputs ['a', 'b']"),
    "unexpected input": ("add_mul", {"a": A, "b": B, "c": A}, (), "unexpected input 'c'"),
    "over max_batch_size": (
        "add_mul_b4", {"a": np.ones((5, 4), np.float32), "b": np.ones((5, 4), np.float32)}, (),
        "input 'a': batch size 5 exceeds max_batch_size 4",
    ),
    "batch sizes differ": (
        "add_mul_b4", {"a": A, "b": B[:1]}, (), "input 'b' has batch size 1 but an earlier input has 2",
    ),
    "unknown output": ("add_mul", {"a": A, "b": B}, ("nope",), "unknown requested output 'nope'"),
    "negative class count": ("add_mul", {"a": A, "b": B}, (("sum", -1),), "classification count must be >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_signature_mismatch_is_invalid_input(repo: Path, case: str) -> None:
    model, inputs, outputs, needle = BAD_REQUESTS[case]

    async def run():
        async with serving(repo) as dp:
            with pytest.raises(InvalidInput) as caught:
                await dp.infer(request(model, inputs, outputs=outputs, nbytes=1000))
            assert caught.value.message.startswith(f"model '{model}' version 1: "), caught.value.message
            assert needle in caught.value.message, caught.value.message
            stats = dp.registry.get(model).stats
            assert stats.failures == {"INVALID_ARGUMENT": 1} and stats.execution_count == 0
            assert_released(dp, model)
            # The same model answers a good request right after.
            good = await dp.infer(request(model, {"a": A, "b": B}))
            np.testing.assert_array_equal(good.outputs["sum"][1], A + B)

    asyncio.run(run())


# ---------------------------------------------------------------- limits


def test_max_pending_requests_refuses_past_the_limit_per_version(repo: Path, monkeypatch) -> None:
    async def run():
        async with serving(repo, limits(max_pending_requests=2)) as dp:
            version = dp.registry.get("scale")
            held = hold(version.scheduler.instances[0], monkeypatch)
            try:
                first = asyncio.ensure_future(dp.infer(request("scale", {"x": X})))
                second = asyncio.ensure_future(dp.infer(request("scale", {"x": 2 * X})))
                await until(lambda: version.in_flight == 2, "two requests are pending")
                with pytest.raises(QueueFull) as refused:
                    await within(dp.infer(request("scale", {"x": X})))
                assert refused.value.message.startswith("model 'scale' version 2: 2 requests are already pending")
                assert "(limit 2)" in refused.value.message
                assert version.in_flight == 2  # the refused request was never counted in
                assert version.stats.failures == {"RESOURCE_EXHAUSTED": 1}
                # The limit is per version: another version and another model still answer.
                other = await within(dp.infer(request("scale", {"x": X}, version="1")))
                np.testing.assert_array_equal(other.outputs["y"][1], 2 * X)
                elsewhere = await within(dp.infer(request("add_mul", {"a": A, "b": B})))
                np.testing.assert_array_equal(elsewhere.outputs["sum"][1], A + B)
            finally:
                held.release()
            done = await asyncio.gather(first, second)
            np.testing.assert_array_equal(done[0].outputs["y"][1], 3 * X)
            np.testing.assert_array_equal(done[1].outputs["y"][1], 6 * X)
            assert version.stats.success.count == 2
            assert_released(dp, "scale", "add_mul")
            # Room again: the next request is admitted.
            await dp.infer(request("scale", {"x": X}))

    asyncio.run(run())


def test_max_inflight_bytes_refuses_past_the_limit_server_wide(repo: Path, monkeypatch) -> None:
    async def run():
        async with serving(repo, limits(max_inflight_bytes=100)) as dp:
            # A single request larger than the limit is admitted when nothing else is held.
            await dp.infer(request("add_mul", {"a": A, "b": B}, nbytes=500))
            assert dp.inflight_bytes == 0
            version = dp.registry.get("scale")
            held = hold(version.scheduler.instances[0], monkeypatch)
            try:
                big = asyncio.ensure_future(dp.infer(request("scale", {"x": X}, nbytes=80)))
                await until(lambda: dp.inflight_bytes == 80, "80 bytes are held")
                # Bytes are counted across models: add_mul is refused while scale holds 80.
                with pytest.raises(QueueFull) as refused:
                    await within(dp.infer(request("add_mul", {"a": A, "b": B}, nbytes=30)))
                assert "holds 80 bytes of requests in flight and this one has 30 (limit 100" in refused.value.message
                assert "model 'add_mul' version 1" in refused.value.message
                assert dp.registry.get("add_mul").stats.failures == {"RESOURCE_EXHAUSTED": 1}
                assert dp.inflight_bytes == 80 and dp.registry.get("add_mul").in_flight == 0
                fits = await within(dp.infer(request("add_mul", {"a": A, "b": B}, nbytes=20)))  # exactly at the limit
                np.testing.assert_array_equal(fits.outputs["prod"][1], A * B)
                assert dp.inflight_bytes == 80
            finally:
                held.release()
            np.testing.assert_array_equal((await big).outputs["y"][1], 3 * X)
            assert_released(dp, "scale", "add_mul")

    asyncio.run(run())


def test_counts_return_to_zero_after_every_kind_of_failure(repo: Path) -> None:
    nbytes = 64

    async def fails(dp: DataPlane, error: type, req) -> str:
        with pytest.raises(error) as caught:
            await dp.infer(req)
        assert_released(dp, req.model)
        return caught.value.message

    async def run():
        async with serving(repo) as dp:
            assert "negative" in await fails(
                dp,
                InvalidInput,
                request("gather", {"idx": np.zeros((1, 1), np.int64)}, nbytes=nbytes, error="negative"),
            )
            await fails(dp, InvalidInput, request("gather", {"idx": np.zeros((1, 1), np.int32)}, nbytes=nbytes))
            # ONNX Runtime fails the run (index 7 of a 3-entry table): INTERNAL.
            message = await fails(
                dp, InferenceFailed, request("gather", {"idx": np.array([[7]], np.int64)}, nbytes=nbytes)
            )
            assert message.startswith("model 'gather' version 1: ONNX Runtime failed")
            expired = request(
                "gather", {"idx": np.zeros((1, 1), np.int64)}, nbytes=nbytes, deadline=time.monotonic() - 1
            )
            assert "deadline passed before it could run" in await fails(dp, DeadlineExceeded, expired)
            # Fails after the run: classification of a BYTES output.
            words = np.array([b"a", b"b"], dtype=object)
            assert "is not numeric" in await fails(
                dp, InvalidInput, request("strings", {"x": words}, outputs=[("y", 1)])
            )
            stats = dp.registry.get("gather").stats
            assert stats.failures == {"INVALID_ARGUMENT": 2, "INTERNAL": 1, "DEADLINE_EXCEEDED": 1}
            assert stats.fail.count == 4 and stats.success.count == 0
            good = await dp.infer(request("gather", {"idx": np.array([[2], [0]], np.int64)}, nbytes=nbytes))
            np.testing.assert_array_equal(good.outputs["y"][1], [[30.0], [10.0]])
            assert stats.success.count == 1
            assert_released(dp, "gather", "strings")

    asyncio.run(run())


def test_default_request_timeout_drops_a_request_that_waited_too_long(repo: Path, monkeypatch) -> None:
    async def run():
        async with serving(repo, limits(default_request_timeout=0.05)) as dp:
            version = dp.registry.get("scale")
            held = hold(version.scheduler.instances[0], monkeypatch)
            running = request("scale", {"x": X}, deadline=time.monotonic() + 60)
            waiting = request("scale", {"x": X})
            patient = request("scale", {"x": X}, deadline=time.monotonic() + 60)
            try:
                tasks = [asyncio.ensure_future(dp.infer(running))]
                await asyncio.to_thread(held.wait_entered)  # the instance is busy with `running`
                before = time.monotonic()
                tasks += [asyncio.ensure_future(dp.infer(r)) for r in (waiting, patient)]
                await until(lambda: version.in_flight == 3, "three requests are in flight")
                # The data plane gave the request without a deadline the default one ...
                assert waiting.deadline is not None and before < waiting.deadline <= time.monotonic() + 0.05
                # ... and left the caller's own deadline alone.
                assert patient.deadline > time.monotonic() + 50
                await until_past(waiting.deadline)
            finally:
                held.release()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(results[1], DeadlineExceeded), results
            assert "model 'scale' version 2: the request's deadline passed before it could run" in str(results[1])
            for done in (results[0], results[2]):
                np.testing.assert_array_equal(done.outputs["y"][1], 3 * X)
            assert version.stats.failures == {"DEADLINE_EXCEEDED": 1} and version.stats.success.count == 2
            assert_released(dp, "scale")

    asyncio.run(run())


# ---------------------------------------------------------------- statistics


def test_statistics_count_successes_failures_rows_and_batches(repo: Path) -> None:
    async def run():
        async with serving(repo) as dp:
            for rows in (1, 2, 3):
                ones = np.ones((rows, 4), np.float32)
                await dp.infer(request("add_mul_b4", {"a": ones, "b": ones}))
            for _ in range(2):
                with pytest.raises(InvalidInput):
                    await dp.infer(request("add_mul_b4", {"a": A[:, :2], "b": B[:, :2]}))
            await dp.infer(request("add_mul", {"a": A, "b": B}))  # two rows, but the model does not batch
            await dp.infer(request("scale", {"x": X}, version="1"))
            return [dp.registry.get(*key).stats
                    for key in (("add_mul_b4",), ("add_mul",), ("scale", "1"), ("scale", "2"))]

    batched, unbatched, scale1, scale2 = asyncio.run(run())
    assert batched.success.count == 3 and batched.success.ns > 0 and sum(batched.success.buckets) == 3
    assert batched.fail.count == 2 and batched.failures == {"INVALID_ARGUMENT": 2}
    assert batched.inference_count == 6 and batched.execution_count == 3
    assert sorted(batched.batches) == [1, 2, 3]
    assert all(b.compute_infer.count == 1 and b.compute_output.count == 1 for b in batched.batches.values())
    for phase in (batched.queue, batched.compute_input, batched.compute_infer, batched.compute_output):
        assert phase.count == 3
    assert batched.compute_infer.ns > 0 and batched.last_inference_ms > 0
    assert unbatched.inference_count == 1 and unbatched.success.count == 1  # as Triton counts a non-batching model
    assert scale1.success.count == 1 and scale2.success.count == 0  # versions keep their own statistics


# ---------------------------------------------------------------- observers


class Recorder:
    """An observer that keeps every Inference it is told about."""

    def __init__(self) -> None:
        self.seen: list[Inference] = []

    def observe(self, inference: Inference) -> None:
        self.seen.append(inference)


class Boom:
    def observe(self, inference: Inference) -> None:
        raise RuntimeError("observer bug")


@pytest.mark.parametrize(
    "rate, sampled",
    [(1.0, [True] * 4), (0.5, [False, True, False, True]), (0.25, [False, False, False, True]), (0.0, [False] * 4)],
)
def test_observers_see_each_successful_request(repo: Path, rate: float, sampled: list[bool]) -> None:
    first, second = Recorder(), Recorder()

    async def run():
        async with serving(repo, observers=[first, second], loader=loader(drift_sample_rate=rate)) as dp:
            sent = []
            for i in range(4):
                outputs = ["sum", ("prod", 1)] if i == 0 else ()
                sent.append(request("add_mul", {"a": A + i, "b": B}, request_id=f"r{i}", outputs=outputs))
                await dp.infer(sent[-1])
                if i == 1:
                    with pytest.raises(InvalidInput):
                        await dp.infer(request("add_mul", {"a": A}, request_id="bad"))
            return dp.registry.get("add_mul"), sent

    version, sent = asyncio.run(run())
    assert len(first.seen) == len(sent) and all(i.request is r for i, r in zip(first.seen, sent))  # failures left out
    assert [i.sampled for i in first.seen] == sampled  # one in 1/rate, counted per version
    assert [(id(i.version), id(i.request), i.sampled) for i in second.seen] == [
        (id(i.version), id(i.request), i.sampled) for i in first.seen
    ]
    for i, inference in enumerate(first.seen):
        assert inference.version is version
        if i == 0:
            # Every output computed, as numbers, even one the caller asked classified.
            assert list(inference.results) == ["sum", "prod"]
            np.testing.assert_array_equal(inference.results["prod"], A * B)
        np.testing.assert_array_equal(inference.results["sum"], A + i + B)


def test_a_failing_observer_does_not_fail_the_request(repo: Path, caplog) -> None:
    recorder = Recorder()
    caplog.set_level(logging.DEBUG, logger="modelport.server.dataplane")

    async def run():
        async with serving(repo, observers=[Boom(), recorder]) as dp:
            return [await dp.infer(request("scale", {"x": X})) for _ in range(3)], dp.registry.get("scale").stats

    responses, stats = asyncio.run(run())
    for response in responses:
        np.testing.assert_array_equal(response.outputs["y"][1], 3 * X)
    assert len(recorder.seen) == 3  # the observers after the failing one are still told
    assert stats.success.count == 3 and stats.fail.count == 0
    failures = [r for r in caplog.records if "observer Boom failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR, logging.DEBUG, logging.DEBUG]  # one traceback, then quiet
    assert failures[0].exc_info is not None and "observer bug" in str(failures[0].exc_info[1])


def save_classifier(root: Path, statistics: dict | None = None) -> None:
    models.save(models.softmax_classifier(WEIGHTS), root, "clf")
    if statistics is not None:
        (root / "clf" / "1" / "conversion.json").write_text(json.dumps({"input_statistics": statistics}))


def test_quality_monitor_pairs_reported_labels_with_predictions(tmp_path: Path) -> None:
    save_classifier(tmp_path)
    monitor = QualityMonitor(MemoryStore(window=100, max_pending=10, ttl=3600))
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(3)]
    predicted = [(x @ WEIGHTS).argmax(axis=1) for x in xs]

    async def run():
        async with serving(tmp_path, observers=[monitor]) as dp:
            await dp.infer(request("clf", {"x": xs[0]}, request_id="r0"))
            await dp.infer(request("clf", {"x": xs[1]}, request_id="r1", outputs=[("probs", 1)]))  # classified
            await dp.infer(request("clf", {"x": xs[2]}))  # no id: nothing to pair labels with
            with pytest.raises(InvalidInput):
                await dp.infer(request("clf", {"x": xs[2][:, :3]}, request_id="r2"))  # failed: not remembered
        assert await monitor.report("clf", "r0", predicted[0].tolist(), []) is True  # both rows right
        wrong = (predicted[1] + 1) % 3
        assert await monitor.report("clf", "r1", [int(predicted[1][0]), int(wrong[1])], []) is True  # one wrong
        assert await monitor.report("clf", "r0", predicted[0].tolist(), []) is False  # already paired
        assert await monitor.report("clf", "r2", [0, 0], []) is False  # the failed request
        assert await monitor.report("clf", "", [0, 0], []) is False  # the request without an id
        return await monitor.quality("clf")

    quality = asyncio.run(run())
    assert monitor.labels["clf"] == 4 and monitor.unknown["clf"] == 3
    assert monitor.counters[("clf", 1)].labelled == 4 and monitor.counters[("clf", 1)].correct == 3
    assert quality.versions["1"].count == 4 and quality.versions["1"].accuracy == 0.75
    assert monitor.latest[("clf", 1)] == quality.versions["1"]


def test_drift_observer_fills_the_window_with_sampled_rows(tmp_path: Path) -> None:
    mean, std = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 0.5])
    save_classifier(tmp_path, {"x": {"mean": mean.tolist(), "std": std.tolist()}})
    shifted = (mean + std).astype(np.float32)  # one reference standard deviation above the mean

    async def scores(observers) -> tuple[float, int]:
        async with serving(tmp_path, observers=observers, loader=loader(drift_sample_rate=0.5, drift_window=100)) as dp:
            drift = dp.registry.get("clf").drift.inputs["x"]
            assert drift.score()[1] == 0
            for rows in (1, 2, 3, 4):  # the 2nd and the 4th are sampled
                await dp.infer(request("clf", {"x": np.tile(shifted, (rows, 1))}))
            return drift.score()

    async def run():
        return await scores([DriftObserver()]), await scores([])

    (score, rows), (_, untracked) = asyncio.run(run())
    assert rows == 2 + 4 and score == pytest.approx(1.0)
    assert untracked == 0  # without the observer nothing is tracked


def test_predicted_class_counter_counts_sampled_requests(tmp_path: Path) -> None:
    save_classifier(tmp_path)
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(4)]

    async def run():
        async with serving(tmp_path, observers=[PredictedClassCounter()], loader=loader(drift_sample_rate=0.5)) as dp:
            for x in xs:
                await dp.infer(request("clf", {"x": x}))
            return dp.registry.get("clf").stats.classes

    classes = asyncio.run(run())
    sampled = np.concatenate([xs[1], xs[3]])
    expected = np.bincount((sampled @ WEIGHTS).argmax(axis=1), minlength=3)
    assert classes == {c: int(n) for c, n in enumerate(expected) if n}
    assert sum(classes.values()) == 10


# ---------------------------------------------------------------- repository operations


def test_repository_operations_follow_the_control_mode(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "a")
    models.save(models.scale(3.0), tmp_path, "b")

    async def run():
        registry = ModelRegistry(tmp_path)
        await registry.load_all(["a"])
        try:
            fixed = DataPlane(registry)  # --model-control-mode none
            for call in (fixed.load_model, fixed.unload_model):
                with pytest.raises(NotAllowed) as caught:
                    await call("b")
                assert "start the server with --model-control-mode explicit" in caught.value.message
            assert not fixed.model_ready("b") and fixed.model_ready("a")

            explicit = DataPlane(registry, control_mode="explicit")
            await explicit.load_model("b")
            assert explicit.model_ready("b", "1") and explicit.server_ready()
            meta = explicit.model_metadata("b")
            assert (meta.name, meta.versions, meta.platform) == ("b", ("1",), "onnxruntime_onnx")
            assert [(s.name, s.datatype, s.shape) for s in meta.inputs] == [("x", "FP32", (-1, 3))]
            with pytest.raises(ModelNotFound):
                await explicit.unload_model("nope")
            with pytest.raises(ModelNotFound):
                await explicit.load_model("nope")
            await explicit.unload_model("a")
            await registry.wait_retired()
            assert not explicit.model_ready("a") and explicit.server_ready()
            assert [(r.name, r.version, r.state) for r in explicit.repository_index()] == [
                ("a", "1", "UNAVAILABLE"),
                ("b", "1", "READY"),
            ]
            assert [r.name for r in explicit.repository_index(ready_only=True)] == ["b"]
            assert [(v.name, v.version) for v in explicit.statistics()] == [("b", 1)]
            with pytest.raises(ModelNotReady):
                explicit.statistics("a")
            explicit.draining = True  # shutting down: nothing is ready any more
            assert not explicit.server_ready() and not explicit.model_ready("b") and explicit.server_live()
        finally:
            await registry.close()

    asyncio.run(run())


# ---------------------------------------------------------------- codec round trip


def test_codec_round_trip_around_one_call(repo: Path) -> None:
    message = codec.build_request("add_mul", {"a": A, "b": B}, request_id="round-trip", outputs=["prod", "sum"])
    message.outputs[1].parameters["classification"].CopyFrom(pb.InferParameter(int64_param=2))
    wire = pb.ModelInferRequest.FromString(message.SerializeToString())

    async def run():
        async with serving(repo) as dp:
            decoded = codec.decode_request(wire, DEFAULTS.max_tensor_elements)
            # the tensors' bytes and an estimate of the rest
            assert decoded.error == "" and A.nbytes + B.nbytes < decoded.nbytes <= wire.ByteSize()
            return codec.encode_response(await dp.infer(decoded))

    response = pb.ModelInferResponse.FromString(asyncio.run(run()).SerializeToString())
    assert (response.model_name, response.model_version, response.id) == ("add_mul", "1", "round-trip")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("prod", "FP32", [2, 4]),
        ("sum", "BYTES", [2, 2]),
    ]
    outputs = codec.decode_response(response)
    np.testing.assert_array_equal(outputs["prod"], A * B)
    # A + B = [[3, 6, 6, 6], [10, 2, 5, 5]]: ties keep the lower index first.
    assert outputs["sum"].tolist() == [[b"6.000000:1", b"6.000000:2"], [b"10.000000:0", b"5.000000:2"]]
