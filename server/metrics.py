"""Prometheus metrics, on an injected registry (no global state), served on --metrics-port.

Names follow Triton's nv_inference_* in spirit with our own prefix. Durations are histograms,
not averaged gauges, so `rate()` over them (and an HPA on queue time) sees what really happened.
"""

from __future__ import annotations

import logging

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.process_collector import ProcessCollector

from .quality import Scores
from .statistics import Timing

log = logging.getLogger(__name__)

LABELS = ("model", "version")
# From 100 µs to 60 s: covers a tiny MLP on CPU and a large batch on a busy GPU.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")


class Metrics:
    """Every metric the server exports, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, int], _VersionMetrics] = {}
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        r = self.registry
        self.success = Counter("modelport_inference_request_success", "Requests that succeeded", LABELS, registry=r)
        self.failure = Counter(
            "modelport_inference_request_failure", "Requests that failed, by gRPC status code", (*LABELS, "code"), registry=r
        )
        self.inferences = Counter("modelport_inference_count", "Inferences performed (rows of a batch each count)", LABELS, registry=r)
        self.executions = Counter("modelport_inference_exec_count", "Model executions (a dynamic batch counts once)", LABELS, registry=r)
        self.pending = Gauge("modelport_inference_pending_requests", "Requests received and not yet answered", LABELS, registry=r)
        self.request_time = self._histogram("modelport_request_duration_seconds", "End-to-end time of a request in the server")
        self.queue_time = self._histogram("modelport_queue_duration_seconds", "Time waiting for an instance (and the batcher)")
        self.input_time = self._histogram("modelport_compute_input_duration_seconds", "Time preparing inputs (merging a batch)")
        self.infer_time = self._histogram("modelport_compute_infer_duration_seconds", "Time in ONNX Runtime")
        self.output_time = self._histogram("modelport_compute_output_duration_seconds", "Time shaping outputs")
        self.batch_size = Histogram(
            "modelport_batch_size", "Rows per model execution", LABELS, buckets=BATCH_BUCKETS, registry=r
        )
        self.state = Gauge("modelport_model_state", "1 for the state a model version is in", (*LABELS, "state"), registry=r)
        self.load_failures = Counter(
            "modelport_model_load_failures", "Model version loads that failed (reason in RepositoryIndex and the log)",
            LABELS, registry=r,
        )
        quality = ("model",)
        self.quality_gauges = {
            name: Gauge(f"modelport_quality_{name}", f"Rolling {doc} over the labelled-feedback window", quality, registry=r)
            for name, doc in (("accuracy", "accuracy"), ("precision", "macro precision"), ("recall", "macro recall"),
                              ("f1", "macro F1"), ("window", "number of labelled rows in"))
        }
        self.predicted_class = Counter(
            "modelport_predicted_class", "Predicted classes of classifier outputs (argmax, or sigmoid >= 0.5)",
            (*LABELS, "class"), registry=r,
        )
        self.feedback_labels = Counter("modelport_feedback_labels", "Labelled rows paired with a prediction", quality, registry=r)
        self.feedback_unknown = Counter(
            "modelport_feedback_unknown", "Label reports for ids not waiting (unknown, expired or repeated)", quality, registry=r
        )

    def _histogram(self, name: str, doc: str) -> Histogram:
        return Histogram(name, doc, LABELS, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _bound(self, model: str, version: int) -> "_VersionMetrics":
        # labels() costs a lock and a tuple hash per call; a request touches ~10 children.
        key = (model, version)
        bound = self._children.get(key)
        if bound is None:
            bound = self._children[key] = _VersionMetrics(self, model, str(version))
        return bound

    def request_started(self, model: str, version: int) -> None:
        """A request resolved to this version."""
        self._bound(model, version).pending.inc()

    def request_finished(self, model: str, version: int) -> None:
        """It was answered (either way)."""
        self._bound(model, version).pending.dec()

    def succeeded(self, model: str, version: int, total_ns: int, timing: Timing, output_ns: int, rows: int) -> None:
        """One successful request with its phases."""
        m = self._bound(model, version)
        m.success.inc()
        m.inferences.inc(rows)
        m.request_time.observe(total_ns / 1e9)
        m.queue_time.observe(timing.queue_ns / 1e9)
        m.input_time.observe(timing.input_ns / 1e9)
        m.infer_time.observe(timing.infer_ns / 1e9)
        m.output_time.observe(output_ns / 1e9)

    def failed(self, model: str, version: int, code: str) -> None:
        """One failed request of a known model version."""
        self.failure.labels(model, str(version), code).inc()

    def executed(self, model: str, version: int, batch_size: int) -> None:
        """One model execution of `batch_size` rows."""
        m = self._bound(model, version)
        m.executions.inc()
        m.batch_size.observe(batch_size)

    def set_state(self, model: str, version: str, state: str) -> None:
        """The state gauge: 1 for `state`, 0 for the others."""
        for name in STATES:
            self.state.labels(model, version, name).set(1 if name == state else 0)

    def load_failed(self, model: str, version: int) -> None:
        """A version failed to load."""
        self.load_failures.labels(model, str(version)).inc()

    def quality(self, model: str, scores: Scores, rows: int) -> None:
        """New rolling quality after a label report of `rows` rows."""
        self.feedback_labels.labels(model).inc(rows)
        for name, value in (("accuracy", scores.accuracy), ("precision", scores.precision), ("recall", scores.recall),
                            ("f1", scores.f1), ("window", scores.count)):
            self.quality_gauges[name].labels(model).set(value)

    def feedback_unknown_id(self, model: str) -> None:
        """A label report whose id was not waiting."""
        self.feedback_unknown.labels(model).inc()

    def predicted(self, model: str, version: int, counts) -> None:
        """Add a request's predicted-class counts (index = class)."""
        children = self._bound(model, version).classes
        for cls, count in enumerate(counts):
            if count:
                child = children.get(cls)
                if child is None:
                    child = children[cls] = self.predicted_class.labels(model, str(version), str(cls))
                child.inc(int(count))

    def track_drift(self, served: Callable[[], Iterable]) -> None:
        """Export drift scores of the versions `served()` returns, computed at scrape time."""
        self.registry.register(_DriftCollector(served))

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on a background thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


class _VersionMetrics:
    """The children of every per-request metric for one model version, looked up once."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version)
        self.pending = metrics.pending.labels(*labels)
        self.success = metrics.success.labels(*labels)
        self.inferences = metrics.inferences.labels(*labels)
        self.executions = metrics.executions.labels(*labels)
        self.request_time = metrics.request_time.labels(*labels)
        self.queue_time = metrics.queue_time.labels(*labels)
        self.input_time = metrics.input_time.labels(*labels)
        self.infer_time = metrics.infer_time.labels(*labels)
        self.output_time = metrics.output_time.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.classes: dict[int, object] = {}  # predicted-class counters, made on first use


class _DriftCollector(Collector):
    """modelport_drift_score / modelport_drift_window_rows, read from each version's tracker."""

    def __init__(self, served: Callable[[], Iterable]) -> None:
        self._served = served

    def collect(self):
        score = GaugeMetricFamily(
            "modelport_drift_score",
            "Mean standardised shift of the input's features from the converter's reference (in reference stds)",
            labels=("model", "version", "input"),
        )
        rows = GaugeMetricFamily(
            "modelport_drift_window_rows", "Rows in the drift window", labels=("model", "version", "input")
        )
        for version in list(self._served()):
            if version.drift is None:
                continue
            for name, drift in version.drift.inputs.items():
                value, count = drift.score()
                labels = [version.name, str(version.version), name]
                score.add_metric(labels, value)
                rows.add_metric(labels, count)
        yield score
        yield rows
