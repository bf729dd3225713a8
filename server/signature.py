"""What a model takes and returns: tensor specs in protocol terms (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass, field

# ONNX Runtime type strings -> protocol datatypes.
ONNX_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

# Triton config DataType enum names -> protocol datatypes (TYPE_STRING is BYTES on the wire).
CONFIG_TO_DATATYPE: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
DATATYPE_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_DATATYPE.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `shape` is the full shape a request carries, batch dimension
    included when the model batches; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] = field(default=(), compare=False)

    def accepts_shape(self, shape: tuple[int, ...] | list[int]) -> bool:
        """Same rank, and equal wherever this spec fixes a dimension."""
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape)
        )


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of one model version, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        """The input called `name`, if any."""
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called `name`, if any."""
        return next((t for t in self.outputs if t.name == name), None)
