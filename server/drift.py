"""Input drift against the statistics the converter stored in conversion.json.

Score: the standardised mean shift per feature, |mean_live - mean_ref| / std_ref (capped at
MAX_Z so one dead pixel cannot dominate), averaged over the input's features. We use it rather than
the population stability index because conversion.json keeps per-feature mean/std/min/max, not
histograms, and PSI needs reference bins; the mean shift needs only mean and std, costs one
vectorised add per sampled request, and reads directly as "how many reference standard deviations
the inputs have moved". It does not see a change of spread alone; that is its known blind spot.

The live side is a sliding window over the last `window` sampled rows, kept as BLOCKS partial sums
(memory: BLOCKS x features per input, whatever the traffic), so old traffic leaves the window
block by block. Scores are computed when Prometheus scrapes, not per request.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.protocol.repository import CONVERSION_FILE

from .observers import Inference

log = logging.getLogger(__name__)

BLOCKS = 10
MAX_Z = 10.0


@dataclass(frozen=True)
class Reference:
    """Reference mean and std of one input, flattened to features."""

    mean: np.ndarray
    std: np.ndarray


def read_references(version_dir: Path) -> dict[str, Reference]:
    """Per-input reference statistics from `<version>/conversion.json` ({} when absent)."""
    path = version_dir / CONVERSION_FILE
    if not path.is_file():
        return {}
    try:
        stats = json.loads(path.read_text()).get("input_statistics", {})
        return {
            name: Reference(np.asarray(s["mean"], np.float64).ravel(), np.asarray(s["std"], np.float64).ravel())
            for name, s in stats.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: input statistics unreadable, no drift tracking: %s", path, exc)
        return {}


class InputDrift:
    """Sliding-window feature means of one input, compared with its reference."""

    def __init__(self, reference: Reference, window: int) -> None:
        self.reference = reference
        self._block_rows = max(1, window // BLOCKS)
        self._blocks: deque[list] = deque(maxlen=BLOCKS)  # [rows, feature sums]
        self._lock = threading.Lock()  # Prometheus collects on its own thread

    def add(self, rows: np.ndarray) -> None:
        """Account the rows of one request ([batch, ...]); rows of another size are ignored."""
        if not rows.shape[0] or rows.size != rows.shape[0] * self.reference.mean.size or rows.dtype.kind not in "fiub":
            return
        flat = rows.reshape(rows.shape[0], -1)
        sums = flat.sum(axis=0, dtype=np.float64)
        with self._lock:
            if not self._blocks or self._blocks[-1][0] >= self._block_rows:
                self._blocks.append([0, np.zeros_like(sums)])
            block = self._blocks[-1]
            block[0] += flat.shape[0]
            block[1] += sums

    def score(self) -> tuple[float, int]:
        """(mean standardised shift over features, rows in the window); (nan, 0) before any row."""
        with self._lock:
            rows = sum(b[0] for b in self._blocks)
            if not rows:
                return float("nan"), 0
            mean = sum(b[1] for b in self._blocks) / rows
        floor = max(float(self.reference.std.max(initial=0.0)) * 1e-3, 1e-12)
        z = np.abs(mean - self.reference.mean) / np.maximum(self.reference.std, floor)
        return float(np.minimum(z, MAX_Z).mean()), rows


class DriftTracker:
    """Drift of every input of one model version that has reference statistics."""

    def __init__(self, references: dict[str, Reference], window: int) -> None:
        self.inputs = {name: InputDrift(ref, window) for name, ref in references.items()}

    def observe(self, inputs: dict) -> None:
        """Account one request's inputs {name: (datatype, array)}."""
        for name, drift in self.inputs.items():
            tensor = inputs.get(name)
            if tensor is not None and tensor[1].ndim:
                drift.add(tensor[1])


class DriftObserver:
    """Feeds sampled requests to their version's DriftTracker (versions without reference
    statistics have none)."""

    def observe(self, inference: Inference) -> None:
        """Account a sampled request's inputs."""
        drift = inference.version.drift
        if inference.sampled and drift is not None and drift.inputs:
            drift.observe(inference.request.inputs)
