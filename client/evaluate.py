"""Classification quality of a served model on labelled data: the batched loop behind
`modelport evaluate`. The maths is modelport.protocol.scoring (scikit-learn's definitions) and the
classes are read by modelport.protocol.classes, as the server's online quality reads them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.protocol.arrays import MissingInputs, select_inputs
from modelport.protocol.classes import ClassDecodingError, decode_predictions
from modelport.protocol.datatypes import NUMPY_DTYPES
from modelport.protocol.scoring import POSITIVE_LABEL, ClassificationReport, classification_report
from modelport.protocol.types import ModelMetadata

if TYPE_CHECKING:
    from .client import Client


class EvaluationInputError(ValueError):
    """The data or the options do not fit the model (bad input, not a server failure)."""


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
    try:
        arrays = select_inputs(arrays, names)
    except MissingInputs as exc:
        wanted = "'x' (or '" + names[0] + "')" if len(names) == 1 else "one array per input: " + ", ".join(names)
        raise EvaluationInputError(f"the data has no array for input(s) {exc.missing} of model '{meta.name}'; "
                                   f"it needs {wanted} plus 'y'; it holds {exc.available}") from None  # fmt: skip
    inputs = {}
    for tensor in meta.inputs:
        array = arrays[tensor.name]
        if array.ndim == 0 or len(array) != n:
            raise EvaluationInputError(
                f"input '{tensor.name}' has {len(array) if array.ndim else 0} examples but 'y' has {n}"
            )
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
    report: ClassificationReport
    latency: dict[str, float | int]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (class labels become string keys in per_class)."""
        m = self.report
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
        raise EvaluationInputError(
            f"output '{output_name}' has {len(scores) if scores.ndim else 0} rows for {n} examples"
        )
    try:
        decoded = decode_predictions(scores, threshold)
    except ClassDecodingError as exc:
        raise EvaluationInputError(str(exc)) from None
    binary = decoded.binary and bool(np.isin(y, [0, 1]).all())
    return Evaluation(
        model=model,
        version=version,
        output=output_name,
        mode=decoded.mode,
        threshold=threshold if decoded.mode == "sigmoid" else None,
        batch_size=batch_size,
        report=classification_report(y, decoded.labels, binary=binary),
        latency=latency_summary(latencies, n, wall),
        warnings=(decoded.warning,) if decoded.warning else (),
    )
