"""The model repository's layout (Triton's), as every part of modelport names it:

    <root>/<name>/config.pbtxt          optional (Triton ModelConfig, text format)
    <root>/<name>/labels.txt            optional class labels
    <root>/<name>/<version>/model.onnx  versions are folders named by integers
    <root>/<name>/<version>/model.onnx.data   the weights, for a model saved with ONNX external data
    <root>/<name>/<version>/conversion.json   written by the converter
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"  # external data of MODEL_FILE (its tensors name it, relative to the version folder)
CONVERSION_FILE = "conversion.json"
SIGNATURE_FILE = "model.sig"  # OpenSSF model-signing bundle inside a version folder; it signs every other file
PLATFORM = "onnxruntime_onnx"

# A model handed over RepositoryModelLoad (Triton's parameters): its config as JSON, its files by path.
UPLOAD_CONFIG = "config"
UPLOAD_FILE_PREFIX = "file:"  # "file:<version>/<name>" (or a model folder's own file, "file:labels.txt")
GRPC_MESSAGE_LIMIT = 2**31 - 1  # the most one gRPC message holds (lengths are int32)
UPLOAD_ENVELOPE = 1024 * 1024  # room in an upload's message for what is not file bytes (names, config)


def is_version_name(name: str) -> bool:
    """Whether a folder name is a version: ASCII digits only (str.isdigit alone admits '²')."""
    return name.isascii() and name.isdigit()


def version_folders(model_dir: Path) -> tuple[int, ...]:
    """The versions published in a model folder, ascending (none when it does not exist)."""
    if not model_dir.is_dir():
        return ()
    return tuple(sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name)))
