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
from modelport.protocol.repository import CONFIG_FILE

from . import export, parity, publish, signature, sources
from .defaults import DEFAULT_ATOL, DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET, DEFAULT_RTOL
from .signature import FLAG, SignatureMismatch
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
    max_batch_size: int | None = None,
    replace_signature: bool = False,
    progress: Callable[[str], None] | None = None,
    tamper: Callable[[Any], None] | None = None,
) -> ConversionResult:
    """Convert `source` (a .keras/.h5 path, a SavedModel folder, or a Keras model) into
    `<repository>/<name>/<version>/model.onnx`; raise ParityError (publishing nothing) when ONNX
    Runtime and TensorFlow disagree on the sample beyond atol + rtol x |TensorFlow|.

    `sample` is an .npz path or arrays (named by input, or one array for a single-input model);
    without it, random inputs are used. `tamper` edits the ONNX model before the gate (tests).

    Versions of a model are interchangeable: when `<repository>/<name>/config.pbtxt` lists inputs
    or outputs, the new version must match them by position (datatype and dims) and is published
    under their names (the ONNX graph renamed, the mapping in conversion.json's `renamed`);
    otherwise SignatureMismatch, publishing nothing. A new config.pbtxt that would stop an earlier
    version from loading is refused too. `replace_signature=True` skips both and makes the new
    version's inputs and outputs the model's. `max_batch_size` defaults to the existing
    config.pbtxt's (else DEFAULT_MAX_BATCH_SIZE)."""
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    model_dir = Path(repository) / name
    # Fail early, before the slow part: a taken version, an unreadable config, a batch size it refuses.
    chosen = publish.choose_version(model_dir, version)
    existing = publish.read_config(model_dir)
    established = signature.is_established(existing)
    batch_size = _batch_size(existing, established, max_batch_size)
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
    keep = established and not replace_signature
    renamed: dict[str, str] = {}
    if keep:
        differences = signature.differences(existing, model)
        if differences:
            raise SignatureMismatch(
                f"version {chosen} of '{name}' does not match the model's inputs and outputs in "
                f"{model_dir / CONFIG_FILE} (compared by position"
                f"{'; dims without the batch dimension' if existing.max_batch_size > 0 else ''}): "
                f"{'; '.join(differences)}. Nothing was published. To make this version's inputs and outputs "
                f"the model's, pass {FLAG} (replace_signature=True); earlier versions may then no longer load"
            )
        renamed = signature.renames(existing, model)
        signature.rename(model, renamed)
        if renamed:
            say(f"      published under the model's tensor names: {_arrows(renamed)}")
    config = publish.next_config(existing, name, model, batch_size, keep)
    problem = signature.load_problem(config, *signature.graph_tensors(model))
    if problem is not None:
        raise ValueError(f"version {chosen} would not load with {model_dir / CONFIG_FILE}: {problem}; "
                         "nothing was published")  # fmt: skip
    broken = signature.newly_broken(model_dir, existing, config)
    if broken and not replace_signature:
        raise SignatureMismatch(_breaks_message(name, chosen, existing, batch_size, max_batch_size, broken))
    record = _record(loaded, opset, report, data, sample_name, renamed)
    record["weights"] = weight_sparsity(model)
    if record["weights"]["sparsity"] > 0.05:
        say(f"      weight sparsity {record['weights']['sparsity']:.1%} (pruned weights are zeros)")
    path = publish.publish(model_dir, chosen, model, record)
    publish.write_config(model_dir, config)
    if replace_signature and (established or broken):
        say(f"warning: {FLAG}: {CONFIG_FILE} now has version {chosen}'s inputs and outputs; "
            + (f"earlier versions that no longer load: {signature.describe_broken(broken)}" if broken
               else "every earlier version still loads with it"))  # fmt: skip
    say(f"published {name} version {chosen} at {path} (max |difference| {worst:.3g})")
    return ConversionResult(name, chosen, path, report, record)


def _batch_size(existing: Any, established: bool, wanted: int | None) -> int:
    """The max_batch_size to write: `wanted`, else the model's (config.pbtxt's, when it has inputs and
    outputs or a non-zero one), else the default; refused early when the existing config's
    dynamic_batching needs batches."""
    size = wanted
    if size is None:
        kept = existing is not None and (established or existing.max_batch_size > 0)
        size = existing.max_batch_size if kept else DEFAULT_MAX_BATCH_SIZE
    if size < 0:
        raise ValueError(f"max_batch_size must be >= 0, got {size}")
    if size == 0 and existing is not None and existing.HasField("dynamic_batching"):
        raise ValueError(f"max_batch_size 0 turns batching off, but the model's {CONFIG_FILE} has dynamic_batching, "
                         "which needs max_batch_size > 0 (no version would load)")  # fmt: skip
    return size


def _breaks_message(name: str, version: int, existing: Any, size: int, wanted: int | None, broken: dict) -> str:
    if existing is not None and wanted is not None and wanted != existing.max_batch_size:
        hint = f"keep the model's max_batch_size {existing.max_batch_size} (leave out --max-batch-size)"
    else:
        hint = f"list the model's inputs and outputs in {CONFIG_FILE}"
    return (
        f"publishing version {version} of '{name}' (max_batch_size {size}) would stop earlier versions from "
        f"loading: {signature.describe_broken(broken)}. Nothing was published. To publish, {hint}, or pass "
        f"{FLAG} (replace_signature=True) and accept that those versions no longer load"
    )


def _arrows(renamed: dict[str, str]) -> str:
    return ", ".join(f"{old} -> {new}" for old, new in renamed.items())


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


def _record(
    loaded: sources.Source, opset: int, report: parity.ParityReport, data: dict, sample_name: str, renamed: dict
) -> dict:
    """conversion.json: every name in it is the published one; `renamed` maps the source's names to them."""

    def published(name: str) -> str:
        return renamed.get(name, name)

    checked = report.to_dict()
    for output in checked["outputs"]:
        output["name"] = published(output["name"])
    return {
        "source": {
            "kind": loaded.kind, "path": str(loaded.path) if loaded.path else None, "sha256": _hash(loaded.path)
        },
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "opset": opset,
        "inputs": [
            {"name": published(t.name), "dtype": str(t.dtype), "shape": [d if d is not None else -1 for d in t.shape]}
            for t in loaded.inputs
        ],
        "outputs": [published(o) for o in loaded.outputs],
        "renamed": dict(renamed),
        "parity": checked,
        "sample": sample_name,
        "input_statistics": {published(k): v for k, v in input_statistics(data).items()},
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
