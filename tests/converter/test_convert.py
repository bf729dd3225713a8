"""The converter with real TensorFlow: every source format, names, dynamic batch, the parity gate,
atomic publishing, versions, conversion.json, config.pbtxt, and served outputs equal to
TensorFlow's through tritonclient."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from modelport.client.cli import main as cli  # noqa: E402
from modelport.converter import convert, convert_keras, export  # noqa: E402
from modelport.converter.pipeline import ParityError  # noqa: E402
from modelport.protocol.generated import model_config_pb2 as mc  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def two_in_two_out() -> keras.Model:
    """A functional model: inputs alpha [4] and beta [3]; outputs score [2] and prob [1]."""
    keras.utils.set_random_seed(1)
    alpha, beta = keras.Input((4,), name="alpha"), keras.Input((3,), name="beta")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate()([alpha, beta]))
    score = keras.layers.Dense(2, name="score")(hidden)
    prob = keras.layers.Dense(1, activation="sigmoid", name="prob")(hidden)
    return keras.Model([alpha, beta], [score, prob])


@pytest.fixture(scope="module")
def mlp() -> keras.Model:
    """The seed MLP shape, with a Normalization layer (its statistics are captured constants)."""
    keras.utils.set_random_seed(2)
    norm = keras.layers.Normalization(name="scale")
    norm.adapt(RNG.normal(5, 2, (50, 30)).astype(np.float32))
    x = keras.Input((30,), name="features")
    h = keras.layers.Dense(16, activation="relu")(norm(x))
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="malignant")(h))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mlp, two_in_two_out) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    mlp.save(root / "mlp.keras")
    mlp.save(root / "mlp.h5")
    two_in_two_out.export(str(root / "exported"), verbose=False)

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values")])
        def serve(self, values):
            return {"doubled": values * 2.0, "total": tf.reduce_sum(values, axis=1, keepdims=True)}

    module = Doubler()
    tf.saved_model.save(module, str(root / "module"), signatures={"serving_default": module.serve})
    return {"keras": root / "mlp.keras", "h5": root / "mlp.h5", "exported": root / "exported",
            "module": root / "module"}


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_keras_files(kind: str, saved, mlp, tmp_path: Path) -> None:
    result = convert(str(saved[kind]), str(tmp_path), "mlp", progress=lambda _: None)
    onnx_path = result.path / "model.onnx"
    model = onnx.load(onnx_path)
    assert [i.name for i in model.graph.input] == ["features"] and [o.name for o in model.graph.output] == ["malignant"]
    for batch in (1, 7):  # the batch dimension is dynamic
        x = RNG.normal(5, 2, (batch, 30)).astype(np.float32)
        np.testing.assert_allclose(run_onnx(onnx_path, {"features": x})["malignant"], mlp(x).numpy(), atol=1e-5)
    record = json.loads((result.path / "conversion.json").read_text())
    assert record["source"]["kind"] == kind and len(record["source"]["sha256"]) == 64
    assert record["versions"]["tensorflow"] and record["versions"]["tf2onnx"] == "1.17.0" and record["opset"] == 17
    assert record["parity"]["passed"] and record["parity"]["outputs"][0]["name"] == "malignant"
    stats = record["input_statistics"]["features"]
    assert len(stats["mean"]) == 30 and stats["count"] == 64 and all(s >= 0 for s in stats["std"])


def test_multi_input_output_in_memory(two_in_two_out, tmp_path: Path) -> None:
    result = convert_keras(two_in_two_out, str(tmp_path), "two", progress=lambda _: None)
    model = onnx.load(result.path / "model.onnx")
    assert [i.name for i in model.graph.input] == ["alpha", "beta"]
    assert [o.name for o in model.graph.output] == ["score", "prob"]  # the model's order, not sorted
    feeds = {"alpha": RNG.normal(size=(5, 4)).astype(np.float32), "beta": RNG.normal(size=(5, 3)).astype(np.float32)}
    got = run_onnx(result.path / "model.onnx", feeds)
    want = two_in_two_out([feeds["alpha"], feeds["beta"]])
    np.testing.assert_allclose(got["score"], want[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["prob"], want[1].numpy(), atol=1e-5)


def test_saved_model_from_keras_export(saved, two_in_two_out, tmp_path: Path) -> None:
    result = convert(str(saved["exported"]), str(tmp_path), "exported", progress=lambda _: None)
    model = onnx.load(result.path / "model.onnx")
    assert sorted(i.name for i in model.graph.input) == ["alpha", "beta"]
    assert result.record["source"]["kind"] == "saved_model"
    feeds = {"alpha": np.ones((2, 4), np.float32), "beta": np.ones((2, 3), np.float32)}
    got = run_onnx(result.path / "model.onnx", feeds)
    want = two_in_two_out([feeds["alpha"], feeds["beta"]])
    np.testing.assert_allclose(got["output_0"], want[0].numpy(), atol=1e-5)


def test_saved_model_from_tf_module(saved, tmp_path: Path) -> None:
    result = convert(str(saved["module"]), str(tmp_path), "module", progress=lambda _: None)
    got = run_onnx(result.path / "model.onnx", {"values": np.array([[1, 2, 3]], np.float32)})
    np.testing.assert_array_equal(got["doubled"], [[2, 4, 6]])
    np.testing.assert_array_equal(got["total"], [[6]])


def _break_weights(model: onnx.ModelProto) -> None:
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 10:
            init.CopyFrom(numpy_helper.from_array(array + 0.5, init.name))
            return


def test_parity_gate_refuses_a_wrong_model(mlp, tmp_path: Path) -> None:
    with pytest.raises(ParityError) as err:
        convert_keras(mlp, str(tmp_path), "mlp", tamper=_break_weights, progress=lambda _: None)
    message = str(err.value)
    assert "output 'malignant' differs by" in message and "at index [" in message and "nothing was published" in message
    assert not err.value.report.passed
    model_dir = tmp_path / "mlp"
    assert not model_dir.exists() or list(model_dir.iterdir()) == []  # no version, no half-written folder


def test_cli_exits_non_zero_when_parity_fails(saved, tmp_path: Path, monkeypatch, capsys) -> None:
    real = export.to_onnx

    def wrong(*args, **kwargs):
        model = real(*args, **kwargs)
        _break_weights(model)
        return model

    monkeypatch.setattr(export, "to_onnx", wrong)
    code = cli(["convert", str(saved["keras"]), "--model-repository", str(tmp_path), "--name", "mlp"])
    assert code == 1
    assert "parity check failed: output 'malignant'" in capsys.readouterr().err
    assert not (tmp_path / "mlp" / "1").exists()


def test_versions_next_free_explicit_and_never_overwritten(saved, tmp_path: Path, capsys) -> None:
    args = ["convert", str(saved["keras"]), "--model-repository", str(tmp_path), "--name", "mlp"]
    assert cli(args) == 0 and cli(args) == 0
    assert cli([*args, "--version", "7"]) == 0
    assert cli(args) == 0
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["1", "2", "7", "8", "config.pbtxt"]
    before = (tmp_path / "mlp" / "2" / "model.onnx").stat().st_mtime_ns
    assert cli([*args, "--version", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "mlp" / "2" / "model.onnx").stat().st_mtime_ns == before


def test_config_pbtxt_round_trips_and_keeps_user_fields(two_in_two_out, tmp_path: Path) -> None:
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "config.pbtxt").write_text("dynamic_batching { max_queue_delay_microseconds: 100 }\n")
    convert_keras(two_in_two_out, str(tmp_path), "two", max_batch_size=16, progress=lambda _: None)
    config = mc.ModelConfig()
    text_format.Parse((tmp_path / "two" / "config.pbtxt").read_text(), config)
    assert (config.name, config.platform, config.max_batch_size) == ("two", "onnxruntime_onnx", 16)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("alpha", "TYPE_FP32", [4]), ("beta", "TYPE_FP32", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("score", [2]), ("prob", [1])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_sample_file_drives_parity_and_statistics(mlp, tmp_path: Path) -> None:
    x = RNG.normal(5, 2, (40, 30)).astype(np.float32)
    np.savez(tmp_path / "sample.npz", x=x)
    result = convert_keras(mlp, str(tmp_path / "repo"), "mlp", sample=str(tmp_path / "sample.npz"),
                           progress=lambda _: None)
    stats = result.record["input_statistics"]["features"]
    assert stats["count"] == 40 and result.record["sample"] == "sample.npz"
    np.testing.assert_allclose(stats["mean"], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["max"], x.max(axis=0))


def test_served_outputs_equal_tensorflow_through_tritonclient(two_in_two_out, mlp, tmp_path: Path,
                                                               start_server) -> None:
    convert_keras(two_in_two_out, str(tmp_path), "two", progress=lambda _: None)
    convert_keras(mlp, str(tmp_path), "mlp", progress=lambda _: None)
    peer = triton.InferenceServerClient(start_server(tmp_path))
    feeds = {"alpha": RNG.normal(size=(6, 4)).astype(np.float32), "beta": RNG.normal(size=(6, 3)).astype(np.float32)}
    inputs = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = peer.infer("two", inputs)
    want = two_in_two_out([feeds["alpha"], feeds["beta"]])
    np.testing.assert_allclose(result.as_numpy("score"), want[0].numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(result.as_numpy("prob"), want[1].numpy(), atol=1e-4, rtol=1e-3)
    x = RNG.normal(5, 2, (3, 30)).astype(np.float32)
    tensor = triton.InferInput("features", [3, 30], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(peer.infer("mlp", [tensor]).as_numpy("malignant"), mlp(x).numpy(), atol=1e-4)
    metadata = peer.get_model_metadata("two")
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("alpha", [-1, 4]), ("beta", [-1, 3])]
