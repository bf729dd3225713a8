"""The whole conversion: load, convert, check parity, publish. Nothing is published unless the
parity gate passes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.protocol.arrays import load_arrays, select_inputs

from . import export, parity, publish, sources
from .defaults import DEFAULT_ATOL, DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET, DEFAULT_RTOL
from .stats import input_statistics, weight_sparsity


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with TensorFlow beyond tolerance; nothing was published."""

    exit_code = 1  # the `modelport convert` exit code

    def __init__(self, report: parity.ParityReport) -> None:
        worst = report.worst()
        super().__init__(
            f"parity check failed: output '{worst.name}' differs by {worst.max_abs_diff:.6g} at index "
            f"{worst.worst_index} (TensorFlow {worst.tensorflow_value:.6g}, ONNX Runtime {worst.onnx_value:.6g}; "
            f"allowed atol {report.atol:g} + rtol {report.rtol:g} x |TensorFlow|); nothing was published"
        )
        self.report = report


@dataclass(frozen=True)
class ConversionResult:
    """Where the new version went and what the gate measured."""

    name: str
    version: int
    path: Path
    parity: parity.ParityReport
    record: dict


def convert(
    source: Any,
    repository: str | Path,
    name: str,
    *,
    version: int | None = None,
    opset: int = DEFAULT_OPSET,
    sample: dict[str, np.ndarray] | np.ndarray | str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    progress: Callable[[str], None] | None = None,
    tamper: Callable[[Any], None] | None = None,
) -> ConversionResult:
    """Convert `source` (a .keras/.h5 path, a SavedModel folder, or a Keras model) into
    `<repository>/<name>/<version>/model.onnx`; raise ParityError (publishing nothing) when ONNX
    Runtime and TensorFlow disagree on the sample beyond atol + rtol x |TensorFlow|.

    `sample` is an .npz path or arrays (named by input, or one array for a single-input model);
    without it, random inputs are used. `tamper` edits the ONNX model before the gate (tests)."""
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    model_dir = Path(repository) / name
    chosen = publish.choose_version(model_dir, version)  # fail early, before the slow part
    say(f"[1/4] loading {source if isinstance(source, (str, Path)) else type(source).__name__}")
    loaded = sources.load(source)
    say(f"      inputs {[(t.name, str(t.dtype), list(t.shape)) for t in loaded.inputs]} outputs {loaded.outputs}")
    say(f"[2/4] converting with tf2onnx (opset {opset})")
    model = export.to_onnx(loaded, opset)
    if tamper is not None:
        tamper(model)
    data, sample_name = _sample(loaded, sample)
    say(
        f"[3/4] parity check on {len(next(iter(data.values())))} rows of {sample_name} data "
        f"(atol {atol:g}, rtol {rtol:g})"
    )
    report = parity.check(loaded, model.SerializeToString(), data, atol, rtol, sample_name)
    if not report.passed:
        raise ParityError(report)
    worst = max(o.max_abs_diff for o in report.outputs)
    say(f"      passed: max |difference| {worst:.3g}")
    say(f"[4/4] publishing {model_dir / str(chosen)}")
    record = _record(loaded, opset, report, data, sample_name)
    record["weights"] = weight_sparsity(model)
    if record["weights"]["sparsity"] > 0.05:
        say(f"      weight sparsity {record['weights']['sparsity']:.1%} (pruned weights are zeros)")
    path = publish.publish(model_dir, chosen, model, record)
    publish.write_config(model_dir, name, model, max_batch_size)
    say(f"published {name} version {chosen} at {path} (max |difference| {worst:.3g})")
    return ConversionResult(name, chosen, path, report, record)


def _sample(loaded: sources.Source, sample: Any) -> tuple[dict[str, np.ndarray], str]:
    if sample is None:
        return parity.random_sample(loaded.inputs), "random"
    sample_name = "given"
    if isinstance(sample, (str, Path)):
        sample_name = Path(sample).name
        sample = load_arrays(sample)
    if isinstance(sample, np.ndarray):
        sample = {"x": sample}
    chosen = select_inputs(sample, [t.name for t in loaded.inputs], "the sample")
    return {t.name: np.asarray(chosen[t.name]).astype(t.dtype, copy=False) for t in loaded.inputs}, sample_name


def _record(loaded: sources.Source, opset: int, report: parity.ParityReport, data: dict, sample_name: str) -> dict:
    return {
        "source": {
            "kind": loaded.kind, "path": str(loaded.path) if loaded.path else None, "sha256": _hash(loaded.path)
        },
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "opset": opset,
        "inputs": [
            {"name": t.name, "dtype": str(t.dtype), "shape": [d if d is not None else -1 for d in t.shape]}
            for t in loaded.inputs
        ],
        "outputs": loaded.outputs,
        "parity": report.to_dict(),
        "sample": sample_name,
        "input_statistics": input_statistics(data),
    }


def _versions() -> dict[str, str | None]:
    """Versions of the tools that made the file (from the modules: tensorflow's distribution may
    be tensorflow-cpu, so package metadata would miss it)."""
    import keras
    import onnx
    import onnxruntime
    import tensorflow
    import tf2onnx

    found: dict[str, str | None] = {m.__name__: m.__version__ for m in (tensorflow, keras, tf2onnx, onnx, onnxruntime)}
    try:
        found["modelport"] = importlib.metadata.version("modelport")
    except importlib.metadata.PackageNotFoundError:
        found["modelport"] = None
    return found


def _hash(path: Path | None) -> str | None:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()
