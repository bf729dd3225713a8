"""The background sample explanations are relative to (server/explain.py): a small, bounded set
of typical input rows kept in the version folder as background.npz (one array per input, named as
the published model names its inputs) and listed in conversion.json under `background`.

Rows come from the conversion's --sample data (a seeded random choice of at most MAX_ROWS rows),
else they are drawn from the input statistics (per feature: normal with the sample's mean and std,
clipped to its [min, max], features independent; integer inputs rounded). Without either the
version has no background and the server explains against zeros, saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

BACKGROUND_FILE = "background.npz"
# shap's advice for interventional explanations (100 background rows); every explained row costs
# coalitions x these rows of model runs, so the bound is what keeps explanations affordable.
MAX_ROWS = 100


def write_background(
    folder: Path,
    sample: Mapping[str, np.ndarray] | None = None,
    statistics: Mapping[str, dict] | None = None,
    *,
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> dict | None:
    """Write `folder`/background.npz from `sample` (else `statistics`, as conversion.json's
    `input_statistics` has them) and return conversion.json's `background` entry,
    {"file": "background.npz", "rows": N, "source": "sample" | "statistics"}; None (nothing
    written) when neither is given or an input is not numeric."""
    rng = np.random.default_rng(seed)
    if sample:
        arrays = _from_sample(sample, max_rows, rng)
        source = "sample"
    elif statistics:
        arrays = _from_statistics(statistics, max_rows, rng)
        source = "statistics"
    else:
        return None
    if arrays is None:
        return None
    np.savez(Path(folder) / BACKGROUND_FILE, **arrays)
    return {"file": BACKGROUND_FILE, "rows": len(next(iter(arrays.values()))), "source": source}


def _from_sample(sample: Mapping[str, np.ndarray], max_rows: int, rng: np.random.Generator) -> dict | None:
    arrays = {name: np.asarray(a) for name, a in sample.items()}
    if any(a.ndim == 0 or a.dtype.kind not in "fiub" for a in arrays.values()):
        return None
    rows = min(len(a) for a in arrays.values())
    # The same rows of every input (a multi-input row stays one example).
    chosen = np.sort(rng.choice(rows, size=min(rows, max_rows), replace=False))
    return {name: np.ascontiguousarray(a[chosen]) for name, a in arrays.items()}


def _from_statistics(statistics: Mapping[str, dict], max_rows: int, rng: np.random.Generator) -> dict | None:
    arrays = {}
    for name, stats in statistics.items():
        if not all(key in stats for key in ("mean", "std", "min", "max")):
            return None  # a non-numeric input: its statistics are only a count
        mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        low, high = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
        rows = min(int(stats.get("count", max_rows)) or max_rows, max_rows)
        drawn = np.clip(rng.normal(mean, std, (rows, *mean.shape)), low, high)
        dtype = np.dtype(stats["dtype"]) if "dtype" in stats else np.dtype(np.float32)
        arrays[name] = (np.rint(drawn) if dtype.kind in "iub" else drawn).astype(dtype)
    return arrays
