"""Classification metrics of a served model on labelled data: the batched loop behind
`modelport evaluate`, and the metrics themselves in numpy (the client install has no scikit-learn;
the numbers equal scikit-learn's `accuracy_score`, `precision_recall_fscore_support(zero_division=0)`
and `confusion_matrix`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .codec import NUMPY_DTYPES
from .types import ModelMetadata

if TYPE_CHECKING:
    from .client import Client

POSITIVE_LABEL = 1


class EvaluationInputError(ValueError):
    """The data or the options do not fit the model (bad input, not a server failure)."""


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Scores:
    """Precision, recall and F1 of one class or an average."""

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        """As plain JSON numbers."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class Metrics:
    """Classification metrics over `labels` (sorted union of true and predicted classes)."""

    n: int
    accuracy: float
    labels: tuple[int, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion_matrix: np.ndarray  # rows: true label, columns: predicted label
    macro: Scores
    positive: Scores | None = None  # the positive class (1) of a binary task

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


def compute_metrics(y_true: Any, y_pred: Any, *, binary: bool = False) -> Metrics:
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
    macro = Scores(float(precision.mean()), float(recall.mean()), float(f1.mean()))
    positive = None
    if binary:
        positive = _class_scores(labels, precision, recall, f1, POSITIVE_LABEL)
    return Metrics(
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


def _class_scores(labels: np.ndarray, precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, label: int) -> Scores:
    # A positive class neither true nor predicted anywhere scores 0, as in scikit-learn.
    where = np.flatnonzero(labels == label)
    if not len(where):
        return Scores(0.0, 0.0, 0.0)
    i = where[0]
    return Scores(float(precision[i]), float(recall[i]), float(f1[i]))


def latency_summary(latencies_s: list[float], examples: int, wall_s: float) -> dict[str, float | int]:
    """count, mean/p50/p90/p99/min/max in ms of the requests, and examples per second overall."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if not len(ms):
        return {"count": 0, "mean_ms": 0.0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "min_ms": 0.0,
                "max_ms": 0.0, "wall_s": wall_s, "examples_per_s": 0.0}  # fmt: skip
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": int(len(ms)),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "wall_s": float(wall_s),
        "examples_per_s": float(examples / wall_s) if wall_s > 0 else 0.0,
    }


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Decoded:
    """Predicted labels and how they were read from the model's output."""

    labels: np.ndarray
    mode: str  # "sigmoid" (thresholded), "argmax" or "labels" (integer output used as is)
    binary: bool
    warning: str | None = None


def decode_predictions(output: np.ndarray, threshold: float = 0.5) -> Decoded:
    """Class labels from a classifier's output: [N] / [N, 1] scores in [0, 1] thresholded,
    [N, C >= 2] scores by argmax, integer [N] / [N, 1] taken as labels."""
    output = np.asarray(output)
    if output.ndim == 0 or output.ndim > 2:
        raise EvaluationInputError(f"cannot read classes from an output of shape {list(output.shape)}: expected [N], [N, 1] or [N, C]")
    if output.dtype.kind in "biu":
        if output.ndim == 2 and output.shape[1] != 1:
            raise EvaluationInputError(f"an integer output must be labels of shape [N] or [N, 1], got {list(output.shape)}")
        labels = output.reshape(len(output)).astype(np.int64)
        return Decoded(labels, "labels", bool(np.isin(labels, [0, 1]).all()))
    if output.dtype.kind != "f":
        raise EvaluationInputError(f"cannot read classes from an output of dtype {output.dtype}")
    if output.ndim == 2 and output.shape[1] >= 2:
        return Decoded(np.argmax(output, axis=1).astype(np.int64), "argmax", output.shape[1] == 2)
    scores = output.reshape(len(output))
    warning = None
    if len(scores) and (scores.min() < 0 or scores.max() > 1):
        warning = (f"output values range over [{scores.min():.4g}, {scores.max():.4g}], not [0, 1]: they look like "
                   f"logits rather than sigmoid probabilities; thresholding at {threshold:g} anyway")  # fmt: skip
    # Strictly greater, as Keras' binary accuracy does, so the numbers match model.evaluate().
    return Decoded((scores > threshold).astype(np.int64), "sigmoid", True, warning)


# ---------------------------------------------------------------- data


def load_data(path: Path | str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The arrays of an .npz file: ({name: array} without `y`, integer labels `y` as a 1-D array)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EvaluationInputError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise EvaluationInputError(f"{path} holds a single array; pass an .npz holding arrays 'x' and 'y'")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise EvaluationInputError(f"cannot read {path}: {exc}") from None
    if "y" not in arrays:
        raise EvaluationInputError(f"{path} has no array 'y' (the true labels); it holds {sorted(arrays) or 'nothing'}")
    return arrays, labels_of(arrays.pop("y"))


def labels_of(y: np.ndarray) -> np.ndarray:
    """`y` as a 1-D int64 array of class labels ([N] or [N, 1] integers, or floats holding integers)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise EvaluationInputError(f"'y' must hold one integer class label per example, shape [N]; got {list(y.shape)}"
                                   + (" (one-hot labels? save y.argmax(axis=1))" if y.ndim == 2 else ""))  # fmt: skip
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "biu":
        raise EvaluationInputError(f"'y' must hold integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def match_inputs(arrays: Mapping[str, np.ndarray], meta: ModelMetadata, n: int) -> dict[str, np.ndarray]:
    """The model's inputs from the file's arrays (`x` for a single-input model, else one array per
    input name), cast to the model's datatypes and checked to hold `n` examples."""
    names = [t.name for t in meta.inputs]
    if len(names) == 1 and names[0] not in arrays and "x" in arrays:
        arrays = {names[0]: arrays["x"]}
    missing = [name for name in names if name not in arrays]
    if missing:
        wanted = "'x' (or '" + names[0] + "')" if len(names) == 1 else "one array per input: " + ", ".join(names)
        raise EvaluationInputError(f"the data has no array for input(s) {missing} of model '{meta.name}'; "
                                   f"it needs {wanted} plus 'y'; it holds {sorted(arrays)}")  # fmt: skip
    inputs = {}
    for tensor in meta.inputs:
        array = arrays[tensor.name]
        if array.ndim == 0 or len(array) != n:
            raise EvaluationInputError(f"input '{tensor.name}' has {len(array) if array.ndim else 0} examples but 'y' has {n}")
        if tensor.datatype != "BYTES" and tensor.datatype in NUMPY_DTYPES:
            array = array.astype(NUMPY_DTYPES[tensor.datatype], copy=False)
        inputs[tensor.name] = array
    return inputs


def choose_output(meta: ModelMetadata, wanted: str | None) -> str:
    """The output to read classes from: `wanted`, or the model's only output."""
    names = [t.name for t in meta.outputs]
    if wanted is not None:
        if wanted not in names:
            raise EvaluationInputError(f"model '{meta.name}' has no output '{wanted}'; its outputs are {names}")
        return wanted
    if len(names) != 1:
        raise EvaluationInputError(f"model '{meta.name}' has outputs {names}; choose one with --output")
    return names[0]


def served_version(meta: ModelMetadata, wanted: str) -> str:
    """`wanted`, or the newest version the server lists (pinned so the report names what ran)."""
    if wanted:
        return wanted
    numbered = [v for v in meta.versions if v.isdigit()]
    return max(numbered, key=int) if numbered else ""


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Evaluation:
    """Everything `modelport evaluate` reports."""

    model: str
    version: str
    output: str
    mode: str
    threshold: float | None
    batch_size: int
    metrics: Metrics
    latency: dict[str, float | int]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (class labels become string keys in per_class)."""
        m = self.metrics
        return {
            "model": self.model,
            "version": self.version,
            "output": self.output,
            "mode": self.mode,
            "binary": m.positive is not None,
            "threshold": self.threshold,
            "batch_size": self.batch_size,
            "n": m.n,
            "accuracy": m.accuracy,
            "labels": list(m.labels),
            "per_class": {str(label): scores for label, scores in m.per_class().items()},
            "macro": m.macro.to_dict(),
            "positive": None if m.positive is None else {"label": POSITIVE_LABEL, **m.positive.to_dict()},
            "confusion_matrix": m.confusion_matrix.tolist(),
            "latency": self.latency,
        }


Progress = Callable[[int, int], None]


def evaluate(
    client: Client,
    model: str,
    arrays: Mapping[str, np.ndarray],
    y: np.ndarray,
    *,
    version: str = "",
    batch_size: int = 64,
    threshold: float = 0.5,
    output: str | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Run `arrays` through `model` in batches of `batch_size` and score its predictions against
    `y`. `progress(done, total)` is called after each request. Raises EvaluationInputError for
    data that does not fit the model and InferenceServerError when a call fails."""
    if batch_size < 1:
        raise EvaluationInputError(f"batch size must be >= 1, got {batch_size}")
    meta = client.model_metadata(model, version)
    y = labels_of(np.asarray(y))
    if not len(y):
        raise EvaluationInputError("the data holds no examples")
    inputs = match_inputs(arrays, meta, len(y))
    output_name = choose_output(meta, output)
    version = served_version(meta, version)
    parts, latencies = [], []
    n = len(y)
    if progress:
        progress(0, n)
    started = time.perf_counter()
    for start in range(0, n, batch_size):
        batch = {name: array[start : start + batch_size] for name, array in inputs.items()}
        sent = time.perf_counter()
        result = client.infer(model, batch, version=version, outputs=[output_name])
        latencies.append(time.perf_counter() - sent)
        parts.append(result[output_name])
        if progress:
            progress(min(start + batch_size, n), n)
    wall = time.perf_counter() - started
    scores = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if scores.ndim == 0 or len(scores) != n:
        raise EvaluationInputError(f"output '{output_name}' has {len(scores) if scores.ndim else 0} rows for {n} examples")
    decoded = decode_predictions(scores, threshold)
    binary = decoded.binary and bool(np.isin(y, [0, 1]).all())
    return Evaluation(
        model=model,
        version=version,
        output=output_name,
        mode=decoded.mode,
        threshold=threshold if decoded.mode == "sigmoid" else None,
        batch_size=batch_size,
        metrics=compute_metrics(y, decoded.labels, binary=binary),
        latency=latency_summary(latencies, n, wall),
        warnings=(decoded.warning,) if decoded.warning else (),
    )
