"""Dynamic batching: merge and split are exact, failures stay inside their batch, the queue is
bounded and a request whose deadline passed never runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelport.client import AsyncClient, Client, InferenceServerError
from modelport.server.background import BackgroundServer
from modelport.server.errors import DeadlineExceeded, InferenceFailed
from modelport.server.registry import ModelRegistry
from tests import models
from tests.hold import hold

PROBE_CONFIG = """
max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 50000 }
"""


def test_merged_results_equal_unbatched_with_mixed_sizes(tmp_path: Path, start_server) -> None:
    models.save(models.batch_probe(), tmp_path, "probe", config=PROBE_CONFIG)
    address = start_server(tmp_path)
    rng = np.random.default_rng(1)
    sizes = [1, 3, 2, 1, 4, 1, 2, 5, 1, 1, 3, 2] * 2
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]

    async def send_all():
        async with AsyncClient(address) as client:
            return await asyncio.gather(*(client.infer("probe", {"x": x}) for x in xs))

    results = asyncio.run(send_all())
    ran_with = []
    for x, out in zip(xs, results):
        np.testing.assert_array_equal(out["y"], 2 * x)  # each request gets exactly its own rows back
        assert out["n"].shape == (len(x), 1)
        ran_with.append(int(out["n"][0, 0]))
    assert max(ran_with) > 5, f"requests were not merged: batch sizes {ran_with}"
    assert max(ran_with) <= 16


def test_requested_outputs_per_request_in_one_batch(tmp_path: Path, start_server) -> None:
    models.save(models.batch_probe(), tmp_path, "probe", config=PROBE_CONFIG)
    address = start_server(tmp_path)

    async def send():
        async with AsyncClient(address) as client:
            return await asyncio.gather(
                client.infer("probe", {"x": np.ones((1, 3), np.float32)}, outputs=["y"]),
                client.infer("probe", {"x": np.ones((2, 3), np.float32)}, outputs=["n"]),
                client.infer("probe", {"x": np.ones((1, 3), np.float32)}),
            )

    only_y, only_n, both = asyncio.run(send())
    assert set(only_y) == {"y"} and set(only_n) == {"n"} and set(both) == {"y", "n"}


def test_different_shapes_are_batched_separately(tmp_path: Path, start_server) -> None:
    from onnx import TensorProto

    models.save(models.identity(TensorProto.FLOAT, shape=(None, None)), tmp_path, "any",
                config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 20000 }")
    address = start_server(tmp_path)

    async def send():
        async with AsyncClient(address) as client:
            xs = [np.full((1, 2 + i % 3), i, np.float32) for i in range(12)]
            return xs, await asyncio.gather(*(client.infer("any", {"x": x}) for x in xs))

    xs, outs = asyncio.run(send())
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x)


def _registry(tmp_path: Path, model, config: str) -> ModelRegistry:
    models.save(model, tmp_path, "m", config=config)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert registry.is_ready("m"), registry.index()
    return registry


def test_failure_fails_exactly_the_requests_of_its_batch(tmp_path: Path) -> None:
    registry = _registry(
        tmp_path, models.gather_rows(), "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 500000 }"
    )
    scheduler = registry.get("m").scheduler

    def submit(index: int):
        return scheduler.submit({"idx": ("INT64", np.array([[index]], np.int64))}, ["y"])

    async def run():
        # Four requests reach max_batch_size at once: one batch, one bad index -> all four fail.
        first = await asyncio.gather(*(submit(i) for i in (0, 1, 7, 2)), return_exceptions=True)
        # The next batch is all good and succeeds.
        second = await asyncio.gather(*(submit(i) for i in (2, 1, 0, 0)), return_exceptions=True)
        await registry.close()
        return first, second

    first, second = asyncio.run(run())
    assert all(isinstance(r, InferenceFailed) for r in first), first
    assert "Gather" in str(first[0])
    assert [float(r[0]["y"][0, 0]) for r in second] == [30.0, 20.0, 10.0, 10.0]
    assert all(timing.batch_size == 4 for _, timing in second)


def test_expired_request_is_dropped_before_it_runs(tmp_path: Path) -> None:
    registry = _registry(tmp_path, models.batch_probe(), "max_batch_size: 8\ndynamic_batching { }")
    scheduler = registry.get("m").scheduler

    async def run():
        with pytest.raises(DeadlineExceeded):
            await scheduler.submit({"x": ("FP32", np.ones((1, 3), np.float32))}, ["y", "n"], time.monotonic() - 1)
        await registry.close()

    asyncio.run(run())


def test_queue_full_through_grpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 2 } }
"""
    models.save(models.dense_chain(16, 2), tmp_path, "slow", config=config)
    server = BackgroundServer(tmp_path).start()
    address = server.address
    one = np.ones((1, 16), np.float32)
    Client(address).infer("slow", {"x": one})  # warm up
    model = server.running.dataplane.registry.get("slow")
    # The only instance holds its run until the queue has been seen full.
    held = hold(model.scheduler.instances[0], monkeypatch)

    async def until_in_flight(count: int) -> None:
        for _ in range(3000):
            if model.in_flight >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never {count} requests in flight")

    async def run():
        async with AsyncClient(address) as client:
            busy = asyncio.ensure_future(client.infer("slow", {"x": one}))
            await asyncio.to_thread(held.wait_entered)  # the instance has taken `busy`
            queued = [asyncio.ensure_future(client.infer("slow", {"x": 2 * one})) for _ in range(2)]
            await until_in_flight(3)  # both wait in the queue, which is now full
            refused = await asyncio.gather(*(client.infer("slow", {"x": one}) for _ in range(3)),
                                           return_exceptions=True)
            held.release()
            done = await asyncio.gather(busy, *queued, return_exceptions=True)
            after = await client.infer("slow", {"x": one})
            return refused, done, after

    try:
        refused, done, after = asyncio.run(run())
    finally:
        held.release()
        server.stop()
    assert all(isinstance(o, InferenceServerError) and o.code == grpc.StatusCode.RESOURCE_EXHAUSTED
               for o in refused), refused
    assert "queue is full" in refused[0].message and "model 'slow'" in refused[0].message
    assert all(isinstance(d, dict) for d in done), done  # the queued ones were not lost
    assert after["y"].shape == (1, 16)


def test_deadline_passing_in_the_queue_drops_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry(tmp_path, models.dense_chain(16, 2), "max_batch_size: 8\ndynamic_batching { }")
    scheduler = registry.get("m").scheduler
    one = np.ones((1, 16), np.float32)
    held = hold(scheduler.instances[0], monkeypatch)  # until the doomed request has expired

    async def run():
        busy = asyncio.ensure_future(scheduler.submit({"x": ("FP32", one)}, ["y"]))
        await asyncio.to_thread(held.wait_entered)
        doomed = asyncio.ensure_future(scheduler.submit({"x": ("FP32", one)}, ["y"], time.monotonic() + 0.01))
        good = asyncio.ensure_future(scheduler.submit({"x": ("FP32", 2 * one)}, ["y"]))
        await asyncio.sleep(0.05)  # the doomed request's deadline passes while it waits
        held.release()
        results = await asyncio.gather(busy, doomed, good, return_exceptions=True)
        await registry.close()
        return results

    try:
        busy, doomed, good = asyncio.run(run())
    finally:
        held.release()
    assert isinstance(busy, tuple), busy
    assert isinstance(doomed, DeadlineExceeded) and "deadline passed in the queue" in str(doomed)
    assert isinstance(good, tuple) and good[0]["y"].shape == (1, 16)
    assert good[1].batch_size == 1  # the expired request did not ride along


def test_the_queue_delay_counts_from_the_oldest_request(tmp_path: Path, monkeypatch) -> None:
    """As in Triton: a request that already waited the queue delay while the instance was busy
    runs as soon as the instance is free, with what queued behind it, not after another delay."""
    config = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 400000 }"
    registry = _registry(tmp_path, models.dense_chain(16, 2), config)
    scheduler = registry.get("m").scheduler
    one = np.ones((1, 16), np.float32)
    held = hold(scheduler.instances[0], monkeypatch)

    async def run():
        busy = asyncio.ensure_future(scheduler.submit({"x": ("FP32", one)}, ["y"]))
        await asyncio.to_thread(held.wait_entered)  # the first request waited its delay alone, and runs
        waiting = [asyncio.ensure_future(scheduler.submit({"x": ("FP32", one)}, ["y"])) for _ in range(2)]
        await asyncio.sleep(0.45)  # both have waited longer than the delay while the instance was busy
        released = time.monotonic()
        held.release()
        results = await asyncio.gather(busy, *waiting)
        waited = time.monotonic() - released
        await registry.close()
        return results, waited

    try:
        (_, *queued), waited = asyncio.run(run())
    finally:
        held.release()
    assert [timing.batch_size for _, timing in queued] == [2, 2]  # together, in one batch
    assert waited < 0.3, f"the queued requests waited another delay ({waited:.2f} s) once the instance was free"


def test_dynamic_batching_needs_max_batch_size(tmp_path: Path) -> None:
    models.save(models.batch_probe(), tmp_path, "m", config="dynamic_batching { }")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert "dynamic_batching needs max_batch_size > 0" in registry.entries()[0].error


PADDED_CONFIG = """
max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 20000 preferred_batch_size: [ 4, 8 ] }
parameters { key: "pad_batches" value { string_value: "true" } }
"""


def test_padded_batches_run_at_fixed_sizes_and_answer_exactly(tmp_path: Path, start_server) -> None:
    models.save(models.batch_probe(), tmp_path, "probe", config=PADDED_CONFIG)
    address = start_server(tmp_path)
    rng = np.random.default_rng(3)
    sizes = [1, 2, 1, 3, 5, 1, 2, 7, 1, 1, 9, 2]
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]

    async def send_all():
        async with AsyncClient(address) as client:
            return await asyncio.gather(*(client.infer("probe", {"x": x}) for x in xs))

    ran_with = set()
    for x, out in zip(xs, asyncio.run(send_all())):
        np.testing.assert_array_equal(out["y"], 2 * x)  # own rows only: padding rows never come back
        assert out["n"].shape == (len(x), 1)
        ran_with.add(int(out["n"][0, 0]))
    assert ran_with <= {4, 8, 16}, f"batches ran at {ran_with}, not at the pad sizes"


def test_pad_sizes() -> None:
    from modelport.server.scheduler import BatchingPolicy

    preferred = BatchingPolicy(16, preferred_batch_sizes=(8, 4, 32))
    assert preferred.pad_sizes() == (4, 8, 16) and preferred.padded(5) == 8 and preferred.padded(9) == 16
    powers = BatchingPolicy(24)
    assert powers.pad_sizes() == (1, 2, 4, 8, 16, 24) and powers.padded(3) == 4 and powers.padded(17) == 24
    assert BatchingPolicy(8).pads(on_gpu=True) and not BatchingPolicy(8).pads(on_gpu=False)
    assert BatchingPolicy(8, pad_batches=True).pads(on_gpu=False)
    assert not BatchingPolicy(8, pad_batches=False).pads(on_gpu=True)


def test_bad_pad_batches_parameter_fails_the_load(tmp_path: Path) -> None:
    config = ('max_batch_size: 8\ndynamic_batching { }\n'
              'parameters { key: "pad_batches" value { string_value: "maybe" } }')
    models.save(models.batch_probe(), tmp_path, "m", config=config)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert "parameter pad_batches must be auto, true or false, got 'maybe'" in registry.entries()[0].error
