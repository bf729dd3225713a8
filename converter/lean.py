"""tf2onnx 1.17 on models with gigabytes of weights, in about one copy of them.

Measured on Embedding(150000, 1024) (0.57 GiB of weights), tf2onnx alone ran out of 24 GiB on its
ordinary path (13.9 GiB with the first fix below) and peaked at 19.7 GiB on its large-model path.
With all three fixes, converting a 2.46 GB embedding takes 1.5 s and one transient copy of the weights
above what TensorFlow holds. Three things cost the copies, and `lean()` undoes each while tf2onnx runs:

- Every optimizer pass (12 optimizers, at least two rounds) rewrites each node's NodeProto from the
  node's attributes, a Const node's whole tensor included; protobuf (upb) keeps the replaced bytes in
  the message's arena until the message dies, so each pass leaves one more copy of every weight.
  tf2onnx never reads a Const node's NodeProto attributes back (it makes initializers from the
  node's attribute objects), so `_update_proto` leaves the tensor out of it.
- Freezing turns each variable into a Const: a copy in a GraphDef, more copies as tf2onnx imports it,
  converts it to numpy and to an ONNX tensor. With `stream_min_bytes`, variables at least that big
  never become constants: freezing's numpy copy of the variable (TensorFlow's `.numpy()` copies; the
  one transient copy left) is recorded, and a marked, empty constant stands in for it, which becomes
  a Placeholder before tf2onnx imports the graph. tf2onnx converts the model with them as extra
  graph inputs; `export.py` turns those into initializers whose bytes it writes from the recorded
  arrays straight to the data file, then drops the arrays.
- tf2onnx's large-model path calls `numpy.product`, removed in numpy 2; it is provided meanwhile.

Everything is restored on exit. tf2onnx is pinned (==1.17.0), and these touch its internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tf2onnx.convert
import tf2onnx.graph
import tf2onnx.tf_loader
from tensorflow.core.framework import tensor_pb2
from tensorflow.python.framework import dtypes, tensor_shape, tensor_util

MARKER = b"modelport-streamed-weight:"


@contextmanager
def lean(stream_min_bytes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Within: tf2onnx without a copy of the weights per optimizer pass; with `stream_min_bytes`
    (for `large_model=True` conversions), variables of at least that many bytes reach tf2onnx as
    graph inputs, and the yielded dict fills with {graph input name: the variable's array}."""
    streamed: dict[str, np.ndarray] = {}
    originals: list[tuple[Any, str, Any]] = [(tf2onnx.graph.Node, "update_proto", tf2onnx.graph.Node.update_proto)]
    tf2onnx.graph.Node.update_proto = _update_proto
    if stream_min_bytes is not None:
        recorded: dict[bytes, np.ndarray] = {}
        freeze = tf2onnx.tf_loader.convert_variables_to_constants_large_model
        originals.append((tf2onnx.tf_loader, "convert_variables_to_constants_large_model", freeze))
        tf2onnx.tf_loader.convert_variables_to_constants_large_model = _recording(freeze, stream_min_bytes, recorded)
        originals.append((tf2onnx.convert, "compress_graph_def", tf2onnx.convert.compress_graph_def))
        tf2onnx.convert.compress_graph_def = _placeholders_then(tf2onnx.convert.compress_graph_def, recorded, streamed)
        if not hasattr(np, "product"):
            np.product = np.prod  # tf2onnx.graph.Node.get_value_attr, large-model path only
            originals.append((np, "product", None))
    try:
        yield streamed
    finally:
        for owner, name, value in reversed(originals):
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def _update_proto(self: Any, external_tensor_storage: Any = None) -> None:
    """tf2onnx.graph.Node.update_proto, except that a Const node's tensor stays in the node's
    attribute object only (see the module docstring)."""
    op = self._op  # noqa: SLF001 - tf2onnx's own field
    del op.input[:]
    op.input.extend(self.input)
    del op.output[:]
    op.output.extend(self.output)
    del op.attribute[:]
    for attr_name, sub_graph in (self.get_body_graphs() or {}).items():
        graph_proto = sub_graph.make_graph(
            f"graph for {self.name} {attr_name}", external_tensor_storage=external_tensor_storage
        )
        self.set_attr(attr_name, graph_proto)
    if self.is_const():
        attributes = [a for name, a in self.attr.items() if name != "value"]
    else:
        attributes = list(self.get_onnx_attrs(external_tensor_storage).values())
    if attributes:
        op.attribute.extend(attributes)


def _recording(freeze: Any, min_bytes: int, recorded: dict[bytes, np.ndarray]) -> Any:
    """tf2onnx's large-model freezing, with make_tensor_proto recording big arrays during it only
    (tf2onnx and TensorFlow make tensor protos later too: those must stay real)."""

    def convert_variables_to_constants_large_model(func: Any) -> Any:
        make_tensor_proto = tensor_util.make_tensor_proto
        tensor_util.make_tensor_proto = _recording_make_tensor_proto(make_tensor_proto, min_bytes, recorded)
        try:
            return freeze(func)
        finally:
            tensor_util.make_tensor_proto = make_tensor_proto

    return convert_variables_to_constants_large_model


def _recording_make_tensor_proto(original: Any, min_bytes: int, recorded: dict[bytes, np.ndarray]) -> Any:
    """make_tensor_proto for TensorFlow's freezing: a numeric array of at least `min_bytes` is
    recorded (not copied) and stands in the graph as an empty constant carrying a marker."""

    def make_tensor_proto(values: Any, dtype: Any = None, shape: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(values, np.ndarray) and values.dtype != object and values.nbytes >= min_bytes):
            return original(values, dtype, shape, *args, **kwargs)
        marker = MARKER + str(len(recorded)).encode()
        recorded[marker] = values
        proto = tensor_pb2.TensorProto(
            dtype=dtypes.as_dtype(dtype if dtype is not None else values.dtype).as_datatype_enum,
            tensor_shape=tensor_shape.as_shape(values.shape).as_proto(),
        )
        proto.string_val.append(marker)
        return proto

    return make_tensor_proto


def _placeholders_then(original: Any, recorded: dict[bytes, np.ndarray], streamed: dict[str, np.ndarray]) -> Any:
    """tf2onnx's compress_graph_def (called on the frozen GraphDef before anything reads it), after
    turning the marked constants of the main graph into Placeholders. Marked constants inside
    functions (loop bodies) cannot be inputs: they get their bytes back."""

    def compress_graph_def(graph_def: Any) -> Any:
        for node in graph_def.node:
            array = _marked(node, recorded)
            if array is not None:
                tensor = node.attr["value"].tensor
                dtype, shape = tensor.dtype, tensor.tensor_shape
                del node.input[:]
                node.op = "Placeholder"
                node.ClearField("attr")
                node.attr["dtype"].type = dtype
                node.attr["shape"].shape.CopyFrom(shape)
                streamed[f"{node.name}:0"] = array
        for function in graph_def.library.function:
            for node in function.node_def:
                array = _marked(node, recorded)
                if array is not None:
                    tensor = node.attr["value"].tensor
                    tensor.ClearField("string_val")
                    tensor.tensor_content = np.ascontiguousarray(array).tobytes()
        recorded.clear()  # the arrays now live in `streamed` (or in the function bodies)
        return original(graph_def)

    return compress_graph_def


def _marked(node: Any, recorded: dict[bytes, np.ndarray]) -> np.ndarray | None:
    if node.op != "Const" or "value" not in node.attr:
        return None
    values = node.attr["value"].tensor.string_val
    if len(values) == 1 and values[0].startswith(MARKER):
        return recorded[values[0]]
    return None
