"""Tiny ONNX models built with onnx.helper, for tests that need no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

# onnx 1.23 writes IR version 14 by default; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10
OPSET = 17


def save(model: onnx.ModelProto, repository: Path, name: str, version: int = 1, config: str | None = None) -> Path:
    """Write `model` as <repository>/<name>/<version>/model.onnx (and config.pbtxt if given)."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    if config is not None:
        (repository / name / "config.pbtxt").write_text(config)
    return folder / "model.onnx"


def graph_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    """A model from nodes and (name, elem_type, shape) inputs/outputs."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def add_mul(width: int = 4) -> onnx.ModelProto:
    """Inputs a, b FP32 [batch, width]; outputs sum = a + b and prod = a * b."""
    shape = [None, width]
    return graph_model(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        [("a", TensorProto.FLOAT, shape), ("b", TensorProto.FLOAT, shape)],
        [("sum", TensorProto.FLOAT, shape), ("prod", TensorProto.FLOAT, shape)],
    )


def identity(elem_type: int, shape=(None, 3), name: str = "x", out: str = "y") -> onnx.ModelProto:
    """y = x for any ONNX element type."""
    return graph_model(
        [helper.make_node("Identity", [name], [out])], [(name, elem_type, list(shape))], [(out, elem_type, list(shape))]
    )


def scale(factor: float = 2.0, width: int = 3) -> onnx.ModelProto:
    """y = x * factor; distinguishes versions by their factor."""
    const = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    return graph_model(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [("x", TensorProto.FLOAT, [None, width])],
        [("y", TensorProto.FLOAT, [None, width])],
        initializers=[const],
    )


def matmul_chain(depth: int) -> onnx.ModelProto:
    """y = x @ x @ ... (`depth` times) for square FP32 x: a model that takes measurable time."""
    nodes, previous = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "x"], [out]))
        previous = out
    return graph_model(nodes, [("x", TensorProto.FLOAT, [None, None])], [("y", TensorProto.FLOAT, [None, None])])


def batch_probe(width: int = 3) -> onnx.ModelProto:
    """y = 2x, and n[i] = the batch size the session actually ran with (shows dynamic batching)."""
    ints = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["rows"]),
        helper.make_node("Concat", ["rows", "one"], ["out_shape"], axis=0),
        helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["rows_f", "out_shape"], ["n"]),
    ]
    initializers = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), ints("zero", [0]), ints("one", [1])]
    return graph_model(
        nodes,
        [("x", TensorProto.FLOAT, [None, width])],
        [("y", TensorProto.FLOAT, [None, width]), ("n", TensorProto.FLOAT, [None, 1])],
        initializers,
    )


def gather_rows() -> onnx.ModelProto:
    """y[i] = table[idx[i]] for a 3-entry table: an index >= 3 makes ONNX Runtime fail the run."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [3], [10.0, 20.0, 30.0])
    return graph_model(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        [("idx", TensorProto.INT64, [None, 1])],
        [("y", TensorProto.FLOAT, [None, 1])],
        [table],
    )


def dense_chain(width: int = 512, depth: int = 16) -> onnx.ModelProto:
    """x [N, width] through `depth` constant width x width matmuls: slow per row, batchable."""
    import numpy as np
    from onnx import numpy_helper

    weight = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w"
    )
    nodes, previous = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [out]))
        previous = out
    return graph_model(nodes, [("x", TensorProto.FLOAT, [None, width])], [("y", TensorProto.FLOAT, [None, width])],
                       [weight])


def cast(from_type: int, to_type: int, shape=(None, 3), name: str = "x", out: str = "y") -> onnx.ModelProto:
    """y = Cast(x) from one ONNX element type to another (e.g. BF16 in, FP32 out)."""
    return graph_model(
        [helper.make_node("Cast", [name], [out], to=to_type)],
        [(name, from_type, list(shape))],
        [(out, to_type, list(shape))],
    )


def sigmoid_classifier(weights, bias: float = 0.0, extra_logits_output: bool = False) -> onnx.ModelProto:
    """x FP32 [N, len(weights)] -> prob = Sigmoid(x @ weights + bias) [N, 1]: a binary classifier;
    with `extra_logits_output`, the pre-sigmoid `logits` [N, 1] is a second output."""
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(-1, 1), "w")
    b = numpy_helper.from_array(np.asarray([bias], dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
    ]
    outputs = [("prob", TensorProto.FLOAT, [None, 1])]
    if extra_logits_output:
        outputs.append(("logits", TensorProto.FLOAT, [None, 1]))
    return graph_model(nodes, [("x", TensorProto.FLOAT, [None, w.dims[0]])], outputs, [w, b])


def softmax_classifier(weights) -> onnx.ModelProto:
    """x FP32 [N, F] -> probs = Softmax(x @ weights) [N, C] for a weights matrix [F, C]."""
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32), "w")
    features, classes = w.dims
    return graph_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        [("x", TensorProto.FLOAT, [None, features])],
        [("probs", TensorProto.FLOAT, [None, classes])],
        [w],
    )


def two_input_argmax_classifier(weights) -> onnx.ModelProto:
    """a, b FP32 [N, F] -> label = ArgMax((a + b) @ weights) INT64 [N]: integer class labels out."""
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32), "w")
    features = w.dims[0]
    return graph_model(
        [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("MatMul", ["s", "w"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        [("a", TensorProto.FLOAT, [None, features]), ("b", TensorProto.FLOAT, [None, features])],
        [("label", TensorProto.INT64, [None])],
        [w],
    )
