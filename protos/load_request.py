"""inference.RepositoryModelLoadRequest read from its wire bytes without copying the files, and
written to them with one copy.

An upload's files arrive as `bytes_param` values of the request's parameters map. protobuf's
parser copies the message into its arena and each `.bytes_param` access copies a value again, so
a 1 GiB upload held 3 GiB before a byte was written (measured: benchmarks/upload.py). Read here,
every file is a memoryview into the bytes gRPC received, written out from there. Unknown fields
(and known ones with another wire type) are skipped as protobuf (upb) skips them; what protobuf
refuses (truncated fields, lengths past the end, invalid UTF-8 in strings, groups) raises ValueError.

`encode` is the client's side: setting `bytes_param` copies a file into protobuf's arena and
serializing copies it again; joining the wire format's pieces copies it once.
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


def encode(request: LoadRequest) -> bytes:
    """The wire bytes of `request` (what protobuf would write, fields in number order)."""
    pieces: list[bytes | memoryview] = []
    for number, text in ((_REPOSITORY_NAME, request.repository_name), (_MODEL_NAME, request.model_name)):
        if text:
            pieces += _length_field(number, text.encode())
    for key, parameter in request.parameters.items():
        value = _encode_parameter(parameter)
        entry = [*_length_field(_KEY, key.encode()), *_header(_VALUE, sum(map(len, value))), *value]
        pieces += [*_header(_PARAMETERS, sum(map(len, entry))), *entry]
    return b"".join(pieces)


def _encode_parameter(parameter: Parameter) -> list[bytes | memoryview]:
    """A ModelRepositoryParameter's pieces (a large bytes value stays a piece of its own)."""
    number = next((n for n, kind in _KINDS.items() if kind == parameter.kind), None)
    if number is None:
        return []
    value = parameter.value
    if parameter.kind in ("bool_param", "int64_param"):
        return [_tag(number, _VARINT), _varint_bytes(int(value) & (1 << 64) - 1)]  # type: ignore[arg-type]
    data = value.encode() if isinstance(value, str) else value
    return _length_field(number, data)  # type: ignore[arg-type]


def _length_field(number: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    return [*_header(number, len(data)), data]


def _header(number: int, size: int) -> list[bytes]:
    return [_tag(number, _LENGTH), _varint_bytes(size)]


def _tag(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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
