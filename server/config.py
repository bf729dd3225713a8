"""A model's configuration: Triton's `config.pbtxt` read, auto-completed from the ONNX signature,
and checked against it. Protobuf stays at this file boundary; the rest of the server sees
`ModelSpec`, `VersionPolicy` and `Signature` dataclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from modelport.protocol.datatypes import CONFIG_TO_DATATYPE, DATATYPE_TO_CONFIG
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILE, PLATFORM
from modelport.protocol.types import TensorSpec

from . import padding
from .errors import ModelLoadError
from .scheduler import BatchingPolicy
from .signature import Signature

log = logging.getLogger(__name__)
_ACCEPTED_PLATFORMS = {"", PLATFORM}
_ACCEPTED_BACKENDS = {"", "onnxruntime"}


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk are served (Triton's `version_policy`; default latest 1)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        """The served versions, ascending."""
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-max(self.num_versions, 1) :] if ordered else []


@dataclass(frozen=True)
class ModelSpec:
    """The effective configuration of one model (name shared by all its versions)."""

    name: str
    max_batch_size: int
    model_filename: str
    version_policy: VersionPolicy
    intra_op_threads: int
    inter_op_threads: int
    graph_level: int
    instances: tuple[str, ...]  # one entry per instance: "auto", "cpu" or "gpu:<id>"
    session_entries: tuple[tuple[str, str], ...]  # parameters named "session.*", for ONNX Runtime
    batching: BatchingPolicy | None
    config: mc.ModelConfig  # the effective config, as the ModelConfig RPC will answer it
    quality_kind: str = ""  # parameters quality_kind: "classification", "regression" or "" (inferred)


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parse `<model_dir>/config.pbtxt` (fields outside modelport's subset are skipped);
    an absent file is an empty config."""
    path = model_dir / CONFIG_FILE
    config = mc.ModelConfig()
    if not path.exists():
        return config
    try:
        text_format.Parse(path.read_text(), config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"model '{model_dir.name}': {CONFIG_FILE} does not parse: {exc}") from exc
    return config


def version_policy(config: mc.ModelConfig) -> VersionPolicy:
    """The config's version policy as a dataclass."""
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(config.version_policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=config.version_policy.latest.num_versions or 1)
    return VersionPolicy()


def model_spec(name: str, config: mc.ModelConfig) -> ModelSpec:
    """Check the parts of `config` that do not need the model file and summarise them."""
    if config.name and config.name != name:
        raise ModelLoadError(f"model '{name}': {CONFIG_FILE} names the model '{config.name}'; it must match the folder")
    if config.platform not in _ACCEPTED_PLATFORMS or config.backend not in _ACCEPTED_BACKENDS:
        raise ModelLoadError(
            f"model '{name}': platform '{config.platform or config.backend}' is not served here; "
            f"modelport serves ONNX models (platform \"{PLATFORM}\")"
        )
    if config.max_batch_size < 0:
        raise ModelLoadError(f"model '{name}': max_batch_size must be >= 0, got {config.max_batch_size}")
    params = {k: v.string_value for k, v in config.parameters.items()}
    return ModelSpec(
        name=name,
        max_batch_size=config.max_batch_size,
        model_filename=config.default_model_filename or MODEL_FILE,
        version_policy=version_policy(config),
        intra_op_threads=_int_param(name, params, "intra_op_thread_count"),
        inter_op_threads=_int_param(name, params, "inter_op_thread_count"),
        graph_level=config.optimization.graph.level,
        instances=_instances(config),
        session_entries=tuple(sorted((k, v) for k, v in params.items() if k.startswith("session."))),
        batching=_batching(name, config),
        config=config,
        quality_kind=_quality_kind(name, params),
    )


def _quality_kind(name: str, params: dict[str, str]) -> str:
    """parameters { key: "quality_kind" ... }: how online quality reads this model's outputs."""
    kind = params.get("quality_kind", "")
    if kind not in ("", "classification", "regression"):
        raise ModelLoadError(
            f"model '{name}': parameter quality_kind must be classification or regression, got {kind!r}"
        )
    return kind


def _instances(config: mc.ModelConfig) -> tuple[str, ...]:
    """instance_group expanded to one entry per instance (default: one, on the server's providers)."""
    kinds = {mc.ModelInstanceGroup.KIND_CPU: "cpu", mc.ModelInstanceGroup.KIND_GPU: "gpu"}
    found: list[str] = []
    for group in config.instance_group:
        kind = kinds.get(group.kind, "auto")
        count = group.count or 1
        if kind == "gpu":
            gpus = list(group.gpus) or [0]
            found.extend(f"gpu:{gpus[i % len(gpus)]}" for i in range(count * len(gpus) if group.gpus else count))
        else:
            found.extend([kind] * count)
    return tuple(found) or ("auto",)


def _batching(name: str, config: mc.ModelConfig) -> BatchingPolicy | None:
    """The dynamic batching policy, or None: no dynamic_batching block means no batching (as in Triton)."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    declared = padding.parse(name, params)
    if not config.HasField("dynamic_batching"):
        if declared is not None:
            raise ModelLoadError(
                f"model '{name}': parameter {padding.PAD_INPUTS} needs dynamic_batching: only the dynamic "
                "batcher merges requests of different lengths"
            )
        return None
    if config.max_batch_size <= 0:
        raise ModelLoadError(f"model '{name}': dynamic_batching needs max_batch_size > 0")
    batching = config.dynamic_batching
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_size=batching.default_queue_policy.max_queue_size,
        pad_batches=_pad_param(name, config),
        padding=declared,
    )


def _pad_param(name: str, config: mc.ModelConfig) -> bool | None:
    """parameters { key: "pad_batches" value { string_value: "auto" | "true" | "false" } }."""
    value = config.parameters["pad_batches"].string_value.lower() if "pad_batches" in config.parameters else "auto"
    choices = {"auto": None, "true": True, "false": False}
    if value not in choices:
        raise ModelLoadError(f"model '{name}': parameter pad_batches must be auto, true or false, got '{value}'")
    return choices[value]


def _int_param(model: str, params: dict[str, str], key: str) -> int:
    try:
        return int(params.get(key, "0"))
    except ValueError:
        raise ModelLoadError(f"model '{model}': parameter {key} must be an integer, got '{params[key]}'") from None


def complete(
    spec: ModelSpec, onnx: Signature, model_dir: Path, version: int
) -> tuple[mc.ModelConfig, Signature]:
    """Auto-complete the config from the ONNX signature of one version and check that they agree.

    Returns the effective config and the signature requests are validated against (batch
    dimension included when max_batch_size > 0).
    """
    where = f"model '{spec.name}' version {version}"
    config = mc.ModelConfig()
    config.CopyFrom(spec.config)
    config.name = spec.name
    config.platform = PLATFORM
    batch = spec.max_batch_size > 0
    inputs = _complete_tensors(where, "input", config.input, onnx.inputs, batch, required_all=True)
    outputs = _complete_tensors(where, "output", config.output, onnx.outputs, batch, required_all=False)
    labels = _labels(model_dir, config, [t.name for t in outputs])
    outputs = tuple(TensorSpec(t.name, t.datatype, t.shape, labels.get(t.name, ())) for t in outputs)
    signature = Signature(inputs, outputs)
    if spec.batching is not None and spec.batching.padding is not None:
        spec.batching.padding.check(where, signature)  # against this version's tensors
    return config, signature


def _complete_tensors(
    where: str,
    kind: str,
    configured: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    onnx: Sequence[TensorSpec],
    batch: bool,
    required_all: bool,
) -> tuple[TensorSpec, ...]:
    """Check configured tensors against ONNX ones, add the missing ones to the config."""
    by_name = {t.name: t for t in onnx}
    for entry in configured:
        _check_entry(where, kind, entry, by_name, batch)
    named = {entry.name for entry in configured}
    missing = [t for t in onnx if t.name not in named]
    if configured and missing and required_all:
        raise ModelLoadError(
            f"{where}: {CONFIG_FILE} lists {kind}s {sorted(named)} but the ONNX model also has "
            f"{[t.name for t in missing]}"
        )
    for tensor in missing:
        if batch and (not tensor.shape or tensor.shape[0] != -1):
            raise ModelLoadError(
                f"{where}: max_batch_size > 0 needs a dynamic first dimension, but {kind} "
                f"'{tensor.name}' has shape {list(tensor.shape)} in the ONNX model"
            )
        entry = configured.add()
        entry.name = tensor.name
        entry.data_type = mc.DataType.Value(DATATYPE_TO_CONFIG[tensor.datatype])
        entry.dims.extend(tensor.shape[1:] if batch else tensor.shape)
    order = [entry.name for entry in configured]
    return tuple(_effective(by_name[n], configured[i].dims, batch) for i, n in enumerate(order))


def _check_entry(where: str, kind: str, entry, by_name: dict[str, TensorSpec], batch: bool) -> None:
    tensor = by_name.get(entry.name)
    if tensor is None:
        raise ModelLoadError(
            f"{where}: {CONFIG_FILE} {kind} '{entry.name}' is not in the ONNX model; it has {sorted(by_name)}"
        )
    if entry.HasField("reshape"):
        raise ModelLoadError(f"{where}: {kind} '{entry.name}': reshape is not supported")
    datatype = CONFIG_TO_DATATYPE.get(mc.DataType.Name(entry.data_type))
    if datatype != tensor.datatype:
        raise ModelLoadError(
            f"{where}: {kind} '{entry.name}' is {mc.DataType.Name(entry.data_type)} in {CONFIG_FILE} "
            f"but {tensor.datatype} in the ONNX model"
        )
    onnx_dims = tensor.shape
    if batch:
        if not onnx_dims or onnx_dims[0] != -1:
            raise ModelLoadError(
                f"{where}: max_batch_size > 0 needs a dynamic first dimension, but {kind} "
                f"'{entry.name}' has shape {list(onnx_dims)} in the ONNX model"
            )
        onnx_dims = onnx_dims[1:]
    dims = tuple(entry.dims)
    if len(dims) != len(onnx_dims) or any(a != -1 and b != -1 and a != b for a, b in zip(dims, onnx_dims)):
        raise ModelLoadError(
            f"{where}: {kind} '{entry.name}' has dims {list(dims)} in {CONFIG_FILE} but "
            f"{list(onnx_dims)} in the ONNX model{' (batch dimension excluded)' if batch else ''}"
        )


def _effective(tensor: TensorSpec, dims: Sequence[int], batch: bool) -> TensorSpec:
    # Where config and ONNX disagree on a dynamic dimension, the fixed one wins.
    onnx_dims = tensor.shape[1:] if batch else tensor.shape
    merged = tuple(d if d != -1 else o for d, o in zip(dims, onnx_dims))
    return TensorSpec(tensor.name, tensor.datatype, ((-1,) if batch else ()) + merged)


def _labels(model_dir: Path, config: mc.ModelConfig, outputs: list[str]) -> dict[str, tuple[str, ...]]:
    """Class labels per output: `label_filename` in the config, else labels.txt for a single output."""
    found: dict[str, tuple[str, ...]] = {}
    for entry in config.output:
        if entry.label_filename:
            found[entry.name] = _read_labels(model_dir / entry.label_filename)
    if not found and len(outputs) == 1 and (model_dir / LABELS_FILE).exists():
        found[outputs[0]] = _read_labels(model_dir / LABELS_FILE)
    return found


def _read_labels(path: Path) -> tuple[str, ...]:
    if not path.exists():
        raise ModelLoadError(f"label file {path} is missing")
    return tuple(line.strip() for line in path.read_text().splitlines())
