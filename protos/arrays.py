"""Model inputs from .npz / .npy files, as every command reads them: an .npz holds one array per
input name, or `x` for a single-input model; an .npy file is `x`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


class MissingInputs(ValueError):
    """The arrays lack some of the model's inputs."""

    def __init__(self, source: str, missing: list[str], available: list[str]) -> None:
        super().__init__(
            f"{source} lacks inputs {missing}; it has {available} (one array per input name, or 'x' for a "
            "single-input model)"
        )
        self.missing = missing
        self.available = available


def load_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name; an .npy file's array as `x`."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {k: loaded[k] for k in loaded.files}
    except ValueError as exc:  # numpy's message for a file that is neither is about pickles
        raise ValueError(f"{path} is not a .npy or .npz file numpy can read without pickle ({exc})") from None
    return {"x": loaded}


def select_inputs(
    arrays: Mapping[str, np.ndarray], names: Sequence[str], source: str = "the data"
) -> dict[str, np.ndarray]:
    """{input name: array} for `names`, in that order: each by its name, or `x` for a single
    input. MissingInputs names what is missing."""
    if len(names) == 1 and names[0] not in arrays and "x" in arrays:
        return {names[0]: arrays["x"]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise MissingInputs(source, missing, sorted(arrays))
    return {n: arrays[n] for n in names}
