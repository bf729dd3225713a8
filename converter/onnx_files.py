"""ONNX models whose weights may live outside the protobuf (ONNX external data): writing the data
file, reading tensors back a chunk at a time, and checking such a model.

An ONNX file is one protobuf message, limited to 2 GiB. With external data, a tensor keeps its name,
type and dims in model.onnx, and `external_data` entries (location, offset, length) say where its raw
bytes are in a file beside it: here always one file, model.onnx.data, in the version folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, helper, numpy_helper

from modelport.protocol.repository import MODEL_DATA_FILE

# Tensors start at page boundaries, so ONNX Runtime maps them from the file instead of copying them.
ALIGNMENT = 4096
# Bytes per read or write: a big tensor is streamed, never copied whole.
CHUNK = 64 * 2**20
# Smaller tensors stay inside model.onnx (onnx's own default for external data).
INLINE_MAX = 1024


def subgraphs(graph: GraphProto) -> Iterator[GraphProto]:
    """The graphs inside `graph`'s nodes (If/Loop/Scan bodies), recursively."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield attribute.g
                yield from subgraphs(attribute.g)
            for inner in attribute.graphs:
                yield inner
                yield from subgraphs(inner)


def tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor of a graph: initializers and node attribute tensors, subgraphs included."""
    for g in (graph, *subgraphs(graph)):
        yield from g.initializer
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def initializers(graph: GraphProto) -> Iterator[TensorProto]:
    """Initializers of a graph and of its subgraphs."""
    for g in (graph, *subgraphs(graph)):
        yield from g.initializer


def is_external(tensor: TensorProto) -> bool:
    """Whether the tensor's bytes are in an external data file."""
    return tensor.data_location == TensorProto.EXTERNAL


def uses_external_data(model: ModelProto) -> bool:
    """Whether any tensor of the model lives in an external data file."""
    return any(is_external(t) for t in tensors(model.graph))


def external_info(tensor: TensorProto) -> dict[str, str]:
    """A tensor's external_data entries as a dict (location, offset, length, …)."""
    return {entry.key: entry.value for entry in tensor.external_data}


class DataWriter:
    """Appends tensors to one external data file and points each at its bytes there."""

    def __init__(self, folder: Path, name: str = MODEL_DATA_FILE) -> None:
        self.path = Path(folder) / name
        self.name = name
        self._file = open(self.path, "xb")  # noqa: SIM115 - closed by close() / the context manager
        self._offset = 0

    def __enter__(self) -> DataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the data file."""
        self._file.close()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._offset

    def write(self, tensor: TensorProto, data: Any) -> None:
        """Append `data` (bytes, a memoryview or an array) as `tensor`'s content and make the tensor
        refer to it; any raw_data the tensor held is dropped."""
        view = _bytes_view(data)
        padding = -self._offset % ALIGNMENT
        if padding:
            self._file.write(b"\0" * padding)
            self._offset += padding
        offset = self._offset
        for start in range(0, len(view), CHUNK):
            self._file.write(view[start : start + CHUNK])
        self._offset += len(view)
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.name), ("offset", offset), ("length", len(view))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)

    def externalize(self, tensors: Iterable[TensorProto], min_bytes: int = INLINE_MAX) -> None:
        """Move the raw_data of every tensor holding at least `min_bytes` of it into the data file."""
        for tensor in tensors:
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
                self.write(tensor, tensor.raw_data)


def _bytes_view(data: Any) -> memoryview:
    """A flat byte view without copying (arrays of any fixed-size dtype, bfloat16 included)."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")


def tensor_from_array(name: str, array: np.ndarray) -> TensorProto:
    """A TensorProto with `array`'s name, type and dims but no data yet (for DataWriter.write)."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    return tensor


def read_chunks(tensor: TensorProto, folder: Path | None) -> Iterator[np.ndarray]:
    """A tensor's values, flattened, about CHUNK bytes at a time: read from the data file (relative
    to `folder`) for an external tensor, so that a huge one is never whole in memory."""
    if not is_external(tensor):
        yield numpy_helper.to_array(tensor).reshape(-1)
        return
    if folder is None:
        raise ValueError(f"tensor '{tensor.name}' is in external data, but the model's folder is unknown")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    info = external_info(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if "length" in info:
        count = int(info["length"]) // dtype.itemsize
    per_chunk = max(1, CHUNK // dtype.itemsize)
    with open(Path(folder) / info["location"], "rb") as file:
        file.seek(int(info.get("offset", 0)))
        while count > 0:
            n = min(per_chunk, count)
            yield np.frombuffer(file.read(n * dtype.itemsize), dtype=dtype)
            count -= n


def check(model: ModelProto, path: Path | None = None) -> None:
    """onnx.checker on a model. By path when given: the checker then also finds the external data
    files (and accepts models over 2 GiB). A model in memory that has external data is not checked
    here: the checker would look for its data file in the current directory; the caller checks the
    saved file by path instead."""
    if path is not None:
        onnx.checker.check_model(str(path))
    elif not uses_external_data(model):
        onnx.checker.check_model(model)
