"""Models over 2 GB and clean converter errors, on tiny models: weights written as ONNX external
data (forced, or above a threshold set low), conversion.json's file list, compression of such a
version, an op tf2onnx cannot convert, an unexpected failure inside a step, and a transformer
encoder with exact GELU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from modelport.client.cli import main as cli  # noqa: E402
from modelport.converter import convert_keras  # noqa: E402
from modelport.converter.compress import compress  # noqa: E402
from modelport.converter.errors import ModelError  # noqa: E402
from modelport.converter.onnx_files import ALIGNMENT, external_info, initializers, is_external  # noqa: E402
from modelport.converter.pipeline import _external_data  # noqa: E402

RNG = np.random.default_rng(3)
QUIET = {"progress": lambda _: None}


@pytest.fixture(scope="module")
def embedder() -> keras.Model:
    """tokens [16] int32 -> Embedding(1024, 256) (1 MiB: streamed past tf2onnx) -> mean -> Dense(8)
    (8 KiB: through tf2onnx's own external storage) -> softmax."""
    keras.utils.set_random_seed(5)
    tokens = keras.Input((16,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(1024, 256, name="embedding")(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(8, activation="softmax", name="probs")(h))


@pytest.fixture(scope="module")
def dense() -> keras.Model:
    """x [256] -> Dense(1024, relu) (1 MiB kernel) -> Dense(4, softmax): quantisable MatMuls."""
    keras.utils.set_random_seed(6)
    x = keras.Input((256,), name="x")
    h = keras.layers.Dense(1024, activation="relu")(x)
    return keras.Model(x, keras.layers.Dense(4, activation="softmax", name="probs")(h))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_files_listed(version: Path, record: dict) -> None:
    """conversion.json lists every other file of the version with its true size and sha256."""
    on_disk = sorted(p.name for p in version.iterdir() if p.name != "conversion.json")
    assert [f["name"] for f in record["files"]] == on_disk
    for entry in record["files"]:
        path = version / entry["name"]
        assert entry["bytes"] == path.stat().st_size and entry["sha256"] == sha256(path)


def test_forced_external_data_publishes_graph_and_weights(embedder, tmp_path: Path) -> None:
    result = convert_keras(embedder, tmp_path, "emb", external_data=True, **QUIET)
    version = result.path
    assert sorted(p.name for p in version.iterdir()) == ["conversion.json", "model.onnx", "model.onnx.data"]
    record = json.loads((version / "conversion.json").read_text())
    assert record["external_data"] is True and record["parity"]["passed"]
    assert_files_listed(version, record)
    assert record["weights"]["weights"] == 1024 * 256 + 256 * 8 + 8  # counted from the data file
    graph = onnx.load(version / "model.onnx", load_external_data=False)
    big = [t for t in initializers(graph.graph) if np.prod(t.dims) * 4 >= 1024]
    assert len(big) == 2 and all(is_external(t) for t in big)
    assert all(external_info(t)["location"] == "model.onnx.data" for t in big)
    assert all(int(external_info(t)["offset"]) % ALIGNMENT == 0 for t in big)
    assert (version / "model.onnx").stat().st_size < 16 * 1024  # the graph only
    # ONNX Runtime loads it from the folder and agrees with TensorFlow.
    tokens = RNG.integers(0, 1024, (9, 16)).astype(np.int32)
    session = ort.InferenceSession(str(version / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"tokens": tokens})[0], embedder(tokens).numpy(), atol=1e-6)
    assert not list(tmp_path.joinpath("emb").glob(".tmp*"))  # no staging left behind


def test_threshold_decides_and_embedded_versions_list_their_file(embedder, tmp_path: Path) -> None:
    small = convert_keras(embedder, tmp_path, "emb", **QUIET)  # 1 MiB: far under the default threshold
    assert sorted(p.name for p in small.path.iterdir()) == ["conversion.json", "model.onnx"]
    assert small.record["external_data"] is False
    assert_files_listed(small.path, small.record)
    low = convert_keras(embedder, tmp_path, "emb", external_data_threshold=100_000, **QUIET)
    assert low.record["external_data"] is True and (low.path / "model.onnx.data").exists()
    never = convert_keras(embedder, tmp_path, "emb", external_data=False, external_data_threshold=100_000, **QUIET)
    assert never.record["external_data"] is False


def test_no_external_data_is_refused_over_two_gib() -> None:
    assert _external_data(None, 3 * 2**30, 2**30) is True and _external_data(None, 2**20, 2**30) is False
    with pytest.raises(ModelError, match="more than the 2 GiB an ONNX file can hold"):
        _external_data(False, 3 * 2**30, 2**30)


@pytest.fixture(scope="module")
def external_repo(dense, tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("external")
    convert_keras(dense, root, "dense", external_data=True, **QUIET)
    x = RNG.normal(size=(200, 256)).astype(np.float32)
    np.savez(root / "eval.npz", x=x, y=dense(x).numpy().argmax(axis=1))
    return root, x


@pytest.mark.parametrize("method", ["fp16", "int8-dynamic"])
def test_compressing_an_external_data_version(external_repo, method: str, tmp_path: Path) -> None:
    source, x = external_repo
    root = tmp_path / "repo"
    shutil.copytree(source / "dense", root / "dense")  # each method compresses version 1 into 2
    version, report = compress(root, "dense", method, eval_data=source / "eval.npz", max_accuracy_drop=0.05, **QUIET)
    folder = root / "dense" / str(version)
    assert sorted(p.name for p in folder.iterdir()) == ["conversion.json", "model.onnx", "model.onnx.data"]
    record = json.loads((folder / "conversion.json").read_text())
    assert record["external_data"] is True and record["compression"]["method"] == method
    assert_files_listed(folder, record)
    assert report.size_after < 0.6 * report.size_before  # half (fp16) or a quarter (int8) of the weights
    assert sorted(p.name for p in (root / "dense").iterdir()) == ["1", "2", "config.pbtxt"]  # no work folder left
    got = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.mean(got.argmax(axis=1) == source_labels(source)) >= 0.95


def source_labels(root: Path) -> np.ndarray:
    with np.load(root / "eval.npz") as data:
        return data["y"]


@pytest.fixture(scope="module")
def bessel_model(tmp_path_factory) -> Path:
    """A SavedModel whose function uses BesselI0e, a TensorFlow op tf2onnx has no handler for."""

    class Bessel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values")])
        def serve(self, values):
            return {"smooth": tf.math.special.bessel_i0e(values) * 2.0}

    path = tmp_path_factory.mktemp("bessel") / "saved"
    module = Bessel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_an_unsupported_op_is_one_clean_paragraph(bessel_model, tmp_path: Path, capfd) -> None:
    code = cli(["convert", str(bessel_model), "--model-repository", str(tmp_path), "--name", "bessel"])
    err = capfd.readouterr().err
    assert code == 2
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "TensorFlow op BesselI0e (node '" in message and "to ONNX opset 17" in message
    assert "--opset" in message and "replace the layer" in message and "converter/tf_ops.py" in message
    assert "Traceback" not in err and "No Op registered" not in err
    assert not (tmp_path / "bessel" / "1").exists() and not list((tmp_path / "bessel").glob(".tmp*"))


def test_an_unexpected_failure_names_its_step(embedder, tmp_path: Path, monkeypatch, capfd) -> None:
    embedder.save(tmp_path / "emb.keras")

    def broken(*args, **kwargs):
        raise RuntimeError("tf2onnx fell over\nsecond line")

    monkeypatch.setattr(tf2onnx.convert, "from_function", broken)
    args = ["convert", str(tmp_path / "emb.keras"), "--model-repository", str(tmp_path / "repo"), "--name", "emb"]
    assert cli(args) == 2
    err = capfd.readouterr().err
    assert "error: [2/4] converting failed: RuntimeError: tf2onnx fell over. To fix:" in err
    assert "run with --verbose for the traceback" in err and "second line" not in err and "Traceback" not in err
    assert cli([*args, "--verbose"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: tf2onnx fell over" in err  # the original, chained
    assert not (tmp_path / "repo" / "emb" / "1").exists()


def test_transformer_encoder_with_exact_gelu_converts(tmp_path: Path) -> None:
    """Two encoder blocks (attention over a mask_zero embedding, Dense(gelu) feed-forward): TensorFlow
    writes exact GELU with Erfc, which tf_ops.py converts."""
    keras.utils.set_random_seed(7)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 32, mask_zero=True)(tokens)
    for _ in range(2):
        attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
        h = keras.layers.LayerNormalization()(h + attended)
        fed = keras.layers.Dense(32)(keras.layers.Dense(64, activation="gelu")(h))
        h = keras.layers.LayerNormalization()(h + fed)
    model = keras.Model(
        tokens, keras.layers.Dense(3, activation="softmax", name="label")(keras.layers.GlobalAveragePooling1D()(h))
    )
    x = RNG.integers(0, 50, (32, 12)).astype(np.int32)
    x[:, 8:] = 0  # padding, masked
    result = convert_keras(model, tmp_path, "encoder", sample={"tokens": x}, **QUIET)
    assert result.parity.passed
    graph = onnx.load(result.path / "model.onnx")
    assert "Erf" in {node.op_type for node in graph.graph.node}
