"""The classification extension: an output turned into its top-k classes as BYTES strings
"value:index[:label]", shape [batch, k] (or [k] for an unbatched output)."""

from __future__ import annotations

import numpy as np

from .errors import InvalidInput


def classify(where: str, name: str, scores: np.ndarray, k: int, labels: tuple[str, ...], batched: bool) -> np.ndarray:
    """Top-`k` entries of each row of `scores`, best first."""
    if scores.dtype.kind not in "fiub":
        raise InvalidInput(f"{where}: output '{name}' is not numeric; classification needs scores")
    if batched and scores.ndim:
        rows = scores.reshape(scores.shape[0], int(np.prod(scores.shape[1:], dtype=np.int64)))
    else:
        rows = scores.reshape(1, scores.size)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, row in enumerate(top):
        for c, index in enumerate(row):
            text = f"{rows[r, index]:f}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, c] = text.encode("utf-8")
    return out if batched else out.reshape(k)
