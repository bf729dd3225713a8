"""Schedulers: how requests reach a model's instances.

`DirectScheduler` runs each request on the least busy instance. `BatchingScheduler` is Triton's
dynamic batcher: requests queue, merge along the batch axis up to max_batch_size or the queue
delay, run once, and are split back; a bounded queue pushes back with RESOURCE_EXHAUSTED and a
request whose deadline has passed is dropped before it runs. With a model's `pad_inputs`
(padding.py) requests of different lengths merge too: padded to one length, cut back after.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modelport.protocol.types import Tensor

from .errors import DeadlineExceeded, QueueFull
from .padding import Padder, Padding
from .runtime import OnnxModel
from .statistics import Timing, VersionStats

Results = dict[str, np.ndarray]


# A run predicted to take less than this goes inline on the event loop: handing it to a thread
# and back (executor submit, future chaining, the loop's self-pipe, a GIL hand-off) costs the loop
# more than that, and the loop is what bounds a small model's throughput (measured on 2 cores: the
# seed MLP, ~0.02 ms per run, went from 0.81x the minimal stub's requests/s to 1.09-1.29x).
INLINE_MAX_NS = 50_000


class Instance:
    """One ONNX Runtime session that runs one batch at a time, as in Triton: on its own thread,
    or inline on the event loop when the run is predicted to be shorter than the hop to a thread.

    The prediction is a fixed cost plus a cost per row, from warm-up runs (`expect`) measured
    before any traffic: times measured under load include waiting for the GIL (ONNX Runtime
    releases it while it runs and gRPC's poller thread takes it), so they overstate the cost.
    With no estimate (no warm-up ran), on a GPU, or under dynamic batching (where a batch running
    on the thread lets the loop gather the next one) every run uses the thread.
    """

    def __init__(self, model: OnnxModel, index: int, inline: bool = True) -> None:
        self.model = model
        self.on_gpu = model.providers[0] != "CPUExecutionProvider"
        # Runs handed to the thread and not finished there, oldest first (one worker: they finish
        # in order). Counted by their futures, not by their callers: a caller cancelled mid-run
        # leaves the thread busy, and the instance must say so.
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self.cost_ns: tuple[float, float] | None = None  # (fixed, per row) of one run
        self._inline = inline and not self.on_gpu
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{model.where}#{index}")

    def expect(self, seconds: float, rows: int, one_row_seconds: float | None = None) -> None:
        """Seed the run-time estimate: a warm-up run of `rows` rows took `seconds`, and one of a
        single row `one_row_seconds` (when measured). Without that second point a run of fewer
        rows is assumed to cost as much as the warm-up run: a fixed cost per call (common in
        real models) must not make a small request look cheap enough to run inline."""
        total, rows = seconds * 1e9, max(rows, 1)
        if rows == 1:
            self.cost_ns = (0.0, total)
        elif one_row_seconds is None:
            self.cost_ns = (total, total / rows)
        else:
            difference = total - one_row_seconds * 1e9
            # When timing noise makes the one-row run look as dear as the large one, the cost per
            # row is too small to measure: take its upper bound (the large run's time per row), so
            # that no batch size is ever predicted free and large batches still leave the loop.
            per_row = difference / (rows - 1) if difference > 0 else total / rows
            self.cost_ns = (max(one_row_seconds * 1e9 - per_row, 0.0), per_row)

    def predicted_ns(self, rows: int) -> float | None:
        """Predicted run time of `rows` rows, or None without a warm-up."""
        return None if self.cost_ns is None else self.cost_ns[0] + self.cost_ns[1] * rows

    async def run(
        self, inputs: dict[str, Tensor], outputs: Sequence[str], deadline: float | None = None, where: str = "",
        rows: int | None = None,
    ) -> tuple[Results, int, int]:
        """Run off the event loop unless it is very short: (results, start time, run time in ns).
        DeadlineExceeded when `deadline` (time.monotonic) passes while the run waits for the
        instance; a run that has started finishes, as in Triton."""
        if self.runs_inline(rows_of(inputs) if rows is None else rows):
            return self.timed(inputs, outputs, deadline, where)
        return await self._on_thread(self.timed, inputs, outputs, deadline, where)

    async def run_batch(
        self, merge: Callable[[list, int], dict[str, Tensor]], batch: list, rows: int, outputs: Sequence[str]
    ) -> tuple[Results, int, int, int]:
        """Merge `batch` into `rows` rows and run it, both on this instance's thread (a large
        batch's copy then keeps the event loop free; numpy releases the GIL while it copies):
        (results, start time, run time, merge time in ns)."""
        return await self._on_thread(self._merged_run, merge, batch, rows, outputs)

    @property
    def busy(self) -> int:
        """Runs handed to this instance's thread that have not finished."""
        self._forget_finished()
        return len(self._pending)

    def _forget_finished(self) -> None:
        # Finished futures hold their results (a batch's outputs): drop them at once.
        pending = self._pending
        while pending and pending[0].done():
            pending.popleft()

    async def _on_thread(self, function: Callable, *args):
        future = self._executor.submit(function, *args)
        self._pending.append(future)
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._forget_finished()

    def _merged_run(
        self, merge: Callable[[list, int], dict[str, Tensor]], batch: list, rows: int, outputs: Sequence[str]
    ) -> tuple[Results, int, int, int]:
        merge_start = time.perf_counter_ns()
        inputs = merge(batch, rows)
        start = time.perf_counter_ns()
        results = self.model.run(inputs, outputs)
        return results, start, time.perf_counter_ns() - start, start - merge_start

    def runs_inline(self, rows: int) -> bool:
        """Whether a run of `rows` rows goes inline on the event loop now: predicted shorter than
        the hop to the thread, and never while the thread holds a run (one batch at a time)."""
        cost = self.cost_ns  # predicted_ns(), written out: this runs for every request
        return self._inline and cost is not None and cost[0] + cost[1] * rows < INLINE_MAX_NS and not self.busy

    def timed(
        self, inputs: dict[str, Tensor], outputs: Sequence[str], deadline: float | None, where: str
    ) -> tuple[Results, int, int]:
        """Run on the calling thread: (results, start time, run time in ns); DeadlineExceeded
        first when `deadline` has passed."""
        if deadline is not None:
            _check_deadline(where or self.model.where, deadline)
        start = time.perf_counter_ns()
        results = self.model.run(inputs, outputs)
        return results, start, time.perf_counter_ns() - start

    def close(self) -> None:
        """Let queued work finish, stop the thread, and free the session's memory."""
        self._executor.shutdown(wait=True)
        self.model.release()


def _check_deadline(where: str, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"{where}: the request's deadline passed before it could run")


class DirectScheduler:
    """Every request runs by itself on the least busy instance."""

    def __init__(self, where: str, instances: Sequence[Instance], stats: VersionStats) -> None:
        self.where = where
        self.instances = list(instances)
        self.stats = stats

    async def submit(
        self, inputs: dict[str, Tensor], outputs: Sequence[str], deadline: float | None = None
    ) -> tuple[Results, Timing]:
        """Run one request; DeadlineExceeded if its deadline passes before it starts."""
        submitted = time.perf_counter_ns()
        instances = self.instances
        instance = instances[0] if len(instances) == 1 else min(instances, key=lambda i: i.busy)
        rows = rows_of(inputs)
        if instance.runs_inline(rows):  # no coroutine for the common small-model case
            results, started, infer_ns = instance.timed(inputs, outputs, deadline, self.where)
        else:
            results, started, infer_ns = await instance.run(inputs, outputs, deadline, self.where, rows)
        self.stats.record_execution(rows, 0, infer_ns)
        return results, Timing(started - submitted, 0, infer_ns, rows)

    async def close(self) -> None:
        """Stop the instances' threads once their work is done."""
        for instance in self.instances:
            await asyncio.to_thread(instance.close)


@dataclass
class _Pending:
    inputs: dict[str, Tensor]
    outputs: Sequence[str]
    size: int
    key: tuple
    deadline: float | None
    future: asyncio.Future = field(repr=False)
    submitted: int = field(default_factory=time.perf_counter_ns)


@dataclass(frozen=True)
class BatchingPolicy:
    """config.pbtxt's dynamic_batching, with max_batch_size."""

    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0: unbounded, as in Triton
    pad_batches: bool | None = None  # None: on GPU instances only
    padding: Padding | None = None  # variable-length inputs (pad_inputs); None: shapes must match

    def pads(self, on_gpu: bool) -> bool:
        """Whether batches run padded: as configured, else on GPU instances only. (ONNX Runtime's
        CUDA provider spends ~100 ms on every new input shape, so there batches run at a few
        fixed sizes; the padding rows are zeros and their outputs are dropped.)"""
        return self.pad_batches if self.pad_batches is not None else on_gpu

    def pad_sizes(self) -> tuple[int, ...]:
        """The batch sizes padded batches run at: the preferred sizes, else powers of two, and
        max_batch_size (a few shapes, each seen at warm-up)."""
        fitting = sorted({p for p in self.preferred_batch_sizes if 0 < p <= self.max_batch_size})
        if not fitting:
            fitting = [1 << i for i in range(self.max_batch_size.bit_length()) if 1 << i < self.max_batch_size]
        return (*[p for p in fitting if p < self.max_batch_size], self.max_batch_size)

    def padded(self, rows: int) -> int:
        """The smallest pad size that holds `rows`."""
        return next(size for size in self.pad_sizes() if size >= rows)

    @property
    def target(self) -> int:
        """The batch size worth waiting for: the largest preferred one, else the maximum."""
        fitting = [p for p in self.preferred_batch_sizes if 0 < p <= self.max_batch_size]
        return max(fitting) if fitting else self.max_batch_size


class BatchingScheduler:
    """Dynamic batching over a model's instances (one batch per instance at a time)."""

    def __init__(
        self,
        where: str,
        instances: Sequence[Instance],
        stats: VersionStats,
        policy: BatchingPolicy,
        outputs: Sequence[str],
    ) -> None:
        self.where = where
        self.stats = stats
        self.instances = list(instances)
        self.policy = policy
        self._all_outputs = list(outputs)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._free: asyncio.Queue[Instance] = asyncio.Queue()
        for instance in self.instances:
            self._free.put_nowait(instance)
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None  # started by the first request, on the serving loop
        # None for fixed shapes, the fast path: submit and the split then do exactly what they did
        # before variable lengths existed.
        self._padder = None if policy.padding is None else Padder(where, policy.padding)
        self._merge = _merge if self._padder is None else self._padded_merge
        self._delay_ns = int(policy.max_queue_delay_s * 1e9)

    async def submit(
        self, inputs: dict[str, Tensor], outputs: Sequence[str], deadline: float | None = None
    ) -> tuple[Results, Timing]:
        """Queue one request and wait for its share of a batch."""
        _check_deadline(self.where, deadline)
        if self.policy.max_queue_size and len(self._queue) >= self.policy.max_queue_size:
            raise QueueFull(f"{self.where}: queue is full ({self.policy.max_queue_size} requests waiting); retry later")
        size = rows_of(inputs)
        if self._padder is None:
            key = tuple((name, dt, array.shape[1:]) for name, (dt, array) in sorted(inputs.items()))
        else:  # InvalidInput, before it queues, when its padded inputs disagree in length
            key = self._padder.key(inputs)
        loop = asyncio.get_running_loop()
        if self._loop_task is None:
            self._loop_task = loop.create_task(self._batch_loop(), name=f"batcher {self.where}")
        future = loop.create_future()
        self._queue.append(_Pending(inputs, outputs, size, key, deadline, future))
        self._arrived.set()
        return await future

    async def _batch_loop(self) -> None:
        while True:
            instance = await self._free.get()
            batch = await self._collect()
            task = asyncio.get_running_loop().create_task(self._run(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Pending]:
        """Wait for the first request, then for the batch to fill until the oldest queued request
        has waited the queue delay (Triton's rule: the delay counts from the oldest request's
        arrival, so a request that waited while the instances were busy runs as soon as one is
        free, with whatever has queued behind it)."""
        while not self._live_head():
            self._arrived.clear()
            await self._arrived.wait()
        until = self._queue[0].submitted + self._delay_ns
        while (remaining := until - time.perf_counter_ns()) > 0 and self._queued_size() < self.policy.target:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining / 1e9)
            except TimeoutError:
                break
        return self._take()

    def _live_head(self) -> bool:
        """Drop cancelled and expired requests from the front; is a live one left?"""
        now = time.monotonic()
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                self._queue.popleft()
            elif head.deadline is not None and now >= head.deadline:
                self._queue.popleft()
                head.future.set_exception(DeadlineExceeded(f"{self.where}: the request's deadline passed in the queue"))
            else:
                return True
        return False

    def _queued_size(self) -> int:
        if self._padder is not None:
            # Requests of other buckets cannot join the head's batch but are the next batches'
            # work: once a full batch of work waits, waiting for more of the head's bucket only
            # leaves the instance idle (measured in process on benchmarks/varlen.py's encoder, hidden
            # 64, 4 buckets, 1 ms delay, 16 requests outstanding: 1,300 -> 2,300 items/s).
            return sum(p.size for p in self._queue if not p.future.done())
        key = self._queue[0].key if self._queue else None
        return sum(p.size for p in self._queue if p.key == key and not p.future.done())

    def _take(self) -> list[_Pending]:
        """Requests of the head's shape, in order, up to max_batch_size; others keep their place."""
        if not self._live_head():
            return []
        key, now = self._queue[0].key, time.monotonic()
        batch, kept, total = [], collections.deque(), 0
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExceeded(f"{self.where}: the request's deadline passed in the queue"))
            elif item.key == key and total + item.size <= self.policy.max_batch_size:
                batch.append(item)
                total += item.size
            else:
                kept.append(item)
        self._queue = kept
        return batch

    async def _run(self, instance: Instance, batch: list[_Pending]) -> None:
        try:
            if not batch:
                return
            wanted = [o for o in self._all_outputs if any(o in p.outputs for p in batch)]
            total = sum(item.size for item in batch)
            rows = self.policy.padded(total) if self.policy.pads(instance.on_gpu) else total
            try:
                results, started, infer_ns, input_ns = await instance.run_batch(self._merge, batch, rows, wanted)
            except Exception as exc:  # fail exactly the requests of this batch
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            self.stats.record_execution(total, input_ns, infer_ns)
            offset, padder = 0, self._padder
            for item in batch:
                if not item.future.done():
                    timing = Timing(started - item.submitted - input_ns, input_ns, infer_ns, total)
                    own = {o: results[o][offset : offset + item.size] for o in item.outputs}
                    item.future.set_result((own if padder is None else padder.cut(own, item.inputs), timing))
                offset += item.size
        finally:
            self._free.put_nowait(instance)

    def _padded_merge(self, batch: list[_Pending], rows: int) -> dict[str, Tensor]:
        """_merge for variable lengths: each request padded to the batch's length (or bucket)."""
        return self._padder.merge([p.inputs for p in batch], [p.size for p in batch], rows)

    async def close(self) -> None:
        """Finish running batches, fail what is still queued, stop the instances."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded(f"{self.where}: unloaded before the request ran"))
        for instance in self.instances:
            await asyncio.to_thread(instance.close)


def rows_of(inputs: dict[str, Tensor]) -> int:
    """Rows of a request: the first dimension of its inputs (1 for scalars)."""
    array = next(iter(inputs.values()))[1]
    return int(array.shape[0]) if array.ndim else 1


def _merge(batch: list[_Pending], rows: int) -> dict[str, Tensor]:
    """The requests' inputs concatenated along the batch axis, then zero rows (empty for BYTES)
    up to `rows`."""
    if len(batch) == 1 and batch[0].size == rows:
        return batch[0].inputs
    merged = {}
    for name, (datatype, first) in batch[0].inputs.items():
        parts = [p.inputs[name][1] for p in batch]
        extra = rows - sum(p.size for p in batch)
        if extra > 0:
            parts.append(np.full((extra, *first.shape[1:]), b"" if first.dtype == object else 0, dtype=first.dtype))
        merged[name] = (datatype, np.concatenate(parts))
    return merged
