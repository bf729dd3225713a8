"""Publishing into a Triton-layout repository: the next free version, written under a hidden
name and renamed in (a server never sees half a version), and a config.pbtxt Triton also reads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf import text_format

from modelport.client._proto import model_config_pb2 as mc

# numpy dtype kind/size -> Triton config data type
_DATA_TYPES = {
    ("b", 1): "TYPE_BOOL",
    ("u", 1): "TYPE_UINT8", ("u", 2): "TYPE_UINT16", ("u", 4): "TYPE_UINT32", ("u", 8): "TYPE_UINT64",
    ("i", 1): "TYPE_INT8", ("i", 2): "TYPE_INT16", ("i", 4): "TYPE_INT32", ("i", 8): "TYPE_INT64",
    ("f", 2): "TYPE_FP16", ("f", 4): "TYPE_FP32", ("f", 8): "TYPE_FP64",
}  # fmt: skip
_ONNX_TYPES = {
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}  # fmt: skip


class VersionExists(ValueError):
    """The asked-for version is already published; versions are never overwritten."""


def versions(model_dir: Path) -> list[int]:
    """Published versions of a model folder."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit())


def choose_version(model_dir: Path, wanted: int | None) -> int:
    """`wanted` if free, else an error; without it, one more than the highest published."""
    existing = versions(model_dir)
    if wanted is None:
        return (existing[-1] + 1) if existing else 1
    if wanted < 1:
        raise ValueError(f"version must be a positive integer, got {wanted}")
    if wanted in existing:
        raise VersionExists(f"{model_dir / str(wanted)} already exists; versions are never overwritten")
    return wanted


def publish(model_dir: Path, version: int, model: onnx.ModelProto, record: dict) -> Path:
    """Write model.onnx and conversion.json under a hidden name inside the model folder (same
    file system), then rename the folder to its version: atomic for any reader."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        onnx.save(model, staging / "model.onnx")
        (staging / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
        target = model_dir / str(version)
        if target.exists():
            raise VersionExists(f"{target} appeared while converting; versions are never overwritten")
        os.rename(staging, target)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_config(model_dir: Path, name: str, model: onnx.ModelProto, max_batch_size: int) -> Path:
    """config.pbtxt with name, platform, max_batch_size, inputs and outputs (dims without the batch
    dimension); fields the user added to an existing one are kept. Written atomically."""
    path = model_dir / "config.pbtxt"
    config = mc.ModelConfig()
    if path.exists():
        text_format.Parse(path.read_text(), config, allow_unknown_field=True)
    config.name = name
    config.platform = "onnxruntime_onnx"
    config.max_batch_size = max_batch_size
    del config.input[:]
    del config.output[:]
    for value in model.graph.input:
        entry = config.input.add(name=value.name, data_type=mc.DataType.Value(_type(value)))
        entry.dims.extend(_dims(value, max_batch_size))
    for value in model.graph.output:
        entry = config.output.add(name=value.name, data_type=mc.DataType.Value(_type(value)))
        entry.dims.extend(_dims(value, max_batch_size))
    staging = path.with_name(".config.pbtxt.tmp")
    staging.write_text(text_format.MessageToString(config))
    os.replace(staging, path)
    return path


def _type(value: onnx.ValueInfoProto) -> str:
    return _ONNX_TYPES[value.type.tensor_type.elem_type]


def _dims(value: onnx.ValueInfoProto, max_batch_size: int) -> list[int]:
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return dims[1:] if max_batch_size > 0 else dims
