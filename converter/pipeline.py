"""The whole conversion: load, convert, check parity, publish. Nothing is published unless the
parity gate passes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.protocol.arrays import load_arrays, select_inputs
from modelport.protocol.repository import CONFIG_FILE, MODEL_DATA_FILE

from . import export, onnx_files, parity, publish, signature, sources
from .background import write_background
from .defaults import (
    DEFAULT_ATOL,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    EXTERNAL_DATA_THRESHOLD,
    PROTOBUF_LIMIT,
)
from .errors import ConversionError, ModelError
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
    external_data: bool | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    progress: Callable[[str], None] | None = None,
    tamper: Callable[[Any], None] | None = None,
    protection: publish.Protection | None = None,
) -> ConversionResult:
    """Convert `source` (a .keras/.h5 path, a SavedModel folder, or a Keras model) into
    `<repository>/<name>/<version>/model.onnx`; raise ParityError (publishing nothing) when ONNX
    Runtime and TensorFlow disagree on the sample beyond atol + rtol x |TensorFlow|.

    `sample` is an .npz path or arrays (named by input, or one array for a single-input model);
    without it, random inputs are used. `tamper` edits the ONNX model before the gate (tests).

    `external_data`: True writes the weights beside the graph, as ONNX external data
    (model.onnx.data); False keeps them inside model.onnx (refused for weights over 2 GiB, an ONNX
    file's limit); None (default) decides by size: external above `external_data_threshold` bytes.
    The external-data path also keeps memory near one copy of the weights (see lean.py).
    conversion.json lists the version's files (`files`: name, bytes, sha256) and `external_data`.

    A step that fails for a reason other than the converter's own checks raises ConversionError
    naming the step ([1/4] loading .. [4/4] publishing), chained to the original exception.

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
    if protection is not None:
        protection.check()
    say(f"[1/4] loading {source if isinstance(source, (str, Path)) else type(source).__name__}")
    with _step(1, "loading"):
        loaded = sources.load(source)
        weights = loaded.weight_bytes()
    external = _external_data(external_data, weights, external_data_threshold)
    say(f"      inputs {[(t.name, str(t.dtype), list(t.shape)) for t in loaded.inputs]} outputs {loaded.outputs}")
    data, sample_name = _sample(loaded, sample)  # a wrong sample fails now, not after converting
    with publish.Staging(model_dir, chosen) as staging:
        where = f"; weights ({_size(weights)}) as external data in {MODEL_DATA_FILE}" if external else ""
        say(f"[2/4] converting with tf2onnx (opset {opset}{where})")
        with _step(2, "converting"):
            model = export.to_onnx(loaded, opset, staging.path if external else None)
        if tamper is not None:
            tamper(model)
        say(
            f"[3/4] parity check on {len(next(iter(data.values())))} rows of {sample_name} data "
            f"(atol {atol:g}, rtol {rtol:g})"
        )
        with _step(3, "parity check"):
            # From the file: ONNX Runtime then maps external weights instead of holding another copy.
            report = parity.check(loaded, staging.write_model(model), data, atol, rtol, sample_name)
        if not report.passed:
            raise ParityError(report)
        worst = max(o.max_abs_diff for o in report.outputs)
        say(f"      passed: max |difference| {worst:.3g}")
        say(f"[4/4] publishing {model_dir / str(chosen)}")
        keep = established and not replace_signature
        renamed = _match_signature(model, existing, model_dir, name, chosen, say) if keep else {}
        config = publish.next_config(existing, name, model, batch_size, keep)
        problem = signature.load_problem(config, *signature.graph_tensors(model))
        if problem is not None:
            raise ValueError(f"version {chosen} would not load with {model_dir / CONFIG_FILE}: {problem}; "
                             "nothing was published")  # fmt: skip
        broken = signature.newly_broken(model_dir, existing, config)
        if broken and not replace_signature:
            raise SignatureMismatch(_breaks_message(name, chosen, existing, batch_size, max_batch_size, broken))
        with _step(4, "publishing"):
            if renamed:  # the gate ran the file before the renaming
                onnx_files.check(model, staging.write_model(model))
            record = _record(loaded, opset, report, data, sample_name, renamed)
            record["weights"] = weight_sparsity(model, staging.path)
            if record["weights"]["sparsity"] > 0.05:
                say(f"      weight sparsity {record['weights']['sparsity']:.1%} (pruned weights are zeros)")
            if sample is not None and (protection is None or protection.encrypt_key_file is None):
                # Explanations' background (bounded rows of the sample); never plaintext sample rows
                # beside an encrypted model.
                entry = write_background(staging.path, {renamed.get(n, n): a for n, a in data.items()})
                if entry is not None:
                    record["background"] = entry
            path = staging.commit(record, protection)
        publish.write_config(model_dir, config)
    if replace_signature and (established or broken):
        say(f"warning: {FLAG}: {CONFIG_FILE} now has version {chosen}'s inputs and outputs; "
            + (f"earlier versions that no longer load: {signature.describe_broken(broken)}" if broken
               else "every earlier version still loads with it"))  # fmt: skip
    say(f"published {name} version {chosen} at {path} (max |difference| {worst:.3g})")
    return ConversionResult(name, chosen, path, report, record)


def _match_signature(
    model: Any, existing: Any, model_dir: Path, name: str, version: int, say: Callable[[str], None]
) -> dict[str, str]:
    """Check the new version against the model's established inputs and outputs (by position) and
    rename its graph to their names; SignatureMismatch when they differ. Returns the renaming."""
    differences = signature.differences(existing, model)
    if differences:
        raise SignatureMismatch(
            f"version {version} of '{name}' does not match the model's inputs and outputs in "
            f"{model_dir / CONFIG_FILE} (compared by position"
            f"{'; dims without the batch dimension' if existing.max_batch_size > 0 else ''}): "
            f"{'; '.join(differences)}. Nothing was published. To make this version's inputs and outputs "
            f"the model's, pass {FLAG} (replace_signature=True); earlier versions may then no longer load"
        )
    renamed = signature.renames(existing, model)
    signature.rename(model, renamed)
    if renamed:
        say(f"      published under the model's tensor names: {_arrows(renamed)}")
    return renamed


# What to do when a step fails for a reason the converter did not check for itself.
_FIXES = {
    1: "check that the source is a .keras or .h5 file or a SavedModel folder that this TensorFlow and Keras can "
    "read (a model with Lambda layers: export it as a SavedModel with model.export() and convert that)",
    2: "try another --opset, or convert parts of the model to find the layer tf2onnx fails on",
    3: "ONNX Runtime or TensorFlow could not run the model on the sample: check the sample's shapes and dtypes "
    "(--sample), and that there is memory for both",
    4: "check that the model repository is writable and has room for the version",
}
# Errors that already name their cause and fix in one paragraph: passed on as they are.
_OWN_ERRORS = (ModelError, SignatureMismatch, publish.VersionExists, FileNotFoundError)


@contextmanager
def _step(number: int, what: str) -> Iterator[None]:
    """Run a step; an exception from TensorFlow, tf2onnx, onnx or ONNX Runtime becomes a
    ConversionError saying which step failed, the exception's type and first line, and what to do,
    chained to the original (`modelport --verbose` shows its traceback)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, _OWN_ERRORS) or hasattr(exc, "exit_code"):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "(no message)").rstrip(".")
        raise ConversionError(
            f"[{number}/4] {what} failed: {type(exc).__name__}: {first}. To fix: {_FIXES[number]}. Nothing was "
            "published; run with --verbose for the traceback"
        ) from exc


def _external_data(wanted: bool | None, weights: int, threshold: int) -> bool:
    """Whether to write external data: as asked, else when the weights exceed `threshold`."""
    if wanted is None:
        return weights > threshold
    if not wanted and weights > PROTOBUF_LIMIT:
        raise ModelError(
            f"the model's weights are {_size(weights)}, more than the 2 GiB an ONNX file can hold; convert it with "
            "external data (--external-data, or leave out --no-external-data). Nothing was published"
        )
    return wanted


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
        with open(file, "rb") as handle:  # a chunk at a time: sources can be gigabytes
            while chunk := handle.read(8 * 2**20):
                digest.update(chunk)
    return digest.hexdigest()
