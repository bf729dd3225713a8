"""Compression behind the accuracy gate: every method on tiny models, the gate refusing a
compression that loses accuracy (nothing published), calibration handling, and a compressed
version served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.client import Client
from modelport.client.cli import main as cli
from modelport.converter.compress import AccuracyGateError, compress
from tests import models


def classifier(rng: np.random.Generator, width: int = 256, classes: int = 4):
    """x [N, 16] -> Gemm(width) -> Relu -> Gemm(classes) -> Softmax: MatMul-heavy and quantisable."""
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (16, width)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (width, classes)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    return models.graph_model(nodes, [("x", TensorProto.FLOAT, [None, 16])], [("probs", TensorProto.FLOAT, [None, 4])],
                              [w1, w2])


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)  # the same model and data in every test, whatever their order
    models.save(classifier(rng), tmp_path, "clf")
    x = rng.normal(size=(300, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "clf" / "1" / "model.onnx"))
    y = session.run(None, {"x": x})[0].argmax(axis=1)  # labels the fp32 model gets right
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    np.savez(tmp_path / "calib.npz", x=x[:128])
    return tmp_path, x, y


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static", "fp16", "optimize"])
def test_each_method_publishes_a_gated_version(repo, method: str) -> None:
    root, x, y = repo
    version, report = compress(root, "clf", method, calibration=root / "calib.npz", eval_data=root / "eval.npz",
                               max_accuracy_drop=0.05, progress=lambda _: None)
    assert version == 2 and report.metric == "accuracy" and report.before == 1.0 and report.after >= 0.95
    record = json.loads((root / "clf" / "2" / "conversion.json").read_text())
    assert record["compression"]["method"] == method and record["compression"]["size_after"] == report.size_after
    assert [s["batch"] for s in record["compression"]["speed_after"]] == [1, 32]
    session = ort.InferenceSession(str(root / "clf" / "2" / "model.onnx"))
    # The source's input and output names, datatypes and shapes: config.pbtxt stays valid for every version.
    def signature(tensors) -> list:  # free dimensions as -1, as the server reads them
        return [(t.name, t.type, [d if isinstance(d, int) else -1 for d in t.shape]) for t in tensors]

    assert signature(session.get_inputs()) == [("x", "tensor(float)", [-1, 16])]
    assert signature(session.get_outputs()) == [("probs", "tensor(float)", [-1, 4])]
    got = session.run(None, {"x": x})[0]
    assert got.dtype == np.float32  # fp16 keeps fp32 inputs and outputs
    assert np.mean(got.argmax(axis=1) == y) >= 0.95
    if method.startswith("int8"):
        assert report.size_after < 0.5 * report.size_before


def test_gate_refuses_and_publishes_nothing(repo, tmp_path: Path) -> None:
    root, x, _ = repo
    # Labels on a knife's edge: near-ties between the two best classes, decided by fp32 rounding.
    session = ort.InferenceSession(str(root / "clf" / "1" / "model.onnx"))
    probs = session.run(None, {"x": x})[0]
    top2 = np.sort(probs, axis=1)[:, -2:]
    close = np.argsort(top2[:, 1] - top2[:, 0])[:40]
    np.savez(tmp_path / "edge.npz", x=x[close], y=probs[close].argmax(axis=1))
    with pytest.raises(AccuracyGateError, match="nothing was published"):
        compress(root, "clf", "int8-dynamic", eval_data=tmp_path / "edge.npz", max_accuracy_drop=0.0,
                 progress=lambda _: None)
    assert sorted(p.name for p in (root / "clf").iterdir()) == ["1"]
    code = cli(["compress", "--model-repository", str(root), "--name", "clf", "--method", "int8-dynamic",
                "--eval", str(tmp_path / "edge.npz"), "--max-accuracy-drop", "0"])
    assert code == 1 and sorted(p.name for p in (root / "clf").iterdir()) == ["1"]


def test_calibration_handling(repo, capsys) -> None:
    root, _, _ = repo
    base = ["compress", "--model-repository", str(root), "--name", "clf", "--method", "int8-static"]
    assert cli(base) == 2
    assert "int8-static needs --calibration" in capsys.readouterr().err
    np.savez(root / "wrong.npz", images=np.zeros((4, 16), np.float32))
    assert cli([*base, "--calibration", str(root / "wrong.npz")]) == 2
    assert "lacks inputs ['x']" in capsys.readouterr().err
    # Without --eval the gate compares with the source version and says so.
    version, report = compress(root, "clf", "int8-static", calibration=root / "calib.npz", max_accuracy_drop=0.1,
                               progress=lambda _: None)
    assert report.metric == "agreement" and "no --eval" in report.gate_data and report.after >= 0.9


def test_compressed_version_is_served(repo, start_server) -> None:
    root, x, y = repo
    compress(root, "clf", "int8-static", calibration=root / "calib.npz", eval_data=root / "eval.npz",
             max_accuracy_drop=0.05, progress=lambda _: None)
    client = Client(start_server(root))
    assert client.model_metadata("clf").versions == ("2",)
    probs = client.predict("clf", x)
    assert np.mean(probs.argmax(axis=1) == y) >= 0.95
