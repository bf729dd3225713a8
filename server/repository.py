"""The model repository on disk, in Triton's layout (modelport.protocol.repository names the
files): which model folders there are, and stamps that tell when their files change.

`--model-repository` may also point at one model's files, as KServe's storage initializer leaves
them in /mnt/models: `serving_root` then presents them to the registry as a one-model repository."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format

from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILE, is_version_name, version_folders

from .logs import event

log = logging.getLogger(__name__)

Layout = Literal["repository", "model", "file"]
SINGLE_VERSION = 1  # the version a bare model file is served as


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


# ---------------------------------------------------------------- one model's files (KServe's /mnt/models)


def layout(root: Path) -> Layout:
    """What `root` holds:

    - "file": one model's files, the model itself at the top: `model.onnx` (or a single `*.onnx`),
      maybe beside config.pbtxt, labels.txt, conversion.json (KServe: storageUri names the folder
      or the file);
    - "model": one model's folder: version folders `<version>/model.onnx`, maybe config.pbtxt and
      labels.txt beside them;
    - "repository": Triton's `<name>/<version>/model.onnx` (also an empty folder, and a folder of
      model folders none of which has a version yet).

    Version folders at the top make it a model's folder, unless another folder beside them has
    version folders of its own (a repository with a model named by digits)."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    folders = [e for e in root.iterdir() if e.is_dir() and not e.name.startswith(".")]
    versions = [e for e in folders if is_version_name(e.name)]
    nested = any(version_folders(e) for e in folders if not is_version_name(e.name))
    if versions and not nested:
        return "model"
    if not versions and not nested and _model_file(root) is not None:
        return "file"
    return "repository"


def serving_root(root: Path, model_name: str | None = None) -> Path:
    """The repository the registry should read for `--model-repository root`: `root` itself when it
    is a repository; for one model's files (a model folder, or the model file itself) a one-model
    repository of symbolic links to them, made in a new temporary folder, that serves them as
    `model_name`. Without `model_name`, the model is named by the `name` in its config.pbtxt, else by
    the folder (`/mnt/models` -> `models`). A config.pbtxt that names another model is copied with
    the name replaced (modelport requires the two to match). A bare model file is version 1.

    The view is made once: files added to `root` later are not seen (KServe's storage initializer
    writes /mnt/models once, before the server starts); a repository layout is polled as always."""
    if not root.is_dir():
        return root  # the registry says what is wrong with it, as for any repository
    kind = layout(root)
    if kind == "repository":
        if model_name:
            event(log, logging.INFO, "model_name_ignored", model_name=model_name, repository=root,
                  reason="a repository: models are named by their folders")  # fmt: skip
        return root
    config = _read_config(root)
    name = model_name or (config.name if config is not None else "") or root.resolve().name
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"'{name}' cannot name a model (from {root}): give the model's name (--model-name)")
    view = Path(tempfile.mkdtemp(prefix="modelport-repository-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    folder = view / name
    folder.mkdir()
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    for entry in entries:  # config.pbtxt, labels.txt, warmup/ (and the version folders of a model folder)
        if entry.name == CONFIG_FILE and config is not None and config.name and config.name != name:
            renamed = mc.ModelConfig()
            renamed.CopyFrom(config)
            renamed.name = name
            (folder / CONFIG_FILE).write_text(text_format.MessageToString(renamed))
        else:
            (folder / entry.name).symlink_to(entry.resolve())
    if kind == "file":
        version = folder / str(SINGLE_VERSION)
        version.mkdir()
        for entry in entries:  # the model, its external weights, conversion.json
            (version / entry.name).symlink_to(entry.resolve())
        model = _model_file(root)
        if model is not None and model.name != MODEL_FILE and _wanted_file(config) == MODEL_FILE:
            (version / MODEL_FILE).symlink_to(model.resolve())
    event(log, logging.INFO, "single_model_layout", model=name, layout=kind, path=root, repository=view)
    return view


def _model_file(root: Path) -> Path | None:
    """The model file directly in `root`: model.onnx, the file config.pbtxt names, or the one *.onnx."""
    for wanted in (MODEL_FILE, _wanted_file(_read_config(root))):
        if (root / wanted).is_file():
            return root / wanted
    onnx_files = [e for e in root.glob("*.onnx") if e.is_file() and not e.name.startswith(".")]
    return onnx_files[0] if len(onnx_files) == 1 else None


def _wanted_file(config: mc.ModelConfig | None) -> str:
    return (config.default_model_filename if config is not None else "") or MODEL_FILE


def _read_config(root: Path) -> mc.ModelConfig | None:
    """`root`'s config.pbtxt, or None when it is absent or does not parse (the loader then says why)."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return None
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config, allow_unknown_field=True)
    except (text_format.ParseError, OSError, UnicodeDecodeError):
        return None
    return config
