"""The protocol's datatypes and how numpy, ONNX and Triton's config name them."""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import numpy as np

# datatype string -> numpy dtype (little-endian), in the protocol's order. BF16 travels as its
# raw 16-bit pattern (numpy has no bfloat16); BYTES is an object array of `bytes`.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(object),
}
DATATYPES: tuple[str, ...] = tuple(NUMPY_DTYPES)

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

# onnx.TensorProto.DataType values (stable numbers of the ONNX standard) -> protocol datatypes,
# so that code reading an ONNX graph needs no second table.
ONNX_ELEMENT_TO_DATATYPE: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}  # fmt: skip

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

_LETTERS = np.frombuffer((string.ascii_letters + string.digits).encode(), dtype=np.uint8)


def zeros(datatype: str, shape: Sequence[int]) -> np.ndarray:
    """All zeros of `datatype` (empty strings for BYTES)."""
    if datatype == "BYTES":
        return np.full(tuple(shape), b"", dtype=object)
    return np.zeros(tuple(shape), dtype=NUMPY_DTYPES[datatype])


def random_array(
    datatype: str, shape: Sequence[int], rng: np.random.Generator, *, int_range: tuple[int, int] = (0, 100)
) -> np.ndarray:
    """Random data of `datatype`: standard normal floats, integers in `int_range` (upper bound
    excluded; keep it small where integers may be indices), random booleans, 8-character
    strings (BYTES), and BF16 as the bit patterns of normal floats."""
    shape = tuple(shape)
    if datatype == "BYTES":
        flat = np.empty(math.prod(shape), dtype=object)
        for i in range(flat.size):
            flat[i] = rng.choice(_LETTERS, 8).tobytes()
        return flat.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype == "BF16":  # the upper half of FP32 values is their bfloat16 bit pattern
        return (rng.standard_normal(shape, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(*int_range, shape).astype(dtype)
