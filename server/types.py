"""The data plane's request and response: numpy arrays and small dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A tensor inside the server: its protocol datatype and its data.
Tensor = tuple[str, np.ndarray]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the caller asked for; `class_count` > 0 asks for top-k classification."""

    name: str
    class_count: int = 0


@dataclass
class InferenceRequest:
    """One decoded ModelInferRequest."""

    model: str
    version: str
    id: str
    inputs: dict[str, Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() after which the caller no longer waits


@dataclass
class InferenceResponse:
    """The outputs of one request, in the order they are returned."""

    model: str
    version: str
    id: str
    outputs: dict[str, Tensor]
