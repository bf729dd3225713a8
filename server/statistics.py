"""Per model-version statistics, as Triton's ModelStatistics reports them.

Durations are cumulative (count, nanoseconds). All updates happen on the event loop thread, so
no locking is needed. Phases: queue = waiting for an instance (and the batcher); compute_input =
preparing the run (merging a batch); compute_infer = the ONNX Runtime run on the instance's
thread; compute_output = splitting the batch and shaping outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
class BatchStats:
    """Executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(frozen=True)
class Timing:
    """What one request spent in the scheduler and on the instance."""

    queue_ns: int
    input_ns: int
    infer_ns: int
    batch_size: int


@dataclass
class VersionStats:
    """Counters of one model version since it was loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    on_execution: Callable[[int], None] | None = field(default=None, repr=False)  # metrics hook

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int) -> None:
        """One run of the session on `batch_size` rows."""
        self.execution_count += 1
        if self.on_execution is not None:
            self.on_execution(batch_size)
        stats = self.batches.setdefault(batch_size, BatchStats())
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)

    def record_output(self, batch_size: int, output_ns: int) -> None:
        """Time spent splitting one batch's outputs."""
        self.batches.setdefault(batch_size, BatchStats()).compute_output.add(output_ns)

    def record_success(self, total_ns: int, timing: Timing, output_ns: int, rows: int) -> None:
        """A request that completed."""
        self.success.add(total_ns)
        self.queue.add(timing.queue_ns)
        self.compute_input.add(timing.input_ns)
        self.compute_infer.add(timing.infer_ns)
        self.compute_output.add(output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        """A request that reached the model and failed."""
        self.fail.add(total_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
