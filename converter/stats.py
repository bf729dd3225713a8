"""Per-input statistics of the conversion sample, stored in conversion.json; the server's drift
tracking compares live traffic with them (server/drift.py reads `input_statistics`)."""

from __future__ import annotations

import numpy as np


def weight_sparsity(model) -> dict:
    """Share of exactly-zero values among the model's float weights (pruning leaves zeros)."""
    from onnx import numpy_helper

    zeros = total = 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size > 1:
            zeros += int(np.count_nonzero(array == 0))
            total += array.size
    return {"zero_weights": zeros, "weights": total, "sparsity": zeros / total if total else 0.0}


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
