"""Per-input statistics of the conversion sample, stored in conversion.json; the server's drift
tracking compares live traffic with them (server/drift.py reads `input_statistics`)."""

from __future__ import annotations

import numpy as np


def input_statistics(sample: dict[str, np.ndarray]) -> dict[str, dict]:
    """{input: {count, mean, std, min, max}}: per feature over the batch axis, each shaped like
    one example (nested lists). Non-numeric inputs get only their count."""
    stats = {}
    for name, array in sample.items():
        entry: dict = {"count": int(array.shape[0]) if array.ndim else 1}
        if array.dtype.kind in "fiub" and array.ndim:
            values = array.astype(np.float64)
            entry.update(
                mean=values.mean(axis=0).tolist(),
                std=values.std(axis=0).tolist(),
                min=values.min(axis=0).tolist(),
                max=values.max(axis=0).tolist(),
            )
        stats[name] = entry
    return stats
