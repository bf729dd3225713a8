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

from .errors import InvalidInput

if TYPE_CHECKING:
    from .metrics import Metrics


def predicted_classes(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class per row: integer outputs are classes already; one column of scores is a sigmoid
    (>= threshold is class 1); several columns are per-class scores (argmax)."""
    array = np.asarray(scores)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.dtype.kind in "iub":
        return array.reshape(array.shape[0], -1)[:, 0].astype(np.int64)
    rows = array.reshape(array.shape[0], -1)
    if rows.shape[1] == 1:
        return (rows[:, 0] >= threshold).astype(np.int64)
    return rows.argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class Scores:
    """Rolling quality over the window; precision/recall/F1 are macro averages over the classes
    seen in the window (a class never predicted has precision 0, as scikit-learn's zero_division=0)."""

    count: int
    accuracy: float
    precision: float
    recall: float
    f1: float


def scores(predicted: np.ndarray, truth: np.ndarray) -> Scores:
    """Accuracy and macro precision/recall/F1 of `predicted` against `truth`."""
    if len(truth) == 0:
        return Scores(0, 0.0, 0.0, 0.0, 0.0)
    labels = np.union1d(predicted, truth)
    tp = np.array([np.sum((predicted == c) & (truth == c)) for c in labels], dtype=float)
    predicted_n = np.array([np.sum(predicted == c) for c in labels], dtype=float)
    true_n = np.array([np.sum(truth == c) for c in labels], dtype=float)
    precision = np.divide(tp, predicted_n, out=np.zeros_like(tp), where=predicted_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros_like(tp), where=true_n > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return Scores(len(truth), float(np.mean(predicted == truth)), float(precision.mean()), float(recall.mean()), float(f1.mean()))


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
