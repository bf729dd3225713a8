"""The model repository on disk, in Triton's layout:

    <root>/<name>/config.pbtxt          optional
    <root>/<name>/<version>/model.onnx  versions are folders named by integers
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelDirectory:
    """One model's folder and the version folders that hold its model file."""

    name: str
    path: Path
    versions: tuple[int, ...]


def scan(root: Path) -> dict[str, ModelDirectory]:
    """Every model folder under `root` by name. Hidden folders (such as a converter's
    half-written `.tmp-*`) are ignored, so a version appears only once it is renamed in."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    models = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            models[entry.name] = ModelDirectory(entry.name, entry, version_folders(entry))
    return models


def version_folders(model_dir: Path) -> tuple[int, ...]:
    """The integer-named subfolders of a model folder, ascending."""
    return tuple(sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()))
