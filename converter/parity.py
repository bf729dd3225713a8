"""The parity gate: TensorFlow and ONNX Runtime on the same inputs must agree within tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .defaults import DEFAULT_ROWS
from .sources import Source, SourceTensor


@dataclass(frozen=True)
class OutputParity:
    """How far ONNX Runtime is from TensorFlow on one output."""

    name: str
    max_abs_diff: float
    worst_index: list[int]
    tensorflow_value: float
    onnx_value: float
    within_tolerance: bool


@dataclass(frozen=True)
class ParityReport:
    """The gate's verdict over all outputs."""

    passed: bool
    atol: float
    rtol: float
    rows: int
    sample: str  # "random" or the sample file's name
    outputs: list[OutputParity]

    def worst(self) -> OutputParity:
        """The output furthest outside (or least inside) its tolerance."""
        return max(self.outputs, key=lambda o: (not o.within_tolerance, o.max_abs_diff))

    def to_dict(self) -> dict:
        """For conversion.json."""
        return asdict(self)


def random_sample(inputs: list[SourceTensor], rows: int = DEFAULT_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in a range every model accepts: uniform [-1, 1) floats, small non-negative ints,
    random booleans and short strings; free dimensions besides the batch are 1."""
    rng = np.random.default_rng(seed)
    sample = {}
    for tensor in inputs:
        shape = (rows, *[1 if d is None else d for d in tensor.shape[1:]])
        kind = tensor.dtype.kind
        if kind == "f":
            sample[tensor.name] = rng.uniform(-1, 1, shape).astype(tensor.dtype)
        elif kind in "iu":
            sample[tensor.name] = rng.integers(0, 10, shape).astype(tensor.dtype)
        elif kind == "b":
            sample[tensor.name] = rng.random(shape) > 0.5
        else:
            sample[tensor.name] = rng.choice(np.array([b"a", b"bc", b"def"], dtype=object), shape)
    return sample


def check(
    source: Source, model: bytes | str | Path, sample: dict[str, np.ndarray], atol: float, rtol: float,
    sample_name: str,
) -> ParityReport:
    """Run both on `sample` and compare every output element: |onnx - tf| <= atol + rtol * |tf|.

    `model` is the ONNX file's path (ONNX Runtime then finds external data beside it, and maps the
    weights from the file rather than copying them) or its serialized bytes."""
    expected = source.predict(sample)
    model = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, sample)))
    outputs = [_compare(name, expected[name], got[name], atol, rtol) for name in source.outputs]
    rows = len(next(iter(sample.values()))) if sample else 0
    return ParityReport(all(o.within_tolerance for o in outputs), atol, rtol, rows, sample_name, outputs)


def _compare(name: str, expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> OutputParity:
    if expected.shape != got.shape:
        return OutputParity(name, float("inf"), [], float("nan"), float("nan"), False)
    if expected.dtype.kind not in "fiub":
        equal = bool(np.array_equal(expected, got))
        return OutputParity(name, 0.0 if equal else float("inf"), [], float("nan"), float("nan"), equal)
    want, have = expected.astype(np.float64), got.astype(np.float64)
    diff = np.abs(want - have)
    excess = diff - (atol + rtol * np.abs(want))
    if not diff.size:
        return OutputParity(name, 0.0, [], 0.0, 0.0, True)
    index = np.unravel_index(int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess))), diff.shape)
    ok = bool(np.all(excess <= 0)) and not np.isnan(diff).any()
    return OutputParity(
        name, float(np.nanmax(diff)), [int(i) for i in index], float(want[index]), float(have[index]), ok
    )
