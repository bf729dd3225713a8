"""Variable-length batching: requests whose inputs differ in length along a declared axis (text
of different token counts) are padded to one length, run as one batch, and cut back.

config.pbtxt declares it in `parameters` (Triton ignores parameters it does not know, so the same
config still loads there):

    parameters { key: "pad_inputs"  value { string_value: "input_ids:0=0, attention_mask:0=0" } }
    parameters { key: "pad_outputs" value { string_value: "token_logits:0" } }
    parameters { key: "pad_buckets" value { string_value: "32,64,128" } }

Axes count into the tensor's config `dims`, which exclude the batch axis (as `dims` do whenever
max_batch_size > 0): for input_ids of shape [batch, seq], `dims: [ -1 ]` and the sequence axis is 0.

A request's *length* is the size of the first padded axis of the first input in `pad_inputs`;
every padded axis of every padded input must have that size, or the request is refused
(INVALID_ARGUMENT). A batch runs at the longest length in it, or at its bucket; each request's
outputs in `pad_outputs` are cut back to its own length along their axes. Other outputs come back
as the model computes them on the padded batch: exact only when the model ignores padding (an
attention mask, Keras' mask_zero), which is what declaring `pad_inputs` asserts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelport.protocol.datatypes import NUMPY_DTYPES
from modelport.protocol.types import Tensor, TensorSpec

from .errors import InvalidInput, ModelLoadError
from .signature import Signature

PAD_INPUTS, PAD_OUTPUTS, PAD_BUCKETS = "pad_inputs", "pad_outputs", "pad_buckets"

_TRUE, _FALSE = ("1", "true"), ("", "0", "false")


@dataclass(frozen=True)
class PaddedAxis:
    """One axis of a tensor (counted in its config dims, batch axis excluded) that varies with
    the request's length; for inputs, with the text of the value the padding is filled with
    ('' is the datatype's zero)."""

    tensor: str
    axis: int
    value: str = ""


@dataclass(frozen=True)
class Padding:
    """A model's variable-length declaration: padded input axes, per-token output axes, buckets."""

    inputs: tuple[PaddedAxis, ...]
    outputs: tuple[PaddedAxis, ...] = ()
    buckets: tuple[int, ...] = ()

    def check(self, where: str, signature: Signature) -> None:
        """ModelLoadError unless every declared tensor exists, every axis is one of its dynamic
        (-1) dims, and every pad value reads as its input's datatype."""
        values: dict[str, str] = {}
        for entry in self.inputs:
            spec = _checked_axis(where, PAD_INPUTS, "input", entry, signature.inputs)
            if values.setdefault(entry.tensor, entry.value) != entry.value:
                raise ModelLoadError(
                    f"{where}: parameter {PAD_INPUTS}: input '{entry.tensor}' is padded with both "
                    f"'{values[entry.tensor]}' and '{entry.value}'; give one pad value per input"
                )
            try:
                fill_value(entry.value, spec.datatype)
            except ValueError as exc:
                raise ModelLoadError(
                    f"{where}: parameter {PAD_INPUTS}: pad value '{entry.value}' of input '{entry.tensor}' "
                    f"does not read as {spec.datatype}: {exc}"
                ) from None
        for entry in self.outputs:
            _checked_axis(where, PAD_OUTPUTS, "output", entry, signature.outputs)

    def bucket(self, length: int) -> int:
        """The length a request of `length` is padded to at least: its bucket, or -1 past the
        last bucket (and without buckets), where the longest request of the batch decides."""
        for bucket in self.buckets:
            if bucket >= length:
                return bucket
        return -1


def parse(model: str, parameters: Mapping[str, str]) -> Padding | None:
    """The model's Padding from its config parameters (None without pad_inputs); ModelLoadError
    for text that does not read."""
    if PAD_INPUTS not in parameters:
        extra = [key for key in (PAD_OUTPUTS, PAD_BUCKETS) if key in parameters]
        if extra:
            raise ModelLoadError(f"model '{model}': parameter {extra[0]} needs parameter {PAD_INPUTS} too")
        return None
    inputs = _entries(model, PAD_INPUTS, parameters[PAD_INPUTS], values=True)
    if not inputs:
        raise ModelLoadError(f"model '{model}': parameter {PAD_INPUTS} names no input")
    outputs = _entries(model, PAD_OUTPUTS, parameters.get(PAD_OUTPUTS, ""), values=False)
    return Padding(inputs, outputs, _buckets(model, parameters.get(PAD_BUCKETS, "")))


def _entries(model: str, key: str, text: str, values: bool) -> tuple[PaddedAxis, ...]:
    """'name:axis[=value], ...' (names may hold ':', as TensorFlow's do: the last one counts)."""
    form = "NAME:AXIS[=VALUE]" if values else "NAME:AXIS"
    found: list[PaddedAxis] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        target, equals, value = entry.partition("=")
        name, colon, axis = target.rpartition(":")
        name = name.strip()
        if not colon or not name or not axis.strip().isdigit() or (equals and not values):
            raise ModelLoadError(
                f"model '{model}': parameter {key}: '{entry}' is not {form} (AXIS counts in the tensor's "
                "dims, batch axis excluded, from 0)"
            )
        padded = PaddedAxis(name, int(axis), value.strip())
        if any((p.tensor, p.axis) == (padded.tensor, padded.axis) for p in found):
            raise ModelLoadError(f"model '{model}': parameter {key} names '{name}' axis {axis} twice")
        found.append(padded)
    return tuple(found)


def _buckets(model: str, text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ModelLoadError(f"model '{model}': parameter {PAD_BUCKETS} must be positive integers, got '{text}'")
    return tuple(sorted({int(p) for p in parts}))


def _checked_axis(where: str, key: str, kind: str, entry: PaddedAxis, specs: Sequence[TensorSpec]) -> TensorSpec:
    spec = next((s for s in specs if s.name == entry.tensor), None)
    if spec is None:
        raise ModelLoadError(
            f"{where}: parameter {key}: '{entry.tensor}' is not an {kind} of the model; it has "
            f"{sorted(s.name for s in specs)}"
        )
    dims = list(spec.shape[1:])  # the signature's shape carries the batch axis first
    if entry.axis >= len(dims) or dims[entry.axis] != -1:
        raise ModelLoadError(
            f"{where}: parameter {key}: axis {entry.axis} of {kind} '{entry.tensor}' is not a dynamic "
            f"dimension: its dims are {dims} (batch axis excluded, axes count from 0), and a padded "
            "axis must be -1"
        )
    return spec


def fill_value(text: str, datatype: str) -> np.generic | bytes:
    """The pad value `text` as a scalar of `datatype` ('' is zero, False, or b'' for BYTES);
    ValueError when it does not read as one."""
    text = text.strip()
    if datatype == "BYTES":
        return text.encode()
    if datatype == "BOOL":
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError("expected true, false, 1 or 0")
        return np.bool_(text.lower() in _TRUE)
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BF16":  # travels as the upper 16 bits of the FP32 value
        return np.uint16(np.array(float(text or "0"), np.float32).view(np.uint32) >> 16)
    if dtype.kind == "f":
        return dtype.type(float(text or "0"))
    value = int(text or "0")
    info = np.iinfo(dtype)
    if not info.min <= value <= info.max:
        raise ValueError(f"{value} is outside [{info.min}, {info.max}]")
    return dtype.type(value)


class Padder:
    """One model version's padding at run time: the batching key and length of a request, the
    padded merge of a batch and the cut of its outputs."""

    def __init__(self, where: str, padding: Padding) -> None:
        self.where = where
        self.padding = padding
        self._first = padding.inputs[0]
        self._axes: dict[str, tuple[int, ...]] = {}  # padded input -> its padded axes (dims)
        for entry in padding.inputs:
            self._axes[entry.tensor] = (*self._axes.get(entry.tensor, ()), entry.axis)
        self._values = {entry.tensor: entry.value for entry in padding.inputs}
        self._cuts: dict[str, tuple[int, ...]] = {}  # per-token output -> its axes (dims)
        for entry in padding.outputs:
            self._cuts[entry.tensor] = (*self._cuts.get(entry.tensor, ()), entry.axis)
        self._fills: dict[tuple[str, str], np.generic | bytes] = {}

    def key(self, inputs: Mapping[str, Tensor]) -> tuple:
        """What requests must share to merge: datatypes and every dimension but the batch and
        padded ones, and the bucket of the length. InvalidInput when the padded inputs disagree
        in length."""
        bucket = self.padding.bucket(self.checked_length(inputs))
        axes = self._axes
        parts = []
        for name, (datatype, array) in sorted(inputs.items()):
            shape = array.shape[1:]
            padded = axes.get(name)
            if padded:
                shape = tuple(-1 if i in padded else size for i, size in enumerate(shape))
            parts.append((name, datatype, shape))
        return (bucket, *parts)

    def length(self, inputs: Mapping[str, Tensor]) -> int:
        """A request's length (the size of the first declared padded axis), unchecked."""
        return int(inputs[self._first.tensor][1].shape[self._first.axis + 1])

    def checked_length(self, inputs: Mapping[str, Tensor]) -> int:
        """A request's length; InvalidInput naming the tensors when its padded axes disagree."""
        length, first = None, self._first
        for entry in self.padding.inputs:
            tensor = inputs.get(entry.tensor)
            if tensor is None or tensor[1].ndim < entry.axis + 2:
                shape = None if tensor is None else list(tensor[1].shape)
                raise InvalidInput(
                    f"{self.where}: input '{entry.tensor}' must have padded axis {entry.axis} (batch axis "
                    f"excluded), got shape {shape}"
                )
            size = int(tensor[1].shape[entry.axis + 1])
            if length is None:
                length = size
            elif size != length:
                raise InvalidInput(
                    f"{self.where}: input '{entry.tensor}' has length {size} along its padded axis "
                    f"{entry.axis} but input '{first.tensor}' has length {length} along axis {first.axis}; "
                    f"the axes in parameter {PAD_INPUTS} must all have the request's length"
                )
        return length or 0

    def merge(self, requests: Sequence[Mapping[str, Tensor]], sizes: Sequence[int], rows: int) -> dict[str, Tensor]:
        """The requests' inputs, padded to the batch's length (the longest request's, or its
        bucket) and concatenated along the batch axis, then padding rows up to `rows`."""
        lengths = [self.length(inputs) for inputs in requests]
        longest = max(lengths)
        target = max(self.padding.bucket(longest), longest)
        if len(requests) == 1 and sizes[0] == rows and lengths[0] == target:
            return dict(requests[0])
        merged = {}
        for name, (datatype, first) in requests[0].items():
            axes = self._axes.get(name, ())
            shape = [rows, *first.shape[1:]]
            for axis in axes:
                shape[axis + 1] = target
            fill = self._fill(name, datatype) if axes else (b"" if first.dtype == object else 0)
            out = np.full(shape, fill, dtype=first.dtype)
            offset = 0
            for inputs, size in zip(requests, sizes):
                array = inputs[name][1]
                out[(slice(offset, offset + size), *(slice(0, d) for d in array.shape[1:]))] = array
                offset += size
            merged[name] = (datatype, out)
        return merged

    def cut(self, outputs: dict[str, np.ndarray], inputs: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        """A request's outputs with the per-token ones cut back to its own length (views)."""
        cuts = self._cuts
        if not cuts:
            return outputs
        length = self.length(inputs)
        for name, axes in cuts.items():
            array = outputs.get(name)
            if array is not None:
                index = [slice(None)] * array.ndim
                for axis in axes:
                    index[axis + 1] = slice(0, length)
                outputs[name] = array[tuple(index)]
        return outputs

    def _fill(self, name: str, datatype: str) -> np.generic | bytes:
        # Typed on first use: a model's versions share the config but may differ in datatype.
        value = self._fills.get((name, datatype))
        if value is None:
            value = self._fills[(name, datatype)] = fill_value(self._values[name], datatype)
        return value
