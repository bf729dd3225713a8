"""After-inference observers: what watches successful requests without being part of them.

The data plane tells every registered observer about each successful request, after its
outputs are ready and before they are sent; quality (predictions awaiting labels), drift
(input statistics) and predicted-class counting are observers, and so is anything added later
(cluster-wide feedback, rollout accounting) without touching the data plane. Observers run on
the event loop, on the request path: they must be cheap (a few numpy calls) and never block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from modelport.protocol.classes import class_counts
from modelport.protocol.types import InferenceRequest

if TYPE_CHECKING:
    from .versions import ModelVersion


@dataclass(slots=True)
class Inference:
    """One successful request, as observers see it."""

    version: ModelVersion
    request: InferenceRequest
    results: dict[str, np.ndarray]  # every output the model computed for it, wire-ready
    sampled: bool  # one request in 1/--drift-sample-rate of this version: the cheap-enough share


class Observer(Protocol):
    """Anything told about successful requests."""

    def observe(self, inference: Inference) -> None:
        """Look at one successful request (on the event loop: keep it cheap)."""


class Sampler:
    """Picks one call in every 1/`rate` (none at rate 0): the requests heavier observers look at."""

    def __init__(self, rate: float) -> None:
        self._every = max(1, round(1 / rate)) if rate > 0 else 0
        self._seen = 0

    def tick(self) -> bool:
        """Count one call; True when it is picked."""
        if not self._every:
            return False
        self._seen += 1
        return self._seen % self._every == 0


class PredictedClassCounter:
    """modelport_predicted_class_total: the predicted classes of classifier-shaped first outputs
    ([N, C] scores or [N, 1] probabilities), counted on sampled requests into the version's
    statistics."""

    def observe(self, inference: Inference) -> None:
        """Count the classes of a sampled request."""
        if not inference.sampled:
            return
        version = inference.version
        scores = inference.results.get(version.signature.outputs[0].name)
        counts = None if scores is None else class_counts(scores)
        if counts is not None:
            version.stats.record_classes(counts)
