"""Per model-version statistics, as Triton's ModelStatistics reports them.

Durations are cumulative (count, nanoseconds) and also kept as histograms, which the Prometheus
endpoint reads at scrape time: the request path only adds numbers (no locks, no metric objects),
because every lock and call there costs throughput. All updates happen on the event loop thread.
Phases: queue = waiting for an instance (and the batcher); compute_input =
preparing the run (merging a batch); compute_infer = the ONNX Runtime run on the instance's
thread; compute_output = splitting the batch and shaping outputs.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import NamedTuple

# Histogram bucket bounds, from 100 µs to 60 s: a tiny MLP on CPU to a large batch on a busy GPU.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60
)
_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS_S)


@dataclass
class Duration:
    """How many, and how long in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        """Count one more of `ns` nanoseconds."""
        self.count += 1
        self.ns += ns


@dataclass
class TimedDuration(Duration):
    """A Duration that also counts observations per latency bucket (non-cumulative; the last
    slot is above the largest bound)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BOUNDS_NS) + 1))

    def add(self, ns: int) -> None:
        """Count one more of `ns` nanoseconds, in its bucket too."""
        self.count += 1
        self.ns += ns
        self.buckets[bisect.bisect_left(_BOUNDS_NS, ns)] += 1


@dataclass
class BatchStats:
    """Executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class Timing(NamedTuple):
    """What one request spent in the scheduler and on the instance (a tuple: made per request)."""

    queue_ns: int
    input_ns: int
    infer_ns: int
    batch_size: int


@dataclass
class VersionStats:
    """Counters of one model version since it was loaded."""

    success: TimedDuration = field(default_factory=TimedDuration)  # end-to-end time of successful requests
    fail: Duration = field(default_factory=Duration)
    queue: TimedDuration = field(default_factory=TimedDuration)
    compute_input: TimedDuration = field(default_factory=TimedDuration)
    compute_infer: TimedDuration = field(default_factory=TimedDuration)
    compute_output: TimedDuration = field(default_factory=TimedDuration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # by gRPC status code name
    classes: dict[int, int] = field(default_factory=dict)  # predicted class -> rows

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int) -> None:
        """One run of the session on `batch_size` rows."""
        self.execution_count += 1
        stats = self.batches.get(batch_size)
        if stats is None:  # not setdefault(): that would build a BatchStats on every call
            stats = self.batches[batch_size] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)

    def record_success(self, total_ns: int, timing: Timing, output_ns: int, rows: int) -> None:
        """A request that completed: its phases, and the output time of its batch size."""
        bisect_left, bounds = bisect.bisect_left, _BOUNDS_NS
        # One loop instead of five TimedDuration.add calls: this runs for every request.
        for duration, ns in ((self.success, total_ns), (self.queue, timing.queue_ns),
                             (self.compute_input, timing.input_ns), (self.compute_infer, timing.infer_ns),
                             (self.compute_output, output_ns)):  # fmt: skip
            duration.count += 1
            duration.ns += ns
            duration.buckets[bisect_left(bounds, ns)] += 1
        batch = self.batches.get(timing.batch_size)
        if batch is None:
            batch = self.batches[timing.batch_size] = BatchStats()
        batch.compute_output.add(output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int, code: str) -> None:
        """A request that reached the model and failed with status `code`."""
        self.fail.add(total_ns)
        self.failures[code] = self.failures.get(code, 0) + 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_classes(self, counts) -> None:
        """Rows per predicted class of one request (index = class)."""
        for cls, count in enumerate(counts):
            if count:
                self.classes[cls] = self.classes.get(cls, 0) + int(count)
