"""Prometheus metrics, on an injected registry (no global state), served on --metrics-port.

Collectors only read: the request path adds to each version's VersionStats (plain numbers, no
locks, no metric objects), the model registry keeps states and load-failure counts, online
quality keeps its counters and latest scores, drift keeps its windows, and the data plane its
bytes in flight; all of it becomes Prometheus families when Prometheus scrapes. Names follow
Triton's nv_inference_* in spirit with our own prefix. Durations are histograms, not averaged
gauges, so `rate()` over them (and an HPA on queue time) sees what really happened.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from modelport.protocol.rollout import DECISIONS

from .explain import DURATION_BUCKETS_S, Explainer
from .statistics import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from .dataplane import DataPlane
    from .quality import QualityMonitor
    from .registry import ModelRegistry

log = logging.getLogger(__name__)

LABELS = ("model", "version")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")
QUALITY = (("accuracy", "accuracy"), ("precision", "macro precision"), ("recall", "macro recall"), ("f1", "macro F1"),
           ("mae", "mean absolute error"), ("rmse", "root mean squared error"), ("r2", "R²"),
           ("window", "number of labelled rows in"))  # fmt: skip
COUNTED = (
    ("labelled_rows", "Labelled rows this replica paired"),
    ("correct_rows", "Labelled rows whose predicted class was the true one (classifiers)"),
    ("absolute_error", "Sum of |predicted - true| over paired rows (regressors)"),
    ("squared_error", "Sum of (predicted - true)^2 over paired rows (regressors)"),
    ("target_positive", "Sum of the positive true values of paired rows (regressors; for R^2)"),
    ("target_negative", "Sum of minus the negative true values of paired rows (regressors; for R^2)"),
    ("target_squared", "Sum of the squared true values of paired rows (regressors; for R^2)"),
)
PER_CLASS = (
    ("true_positives", "Paired rows predicted as this class that were it (classes above 63 count as 'other')"),
    ("false_positives", "Paired rows predicted as this class that were another"),
    ("false_negatives", "Paired rows of this class predicted as another"),
)


class MetricsEndpoint:
    """Every metric the server exports, read from the parts that keep them."""

    def __init__(
        self, registry: ModelRegistry, dataplane: DataPlane, quality: QualityMonitor,
        collectors: CollectorRegistry | None = None, explainer: Explainer | None = None,
    ) -> None:  # fmt: skip
        self.collectors = collectors or CollectorRegistry()
        ProcessCollector(registry=self.collectors)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        for collector in (
            _ServingCollector(registry.served), _DriftCollector(registry.served), _RegistryCollector(registry),
            _QualityCollector(quality), _InflightCollector(dataplane),
        ):  # fmt: skip
            self.collectors.register(collector)
        if explainer is not None:
            self.collectors.register(_ExplainCollector(explainer))

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on a background thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.collectors)
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


class _RegistryCollector(Collector):
    """modelport_model_state and modelport_model_load_failures_total, read from the registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self):
        state = GaugeMetricFamily("modelport_model_state", "1 for the state a model version is in",
                                  labels=(*LABELS, "state"))  # fmt: skip
        for entry in self._registry.entries():
            for version, current in list(entry.states.items()):
                for name in STATES:
                    state.add_metric([entry.name, str(version), name], 1 if name == current.state else 0)
        failures = CounterMetricFamily(
            "modelport_model_load_failures", "Model version loads that failed (reason in RepositoryIndex and the log)",
            labels=LABELS,
        )
        for (model, version), count in sorted(list(self._registry.load_failures.items())):
            failures.add_metric([model, str(version)], count)
        yield state
        yield failures
        yield from self._footprints()
        yield from self._rollouts()

    def _footprints(self):
        """What loading each served version cost (the model_loaded log line says the same)."""
        seconds = GaugeMetricFamily("modelport_model_load_duration_seconds", "Seconds the served version took to load "
                                    "(sessions and warm-up)", labels=LABELS)  # fmt: skip
        memory = GaugeMetricFamily("modelport_model_memory_bytes", "Resident memory the process gained loading the "
                                   "served version", labels=LABELS)  # fmt: skip
        files = GaugeMetricFamily("modelport_model_file_bytes", "Bytes of the served version's files (model.onnx and "
                                  "its external weights)", labels=LABELS)  # fmt: skip
        for version in self._registry.served():
            labels = [version.name, str(version.version)]
            seconds.add_metric(labels, version.footprint.seconds)
            memory.add_metric(labels, version.footprint.memory_bytes)
            files.add_metric(labels, version.footprint.file_bytes)
        yield from (seconds, memory, files)

    def _rollouts(self):
        """The share of unversioned traffic each version of a rollout gets, and the decisions in
        its history (modelport rollout records them in the repository)."""
        weight = GaugeMetricFamily("modelport_rollout_weight", "Share of unversioned requests a version gets "
                                   "under the model's rollout", labels=LABELS)  # fmt: skip
        decisions = CounterMetricFamily("modelport_rollout_decisions", "Rollout decisions recorded for the model",
                                        labels=("model", "decision"))  # fmt: skip
        for entry in self._registry.entries():
            rollout = entry.rollout
            if rollout is None:
                continue
            share = rollout.candidate_share()
            weight.add_metric([entry.name, str(rollout.candidate)], share)
            weight.add_metric([entry.name, str(rollout.stable)], 1.0 - share)
            counts = {decision: 0 for decision in DECISIONS}
            for record in rollout.history:
                if record.get("decision") in counts:
                    counts[record["decision"]] += 1
            for decision, count in counts.items():
                decisions.add_metric([entry.name, decision], count)
        yield weight
        yield decisions


class _QualityCollector(Collector):
    """Online quality: per version, the rolling numbers of its window (the same on every replica
    with a shared store: never aggregate them) and the cumulative counts of the pairs this replica
    made (sum them over replicas: k8s/components/quality-rules has the recording rules)."""

    def __init__(self, quality: QualityMonitor) -> None:
        self._quality = quality

    def collect(self):
        yield from self._rolling()
        yield from self._counted()
        q = self._quality
        labels = CounterMetricFamily("modelport_feedback_labels", "Labelled rows paired with a prediction",
                                     labels=("model",))  # fmt: skip
        unknown = CounterMetricFamily(
            "modelport_feedback_unknown", "Label reports for ids not waiting (unknown, expired or already paired)",
            labels=("model",),
        )
        for model, count in sorted(dict(q.labels).items()):
            labels.add_metric([model], count)
        for model, count in sorted(dict(q.unknown).items()):
            unknown.add_metric([model], count)
        errors = CounterMetricFamily("modelport_feedback_store_errors", "Feedback store calls that failed",
                                     labels=("operation",))  # fmt: skip
        for operation, count in sorted(dict(q.store_errors).items()):
            errors.add_metric([operation], count)
        lost = CounterMetricFamily(
            "modelport_feedback_predictions_lost", "Predictions dropped while the feedback store was unreachable",
            value=q.lost,
        )
        yield from (labels, unknown, errors, lost)

    def _rolling(self):
        gauges = {
            name: GaugeMetricFamily(f"modelport_quality_{name}", f"Rolling {doc} over the version's labelled window",
                                    labels=LABELS)
            for name, doc in QUALITY
        }  # fmt: skip
        for (model, version), quality in sorted(dict(self._quality.latest).items()):
            labels = [model, str(version)]
            gauges["window"].add_metric(labels, quality.count)
            names = ("mae", "rmse", "r2") if quality.kind == "regression" else ("accuracy", "precision", "recall", "f1")
            for name in names:
                gauges[name].add_metric(labels, getattr(quality, name))
        yield from gauges.values()

    def _counted(self):
        family = {
            name: CounterMetricFamily(f"modelport_quality_{name}", doc, labels=LABELS)
            for name, doc in COUNTED
        }  # fmt: skip
        per_class = {
            name: CounterMetricFamily(f"modelport_quality_{name}", doc, labels=(*LABELS, "class"))
            for name, doc in PER_CLASS
        }  # fmt: skip
        for (model, version), c in sorted(dict(self._quality.counters).items()):
            labels = [model, str(version)]
            family["labelled_rows"].add_metric(labels, c.labelled)
            if c.classes or c.correct:
                family["correct_rows"].add_metric(labels, c.correct)
            else:
                for name, value in (("absolute_error", c.absolute_error), ("squared_error", c.squared_error),
                                    ("target_positive", c.target_positive), ("target_negative", c.target_negative),
                                    ("target_squared", c.target_squared)):
                    family[name].add_metric(labels, value)  # fmt: skip
            for cls, (tp, fp, fn) in sorted(dict(c.classes).items()):
                for name, value in zip(("true_positives", "false_positives", "false_negatives"), (tp, fp, fn)):
                    per_class[name].add_metric([*labels, cls], value)
        yield from family.values()
        yield from per_class.values()


class _InflightCollector(Collector):
    """modelport_inflight_request_bytes: what --max-inflight-bytes bounds."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def collect(self):
        yield GaugeMetricFamily("modelport_inflight_request_bytes", "Bytes of the requests the server holds "
                                "(queued or running)", value=self._dataplane.inflight_bytes)  # fmt: skip


class _ExplainCollector(Collector):
    """Explanations per version: calls by outcome, rows explained, perturbed rows run on the
    instances (they show in the execution counts too: they used the instances) and durations."""

    def __init__(self, explainer: Explainer) -> None:
        self._explainer = explainer

    def collect(self):
        calls = CounterMetricFamily("modelport_explanations", "Explanation calls, by outcome (OK or the gRPC status "
                                    "code)", labels=(*LABELS, "code"))  # fmt: skip
        rows = CounterMetricFamily("modelport_explanation_rows", "Rows explained", labels=LABELS)
        model_rows = CounterMetricFamily("modelport_explanation_model_rows", "Perturbed rows explanations ran on the "
                                         "model's instances", labels=LABELS)  # fmt: skip
        seconds = HistogramMetricFamily("modelport_explanation_duration_seconds", "End-to-end time of a successful "
                                        "explanation call (waiting for its turn included)", labels=LABELS)  # fmt: skip
        working = CounterMetricFamily("modelport_explanation_work_seconds", "Seconds explanations spent building and "
                                      "running perturbed rows", labels=LABELS)  # fmt: skip
        paused = CounterMetricFamily("modelport_explanation_paused_seconds", "Seconds explanations paused to leave "
                                     "the instances to inference (--explain-share)", labels=LABELS)  # fmt: skip
        for (model, version), s in sorted(list(self._explainer.stats.items())):
            labels = [model, str(version)]
            for code, count in sorted(list(s.calls.items())):
                calls.add_metric([*labels, code], count)
            rows.add_metric(labels, s.rows)
            model_rows.add_metric(labels, s.model_rows)
            seconds.add_metric(labels, _cumulative(list(s.buckets), DURATION_BUCKETS_S), s.seconds)
            working.add_metric(labels, s.working)
            paused.add_metric(labels, s.paused)
        yield from (calls, rows, model_rows, seconds, working, paused)


class _ServingCollector(Collector):
    """Per-version request counters and phase histograms, read from VersionStats."""

    HISTOGRAMS = (
        ("modelport_request_duration_seconds", "End-to-end time of a successful request in the server", "success"),
        ("modelport_queue_duration_seconds", "Time waiting for an instance (and the batcher)", "queue"),
        ("modelport_compute_input_duration_seconds", "Time preparing inputs (merging a batch)", "compute_input"),
        ("modelport_compute_infer_duration_seconds", "Time in ONNX Runtime", "compute_infer"),
        ("modelport_compute_output_duration_seconds", "Time shaping outputs", "compute_output"),
    )

    def __init__(self, served: Callable[[], Iterable]) -> None:
        self._served = served

    def collect(self):
        versions = list(self._served())
        yield from self._counters(versions)
        for name, doc, attribute in self.HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=LABELS)
            for v in versions:
                duration = getattr(v.stats, attribute)
                family.add_metric([v.name, str(v.version)], _cumulative(list(duration.buckets), LATENCY_BUCKETS_S),
                                  duration.ns / 1e9)
            yield family
        yield self._batch_sizes(versions)

    @staticmethod
    def _counters(versions: list):
        success = CounterMetricFamily("modelport_inference_request_success", "Requests that succeeded", labels=LABELS)
        failure = CounterMetricFamily(
            "modelport_inference_request_failure", "Requests that failed, by gRPC status code", labels=(*LABELS, "code")
        )
        inferences = CounterMetricFamily(
            "modelport_inference_count", "Inferences performed (rows of a batch each count)", labels=LABELS
        )
        executions = CounterMetricFamily(
            "modelport_inference_exec_count", "Model executions (a dynamic batch counts once)", labels=LABELS
        )
        pending = GaugeMetricFamily("modelport_inference_pending_requests", "Requests received and not yet answered",
                                    labels=LABELS)
        classes = CounterMetricFamily(
            "modelport_predicted_class", "Predicted classes of classifier outputs (argmax, or sigmoid > 0.5), sampled "
            "as drift tracking is", labels=(*LABELS, "class"),
        )
        for v in versions:
            labels, s = [v.name, str(v.version)], v.stats
            success.add_metric(labels, s.success.count)
            for code, count in list(s.failures.items()):
                failure.add_metric([*labels, code], count)
            inferences.add_metric(labels, s.inference_count)
            executions.add_metric(labels, s.execution_count)
            pending.add_metric(labels, v.in_flight)
            for cls, count in sorted(list(s.classes.items())):
                classes.add_metric([*labels, str(cls)], count)
        yield from (success, failure, inferences, executions, pending, classes)

    @staticmethod
    def _batch_sizes(versions: list) -> HistogramMetricFamily:
        family = HistogramMetricFamily("modelport_batch_size", "Rows per model execution", labels=LABELS)
        for v in versions:
            counts = [0] * (len(BATCH_BUCKETS) + 1)
            total = 0
            for size, batch in list(v.stats.batches.items()):
                executions = batch.compute_infer.count
                counts[bisect.bisect_left(BATCH_BUCKETS, size)] += executions
                total += size * executions
            family.add_metric([v.name, str(v.version)], _cumulative(counts, BATCH_BUCKETS), total)
        return family


def _cumulative(counts: list[int], bounds: tuple) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, with +Inf) from per-bucket counts."""
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else floatToGoString(bound), running))
    return buckets


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
