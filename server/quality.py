"""Online model quality: predictions remembered by request id, paired with true labels that
clients report later, and rolling accuracy / precision / recall / F1 over the last N pairs.

Memory is bounded twice: at most `max_pending` ids wait for a label per model (the oldest are
forgotten), and at most `window` (prediction, label) pairs are kept. Labels for ids that are not
waiting are counted, not stored. The Prometheus collector reads the counters and the latest
scores kept here; nothing here calls into metrics.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from modelport.protocol.classes import predicted_classes
from modelport.protocol.scoring import classification_report

from .errors import InvalidInput
from .observers import Inference

UNREADABLE = ("BYTES", "BF16")  # outputs online quality cannot read classes from


@dataclass(frozen=True)
class WindowQuality:
    """Rolling quality over the window: accuracy and macro precision/recall/F1 over the classes
    seen in it (scikit-learn's definitions, zero_division=0)."""

    count: int
    accuracy: float
    precision: float
    recall: float
    f1: float


def window_quality(predicted: np.ndarray, truth: np.ndarray) -> WindowQuality:
    """Accuracy and macro precision/recall/F1 of `predicted` against `truth`."""
    if len(truth) == 0:
        return WindowQuality(0, 0.0, 0.0, 0.0, 0.0)
    report = classification_report(truth, predicted)
    return WindowQuality(report.n, report.accuracy, report.macro.precision, report.macro.recall, report.macro.f1)


class QualityWindow:
    """One model's waiting predictions, its window of labelled pairs and its counters."""

    def __init__(self, window: int, max_pending: int) -> None:
        self._pending: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._max_pending = max_pending
        self._predicted: collections.deque[int] = collections.deque(maxlen=window)
        self._truth: collections.deque[int] = collections.deque(maxlen=window)
        self.unknown = 0  # reports for ids that were not waiting
        self.labelled = 0  # labelled rows paired with a prediction
        # The scores after the last paired report, replaced whole: the metrics thread reads it
        # while the event loop changes the window, so it never reads the deques themselves.
        self.latest: WindowQuality | None = None

    def remember(self, request_id: str, classes: np.ndarray) -> None:
        """Keep the predicted classes of a request until its labels arrive."""
        self._pending[request_id] = classes
        self._pending.move_to_end(request_id)
        while len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)

    def report(self, request_id: str, labels: np.ndarray) -> bool | None:
        """Pair the labels with the remembered prediction: True if paired, False if the id is
        not waiting (counted), None if the label count does not match the prediction's rows."""
        classes = self._pending.get(request_id)
        if classes is None:
            self.unknown += 1
            return False
        if len(labels) != len(classes):
            return None
        del self._pending[request_id]
        self._predicted.extend(int(c) for c in classes)
        self._truth.extend(int(c) for c in labels)
        self.labelled += len(labels)
        self.latest = self.scores()
        return True

    def scores(self) -> WindowQuality:
        """Quality over the current window."""
        return window_quality(np.fromiter(self._predicted, np.int64), np.fromiter(self._truth, np.int64))


class QualityMonitor:
    """A QualityWindow per model; an observer that remembers the predictions of requests that
    carry an id (read from the model's first output, as `modelport evaluate` reads it)."""

    def __init__(self, window: int, max_pending: int) -> None:
        self._window, self._max_pending = window, max_pending
        self._models: dict[str, QualityWindow] = {}

    def windows(self) -> dict[str, QualityWindow]:
        """Every model's window by name (a copy: the metrics thread iterates it)."""
        return dict(self._models)

    def observe(self, inference: Inference) -> None:
        """Remember the predicted classes of a request that carries an id."""
        if not inference.request.id:
            return
        version = inference.version
        first = next((t for t in version.signature.outputs if t.name in inference.results), None)
        if first is not None and first.datatype not in UNREADABLE:
            self.remember(version.name, inference.request.id, np.asarray(inference.results[first.name]))

    def remember(self, model: str, request_id: str, scores: np.ndarray) -> None:
        """Keep the classes `scores` predict until the request's labels are reported."""
        self._window_of(model).remember(request_id, predicted_classes(scores))

    def report(self, model: str, request_id: str, labels: list[int]) -> bool:
        """Pair labels with a remembered prediction; False when the id is not waiting."""
        paired = self._window_of(model).report(request_id, np.asarray(labels, dtype=np.int64))
        if paired is None:
            raise InvalidInput(
                f"model '{model}': request '{request_id}' had a different number of rows than the {len(labels)} labels"
            )
        return paired

    def _window_of(self, model: str) -> QualityWindow:
        window = self._models.get(model)
        if window is None:
            window = self._models[model] = QualityWindow(self._window, self._max_pending)
        return window
