"""Explanations as the client returns them, and the request that asks for one (shared by the sync
and async clients)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelport.protocol import codec
from modelport.protocol.datatypes import NUMPY_DTYPES
from modelport.protocol.generated import explain_pb2 as ex
from modelport.protocol.types import ModelMetadata


@dataclass(frozen=True)
class RowExplanation:
    """One row: the class (or output column) explained, the explained output, the base value it is
    relative to, and the attributions per input, each shaped like one row of that input. They add
    up to `output - base_value`."""

    target: int
    output: float
    base_value: float
    attributions: dict[str, np.ndarray]

    def to_dict(self) -> dict:
        """One entry of `rows` in `modelport explain --json`: `attributions` is one row's nested
        list for a single-input model, {input: nested list} otherwise."""
        values = {name: a.tolist() for name, a in self.attributions.items()}
        single = next(iter(values.values())) if len(values) == 1 else values
        return {"target": self.target, "output": self.output, "base_value": self.base_value, "attributions": single}


@dataclass(frozen=True)
class Explanation:
    """What the server said about each row (`rows`), and how: `space` is "raw" (a regressor's
    output), "probability" or "logit" (a classifier's); `background` is "sample" or "statistics"
    (the converter's background rows) or "zeros" (the version has none)."""

    model: str
    version: str
    method: str
    space: str
    output_name: str
    background: str
    background_rows: int
    features: int
    permutations: int
    patch_size: int
    rows: tuple[RowExplanation, ...]

    def to_dict(self) -> dict:
        """The JSON shape `modelport explain --json` prints."""
        return {"model": self.model, "version": self.version, "method": self.method, "space": self.space,
                "rows": [row.to_dict() for row in self.rows]}  # fmt: skip

    @classmethod
    def from_proto(cls, msg: ex.ModelExplainResponse) -> Explanation:
        """From the protobuf answer."""
        rows = tuple(
            RowExplanation(
                row.target, row.output, row.base_value,
                {a.name: np.asarray(a.values, np.float64).reshape(tuple(a.shape)) for a in row.inputs},
            )
            for row in msg.rows
        )  # fmt: skip
        return cls(msg.model_name, msg.model_version, msg.method, msg.space, msg.output_name, msg.background,
                   msg.background_rows, msg.features, msg.permutations, msg.patch_size, rows)  # fmt: skip


def explain_inputs(meta: ModelMetadata | None, x: object) -> dict[str, np.ndarray]:
    """{input: rows}: `x` as given when it names the inputs, else the single input's rows cast
    to its datatype (`meta` needed then)."""
    if isinstance(x, Mapping):
        return {name: np.asarray(value) for name, value in x.items()}
    if meta is None:
        raise ValueError("the model's metadata is needed to name its input")
    if len(meta.inputs) != 1:
        raise ValueError(f"model '{meta.name}' has inputs {[t.name for t in meta.inputs]}: pass "
                         "{name: array} for each")  # fmt: skip
    spec = meta.inputs[0]
    dtype = NUMPY_DTYPES.get(spec.datatype)
    return {spec.name: np.asarray(x, dtype=dtype) if dtype is not None else np.asarray(x)}


def explain_request(
    model: str, inputs: Mapping[str, np.ndarray], *, version: str = "", target: int | None = None,
    output: str | None = None, permutations: int = 0, patch_size: int = 0, seed: int = 0,
) -> ex.ModelExplainRequest:  # fmt: skip
    """The ModelExplainRequest for `inputs` (rows along the first axis of each)."""
    if target is not None and (isinstance(target, bool) or int(target) != target):
        raise ValueError(f"target must be an integer class (or output column), got {target!r}")
    request = ex.ModelExplainRequest(
        request=codec.build_request(model, inputs, version=version, outputs=[output] if output else None),
        permutations=permutations, patch_size=patch_size, seed=seed,
    )  # fmt: skip
    if target is not None:
        request.target = int(target)
    return request
