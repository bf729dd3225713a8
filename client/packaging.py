"""A model version ready to hand to a server: what `Client.deploy` uploads.

A TensorFlow/Keras source (.keras, .h5, a SavedModel folder, an in-memory Keras model) is converted
on this machine by the real converter — parity gate, conversion.json, signing and encryption as
`modelport convert` does them — into a temporary repository. An .onnx file is taken as it is, with
its external-data files, signed and encrypted by the converter's own functions when asked. Either
way every file of the version folder becomes a RepositoryModelLoad `file:<version>/<name>`
parameter.

The converter is the `convert` extra (TensorFlow, tf2onnx): like `modelport`'s subcommands, it is
imported by name only when a conversion runs, so the client install keeps working without it (and
an .onnx file deploys with the client alone).
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILE, SIGNATURE_FILE

from . import upload

Progress = Callable[[str], None]
STAGING = "<staging>"  # how progress lines name the temporary repository
CONVERTING = ("deploying a TensorFlow/Keras model converts it to ONNX on this machine first (TensorFlow, tf2onnx, "
              "ONNX Runtime), which")
ENCRYPTING = "encrypting the version"
SIGNING = "signing the version (OpenSSF model-signing)"
CONVERT_HINT = "; or deploy an .onnx file (converted elsewhere with `modelport convert`), which needs only the client"


class ConvertExtraMissing(ImportError):
    """A TensorFlow/Keras source needs the converter, which is not installed."""

    exit_code = 2  # `modelport deploy` prints the message alone


@dataclass(frozen=True)
class Package:
    """One version, as RepositoryModelLoad carries it."""

    name: str
    version: int
    files: dict[str, bytes]  # "file:<version>/<name>" (and "file:labels.txt") -> bytes
    config: str | None  # JSON of inference.ModelConfig; None lets the server complete one from the ONNX file
    signed: bool
    encrypted: bool

    @property
    def nbytes(self) -> int:
        """The files' bytes together."""
        return upload.nbytes(self.files)


def package(
    source: Any,
    name: str,
    version: int,
    *,
    sample: Any = None,
    config: upload.Config = None,
    sign_key: str | Path | None = None,
    encrypt_key_file: str | Path | None = None,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> Package:
    """Build `version` of model `name` from `source` (see the module's docstring). `config`
    replaces the converter's config.pbtxt (a bare .onnx file has none unless given); `labels`
    become the model's labels.txt."""
    check_name(name)
    say = progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="modelport-deploy-") as staging:
        root = Path(staging)
        if is_onnx_file(source):
            if sample is not None:
                raise ValueError("sample= feeds the conversion's parity gate; an .onnx file is uploaded as it is "
                                 "(leave out the sample)")  # fmt: skip
            folder = stage_onnx(Path(source), root / str(version), sign_key, encrypt_key_file)
            say(f"package: {source} as {name} version {version} ({files_text(_count(folder))}, ONNX as it is)")
            made = None
        else:
            folder, made = convert(source, root, name, version, sample, sign_key, encrypt_key_file, _naming(say, root))
        files = read_version(folder, version)
    if labels is not None:
        files[f"{upload.FILE_PREFIX}{LABELS_FILE}"] = "".join(f"{label}\n" for label in labels).encode()
    chosen = upload.config_json(config) if config is not None else made
    return Package(name, version, files, chosen, sign_key is not None, encrypt_key_file is not None)


def check_name(name: str) -> None:
    """A model name that stays inside the temporary repository (the server checks the rest)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"'{name}' cannot name a model: use letters, digits, '_', '-', '.' (no path separators)")


def check_source(source: Any) -> None:
    """FileNotFoundError for a path that is not there (before anything slow or remote)."""
    if isinstance(source, (str, os.PathLike)) and not Path(source).exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(source))


def is_onnx_file(source: Any) -> bool:
    """Whether `source` names an ONNX file (uploaded as it is) rather than something to convert."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx"


# ---------------------------------------------------------------- TensorFlow / Keras sources


def convert(
    source: Any, root: Path, name: str, version: int, sample: Any, sign_key: Any, encrypt_key_file: Any,
    progress: Progress,
) -> tuple[Path, str]:  # fmt: skip
    """Convert into `root` (a repository of its own) with the parity gate; the version folder and
    the config.pbtxt the converter wrote, as JSON."""
    pipeline = _converter("pipeline")
    protection = None
    if sign_key is not None or encrypt_key_file is not None:
        protection = _converter("publish").Protection(_path(sign_key), _path(encrypt_key_file))
    with convert_extra(CONVERTING):  # TensorFlow and tf2onnx are imported as the conversion runs
        result = pipeline.convert(source, root, name, version=version, sample=sample, progress=progress,
                                  protection=protection)  # fmt: skip
    config = text_format.Parse((root / name / CONFIG_FILE).read_text(), mc.ModelConfig(), allow_unknown_field=True)
    return result.path, upload.config_json(config)  # type: ignore[return-value]


def _converter(module: str, purpose: str = CONVERTING) -> Any:
    """modelport.converter.<module>, or ConvertExtraMissing saying what to install."""
    with convert_extra(purpose):
        return importlib.import_module(f"modelport.converter.{module}")


@contextmanager
def convert_extra(purpose: str) -> Iterator[None]:
    """ImportError inside becomes ConvertExtraMissing: one paragraph saying what to install."""
    try:
        yield
    except ConvertExtraMissing:
        raise
    except ImportError as exc:
        raise ConvertExtraMissing(
            f"{purpose} needs the convert extra, which is not installed here ({exc}): pip install "
            "\"modelport[convert]\"" + (CONVERT_HINT if purpose == CONVERTING else "")
        ) from exc


def _naming(say: Progress, root: Path) -> Progress:
    """Progress lines with the temporary repository's path shown as <staging>: the version is
    published to the server, not there."""
    return lambda text: say(text.replace(str(root), STAGING))


# ---------------------------------------------------------------- ONNX files


def stage_onnx(path: Path, folder: Path, sign_key: Any, encrypt_key_file: Any) -> Path:
    """A version folder holding `path` as model.onnx and its external-data files under the names
    its tensors give (linked, or copied across file systems), then encrypted and signed as asked
    (encryption first: the signature covers the bytes the server reads)."""
    if not path.is_file():
        raise ValueError(f"{path}: not a file; an ONNX model is one .onnx file (and its external data)")
    locations = external_data(path)
    protect = _protector(sign_key, encrypt_key_file)
    folder.mkdir(parents=True)
    _place(path, folder / MODEL_FILE)
    for location in locations:
        _place(path.parent / location, folder / location)
    protect(folder)
    return folder


def _protector(sign_key: Any, encrypt_key_file: Any) -> Callable[[Path], None]:
    """What encrypts, then signs, a version folder as asked; both keys are checked now, before any work."""
    steps: list[tuple[str, Callable[[Path], object]]] = []
    if encrypt_key_file is not None:
        encryption = _converter("encryption", ENCRYPTING)
        with convert_extra(ENCRYPTING):
            encryption.check_key(encrypt_key_file)
        steps.append((ENCRYPTING, lambda folder: encryption.encrypt_folder(folder, encrypt_key_file)))
    if sign_key is not None:
        signing = _converter("signing", SIGNING)
        with convert_extra(SIGNING):
            signing.check_key(sign_key)
        steps.append((SIGNING, lambda folder: signing.sign_folder(folder, sign_key)))

    def protect(folder: Path) -> None:
        for purpose, step in steps:
            with convert_extra(purpose):
                step(folder)

    return protect


def external_data(path: Path) -> list[str]:
    """The external-data files `path`'s tensors name (found with the onnx package when it is
    installed; without it, none are looked for and the server reports a missing one). ValueError
    for a file that is not ONNX, or a location outside the model's folder."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not an ONNX model ({exc})") from None
    locations = sorted({
        entry.value
        for tensor in _tensors(model.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    })  # fmt: skip
    for location in locations:
        if "/" in location or "\\" in location or location.startswith(".") or location in (MODEL_FILE, SIGNATURE_FILE):
            raise ValueError(f"{path}: external data at '{location}'; a deployed version holds its files side by "
                             "side, so locations must be plain file names next to the model (re-save it with "
                             "onnx.save(..., location='model.onnx.data'))")  # fmt: skip
    return locations


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of a graph, its subgraphs' included (where external data can be)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _place(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)} (external data of the model)", str(source))
    try:
        os.link(source, target)  # the bytes are read once for the upload; no second copy on disk
    except OSError:
        shutil.copyfile(source, target)


# ---------------------------------------------------------------- the upload


def read_version(folder: Path, version: int) -> dict[str, bytes]:
    """Every file of a version folder as `file:<version>/<name>`."""
    return {
        f"{upload.FILE_PREFIX}{version}/{path.name}": path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def files_text(count: int) -> str:
    """'1 file', '3 files'."""
    return f"{count} file{'' if count == 1 else 's'}"


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file())


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)
