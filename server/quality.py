"""Online model quality, per model version, across a cluster.

A request that carries an id has its prediction remembered (as an observer: appended to a buffer,
written to the feedback store in batches at most FLUSH_S later, off the request's path); a label
report, to any replica when the store is shared, pairs the truth with it once, and the pair joins
the version's window in the store. From the windows come the rolling numbers (GetQuality,
`modelport quality`, the per-version gauges); from the pairs this replica made come cumulative
counters that Prometheus sums over replicas (per-class true/false positives and false negatives,
error sums), so cluster-wide quality can be computed over any time range.

Classifiers: classes read from the model's first readable output as `modelport evaluate` reads
them. One number per row (a [N] or [N, 1] float output) stays a number until its truth arrives:
integer labels make it a sigmoid classifier's (class 1 above 0.5), float targets a regressor's,
unless config.pbtxt says `parameters { key: "quality_kind" value { string_value: "regression" } }`
(or "classification"); the first report fixes a version's kind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from modelport.protocol.classes import predicted_classes
from modelport.protocol.scoring import classification_report, regression_report
from modelport.protocol.types import ModelQuality, VersionQuality

from .errors import InvalidInput, ModelNotFound, StoreUnavailable
from .feedback_store import KINDS, FeedbackStore, Prediction
from .observers import Inference

log = logging.getLogger(__name__)

UNREADABLE = ("BYTES", "BF16")  # outputs online quality cannot read
FLUSH_S = 0.25  # predictions reach the store this long after their answer, at most (plus one round trip)
FLUSH_ROWS = 512  # or as soon as this many wait
MAX_BUFFERED = 20_000  # while the store is down, older predictions beyond this are dropped (counted)
MAX_CLASSES = 64  # per-class counters and the confusion matrix stop here ("other" above)
REFRESH_S = 15.0  # the rolling gauges of versions this replica did not pair lately are reread this often


@dataclass
class VersionCounters:
    """What this replica paired for one version: cumulative, for Prometheus to sum over replicas."""

    labelled: int = 0
    correct: int = 0
    classes: dict[str, list[int]] = field(default_factory=dict)  # class -> [true pos, false pos, false neg]
    absolute_error: float = 0.0
    squared_error: float = 0.0
    target_positive: float = 0.0  # the sum of the targets, as two parts that only grow (Prometheus
    target_negative: float = 0.0  # counters): sum = positive - negative
    target_squared: float = 0.0

    def add_classification(self, pairs: list[tuple[float, float]]) -> None:
        """Count (predicted, true) class pairs."""
        for predicted, true in pairs:
            self.labelled += 1
            if predicted == true:
                self.correct += 1
                self._class(true)[0] += 1
            else:
                self._class(predicted)[1] += 1
                self._class(true)[2] += 1

    def add_regression(self, pairs: list[tuple[float, float]]) -> None:
        """Sum the errors and targets of (predicted, true) value pairs."""
        for predicted, true in pairs:
            self.labelled += 1
            self.absolute_error += abs(predicted - true)
            self.squared_error += (predicted - true) ** 2
            if true >= 0:
                self.target_positive += true
            else:
                self.target_negative -= true
            self.target_squared += true * true

    def _class(self, value: float) -> list[int]:
        name = str(int(value)) if 0 <= value < MAX_CLASSES else "other"
        return self.classes.setdefault(name, [0, 0, 0])


class QualityMonitor:
    """Remembers predictions (an observer), pairs label reports, answers quality questions."""

    def __init__(self, store: FeedbackStore, served: Callable[[], list[str]] = list) -> None:
        self.store = store
        self._served = served  # names of the models this server serves (for the periodic refresh)
        self._buffer: list[tuple[str, str, int, np.ndarray, str, float]] = []
        self._buffered: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # a report waits for a batch being written to finish
        self._task: asyncio.Task | None = None
        self.counters: dict[tuple[str, int], VersionCounters] = {}
        self.latest: dict[tuple[str, int], VersionQuality] = {}  # rolling numbers, for the gauges
        self.labels: dict[str, int] = {}  # rows paired, per model
        self.unknown: dict[str, int] = {}  # reports for ids that were not waiting, per model
        self.lost = 0  # predictions that never reached the store
        self.store_errors: dict[str, int] = {}  # by operation
        self._last_warning = 0.0

    # ------------------------------------------------------------ remembering (the request path)

    def observe(self, inference: Inference) -> None:
        """Buffer the prediction of a request that carries an id; the flusher writes it."""
        request_id = inference.request.id
        if not request_id:
            return
        version = inference.version
        first = next((t for t in version.signature.outputs if t.name in inference.results), None)
        if first is None or first.datatype in UNREADABLE:
            return
        self._buffer.append((version.name, request_id, version.version, inference.results[first.name],
                             version.spec.quality_kind, time.time()))  # fmt: skip
        self._buffered.add((version.name, request_id))
        if len(self._buffer) >= FLUSH_ROWS:
            self._wake.set()

    def start(self) -> None:
        """Start the flusher and the refresher (on the serving loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="quality flusher")

    async def close(self) -> None:
        """Write what is buffered, stop, close the store."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        await self.store.close()

    async def _run(self) -> None:
        refreshed = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_S)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            if time.monotonic() - refreshed >= REFRESH_S:
                refreshed = time.monotonic()
                await self._refresh_served()

    async def flush(self) -> None:
        """Write the buffered predictions, one batch per model. When the store is down they are
        kept for the next try, up to MAX_BUFFERED (older ones are dropped and counted)."""
        async with self._flushing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        by_model: dict[str, list[tuple[str, Prediction]]] = {}
        for model, request_id, version, output, kind, when in buffer:
            by_model.setdefault(model, []).append((request_id, _prediction(version, output, kind, when)))
        failed: list = []
        for model, predictions in by_model.items():
            try:
                await self.store.put(model, predictions)
            except StoreUnavailable as exc:
                self._store_failed("put", exc)
                failed += [e for e in buffer if e[0] == model]
        self._buffered = {(e[0], e[1]) for e in failed + self._buffer}
        if failed:
            self._buffer = failed + self._buffer
            if len(self._buffer) > MAX_BUFFERED:
                dropped = len(self._buffer) - MAX_BUFFERED
                self.lost += dropped
                self._buffer = self._buffer[dropped:]
                self._buffered = {(e[0], e[1]) for e in self._buffer}

    def _store_failed(self, operation: str, exc: Exception) -> None:
        self.store_errors[operation] = self.store_errors.get(operation, 0) + 1
        now = time.monotonic()
        if now - self._last_warning >= 60:  # once a minute, not per request
            self._last_warning = now
            log.warning("%s; inference continues, labels wait (counted in modelport_feedback_store_errors_total)",
                        exc)  # fmt: skip

    # ------------------------------------------------------------ pairing

    async def report(self, model: str, request_id: str, labels: list[int], targets: list[float]) -> bool:
        """Pair the truth of each row with the remembered prediction; False when the id is not
        waiting (never seen, expired, or already paired, here or on another replica)."""
        if labels and targets:
            raise InvalidInput(f"model '{model}': request '{request_id}': send labels or targets, not both")
        if (model, request_id) in self._buffered:
            await self.flush()  # reported before its prediction's batch was written
        try:
            prediction = await self.store.peek(model, request_id)
            if prediction is None:
                return self._unknown(model)
            kind = prediction.kind or await self._kind(model, prediction, labels)
            pairs = _pairs(model, request_id, prediction, kind, labels or targets)
            if not await self.store.take(model, request_id):
                return self._unknown(model)  # another report (maybe on another replica) was first
            await self.store.add_pairs(model, prediction.version, kind, pairs)
            self.latest[(model, prediction.version)] = await self._version_quality(model, prediction.version)
        except StoreUnavailable as exc:
            self._store_failed("report", exc)
            raise
        counters = self.counters.setdefault((model, prediction.version), VersionCounters())
        (counters.add_regression if kind == "regression" else counters.add_classification)(pairs)
        self.labels[model] = self.labels.get(model, 0) + len(pairs)
        return True

    async def _kind(self, model: str, prediction: Prediction, labels: list[int]) -> str:
        """A version without a configured kind: classes make a classifier; one number per row is
        what the version's first report made it, or this report decides (integer labels: a
        sigmoid classifier, float targets: a regressor)."""
        if prediction.read_as == "classes":
            return "classification"
        return await self.store.kind(model, prediction.version) or _inferred(labels)

    def _unknown(self, model: str) -> bool:
        self.unknown[model] = self.unknown.get(model, 0) + 1
        return False

    # ------------------------------------------------------------ reading

    async def quality(self, model: str, version: str = "", include_pairs: bool = False) -> ModelQuality:
        """Rolling quality of the model's versions (or of one) from the store's windows; with
        `include_pairs`, each window's pairs too."""
        if version and not (version.isascii() and version.isdigit()):
            raise ModelNotFound(f"model '{model}' has no version '{version}'")
        try:
            versions = [int(version)] if version else await self.store.versions(model)
            found = {}
            for v in versions:
                quality = await self._version_quality(model, v, include_pairs)
                if quality is not None:
                    found[str(v)] = quality
                    self.latest[(model, v)] = dataclasses.replace(quality, predicted=(), truth=())
        except StoreUnavailable as exc:
            self._store_failed("quality", exc)
            raise
        if not found and model not in self._served():
            raise ModelNotFound(f"model '{model}' is not served here and has no labelled feedback")
        return ModelQuality(model, found)

    async def _version_quality(self, model: str, version: int, include_pairs: bool = False) -> VersionQuality | None:
        kind, pairs = await self.store.window(model, version)
        if not pairs:
            return None
        predicted, true = (np.asarray(column) for column in zip(*pairs))
        quality = self._window_quality(version, kind, predicted, true)
        if include_pairs:
            quality = dataclasses.replace(quality, predicted=tuple(predicted.tolist()), truth=tuple(true.tolist()))
        return quality

    @staticmethod
    def _window_quality(version: int, kind: str | None, predicted: np.ndarray, true: np.ndarray) -> VersionQuality:
        if kind == "regression":
            r = regression_report(true, predicted)
            return VersionQuality(str(version), kind, r.count, mae=r.mae, rmse=r.rmse, r2=r.r2)
        c = classification_report(true.astype(np.int64), predicted.astype(np.int64))
        confusion = ()
        if len(c.labels) <= MAX_CLASSES:  # above, the matrix would outgrow the answer: the numbers stay exact
            confusion = tuple(tuple(int(v) for v in row) for row in c.confusion_matrix)
        return VersionQuality(str(version), "classification", c.n, c.accuracy, c.macro.precision, c.macro.recall,
                              c.macro.f1, c.labels, confusion)  # fmt: skip

    async def _refresh_served(self) -> None:
        """Reread the windows of served models' versions: another replica's pairs change them."""
        try:
            for model in self._served():
                for version in await self.store.versions(model):
                    quality = await self._version_quality(model, version)
                    if quality is not None:
                        self.latest[(model, version)] = quality
        except StoreUnavailable as exc:
            self._store_failed("refresh", exc)


def _prediction(version: int, output: np.ndarray, kind: str, when: float) -> Prediction:
    """A prediction as stored: one number per row for single-column float outputs, else classes."""
    array = np.asarray(output)
    single = array.dtype.kind == "f" and array.ndim >= 1 and array.size == (array.shape[0] if array.ndim else 1)
    if single and kind != "classification":
        return Prediction(version, "values", [float(v) for v in array.reshape(-1)], kind, when)
    return Prediction(version, "classes", [int(c) for c in predicted_classes(array)], kind, when)


def _inferred(labels: list[int]) -> str:
    """A version with no configured or recorded kind: integer labels make it a classifier."""
    return "classification" if labels else "regression"


def _pairs(model: str, request_id: str, prediction: Prediction, kind: str, truth: list) -> list[tuple[float, float]]:
    """(predicted, true) per row, or InvalidInput naming what does not fit."""
    where = f"model '{model}' version {prediction.version}: request '{request_id}'"
    if kind not in KINDS:
        raise InvalidInput(f"{where}: unknown quality kind {kind!r}; expected classification or regression")
    if len(truth) != len(prediction.rows):
        raise InvalidInput(f"{where} had {len(prediction.rows)} rows but {len(truth)} labels were reported; "
                           "send one per row")  # fmt: skip
    if any(not math.isfinite(v) for v in truth):
        raise InvalidInput(f"{where}: labels must be finite numbers, got {truth}")
    if kind == "regression":
        if prediction.read_as != "values":
            raise InvalidInput(f"{where}: the model predicts classes; report integer labels, not targets")
        return [(float(p), float(t)) for p, t in zip(prediction.rows, truth)]
    if any(float(v) != int(v) for v in truth):
        raise InvalidInput(f"{where} is a classifier: labels must be integer classes, got {truth}")
    if prediction.read_as == "values":  # a sigmoid's probability: class 1 above 0.5, as evaluate reads it
        return [(1.0 if p > 0.5 else 0.0, float(int(t))) for p, t in zip(prediction.rows, truth)]
    return [(float(p), float(int(t))) for p, t in zip(prediction.rows, truth)]
