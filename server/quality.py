"""Online model quality: predictions remembered by request id, paired with true labels that
clients report later, and rolling accuracy / precision / recall / F1 over the last N pairs.

Memory is bounded twice: at most `max_pending` ids wait for a label per model (the oldest are
forgotten), and at most `window` (prediction, label) pairs are kept. Labels for ids that are not
waiting are counted, not stored.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelport.client.evaluate import compute_metrics, decode_predictions

from .errors import InvalidInput

if TYPE_CHECKING:
    from .metrics import Metrics


def predicted_classes(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class per row, read as `modelport evaluate` reads it (so online and offline numbers agree):
    integer outputs are classes, one column of scores is a sigmoid (> threshold is class 1), several
    columns are per-class scores (argmax). Outputs of other shapes are flattened per row first."""
    array = np.asarray(scores)
    if array.ndim and array.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    rows = array.reshape(array.shape[0] if array.ndim else 1, -1)
    if rows.dtype.kind in "biu":
        rows = rows[:, :1]
    return decode_predictions(rows, threshold).labels


@dataclass(frozen=True)
class Scores:
    """Rolling quality over the window: accuracy and macro precision/recall/F1 over the classes
    seen in it (scikit-learn's definitions, zero_division=0)."""

    count: int
    accuracy: float
    precision: float
    recall: float
    f1: float


def scores(predicted: np.ndarray, truth: np.ndarray) -> Scores:
    """Accuracy and macro precision/recall/F1 of `predicted` against `truth`."""
    if len(truth) == 0:
        return Scores(0, 0.0, 0.0, 0.0, 0.0)
    m = compute_metrics(truth, predicted)
    return Scores(m.n, m.accuracy, m.macro.precision, m.macro.recall, m.macro.f1)


class QualityWindow:
    """One model's waiting predictions and its window of labelled pairs."""

    def __init__(self, window: int, max_pending: int) -> None:
        self._pending: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._max_pending = max_pending
        self._predicted: collections.deque[int] = collections.deque(maxlen=window)
        self._truth: collections.deque[int] = collections.deque(maxlen=window)
        self.unknown = 0

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
        return True

    def scores(self) -> Scores:
        """Quality over the current window."""
        return scores(np.fromiter(self._predicted, np.int64), np.fromiter(self._truth, np.int64))


class QualityMonitor:
    """A QualityWindow per model, feeding the quality metrics."""

    def __init__(self, window: int, max_pending: int, metrics: "Metrics | None") -> None:
        self._window, self._max_pending = window, max_pending
        self._models: dict[str, QualityWindow] = {}
        self._metrics = metrics

    def remember(self, model: str, request_id: str, scores: np.ndarray) -> None:
        """Called for each successful request that carries an id."""
        window = self._models.get(model)
        if window is None:
            window = self._models[model] = QualityWindow(self._window, self._max_pending)
        window.remember(request_id, predicted_classes(scores))

    def report(self, model: str, request_id: str, labels: list[int]) -> bool:
        """Pair labels with a remembered prediction; False when the id is not waiting."""
        window = self._models.get(model)
        if window is None:
            window = self._models[model] = QualityWindow(self._window, self._max_pending)
        paired = window.report(request_id, np.asarray(labels, dtype=np.int64))
        if paired is None:
            raise InvalidInput(
                f"model '{model}': request '{request_id}' had a different number of rows than the {len(labels)} labels"
            )
        if self._metrics is not None:
            if paired:
                self._metrics.quality(model, window.scores(), len(labels))
            else:
                self._metrics.feedback_unknown_id(model)
        return paired
