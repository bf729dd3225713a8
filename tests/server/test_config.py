"""config.pbtxt: parsing, version policies, auto-completion from the ONNX signature, mismatches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from modelport.client import Client
from modelport.server import config as cfg
from modelport.server.errors import ModelLoadError
from modelport.server.registry import ModelRegistry
from tests import models


def _reasons(registry: ModelRegistry) -> str:
    """Every reason the registry gives for models and versions that do not serve."""
    return " ".join(reason for *_, reason in registry.index())


@pytest.mark.parametrize(
    "text, available, served",
    [
        ("", [1, 2, 3], [3]),
        ("version_policy: { latest: { num_versions: 2 } }", [1, 2, 3], [2, 3]),
        ("version_policy: { all: {} }", [1, 3, 10], [1, 3, 10]),
        ("version_policy: { specific: { versions: [1, 3, 7] } }", [1, 2, 3], [1, 3]),
        ("version_policy { latest { num_versions: 5 } }", [2, 9], [2, 9]),
    ],
)
def test_version_policy(tmp_path: Path, text: str, available: list[int], served: list[int]) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    policy = cfg.version_policy(cfg.read_config(tmp_path))
    assert policy.select(available) == served


def test_versions_sort_numerically_and_policy_applies_on_load(tmp_path: Path) -> None:
    for version in (2, 10, 9):
        models.save(models.scale(float(version)), tmp_path, "m", version)
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 2 } }")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert registry.versions("m") == [9, 10]
    assert registry.get("m").version == 10


def test_triton_config_with_unknown_fields_parses(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "sequence_batching { max_sequence_idle_microseconds: 5000 }\n"
        'response_cache { enable: true }\n'
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    )
    spec = cfg.model_spec("m", cfg.read_config(tmp_path))
    assert spec.max_batch_size == 8 and spec.intra_op_threads == 1


def test_syntax_error_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text("max_batch_size: {")
    with pytest.raises(ModelLoadError, match="does not parse"):
        cfg.read_config(tmp_path)


def test_autocomplete_with_max_batch_size(tmp_path: Path) -> None:
    models.save(models.add_mul(4), tmp_path, "m", config="max_batch_size: 16\n")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    version = registry.get("m")
    assert [(t.name, t.shape) for t in version.signature.inputs] == [("a", (-1, 4)), ("b", (-1, 4))]
    config = version.config
    assert config.name == "m" and config.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in config.input] == [("a", [4]), ("b", [4])]
    assert [o.name for o in config.output] == ["sum", "prod"]


def test_config_fixes_a_dynamic_dimension(tmp_path: Path, start_server) -> None:
    model = models.identity(TensorProto.FLOAT, shape=(None, None))
    models.save(model, tmp_path, "m", config=(
        "max_batch_size: 4\ninput [{ name: \"x\" data_type: TYPE_FP32 dims: [ 3 ] }]\n"
    ))
    client = Client(start_server(tmp_path))
    meta = client.model_metadata("m")
    assert meta.inputs[0].shape == (-1, 3)
    assert client.predict("m", np.ones((2, 3))).shape == (2, 3)


@pytest.mark.parametrize(
    "config, message",
    [
        ('name: "other"', "names the model 'other'"),
        ('platform: "tensorflow_savedmodel"', "modelport serves ONNX models"),
        ('input [{ name: "zzz" data_type: TYPE_FP32 dims: [4] }]', "input 'zzz' is not in the ONNX model"),
        ('input [{ name: "a" data_type: TYPE_INT32 dims: [-1, 4] }, { name: "b" data_type: TYPE_FP32 dims: [-1, 4] }]',
         "input 'a' is TYPE_INT32 in config.pbtxt but FP32"),
        ('input [{ name: "a" data_type: TYPE_FP32 dims: [-1, 5] }, { name: "b" data_type: TYPE_FP32 dims: [-1, 4] }]',
         "has dims \\[-1, 5\\] in config.pbtxt but \\[-1, 4\\]"),
        ('input [{ name: "a" data_type: TYPE_FP32 dims: [-1, 4] }]', "also has \\['b'\\]"),
        ('max_batch_size: 2\ninput [{ name: "a" data_type: TYPE_FP32 dims: [-1, 4] }]',
         "dims \\[-1, 4\\] in config.pbtxt but \\[4\\]"),
        ('output [{ name: "sum" data_type: TYPE_FP32 dims: [-1, 4] reshape: { shape: [4] } }]',
         "reshape is not supported"),
    ],
)
def test_mismatched_config_fails_to_load_with_reason(tmp_path: Path, config: str, message: str) -> None:
    models.save(models.add_mul(4), tmp_path, "m", config=config)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert not registry.is_ready("m")
    reasons = _reasons(registry)
    assert "model 'm'" in reasons
    assert __import__("re").search(message, reasons), reasons


def test_max_batch_size_needs_dynamic_first_dimension(tmp_path: Path) -> None:
    models.save(models.identity(TensorProto.FLOAT, shape=(2, 3)), tmp_path, "m", config="max_batch_size: 4")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert "needs a dynamic first dimension" in _reasons(registry)


def test_specific_policy_with_missing_versions_reports_reason(tmp_path: Path) -> None:
    models.save(models.scale(), tmp_path, "m", 1, config="version_policy: { specific: { versions: [4] } }")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert "no version folder matches" in _reasons(registry)
