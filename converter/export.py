"""tf2onnx on a Source's traced function: an ONNX model whose inputs and outputs carry the
source's names, in the source's order, with a dynamic batch dimension."""

from __future__ import annotations

import onnx
import tf2onnx
from onnx import numpy_helper

from . import tf_ops  # noqa: F401  (registers the handlers for ops tf2onnx lacks)
from .defaults import DEFAULT_OPSET
from .sources import Source

# onnx >= 1.23 writes IR version 14 by default; ONNX Runtime 1.31 reads up to 13.
MAX_IR_VERSION = 10


def to_onnx(source: Source, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert; raise ValueError when tf2onnx loses or renames an input or output."""
    model, _ = tf2onnx.convert.from_function(source.function, input_signature=source.input_signature(), opset=opset)
    _fold_captured_constants(model, source)
    _check_names(model, source)
    _order_outputs(model, source.outputs)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "modelport.converter (tf2onnx)"
    onnx.checker.check_model(model)
    return model


def _fold_captured_constants(model: onnx.ModelProto, source: Source) -> None:
    """Tensors the function captures by value (e.g. a Keras Normalization layer's mean and variance
    after loading a saved model) reach tf2onnx as placeholders and come out as extra graph inputs;
    they are constants, so turn them into initializers."""
    wanted = {t.name for t in source.inputs}
    extra = {i.name for i in model.graph.input} - wanted
    if not extra:
        return
    concrete = source.function.get_concrete_function()
    values = {}
    for external, internal in zip(concrete.captured_inputs, concrete.graph.internal_captures):
        if internal.name in extra and external.dtype.name != "resource":
            values[internal.name] = external.numpy()
    kept = [i for i in model.graph.input if i.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in values.items())
    used = {name for node in model.graph.node for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:  # ones tf2onnx already folded into others
        model.graph.initializer.remove(init)


def _check_names(model: onnx.ModelProto, source: Source) -> None:
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if sorted(inputs) != sorted(t.name for t in source.inputs) or sorted(outputs) != sorted(source.outputs):
        raise ValueError(
            f"tf2onnx produced inputs {inputs} and outputs {outputs}; expected "
            f"{[t.name for t in source.inputs]} and {source.outputs}"
        )


def _order_outputs(model: onnx.ModelProto, order: list[str]) -> None:
    """tf2onnx sorts dict outputs by name; put them back in the model's own order."""
    by_name = {o.name: o for o in model.graph.output}
    ordered = [by_name[name] for name in order]
    copies = [onnx.ValueInfoProto() for _ in ordered]
    for copy, original in zip(copies, ordered):
        copy.CopyFrom(original)
    del model.graph.output[:]
    model.graph.output.extend(copies)
