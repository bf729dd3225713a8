"""`modelport explain` against a real server: the JSON shape, the text, the pictures, and what it
says when something is missing."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.client.cli import main
from modelport.converter.background import write_background
from modelport.server.background import BackgroundServer
from tests import models

WEIGHTS = np.array([2.0, -1.0, 0.5], np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    w = numpy_helper.from_array(WEIGHTS.reshape(-1, 1), "w")
    linear = models.graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", TensorProto.FLOAT, [None, 3])],
        [("y", TensorProto.FLOAT, [None, 1])], [w],
    )  # fmt: skip
    folder = models.save(linear, root, "linear").parent
    entry = write_background(folder, {"x": np.random.default_rng(0).normal(5, 1, (50, 3)).astype(np.float32)})
    (folder / "conversion.json").write_text(json.dumps({"background": entry}))
    models.save(linear, root, "bare")  # no background
    image_w = numpy_helper.from_array(np.random.default_rng(1).normal(0, 0.2, (64, 3)).astype(np.float32), "w")
    images = models.graph_model(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["y"], axis=1)],
        [("x", TensorProto.FLOAT, [None, 8, 8, 1])], [("y", TensorProto.FLOAT, [None, 3])], [image_w],
    )  # fmt: skip
    models.save(images, root, "digits")
    return root


@pytest.fixture(scope="module")
def address(repo: Path):
    with BackgroundServer(repo) as server:
        yield server.address


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 1.0]]), y=np.array([0, 1, 0]))
    return path


def test_json_is_exactly_the_documented_shape(address: str, rows: Path, capsys) -> None:
    assert main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["model", "version", "method", "space", "rows"]
    assert (doc["model"], doc["version"], doc["space"]) == ("linear", "1", "raw")
    assert len(doc["rows"]) == 3
    for row in doc["rows"]:
        assert list(row) == ["target", "output", "base_value", "attributions"]
        assert len(row["attributions"]) == 3
        assert sum(row["attributions"]) == pytest.approx(row["output"] - row["base_value"], abs=1e-9)
    # float64 rows in the file are cast to the model's FP32, and --rows takes the first ones
    assert main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--json", "--rows", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 1


def test_text_names_the_strongest_features(address: str, rows: Path, tmp_path: Path, capsys) -> None:
    names = tmp_path / "names.txt"
    names.write_text("radius\ntexture\nsmoothness\n")
    assert main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--rows", "1",
                 "--feature-names", str(names), "--top", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "interventional Shapley" in out and "row 0: output" in out
    listed = [line.split()[-1] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ["radius", "texture"]  # |2 (1 - 5)| = 8 > |-1 (2 - 5)| = 3 > |0.5 (3 - 5)| = 1


def test_a_version_without_background_says_so(address: str, rows: Path, capsys) -> None:
    assert main(["explain", "--url", address, "--model", "bare", "--input", str(rows)]) == 0
    assert "no background sample" in capsys.readouterr().out


def test_plots(address: str, rows: Path, tmp_path: Path, capsys) -> None:
    bars = tmp_path / "bars.png"
    assert main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--plot", str(bars)]) == 0
    assert f"wrote {bars}" in capsys.readouterr().out
    digits = tmp_path / "digits.npy"
    np.save(digits, np.random.default_rng(2).integers(0, 17, (3, 8, 8, 1)).astype(np.float32))
    heat = tmp_path / "heat.png"
    assert main(["explain", "--url", address, "--model", "digits", "--input", str(digits), "--plot", str(heat),
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["space"] == "probability"  # --json output stays pure JSON
    for path in (bars, heat):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_without_matplotlib_is_a_clear_error(address: str, rows: Path, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:  # fmt: skip
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    code = main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--plot",
                 str(tmp_path / "x.png")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install matplotlib" in err
    assert not (tmp_path / "x.png").exists()


def test_server_refusals_exit_1_with_the_servers_message(address: str, rows: Path, capsys) -> None:
    assert main(["explain", "--url", address, "--model", "digits", "--input", str(rows)]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert main(["explain", "--url", address, "--model", "linear", "--input", str(rows), "--target", "1"]) == 1
    assert "unknown output column 1" in capsys.readouterr().err
