"""Schedulers in process, on real tiny ONNX Runtime sessions: the direct scheduler's choice of
instance and its deadline, and the dynamic batcher's merge and split, max_batch_size, shapes kept
apart, failures kept inside their batch, deadlines in the queue, the bounded queue, padding and
close. Instances are held inside their runs (tests/hold.py) so that every queue is built
deterministically, and the tests wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from modelport.server.errors import DeadlineExceeded, InferenceFailed, QueueFull
from modelport.server.runtime import OnnxModel, SessionOptions
from modelport.server.scheduler import BatchingPolicy, BatchingScheduler, DirectScheduler, Instance
from modelport.server.statistics import VersionStats
from tests import models
from tests.hold import Held, hold
from tests.server.inproc import until, until_past, within

WHERE = "model 'm' version 1"
RNG = np.random.default_rng(5)


def instances(tmp_path: Path, model: onnx.ModelProto, count: int = 1) -> list[Instance]:
    """`count` instances of `model`, each with its own session; no warm-up, so every run goes
    to the instance's thread."""
    path = models.save(model, tmp_path, "m")
    return [Instance(OnnxModel(path, SessionOptions(intra_op_threads=1), WHERE), i) for i in range(count)]


def batcher(tmp_path: Path, model: onnx.ModelProto, **policy) -> BatchingScheduler:
    instance = instances(tmp_path, model)[0]
    outputs = [t.name for t in instance.model.signature.outputs]
    return BatchingScheduler(WHERE, [instance], VersionStats(), BatchingPolicy(**policy), outputs)


def rows(n: int, width: int = 3) -> np.ndarray:
    return RNG.normal(size=(n, width)).astype(np.float32)


def submit(scheduler, x: np.ndarray, outputs: Sequence[str] = ("y", "n"), deadline: float | None = None,
           name: str = "x"):
    datatype = "BYTES" if x.dtype == object else "INT64" if x.dtype == np.int64 else "FP32"
    return asyncio.ensure_future(scheduler.submit({name: (datatype, x)}, list(outputs), deadline))


async def start_held(scheduler: BatchingScheduler, held: Held, x: np.ndarray, **kwargs) -> asyncio.Future:
    """Submit `x` and wait until the instance runs it and holds: the queue is empty and the
    instance busy, so what is submitted next waits in the queue."""
    task = submit(scheduler, x, **kwargs)
    await asyncio.to_thread(held.wait_entered)
    return task


async def queued(scheduler: BatchingScheduler, count: int) -> None:
    """Wait until `count` requests wait in the batcher's queue."""
    await until(lambda: sum(not p.future.done() for p in scheduler._queue) == count, f"{count} requests are queued")


def ran_with(results: dict) -> set[int]:
    """The batch sizes the session ran with (batch_probe's `n` output)."""
    return {int(v) for v in results["n"].reshape(-1)}


# ---------------------------------------------------------------- direct scheduler


def test_direct_scheduler_runs_each_request_on_the_least_busy_instance(tmp_path: Path, monkeypatch) -> None:
    pair = instances(tmp_path, models.scale(2.0), count=2)
    scheduler = DirectScheduler(WHERE, pair, VersionStats())
    ran: list[list[float]] = [[], []]
    gates = []
    for index, instance in enumerate(pair):
        gates.append(hold(instance, monkeypatch))
        held_run = instance.model.run

        def record(inputs, outputs, index=index, held_run=held_run):
            ran[index].append(float(inputs["x"][1][0, 0]))
            return held_run(inputs, outputs)

        monkeypatch.setattr(instance.model, "run", record)

    async def run():
        try:
            first = submit(scheduler, np.full((1, 3), 1.0, np.float32), ["y"])
            await until(lambda: ran[0] == [1.0], "instance 0 runs the first request")
            second = submit(scheduler, np.full((1, 3), 2.0, np.float32), ["y"])
            await until(lambda: ran[1] == [2.0], "instance 1 runs the second request")  # 0 was busy
            third = submit(scheduler, np.full((1, 3), 3.0, np.float32), ["y"])  # both busy: the first one
            await until(lambda: pair[0].busy == 2, "the third request waits for instance 0")
            gates[1].release()
            await within(second)
            fourth = await within(submit(scheduler, np.full((1, 3), 4.0, np.float32), ["y"]))  # instance 1 is idle now
            assert not first.done() and not third.done()  # instance 0 still holds them
        finally:
            for gate in gates:
                gate.release()
        answers = await asyncio.gather(first, second, third)
        await scheduler.close()
        return [a[0]["y"][0, 0] for a in answers] + [fourth[0]["y"][0, 0]]

    assert asyncio.run(run()) == [2.0, 4.0, 6.0, 8.0]
    assert ran == [[1.0, 3.0], [2.0, 4.0]]
    assert scheduler.stats.execution_count == 4 and sorted(scheduler.stats.batches) == [1]


def test_an_instance_still_running_a_cancelled_request_counts_as_busy(tmp_path: Path, monkeypatch) -> None:
    pair = instances(tmp_path, models.scale(2.0), count=2)
    scheduler = DirectScheduler(WHERE, pair, VersionStats())
    held = hold(pair[0], monkeypatch)
    ran: list[int] = []
    for index, instance in enumerate(pair):
        inner = instance.model.run

        def record(inputs, outputs, index=index, inner=inner):
            ran.append(index)
            return inner(inputs, outputs)

        monkeypatch.setattr(instance.model, "run", record)

    async def run():
        try:
            cancelled = submit(scheduler, rows(1), ["y"])
            await asyncio.to_thread(held.wait_entered)  # instance 0 runs it, and holds
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            assert pair[0].busy == 1, "instance 0 still runs the cancelled request but counts as idle"
            await within(submit(scheduler, rows(1), ["y"]))  # must go to the idle instance 1
        finally:
            held.release()
            await scheduler.close()

    asyncio.run(run())
    assert ran == [0, 1]


def test_direct_scheduler_drops_a_request_whose_deadline_passed_while_it_waited(tmp_path: Path, monkeypatch) -> None:
    (instance,) = instances(tmp_path, models.scale(2.0))
    scheduler = DirectScheduler(WHERE, [instance], VersionStats())
    held = hold(instance, monkeypatch)
    x = rows(2)

    async def run():
        try:
            with pytest.raises(DeadlineExceeded):  # already expired: never runs
                await scheduler.submit({"x": ("FP32", x)}, ["y"], time.monotonic() - 1)
            first_deadline = time.monotonic() + 0.1
            started = submit(scheduler, x, ["y"], deadline=first_deadline)
            await asyncio.to_thread(held.wait_entered)
            waiting = submit(scheduler, x, ["y"], deadline=time.monotonic() + 0.01)
            await until_past(first_deadline)  # both deadlines pass: one run has started, one waits
        finally:
            held.release()
        outcome = await asyncio.gather(started, waiting, return_exceptions=True)
        await scheduler.close()
        return outcome

    (results, timing), dropped = asyncio.run(run())
    np.testing.assert_array_equal(results["y"], 2 * x)  # a run that has started finishes
    assert timing.batch_size == 2 and timing.infer_ns > 0
    assert isinstance(dropped, DeadlineExceeded)
    assert str(dropped) == f"{WHERE}: the request's deadline passed before it could run"
    assert scheduler.stats.execution_count == 1


# ---------------------------------------------------------------- dynamic batching


def test_requests_of_one_shape_merge_into_one_run_and_split_exactly(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=8)
    held = hold(scheduler.instances[0], monkeypatch)
    first, xs = rows(1), [rows(1), rows(3), rows(2)]
    wanted = [["y"], ["n"], ["y", "n"]]

    async def run():
        try:
            alone = await start_held(scheduler, held, first)
            merged = [submit(scheduler, x, outputs) for x, outputs in zip(xs, wanted)]
            await queued(scheduler, 3)
        finally:
            held.release()
        answers = await asyncio.gather(alone, *merged)
        await scheduler.close()
        return answers

    (alone, alone_timing), *answers = asyncio.run(run())
    np.testing.assert_array_equal(alone["y"], 2 * first)
    assert ran_with(alone) == {1} and alone_timing.batch_size == 1
    for x, outputs, (results, timing) in zip(xs, wanted, answers):
        assert sorted(results) == sorted(outputs)  # each request gets the outputs it asked for
        if "y" in results:
            np.testing.assert_array_equal(results["y"], 2 * x)  # exactly its own rows
        if "n" in results:
            assert results["n"].shape == (len(x), 1) and ran_with(results) == {6}  # one run of 1 + 3 + 2 rows
        assert timing.batch_size == 6
    assert scheduler.stats.execution_count == 2 and sorted(scheduler.stats.batches) == [1, 6]


def test_batches_never_exceed_max_batch_size(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=4)
    held = hold(scheduler.instances[0], monkeypatch)
    sizes = [2, 2, 3, 2, 1]
    xs = [rows(n) for n in sizes]

    async def run():
        try:
            alone = await start_held(scheduler, held, rows(4))
            waiting = [submit(scheduler, x) for x in xs]
            await queued(scheduler, len(xs))
        finally:
            held.release()
        answers = await asyncio.gather(alone, *waiting)
        await scheduler.close()
        return answers[1:]

    answers = asyncio.run(run())
    for x, (results, timing) in zip(xs, answers):
        np.testing.assert_array_equal(results["y"], 2 * x)
        assert ran_with(results) == {timing.batch_size} and timing.batch_size <= 4
    # In arrival order, each batch filled up to 4 rows with the requests that still fit:
    # [2, 2], then [3, 1] (the 2 after the 3 does not fit and waits), then [2].
    assert [timing.batch_size for _, timing in answers] == [4, 4, 4, 2, 4]
    assert scheduler.stats.execution_count == 4


def test_requests_of_different_shapes_are_batched_apart(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.identity(TensorProto.FLOAT, (None, None)), max_batch_size=8)
    held = hold(scheduler.instances[0], monkeypatch)
    xs = [np.full((1, 2 + i % 2), i, np.float32) for i in range(6)]  # widths 2, 3, 2, 3, 2, 3

    async def run():
        try:
            alone = await start_held(scheduler, held, np.zeros((1, 4), np.float32), outputs=["y"])
            waiting = [submit(scheduler, x, ["y"]) for x in xs]
            await queued(scheduler, len(xs))
        finally:
            held.release()
        answers = await asyncio.gather(alone, *waiting)
        await scheduler.close()
        return answers[1:]

    answers = asyncio.run(run())
    for x, (results, timing) in zip(xs, answers):
        np.testing.assert_array_equal(results["y"], x)
        assert timing.batch_size == 3  # the three requests of its own width
    assert scheduler.stats.execution_count == 3


def test_a_failing_batch_fails_exactly_its_own_requests(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.gather_rows(), max_batch_size=4)
    held = hold(scheduler.instances[0], monkeypatch)
    index = lambda i: np.array([[i]], np.int64)  # noqa: E731
    doomed, after = [0, 1, 7, 2], [2, 1]  # 7 is out of the 3-entry table

    async def run():
        try:
            first = await start_held(scheduler, held, index(0), outputs=["y"], name="idx")
            waiting = [submit(scheduler, index(i), ["y"], name="idx") for i in doomed + after]
            await queued(scheduler, len(waiting))
        finally:
            held.release()
        answers = await asyncio.gather(first, *waiting, return_exceptions=True)
        await scheduler.close()
        return answers

    first, *answers = asyncio.run(run())
    assert first[0]["y"].tolist() == [[10.0]]
    failed, good = answers[: len(doomed)], answers[len(doomed) :]
    assert all(isinstance(a, InferenceFailed) for a in failed), failed
    assert str(failed[0]).startswith(f"{WHERE}: ONNX Runtime failed")
    assert [a[0]["y"].tolist() for a in good] == [[[30.0]], [[20.0]]]
    assert all(a[1].batch_size == 2 for a in good)
    assert scheduler.stats.execution_count == 2  # the failed run is not counted as an execution


def test_a_request_whose_deadline_passes_in_the_queue_never_runs(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=8)
    held = hold(scheduler.instances[0], monkeypatch)
    good_x = rows(2)

    async def run():
        with pytest.raises(DeadlineExceeded) as expired:
            await scheduler.submit({"x": ("FP32", rows(1))}, ["y"], time.monotonic() - 1)
        assert str(expired.value) == f"{WHERE}: the request's deadline passed before it could run"
        try:
            busy = await start_held(scheduler, held, rows(1))
            deadline = time.monotonic() + 0.01
            doomed = submit(scheduler, rows(1), deadline=deadline)
            good = submit(scheduler, good_x)
            await queued(scheduler, 2)
            await until_past(deadline)
        finally:
            held.release()
        answers = await asyncio.gather(busy, doomed, good, return_exceptions=True)
        await scheduler.close()
        return answers

    busy, doomed, (results, timing) = asyncio.run(run())
    assert ran_with(busy[0]) == {1}
    assert (isinstance(doomed, DeadlineExceeded)
            and str(doomed) == f"{WHERE}: the request's deadline passed in the queue")
    np.testing.assert_array_equal(results["y"], 2 * good_x)
    assert timing.batch_size == 2 and ran_with(results) == {2}  # the expired request did not ride along


def test_a_full_queue_refuses_new_requests(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=8, max_queue_size=2)
    held = hold(scheduler.instances[0], monkeypatch)

    async def run():
        try:
            busy = await start_held(scheduler, held, rows(1))  # running, no longer queued
            waiting = [submit(scheduler, rows(1)) for _ in range(2)]
            await queued(scheduler, 2)
            for _ in range(3):
                with pytest.raises(QueueFull) as refused:
                    await within(scheduler.submit({"x": ("FP32", rows(1))}, ["y"]))
                assert str(refused.value) == f"{WHERE}: queue is full (2 requests waiting); retry later"
        finally:
            held.release()
        answers = await asyncio.gather(busy, *waiting)
        after = await scheduler.submit({"x": ("FP32", rows(3))}, ["n"])  # room again
        await scheduler.close()
        return answers, after

    answers, after = asyncio.run(run())
    assert [a[1].batch_size for a in answers] == [1, 2, 2]  # the queued two ran together
    assert ran_with(after[0]) == {3}


PADDED = dict(max_batch_size=16, preferred_batch_sizes=(4, 8), pad_batches=True)


@pytest.mark.parametrize("size, padded", [(1, 4), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)])
def test_padded_batches_run_at_the_pad_sizes_and_drop_the_padding(tmp_path: Path, size: int, padded: int) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), **PADDED)
    x = rows(size)

    async def run():
        answer = await scheduler.submit({"x": ("FP32", x)}, ["y", "n"])
        await scheduler.close()
        return answer

    results, timing = asyncio.run(run())
    np.testing.assert_array_equal(results["y"], 2 * x)  # own rows only: no padding row comes back
    assert results["n"].shape == (size, 1) and ran_with(results) == {padded}
    assert timing.batch_size == size  # what the requests brought, not the padding
    assert sorted(scheduler.stats.batches) == [size]


def test_padding_applies_to_merged_batches_and_bytes(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), **PADDED)
    held = hold(scheduler.instances[0], monkeypatch)
    xs = [rows(2), rows(3)]
    words = batcher(tmp_path / "words", models.identity(TensorProto.STRING, (None, 2)), **PADDED)
    text = np.array([[b"a", "é".encode()], [b"", b"bc"], [b"d", b"e"]], dtype=object)
    seen_by_session: list[int] = []
    real_run = words.instances[0].model.run

    def spy(inputs, outputs):
        seen_by_session.append(len(inputs["x"][1]))
        return real_run(inputs, outputs)

    monkeypatch.setattr(words.instances[0].model, "run", spy)

    async def run():
        try:
            busy = await start_held(scheduler, held, rows(1))
            waiting = [submit(scheduler, x) for x in xs]
            await queued(scheduler, 2)
        finally:
            held.release()
        answers = await asyncio.gather(busy, *waiting)
        echoed = await words.submit({"x": ("BYTES", text)}, ["y"])
        for s in (scheduler, words):
            await s.close()
        return answers, echoed

    answers, (echoed, _) = asyncio.run(run())
    assert ran_with(answers[0][0]) == {4}
    for x, (results, timing) in zip(xs, answers[1:]):
        np.testing.assert_array_equal(results["y"], 2 * x)
        assert ran_with(results) == {8} and timing.batch_size == 5  # 2 + 3 rows, padded to 8
    assert seen_by_session == [4]  # three rows of text padded with empty strings to 4
    assert echoed["y"].tolist() == text.tolist()


def test_without_padding_on_cpu_batches_run_at_their_own_size(tmp_path: Path) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=16, preferred_batch_sizes=(4, 8))
    assert not scheduler.policy.pads(scheduler.instances[0].on_gpu)  # auto: pads on GPU instances only

    async def run():
        answer = await scheduler.submit({"x": ("FP32", rows(3))}, ["n"])
        await scheduler.close()
        return answer

    assert ran_with(asyncio.run(run())[0]) == {3}


def test_close_finishes_the_running_batch_and_fails_the_queued_ones(tmp_path: Path, monkeypatch) -> None:
    scheduler = batcher(tmp_path, models.batch_probe(), max_batch_size=8)
    instance = scheduler.instances[0]
    held = hold(instance, monkeypatch)
    threads: list[threading.Thread] = []
    held_run = instance.model.run

    def record(inputs, outputs):
        threads.append(threading.current_thread())
        return held_run(inputs, outputs)

    monkeypatch.setattr(instance.model, "run", record)
    x = rows(2)

    async def run():
        try:
            running = await start_held(scheduler, held, x)
            waiting = submit(scheduler, rows(1))
            await queued(scheduler, 1)
            closing = asyncio.ensure_future(scheduler.close())
            await until(lambda: scheduler._loop_task.cancelled(), "the batcher has stopped taking requests")
            assert not closing.done()  # it waits for the running batch
        finally:
            held.release()
        await closing
        return await asyncio.gather(running, waiting, return_exceptions=True)

    (results, _), dropped = asyncio.run(run())
    np.testing.assert_array_equal(results["y"], 2 * x)
    assert isinstance(dropped, DeadlineExceeded) and str(dropped) == f"{WHERE}: unloaded before the request ran"
    assert len(threads) == 1 and threads[0].name.startswith(WHERE)
    assert not threads[0].is_alive()  # the instance's thread has stopped


def test_finished_runs_are_not_kept(tmp_path: Path) -> None:
    """The futures behind `busy` hold their results: once answered, none stays referenced (a
    batching instance never reads `busy`, so nothing else would drop them)."""
    (instance,) = instances(tmp_path, models.scale(2.0), count=1)

    async def run():
        for _ in range(20):
            await instance.run_batch(lambda batch, rows: batch, {"x": ("FP32", rows(4))}, 4, ["y"])
        assert len(instance._pending) == 0 and instance.busy == 0

    asyncio.run(run())
    instance.close()
