"""Per-input statistics of the conversion sample, stored in conversion.json; the server's drift
tracking compares live traffic with them (server/drift.py reads `input_statistics`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def weight_sparsity(model, folder: Path | None = None) -> dict:
    """Share of exactly-zero values among the model's float weights (pruning leaves zeros).
    Weights in external data are read from `folder` (the model's) a chunk at a time."""
    from onnx import helper

    from .onnx_files import initializers, read_chunks

    zeros = total = 0
    for init in initializers(model.graph):
        size = int(np.prod(init.dims, dtype=np.int64))
        if np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).kind != "f" or size <= 1:
            continue
        for chunk in read_chunks(init, folder):
            zeros += int(np.count_nonzero(chunk == 0))
            total += chunk.size
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
