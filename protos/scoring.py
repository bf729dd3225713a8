"""Classification quality in numpy: accuracy, per-class and macro precision/recall/F1, support
and the confusion matrix, equal to scikit-learn's `accuracy_score`,
`precision_recall_fscore_support(zero_division=0)` and `confusion_matrix` (the client install has
no scikit-learn). Used by `modelport evaluate` and by the server's online quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POSITIVE_LABEL = 1


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class or an average."""

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        """As plain JSON numbers."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class ClassificationReport:
    """Classification quality over `labels` (sorted union of true and predicted classes)."""

    n: int
    accuracy: float
    labels: tuple[int, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion_matrix: np.ndarray  # rows: true label, columns: predicted label
    macro: ClassScores
    positive: ClassScores | None = None  # the positive class (1) of a binary task

    def per_class(self) -> dict[int, dict[str, float | int]]:
        """{label: {precision, recall, f1, support}}."""
        return {
            label: {
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, label in enumerate(self.labels)
        }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_report(y_true: Any, y_pred: Any, *, binary: bool = False) -> ClassificationReport:
    """Accuracy, per-class and macro precision/recall/F1, support and the confusion matrix of
    integer labels; with `binary`, also the scores of the positive class 1."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("no examples to evaluate")
    labels = np.union1d(y_true, y_pred)
    k = len(labels)
    rows, cols = np.searchsorted(labels, y_true), np.searchsorted(labels, y_pred)
    matrix = np.bincount(rows * k + cols, minlength=k * k).reshape(k, k).astype(np.int64)
    tp = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    # F1 from the counts (as scikit-learn >= 1.3 does), so an undefined precision gives 0, not NaN.
    f1 = _ratio(2 * tp, 2 * tp + (predicted - tp) + (support - tp))
    macro = ClassScores(float(precision.mean()), float(recall.mean()), float(f1.mean()))
    positive = _class_scores(labels, precision, recall, f1, POSITIVE_LABEL) if binary else None
    return ClassificationReport(
        n=len(y_true),
        accuracy=float(np.mean(y_true == y_pred)),
        labels=tuple(int(v) for v in labels),
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        confusion_matrix=matrix,
        macro=macro,
        positive=positive,
    )


def _class_scores(
    labels: np.ndarray, precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, label: int
) -> ClassScores:
    # A positive class neither true nor predicted anywhere scores 0, as in scikit-learn.
    where = np.flatnonzero(labels == label)
    if not len(where):
        return ClassScores(0.0, 0.0, 0.0)
    i = where[0]
    return ClassScores(float(precision[i]), float(recall[i]), float(f1[i]))


@dataclass(frozen=True)
class RegressionReport:
    """Regression quality: numpy's definitions (scikit-learn's mean_absolute_error,
    root_mean_squared_error and r2_score)."""

    count: int
    mae: float
    rmse: float
    r2: float


def regression_report(y_true: Any, y_pred: Any) -> RegressionReport:
    """MAE, RMSE and R² of `y_pred` against `y_true`. R² of constant targets is 1.0 for a perfect
    prediction and 0.0 otherwise, as scikit-learn's r2_score (force_finite) says."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} targets but {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("no examples to evaluate")
    error = y_pred - y_true
    sse = float(np.sum(error**2))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = (1.0 - sse / sst) if sst > 0 else (1.0 if sse == 0 else 0.0)
    return RegressionReport(len(y_true), float(np.mean(np.abs(error))), float(np.sqrt(sse / len(y_true))), r2)
