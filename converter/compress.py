"""Compression with an accuracy gate: a new version of a served model made smaller or faster by
ONNX Runtime's tools, published only when it keeps its accuracy.

Methods: int8-dynamic (weights int8, activations quantised at run time: MatMul-heavy models),
int8-static (QDQ with activation ranges calibrated on data: CNNs), fp16 (weights and compute in
half precision, inputs/outputs kept fp32 so clients do not change: for GPUs), optimize (ONNX
Runtime's offline graph optimisation at the extended level, which stays portable across CPUs;
the "all" level adds layout transforms tied to the machine that ran it).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modelport.protocol.arrays import load_arrays, select_inputs
from modelport.protocol.classes import decode_predictions
from modelport.protocol.repository import CONVERSION_FILE, MODEL_DATA_FILE, MODEL_FILE, version_folders
from modelport.protocol.sealed import is_sealed

from . import onnx_files, publish

METHODS = ("int8-dynamic", "int8-static", "fp16", "optimize")


class AccuracyGateError(RuntimeError):
    """The compressed model lost more than allowed; nothing was published."""

    exit_code = 1  # the `modelport compress` exit code


@dataclass(frozen=True)
class Speed:
    """In-process ONNX Runtime speed at one batch size on this machine's CPU."""

    batch: int
    latency_ms: float
    items_per_s: float


@dataclass(frozen=True)
class CompressionReport:
    """What compression did and what it cost."""

    method: str
    source_version: int
    size_before: int
    size_after: int
    metric: str  # "accuracy", "mean_abs_error" or "agreement"
    before: float
    after: float
    drop: float
    max_drop: float
    gate_data: str
    speed_before: list[Speed]
    speed_after: list[Speed]

    def lines(self) -> list[str]:
        """A human-readable table."""
        out = [
            f"method        {self.method} (from version {self.source_version})",
            f"size          {self.size_before / 1024:.1f} KiB -> {self.size_after / 1024:.1f} KiB "
            f"({self.size_after / self.size_before:.2f}x)",
            f"{self.metric:<13} {self.before:.4f} -> {self.after:.4f} "
            f"(drop {self.drop:+.4f}, allowed {self.max_drop:.4f}; on {self.gate_data})",
        ]
        for a, b in zip(self.speed_before, self.speed_after):
            out.append(
                f"batch {a.batch:<7} {a.items_per_s:,.0f} -> {b.items_per_s:,.0f} items/s "
                f"({b.items_per_s / a.items_per_s:.2f}x), "
                f"latency {a.latency_ms:.3f} -> {b.latency_ms:.3f} ms"
            )
        return out


def compress(
    repository: str | Path,
    name: str,
    method: str,
    *,
    from_version: int | None = None,
    calibration: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_accuracy_drop: float = 0.01,
    threshold: float = 0.5,
    progress: Callable[[str], None] | None = None,
    protection: publish.Protection | None = None,
) -> tuple[int, CompressionReport]:
    """Compress a published version into the next free one; raise AccuracyGateError (publishing
    nothing) when the metric drops by more than `max_accuracy_drop`. `protection` encrypts and/or
    signs the new version (the source must be a plain one: the tools read files)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; expected one of {', '.join(METHODS)}")
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    model_dir = Path(repository) / name
    versions = list(version_folders(model_dir))
    source = from_version if from_version is not None else (versions[-1] if versions else None)
    if source is None or source not in versions:
        raise ValueError(
            f"{model_dir}: no version {from_version if from_version else ''} to compress; found {versions}"
        )
    source_dir = model_dir / str(source)
    source_path = source_dir / MODEL_FILE
    if source_path.exists() and is_sealed(source_path):
        raise ValueError(f"{source_path} is encrypted; compress a plain version (ONNX Runtime's tools read files) "
                         "and pass --encrypt-key-file to encrypt the compressed one")  # fmt: skip
    if protection is not None:
        protection.check()
    external = _uses_external_data(source_path)
    inputs = [i.name for i in _session(source_path).get_inputs()]
    calib = _load_inputs(calibration, inputs) if calibration else None
    if method == "int8-static" and calib is None:
        raise ValueError("int8-static needs --calibration data (an .npz of representative inputs)")
    version = publish.choose_version(model_dir, None)
    with publish.Staging(model_dir, version) as staging, _workspace(model_dir) as work:
        say(f"[1/3] {method}: compressing {source_path}{' (external data)' if external else ''}")
        _apply(method, source_path, calib, staging.model_path, external, work)
        say("[2/3] accuracy gate")
        report = _gate(method, source, source_path, staging.model_path, eval_data, calib, inputs, max_accuracy_drop,
                       threshold)  # fmt: skip
        if report.drop > max_accuracy_drop:
            raise AccuracyGateError(
                f"{report.metric} dropped from {report.before:.4f} to {report.after:.4f} ({report.drop:.4f} > allowed "
                f"{max_accuracy_drop:.4f}) on {report.gate_data}; nothing was published"
            )
        say(f"[3/3] publishing {model_dir / str(version)}")
        record = _record(source_dir, report)
        if record.get("background"):  # the source version's explanation background comes along
            shutil.copy2(source_dir / record["background"]["file"], staging.path)
        staging.commit(record, protection)
    for line in report.lines():
        say(f"      {line}")
    return version, report


def _uses_external_data(model_path: Path) -> bool:
    """Whether a published model keeps tensors in external data (then so does its compressed version)."""
    return bool(_data_files(model_path))


def _data_files(model_path: Path) -> list[str]:
    """The external data files a model's tensors refer to (names in its folder)."""
    model = onnx.load(str(model_path), load_external_data=False)
    names = sorted({onnx_files.external_info(t).get("location", "") for t in onnx_files.tensors(model.graph)
                    if onnx_files.is_external(t)})  # fmt: skip
    for name in names:
        if not name or Path(name).name != name:
            raise ValueError(f"{model_path}: external data location {name!r} is not a file beside the model")
    return names


@contextmanager
def _workspace(model_dir: Path) -> Iterator[Path]:
    """A hidden folder in the model folder for the tools' temporary files (removed afterwards):
    ONNX Runtime's quantizers write theirs beside the model they are given, which must not be a
    published version folder."""
    work = Path(tempfile.mkdtemp(prefix=".tmp-work-", dir=model_dir))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_source(source: Path, work: Path) -> Path:
    """The source model and its external data files copied into `work` (in the kernel: no copy of
    the weights in memory). Not hard links: onnx refuses external data with more than one link."""
    for name in (MODEL_FILE, *_data_files(source)):
        shutil.copyfile(source.parent / name, work / name)
    return work / MODEL_FILE


def _apply(
    method: str, source: Path, calibration: dict[str, np.ndarray] | None, out: Path, external: bool, work: Path
) -> None:
    """Write `source` compressed by `method` to `out`, with its weights in out's folder as
    model.onnx.data when `external` (the source's layout); temporary files go to `work`."""
    if method == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(_copy_source(source, work)), str(out), weight_type=QuantType.QInt8,
                         use_external_data_format=external)  # fmt: skip
    elif method == "int8-static":
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = work / "prepared.onnx"
        quant_pre_process(str(_copy_source(source, work)), str(prepared), skip_symbolic_shape=True,
                          save_as_external_data=external, all_tensors_to_one_file=True,
                          external_data_location="prepared.onnx.data")  # fmt: skip
        quantize_static(
            str(prepared), str(out), _Reader(calibration or {}), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            use_external_data_format=external,
        )  # fmt: skip
    elif method == "fp16":
        _fp16(source, out, external, work)
    else:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        if external:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", MODEL_DATA_FILE)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             str(onnx_files.INLINE_MAX))  # fmt: skip
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    _finish(out)


def _fp16(source: Path, out: Path, external: bool, work: Path) -> None:
    """Weights and compute in float16, inputs and outputs kept float32. A model with external data
    is shape-inferred by path (in-memory inference refuses models over 2 GiB), its weights read from
    the source folder and written to out's model.onnx.data."""
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if not external:
        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(out))
        return
    inferred = work / "inferred.onnx"
    onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
    model = onnx.load(str(inferred), load_external_data=False)
    load_external_data_for_model(model, str(source.parent))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    with onnx_files.DataWriter(out.parent) as writer:
        writer.externalize(onnx_files.initializers(model.graph))
    onnx.save(model, str(out))


def _finish(out: Path) -> None:
    """Cap the IR version for ONNX Runtime and shorten internal names. The graph alone is
    rewritten: tensors in external data stay where the tool wrote them. (No onnx.checker: the fp16
    converter appends its Cast nodes out of topological order, which ONNX Runtime, the gate's
    judge, sorts itself.)"""
    model = onnx.load(str(out), load_external_data=False)
    model.ir_version = min(model.ir_version, 10)
    _compact_names(model)
    onnx.save(model, str(out))


def _compact_names(model: onnx.ModelProto) -> None:
    """Internal tensor and node names from TensorFlow ('cnn_1/conv_64_1/convolution/ReadVariableOp:0_quantized')
    can outweigh a small model's int8 weights; inputs and outputs keep theirs, the rest get short ones."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name = ""
        node.doc_string = ""
    for value in graph.value_info:
        value.name = short(value.name)
    graph.doc_string = ""


class _Reader:
    """ONNX Runtime's CalibrationDataReader over arrays, 32 rows at a time."""

    def __init__(self, data: dict[str, np.ndarray], rows: int = 32) -> None:
        n = len(next(iter(data.values()))) if data else 0
        self._batches = iter([{k: v[i : i + rows] for k, v in data.items()} for i in range(0, n, rows)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _load_inputs(path: str | Path, inputs: list[str]) -> dict[str, np.ndarray]:
    return select_inputs(load_arrays(path), inputs, str(path))


def _session(model: Path) -> ort.InferenceSession:
    """From the file: ONNX Runtime finds external data beside it and maps the weights."""
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _model_bytes(model: Path) -> int:
    """A model's size on disk: model.onnx and its external data files."""
    return model.stat().st_size + sum((model.parent / name).stat().st_size for name in _data_files(model))


def _run(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = _session(model)
    types = {i.name: i.type for i in session.get_inputs()}
    feeds = {k: v.astype(np.float32) if types[k] == "tensor(float)" else v for k, v in feeds.items()}
    return np.asarray(session.run([session.get_outputs()[0].name], feeds)[0])


def _gate(method, source, original, compressed, eval_data, calib, inputs, max_drop, threshold) -> CompressionReport:
    if eval_data:
        feeds = _load_inputs(eval_data, inputs)
        with np.load(eval_data, allow_pickle=False) as data:
            y = data["y"]
        before, after = _run(original, feeds), _run(compressed, feeds)
        if np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y)):
            truth = y.reshape(len(y)).astype(np.int64)
            metric = "accuracy"
            b = float(np.mean(decode_predictions(before, threshold).labels == truth))
            a = float(np.mean(decode_predictions(after, threshold).labels == truth))
            drop = b - a
        else:
            metric = "mean_abs_error"
            b = float(np.mean(np.abs(before.reshape(y.shape) - y)))
            a = float(np.mean(np.abs(after.reshape(y.shape) - y)))
            drop = a - b
        gate_data = Path(eval_data).name
    else:
        # No labels: how often the compressed model agrees with the original on the calibration
        # data (or random inputs), said so in the report.
        feeds = calib or _random_inputs(original)
        before, after = _run(original, feeds), _run(compressed, feeds)
        metric, b = "agreement", 1.0
        a = float(np.mean(decode_predictions(before, threshold).labels == decode_predictions(after, threshold).labels))
        drop = b - a
        gate_data = (
            "calibration data (no --eval: output agreement, not accuracy)" if calib else "random inputs (no --eval)"
        )
    sample = feeds
    return CompressionReport(
        method, source, _model_bytes(original), _model_bytes(compressed), metric, b, a, drop, max_drop, gate_data,
        [_speed(original, sample, n) for n in (1, 32)], [_speed(compressed, sample, n) for n in (1, 32)],
    )


def _random_inputs(model: Path) -> dict[str, np.ndarray]:
    session = _session(model)
    rng = np.random.default_rng(0)
    return {i.name: rng.uniform(-1, 1, [256, *[d if isinstance(d, int) else 1 for d in i.shape[1:]]]).astype(np.float32)
            for i in session.get_inputs()}


def _speed(model: Path, sample: dict[str, np.ndarray], batch: int, seconds: float = 0.5) -> Speed:
    """Closed-loop in-process speed at `batch` rows (rows repeat when the sample is smaller)."""
    session = _session(model)
    types = {i.name: i.type for i in session.get_inputs()}
    feeds = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in sample.items()}
    feeds = {k: v.astype(np.float32) if types[k] == "tensor(float)" else v for k, v in feeds.items()}
    for _ in range(5):
        session.run(None, feeds)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, feeds)
        runs += 1
    return Speed(batch, 1000 * elapsed / runs, batch * runs / elapsed)


def _record(source_dir: Path, report: CompressionReport) -> dict:
    path = source_dir / CONVERSION_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    record["compression"] = asdict(report)
    return record
