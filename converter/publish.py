"""Publishing into a Triton-layout repository: the next free version, written under a hidden
name and renamed in (a server never sees half a version), the files it holds with their sha256,
and a config.pbtxt Triton also reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format

from modelport.protocol.datatypes import DATATYPE_TO_CONFIG, ONNX_ELEMENT_TO_DATATYPE
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import (
    CONFIG_FILE,
    CONVERSION_FILE,
    MODEL_DATA_FILE,
    MODEL_FILE,
    PLATFORM,
    SIGNATURE_FILE,
    version_folders,
)

_HASH_CHUNK = 8 * 2**20


class VersionExists(ValueError):
    """The asked-for version is already published; versions are never overwritten."""


def choose_version(model_dir: Path, wanted: int | None) -> int:
    """`wanted` if free, else an error; without it, one more than the highest published."""
    existing = version_folders(model_dir)
    if wanted is None:
        return (existing[-1] + 1) if existing else 1
    if wanted < 1:
        raise ValueError(f"version must be a positive integer, got {wanted}")
    if wanted in existing:
        raise VersionExists(f"{model_dir / str(wanted)} already exists; versions are never overwritten")
    return wanted


def file_records(folder: Path) -> list[dict]:
    """conversion.json's `files`: name, size and sha256 of every file in a version folder except
    conversion.json itself and the signature (which covers them all), by name. A reader checks a
    copied or uploaded version against it."""
    records = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in (CONVERSION_FILE, SIGNATURE_FILE)):
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
        records.append({"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
    return records


@dataclass(frozen=True)
class Protection:
    """How a version is protected at rest: encrypted with the key in `encrypt_key_file`
    (converter/encryption.py) and/or signed with the private key `sign_key` (converter/signing.py)."""

    sign_key: Path | None = None
    encrypt_key_file: Path | None = None

    def check(self) -> None:
        """Read both keys now, so a bad one fails before the slow work."""
        if self.encrypt_key_file is not None:
            from .encryption import check_key

            check_key(self.encrypt_key_file)
        if self.sign_key is not None:
            from .signing import check_key as check_sign_key

            check_sign_key(self.sign_key)


class Staging:
    """A version being written: a hidden folder inside the model folder (same file system, ignored
    by the server), renamed to the version once complete (atomic for any reader), removed if anything
    fails before. Large weights are written straight into it (model.onnx.data), never moved again.

        with Staging(model_dir, version) as staging:
            staging.write_model(model)
            path = staging.commit(record)
    """

    def __init__(self, model_dir: Path, version: int) -> None:
        self.model_dir = Path(model_dir)
        self.version = version
        self.path = Path()
        self._committed = False

    def __enter__(self) -> Staging:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".tmp-{self.version}-", dir=self.model_dir))
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)

    @property
    def model_path(self) -> Path:
        """Where model.onnx goes."""
        return self.path / MODEL_FILE

    def write_model(self, model: onnx.ModelProto) -> Path:
        """Write (or rewrite) model.onnx. Tensors in external data keep referring to model.onnx.data,
        already in this folder: only the graph is written."""
        onnx.save(model, self.model_path)
        return self.model_path

    def commit(self, record: dict, protection: Protection | None = None) -> Path:
        """Add `files` and `external_data` to `record`, write it as conversion.json, and rename the
        folder to its version; VersionExists if that appeared meanwhile. With `protection`, the
        model files are encrypted first (`files` then lists the encrypted bytes) and the signature
        is written last, over every file, before the rename: a version appears signed or not at all."""
        protection = protection or Protection()
        record.pop("encryption", None)
        if protection.encrypt_key_file is not None:
            from .encryption import encrypt_folder

            record["encryption"] = encrypt_folder(self.path, protection.encrypt_key_file)
        record["files"] = file_records(self.path)
        record["external_data"] = (self.path / MODEL_DATA_FILE).exists()
        (self.path / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if protection.sign_key is not None:
            from .signing import sign_folder

            sign_folder(self.path, protection.sign_key)
        target = self.model_dir / str(self.version)
        if target.exists():
            raise VersionExists(f"{target} appeared while converting; versions are never overwritten")
        os.rename(self.path, target)
        self._committed = True
        return target


def publish(
    model_dir: Path, version: int, model: onnx.ModelProto, record: dict, protection: Protection | None = None
) -> Path:
    """Publish a model held wholly in memory (no external data) as `version`: model.onnx and
    conversion.json, written in a staging folder and renamed in (encrypted and signed as
    `protection` says)."""
    with Staging(model_dir, version) as staging:
        staging.write_model(model)
        return staging.commit(record, protection)


def read_config(model_dir: Path) -> mc.ModelConfig | None:
    """The model's config.pbtxt (fields outside modelport's subset skipped), or None when absent."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return None
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ValueError(f"{path} does not parse: {exc}") from exc
    return config


def next_config(
    existing: mc.ModelConfig | None, name: str, model: onnx.ModelProto, max_batch_size: int, keep_signature: bool
) -> mc.ModelConfig:
    """config.pbtxt after publishing `model`: name, platform, max_batch_size, inputs and outputs
    (dims without the batch dimension when max_batch_size > 0); fields the user added to an existing
    one are kept. With `keep_signature` the existing inputs and outputs stay as they are (the new
    version was checked against them and renamed to their names), their dims re-expressed only when
    max_batch_size turns batching on or off; otherwise they are rewritten from `model`."""
    config = mc.ModelConfig()
    if existing is not None:
        config.CopyFrom(existing)
    was_batching = config.max_batch_size > 0
    config.name = name
    config.platform = PLATFORM
    config.max_batch_size = max_batch_size
    if keep_signature:
        if was_batching != (max_batch_size > 0):
            for entry in [*config.input, *config.output]:
                dims = list(entry.dims)
                entry.ClearField("dims")
                entry.dims.extend(dims[1:] if max_batch_size > 0 else [-1, *dims])
        return config
    del config.input[:]
    del config.output[:]
    for value in model.graph.input:
        entry = config.input.add(name=value.name, data_type=mc.DataType.Value(_type(value)))
        entry.dims.extend(_dims(value, max_batch_size))
    for value in model.graph.output:
        entry = config.output.add(name=value.name, data_type=mc.DataType.Value(_type(value)))
        entry.dims.extend(_dims(value, max_batch_size))
    return config


def write_config(model_dir: Path, config: mc.ModelConfig) -> Path:
    """Write config.pbtxt atomically (a temporary file, then os.replace)."""
    path = model_dir / CONFIG_FILE
    staging = path.with_name(".config.pbtxt.tmp")
    staging.write_text(text_format.MessageToString(config))
    os.replace(staging, path)
    return path


def _type(value: onnx.ValueInfoProto) -> str:
    return DATATYPE_TO_CONFIG[ONNX_ELEMENT_TO_DATATYPE[value.type.tensor_type.elem_type]]


def _dims(value: onnx.ValueInfoProto, max_batch_size: int) -> list[int]:
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return dims[1:] if max_batch_size > 0 else dims
