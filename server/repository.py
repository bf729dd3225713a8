"""The model repository on disk, in Triton's layout (modelport.protocol.repository names the
files): which model folders there are, and stamps that tell when their files change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.protocol.repository import CONFIG_FILE, LABELS_FILE, version_folders


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


def model_stamp(model_dir: Path) -> tuple:
    """The stamp of every file under a model folder (hidden ones, such as a converter's
    half-written version, excluded): a change means the model needs a look."""
    files = []
    for path in sorted(model_dir.rglob("*")):
        if not any(part.startswith(".") for part in path.relative_to(model_dir).parts):
            files.append(path)
    return _stamp(model_dir, files)


def version_stamp(model_dir: Path, version: int) -> tuple:
    """The stamp of everything a version is built from: its folder's files and the model's
    config and labels. A changed stamp means the version must be reloaded."""
    files = sorted((model_dir / str(version)).rglob("*"))
    return _stamp(model_dir, [*files, model_dir / CONFIG_FILE, model_dir / LABELS_FILE])


def _stamp(base: Path, paths: Iterable[Path]) -> tuple:
    """(path relative to `base`, size, mtime) of each of `paths` that is a file now."""
    stamp = []
    for path in paths:
        try:
            if not path.is_file():
                continue
            info = path.stat()
        except FileNotFoundError:  # removed while we looked
            continue
        stamp.append((str(path.relative_to(base)), info.st_size, info.st_mtime_ns))
    return tuple(stamp)
