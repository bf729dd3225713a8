"""tf2onnx on a Source's traced function: an ONNX model whose inputs and outputs carry the
source's names, in the source's order, with a dynamic batch dimension; with a data folder, its
weights written as ONNX external data (model.onnx.data) instead of inside the protobuf."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tf2onnx
import tf2onnx.constants
from onnx import numpy_helper

from modelport.protocol.repository import MODEL_FILE

from . import (
    onnx_files,
    tf_ops,  # noqa: F401  (registers the handlers for ops tf2onnx lacks)
)
from .defaults import DEFAULT_OPSET, STREAMED_WEIGHT_BYTES
from .errors import ConversionError, UnsupportedOpsError
from .lean import lean
from .sources import Source

# onnx >= 1.23 writes IR version 14 by default; ONNX Runtime 1.31 reads up to 13.
MAX_IR_VERSION = 10
# The newest opset tf2onnx 1.17 has handlers for.
MAX_OPSET = max(tf2onnx.constants.OPSET_TO_IR_VERSION)


def to_onnx(
    source: Source,
    opset: int = DEFAULT_OPSET,
    data_dir: Path | None = None,
    *,
    stream_min_bytes: int = STREAMED_WEIGHT_BYTES,
) -> onnx.ModelProto:
    """Convert; raise UnsupportedOpsError when tf2onnx leaves TensorFlow ops no ONNX runtime has,
    ConversionError when it loses or renames an input or output.

    With `data_dir`, the weights go to `data_dir`/model.onnx.data and the returned model refers to
    them (it is also saved as `data_dir`/model.onnx, to be checked by path): tf2onnx's large-model
    path, with variables of at least `stream_min_bytes` written straight from TensorFlow's buffers
    (see lean.py). Without it, the weights are inside the model (which must stay under 2 GiB)."""
    external = data_dir is not None
    with _tf2onnx_log() as log, lean(stream_min_bytes if external else None) as streamed:
        model, storage = tf2onnx.convert.from_function(
            source.function, input_signature=source.input_signature(), opset=opset, large_model=external
        )
        _raise_unsupported(model, opset, log)
        if external:
            with onnx_files.DataWriter(Path(data_dir)) as writer:
                _write_external(model, storage, streamed, writer)
                _fold_captured_constants(model, source)
                writer.externalize(onnx_files.initializers(model.graph))
        else:
            _fold_captured_constants(model, source)
    del storage, streamed
    gc.collect()  # tf2onnx's graphs are cycles that hold tensors: free them before the next step
    _check_names(model, source)
    _order_outputs(model, source.outputs)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "modelport.converter (tf2onnx)"
    if external:
        path = Path(data_dir) / MODEL_FILE
        onnx.save(model, path)
        onnx_files.check(model, path)
    else:
        onnx_files.check(model)
    return model


@contextmanager
def _tf2onnx_log() -> Iterator[list[logging.LogRecord]]:
    """tf2onnx's warnings and errors, kept instead of printed: it logs a node it could not convert
    with a full traceback and carries on; the converter reports such failures itself, in one paragraph."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tf2onnx")
    handler = Keep(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _raise_unsupported(model: onnx.ModelProto, opset: int, log: list[logging.LogRecord]) -> None:
    """tf2onnx passes a TensorFlow op it has no handler for into the ONNX graph unchanged (then
    onnx.checker says "No Op registered for X"): name those ops and nodes, and the ways out."""
    unsupported: dict[str, list[str]] = {}
    for graph in (model.graph, *onnx_files.subgraphs(model.graph)):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and not _has_schema(node.op_type, opset):
                unsupported.setdefault(node.op_type, []).append(node.name)
    if not unsupported:
        return
    failures = _handler_failures(log)
    ops = "; ".join(
        f"{op} (node{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes[:3])}"
        f"{f' and {len(nodes) - 3} more' if len(nodes) > 3 else ''})"
        for op, nodes in sorted(unsupported.items())
    )
    detail = "".join(f" tf2onnx's handler for node {name!r} failed: {why}." for name, why in failures.items()
                     if any(name in nodes for nodes in unsupported.values()))  # fmt: skip
    higher = ""
    if opset < MAX_OPSET:
        higher = f"a higher --opset (tf2onnx knows up to {MAX_OPSET}), in case a newer opset has it; "
    raise UnsupportedOpsError(
        f"tf2onnx cannot convert the TensorFlow op{'s' if len(unsupported) > 1 else ''} {ops} to ONNX opset "
        f"{opset}: no ONNX runtime could load the result.{detail} To convert this model, try {higher}"
        "replace the layer that uses the op with one built from supported ops; or add a handler for the op, "
        "written with ONNX ops, in modelport/converter/tf_ops.py (its Erfc handler, which makes exact GELU "
        "convert, is an example). Nothing was published",
        sorted(unsupported),
    )


def _has_schema(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def _handler_failures(log: list[logging.LogRecord]) -> dict[str, str]:
    """{node name: first line of the exception} for nodes whose tf2onnx handler raised."""
    failures = {}
    for record in log:
        if record.exc_info and record.exc_info[1] is not None and record.args:
            first = (str(record.exc_info[1]).strip().splitlines() or [""])[0]
            failures[str(record.args[0])] = f"{type(record.exc_info[1]).__name__}: {first}"
    return failures


def _write_external(
    model: onnx.ModelProto, storage: Any, streamed: dict[str, np.ndarray], writer: onnx_files.DataWriter
) -> None:
    """Put every weight in the data file: the streamed variables (graph inputs during conversion)
    become initializers, and the tensors tf2onnx set aside in its ExternalTensorStorage (each named
    by its own file) move into the one file. Each array or buffer is released once written."""
    inputs = {value.name for value in model.graph.input}
    for name in [n for n in streamed if n in inputs]:
        array = streamed.pop(name)
        tensor = onnx_files.tensor_from_array(name, array)
        writer.write(tensor, array)
        model.graph.initializer.append(tensor)
        del array
    kept = [value for value in model.graph.input if value.name not in {t.name for t in model.graph.initializer}]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    streamed.clear()  # any left were not graph inputs (unused): nothing refers to them
    pending = storage.name_to_tensor_data if storage is not None else {}
    for tensor in onnx_files.tensors(model.graph):
        if onnx_files.is_external(tensor):
            location = onnx_files.external_info(tensor).get("location")
            if location == writer.name:
                continue  # a streamed variable, written above
            if location not in pending:
                raise ConversionError(f"tf2onnx left tensor '{tensor.name}' in an external file '{location}' it "
                                      "did not return; cannot write the model")  # fmt: skip
            writer.write(tensor, pending.pop(location))
    if storage is not None:
        storage.node_to_modified_value_attr.clear()  # each holds an emptied copy of a weight's protobuf arena


def _fold_captured_constants(model: onnx.ModelProto, source: Source) -> None:
    """Tensors the function captures by value (e.g. a Keras Normalization layer's mean and variance
    after loading a saved model) reach tf2onnx as placeholders and come out as extra graph inputs;
    they are constants, so turn them into initializers."""
    wanted = {t.name for t in source.inputs}
    initialized = {init.name for init in model.graph.initializer}
    extra = {i.name for i in model.graph.input} - wanted - initialized
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
    initialized = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initialized]
    outputs = [o.name for o in model.graph.output]
    if sorted(inputs) != sorted(t.name for t in source.inputs) or sorted(outputs) != sorted(source.outputs):
        raise ConversionError(
            f"tf2onnx produced inputs {inputs} and outputs {outputs}; expected "
            f"{[t.name for t in source.inputs]} and {source.outputs}. Nothing was published"
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
