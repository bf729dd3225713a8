"""Reading classes from a classifier's output: the one decoder behind `modelport evaluate`, the
compression gate, online quality and the predicted-class counters, so that they all agree.

[N] / [N, 1] scores are sigmoid probabilities (class 1 when above the threshold, strictly, as
Keras counts); [N, C >= 2] scores give the argmax; integer [N] / [N, 1] outputs are the classes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Per-class counters are kept for outputs up to this wide (wider ones are embeddings, not classes).
MAX_CLASSES = 1000


class ClassDecodingError(ValueError):
    """The output cannot be read as classes (its shape or dtype)."""


class Decoded(NamedTuple):
    """Predicted classes and how they were read from the model's output (a tuple: the class
    counters build one per sampled request)."""

    labels: np.ndarray
    mode: str  # "sigmoid" (thresholded), "argmax" or "labels" (integer output used as is)
    binary: bool
    warning: str | None = None  # set when sigmoid scores fall outside [0, 1] (logits, or a regression)


def decode_predictions(output: np.ndarray, threshold: float = 0.5) -> Decoded:
    """Classes from a classifier's output of shape [N], [N, 1] or [N, C]."""
    output = np.asarray(output)
    if output.ndim == 0 or output.ndim > 2:
        raise ClassDecodingError(
            f"cannot read classes from an output of shape {list(output.shape)}: expected [N], [N, 1] or [N, C]"
        )
    if output.dtype.kind in "biu":
        if output.ndim == 2 and output.shape[1] != 1:
            raise ClassDecodingError(
                f"an integer output must be labels of shape [N] or [N, 1], got {list(output.shape)}"
            )
        labels = output.reshape(len(output)).astype(np.int64)
        return Decoded(labels, "labels", bool(np.isin(labels, [0, 1]).all()))
    if output.dtype.kind != "f":
        raise ClassDecodingError(f"cannot read classes from an output of dtype {output.dtype}")
    if output.ndim == 2 and output.shape[1] >= 2:
        return Decoded(np.argmax(output, axis=1).astype(np.int64), "argmax", output.shape[1] == 2)
    scores = output.reshape(len(output))
    warning = None
    if len(scores) and (scores.min() < 0 or scores.max() > 1):
        warning = (f"output values range over [{scores.min():.4g}, {scores.max():.4g}], not [0, 1]: they look like "
                   f"logits rather than sigmoid probabilities; thresholding at {threshold:g} anyway")  # fmt: skip
    # Strictly greater, as Keras' binary accuracy does, so the numbers match model.evaluate().
    return Decoded((scores > threshold).astype(np.int64), "sigmoid", True, warning)


def predicted_classes(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class per row of an output of any shape: rows are flattened first, and an integer output
    gives its first column (online quality reads the model's first output this way)."""
    array = np.asarray(scores)
    if array.ndim and array.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    rows = array.reshape(array.shape[0] if array.ndim else 1, -1)
    if rows.dtype.kind in "biu":
        rows = rows[:, :1]
    return decode_predictions(rows, threshold).labels


def class_counts(scores: np.ndarray) -> np.ndarray | None:
    """Rows per predicted class (index = class) of a classifier-shaped float output: [N, C]
    scores with C <= MAX_CLASSES, or [N, 1] probabilities. None for anything else, a [N, 1]
    output outside [0, 1] included (a regression). On the hot path: a few numpy calls."""
    if scores.ndim != 2 or scores.dtype.kind != "f" or not scores.shape[0] or scores.shape[1] > MAX_CLASSES:
        return None
    decoded = decode_predictions(scores)
    if decoded.warning is not None:
        return None
    return np.bincount(decoded.labels, minlength=max(scores.shape[1], 2))
