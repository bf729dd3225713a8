"""inference.RepositoryModelLoadRequest read from its wire bytes without copying the files.

An upload's files arrive as `bytes_param` values of the request's parameters map. protobuf's
parser copies the message into its arena and each `.bytes_param` access copies a value again, so
a 1 GiB upload held 3 GiB before a byte was written (measured: benchmarks/upload.py). Read here,
every file is a memoryview into the bytes gRPC received, written out from there. Unknown fields
(and known ones with another wire type) are skipped as protobuf (upb) skips them; what protobuf
refuses (truncated fields, lengths past the end, invalid UTF-8 in strings, groups) raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Field numbers of grpc_service.proto's RepositoryModelLoadRequest, its map entries and
# ModelRepositoryParameter (whose oneof `parameter_choice` is the kind below).
_REPOSITORY_NAME, _MODEL_NAME, _PARAMETERS = 1, 2, 3
_KEY, _VALUE = 1, 2
_KINDS = {1: "bool_param", 2: "int64_param", 3: "string_param", 4: "bytes_param"}
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Parameter:
    """One ModelRepositoryParameter: `kind` is the oneof's set field (None when none is)."""

    kind: str | None = None
    value: bool | int | str | memoryview | None = None


@dataclass
class LoadRequest:
    """What RepositoryModelLoad carries: names, and parameters by key (files as memoryviews)."""

    model_name: str = ""
    repository_name: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)


def parse(data: bytes) -> LoadRequest:
    """The request in `data` (a serialized inference.RepositoryModelLoadRequest)."""
    request = LoadRequest()
    for number, value in _known(memoryview(data), {_REPOSITORY_NAME: _LENGTH, _MODEL_NAME: _LENGTH,
                                                   _PARAMETERS: _LENGTH}):  # fmt: skip
        if number == _REPOSITORY_NAME:
            request.repository_name = _text(value)
        elif number == _MODEL_NAME:
            request.model_name = _text(value)
        else:
            entry = _entry(value)
            if entry is not None:
                request.parameters[entry[0]] = entry[1]  # a repeated key: the last one wins, as in protobuf
    return request


def _entry(view: memoryview) -> tuple[str, Parameter] | None:
    """A map entry; None for one with fields besides its key and value (upb drops those)."""
    key, parameter, others = "", Parameter(), False
    for number, wire, value in _fields(view):  # every field read: a malformed one is refused either way
        if number == _KEY and wire == _LENGTH:
            key = _text(value)  # type: ignore[arg-type]
        elif number == _VALUE and wire == _LENGTH:
            parameter = _parameter(value)  # type: ignore[arg-type]
        else:
            others = True
    return None if others else (key, parameter)


def _parameter(view: memoryview) -> Parameter:
    parameter = Parameter()
    wires = {1: _VARINT, 2: _VARINT, 3: _LENGTH, 4: _LENGTH}
    for number, value in _known(view, wires):
        kind = _KINDS[number]
        if kind == "bool_param":
            parameter = Parameter(kind, bool(value))
        elif kind == "int64_param":
            parameter = Parameter(kind, value - (1 << 64) if value >= 1 << 63 else value)  # type: ignore[operator]
        elif kind == "string_param":
            parameter = Parameter(kind, _text(value))  # type: ignore[arg-type]
        else:
            parameter = Parameter(kind, value)
    return parameter


def _known(view: memoryview, wires: dict[int, int]) -> Iterator[tuple[int, int | memoryview]]:
    """(number, value) of the fields in `wires` that have the wire type it gives; others are
    unknown fields, skipped."""
    for number, wire, value in _fields(view):
        if wires.get(number) == wire:
            yield number, value


def _fields(view: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field: varints as ints, the rest as views."""
    position, end = 0, len(view)
    while position < end:
        start = position
        key, position = _varint(view, position)
        number, wire = key >> 3, key & 7
        if not 0 < number < 1 << 29 or key >= 1 << 32 or position - start > 5:
            raise ValueError(f"field number {number} is outside protobuf's range")
        if wire == _VARINT:
            value, position = _varint(view, position)
            yield number, wire, value
            continue
        if wire == _LENGTH:
            size, position = _varint(view, position)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f"wire type {wire} (groups are not proto3)")
        if position + size > end:
            raise ValueError(f"field {number} runs past the end of the message")
        yield number, wire, view[position : position + size]
        position += size


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while position < len(view):
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift >= 70:
            break
    raise ValueError("truncated or overlong varint")


def _text(view: memoryview) -> str:
    return str(view, "utf-8")  # strict: proto3 strings are UTF-8
