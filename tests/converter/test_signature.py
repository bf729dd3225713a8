"""Versions of one model are interchangeable: a new version that matches config.pbtxt by position
is published under the model's tensor names and served beside the earlier ones; one that does not
is refused naming the differences (exit 2), unless --replace-signature; a config.pbtxt that would
stop an earlier version from loading is never written silently."""

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
from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from modelport.client import Client  # noqa: E402
from modelport.client.cli import main as cli  # noqa: E402
from modelport.converter import convert_keras, publish, signature  # noqa: E402
from modelport.converter.signature import SignatureMismatch  # noqa: E402
from modelport.protocol.generated import model_config_pb2 as mc  # noqa: E402
from tests import models  # noqa: E402

RNG = np.random.default_rng(3)
QUIET = {"progress": lambda _: None}


def mlp(seed: int, width: int = 2) -> keras.Model:
    """One architecture; Keras names the layers with a process-wide counter, so each call's input
    and output names differ (input_layer_N, dense_M)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(width)])


def names(model: keras.Model) -> tuple[str, str]:
    return model.inputs[0]._keras_history[0].name, model.outputs[0]._keras_history[0].name


def read_config(model_dir: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    return config


def test_two_differently_named_versions_are_served_side_by_side(tmp_path: Path, start_server) -> None:
    first, second = mlp(1), mlp(2)
    assert names(first) != names(second) and names(first)[1] != names(second)[1]
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "config.pbtxt").write_text("version_policy: { all {} }\n")  # serve every version
    convert_keras(first, str(tmp_path), "mlp", **QUIET)
    result = convert_keras(second, str(tmp_path), "mlp", **QUIET)

    (in1, out1), (in2, out2) = names(first), names(second)
    record = json.loads((tmp_path / "mlp" / "2" / "conversion.json").read_text())
    assert record["renamed"] == {in2: in1, out2: out1} == result.record["renamed"]
    assert [i["name"] for i in record["inputs"]] == [in1] and record["outputs"] == [out1]
    assert list(record["input_statistics"]) == [in1]  # drift monitoring reads them by the served name
    assert record["parity"]["passed"] and record["parity"]["outputs"][0]["name"] == out1
    assert json.loads((tmp_path / "mlp" / "1" / "conversion.json").read_text())["renamed"] == {}
    graph = onnx.load(tmp_path / "mlp" / "2" / "model.onnx").graph
    assert [i.name for i in graph.input] == [in1] and [o.name for o in graph.output] == [out1]
    config = read_config(tmp_path / "mlp")
    assert [i.name for i in config.input] == [in1] and [o.name for o in config.output] == [out1]
    assert config.version_policy.HasField("all")  # the user's field is kept

    client = Client(start_server(tmp_path))
    assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "2")
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    got = {v: client.infer("mlp", {in1: x}, version=v)[out1] for v in ("1", "2")}
    np.testing.assert_allclose(got["1"], first(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(got["2"], second(x).numpy(), atol=1e-5)
    assert not np.allclose(got["1"], got["2"])  # each version answers with its own weights


def test_a_different_signature_is_refused_unless_replaced(tmp_path: Path, capsys) -> None:
    convert_keras(mlp(1), str(tmp_path), "mlp", **QUIET)
    wider = mlp(2, width=3)
    wider.save(tmp_path / "wider.keras")
    out1, out2 = read_config(tmp_path / "mlp").output[0].name, names(wider)[1]
    args = ["convert", str(tmp_path / "wider.keras"), "--model-repository", str(tmp_path), "--name", "mlp"]

    assert cli(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"output 0: '{out2}' FP32 [3] vs the model's '{out1}' FP32 [2]" in errors[0]
    assert "--replace-signature" in errors[0] and "Nothing was published" in errors[0]
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["1", "config.pbtxt"]
    assert read_config(tmp_path / "mlp").output[0].name == out1

    assert cli([*args, "--replace-signature"]) == 0
    err = capsys.readouterr().err
    assert "version 1 (" in err and "no longer load" in err  # says which earlier versions it broke
    config = read_config(tmp_path / "mlp")
    assert [(o.name, list(o.dims)) for o in config.output] == [(out2, [3])]
    assert json.loads((tmp_path / "mlp" / "2" / "conversion.json").read_text())["renamed"] == {}


def test_max_batch_size_is_kept_or_changed_without_breaking_versions(tmp_path: Path) -> None:
    convert_keras(mlp(1), str(tmp_path), "mlp", max_batch_size=8, **QUIET)
    convert_keras(mlp(2), str(tmp_path), "mlp", **QUIET)  # no max_batch_size: the model's is kept
    assert read_config(tmp_path / "mlp").max_batch_size == 8
    convert_keras(mlp(3), str(tmp_path), "mlp", max_batch_size=0, **QUIET)  # batching off: dims gain the batch
    config = read_config(tmp_path / "mlp")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 4]
    for version in (1, 2, 3):
        model = onnx.load(tmp_path / "mlp" / str(version) / "model.onnx")
        assert signature.load_problem(config, *signature.graph_tensors(model)) is None


# Without TensorFlow: the signature module on hand-made graphs.


def fixed_batch(name: str = "x", out: str = "y") -> onnx.ModelProto:
    return models.identity(TensorProto.FLOAT, shape=(1, 3), name=name, out=out)


def test_max_batch_size_that_would_break_an_earlier_version_is_refused(tmp_path: Path) -> None:
    models.save(fixed_batch(), tmp_path, "m", config='max_batch_size: 0\ninput { name: "x" data_type: TYPE_FP32 '
                'dims: [1, 3] }\noutput { name: "y" data_type: TYPE_FP32 dims: [1, 3] }\n')  # fmt: skip
    existing = publish.read_config(tmp_path / "m")
    new = publish.next_config(existing, "m", models.identity(TensorProto.FLOAT), 8, keep_signature=True)
    assert list(new.input[0].dims) == [3]
    broken = signature.newly_broken(tmp_path / "m", existing, new)
    assert list(broken) == [1] and "dynamic first dimension" in broken[1]
    assert signature.newly_broken(tmp_path / "m", existing, existing) == {}


def passthrough(given: tuple, returned: tuple) -> onnx.ModelProto:
    """A graph whose only node takes `given` (name, type, shape) and returns `returned`; only the
    signature matters here."""
    return models.graph_model([helper.make_node("Identity", [given[0]], [returned[0]])], [given], [returned])


def test_differences_by_position_with_free_dimensions() -> None:
    config = mc.ModelConfig()
    text_format.Parse('max_batch_size: 4 input { name: "a" data_type: TYPE_FP32 dims: [-1, 3] } '
                      'output { name: "b" data_type: TYPE_INT64 dims: [2] }', config)  # fmt: skip
    same = passthrough(("p", TensorProto.FLOAT, [None, 7, 3]), ("q", TensorProto.INT64, [None, None]))
    assert signature.differences(config, same) == []
    assert signature.renames(config, same) == {"p": "a", "q": "b"}
    other = passthrough(("p", TensorProto.FLOAT, [None, 7]), ("q", TensorProto.INT32, [None, 2]))
    assert signature.differences(config, other) == [
        "input 0: 'p' FP32 [7] vs the model's 'a' FP32 [-1, 3]",
        "output 0: 'q' INT32 [2] vs the model's 'b' INT64 [2]",
    ]
    two = models.add_mul(3)
    assert signature.differences(config, two) == [
        "inputs: 2 in this version ('a' FP32 [3], 'b' FP32 [3]) vs 1 in the model ('a' FP32 [-1, 3])",
        "outputs: 2 in this version ('sum' FP32 [3], 'prod' FP32 [3]) vs 1 in the model ('b' INT64 [2])",
    ]


def test_rename_swaps_names_and_moves_internal_ones_aside() -> None:
    # x -> Relu -> "b" (internal) -> Neg -> out "a"; and Identity(x) -> out "c". Rename a<->c and
    # make the input "b": the internal "b" must step aside, and the swap must not mix the outputs.
    row = [None, 3]
    model = models.graph_model(
        [helper.make_node("Relu", ["x"], ["b"]), helper.make_node("Neg", ["b"], ["a"]),
         helper.make_node("Identity", ["x"], ["c"])],
        [("x", TensorProto.FLOAT, row)], [("a", TensorProto.FLOAT, row), ("c", TensorProto.FLOAT, row)],
    )  # fmt: skip
    x = np.array([[-1.0, 2.0, -3.0]], np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(["a", "c"], {"x": x})
    signature.rename(model, {"x": "b", "a": "c", "c": "a"})
    session = ort.InferenceSession(model.SerializeToString())
    assert [i.name for i in session.get_inputs()] == ["b"] and [o.name for o in session.get_outputs()] == ["c", "a"]
    got = session.run(["c", "a"], {"b": x})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_rename_reaches_into_subgraphs() -> None:
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None, 3])])  # fmt: skip
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, 3])])  # fmt: skip
    model = models.graph_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
        [("x", TensorProto.FLOAT, [None, 3]), ("flag", TensorProto.BOOL, [])], [("y", TensorProto.FLOAT, [None, 3])],
    )
    signature.rename(model, {"x": "features", "y": "score"})
    session = ort.InferenceSession(model.SerializeToString())
    x = np.ones((2, 3), np.float32)
    got = session.run(["score"], {"features": x, "flag": np.array(True)})[0]
    np.testing.assert_array_equal(got, -x)


def test_an_input_that_is_also_an_output_cannot_take_two_names() -> None:
    config = mc.ModelConfig()
    text_format.Parse('input { name: "a" data_type: TYPE_FP32 dims: [-1, 3] } '
                      'output { name: "b" data_type: TYPE_FP32 dims: [-1, 3] }', config)  # fmt: skip
    passthrough = models.graph_model([], [("x", TensorProto.FLOAT, [None, 3])], [("x", TensorProto.FLOAT, [None, 3])])
    assert signature.differences(config, passthrough) == []
    with pytest.raises(SignatureMismatch, match="both an input and an output"):
        signature.renames(config, passthrough)
