"""Models handed to the server through the API: RepositoryModelLoad with Triton's `file:` and
`config` parameters (tritonclient's `load_model(name, config=..., files=...)`, `modelport deploy`).

An upload is checked (names, sizes, the signature file when signatures are verified), written into
a private folder as a model folder of its own, and loaded like any repository model — signature
check, warm-up, statistics, metrics — but all or nothing: every version its config wants must load
before any of it serves, so a broken upload changes nothing. Then it replaces whatever served under
its name, and lives until it is unloaded (as in Triton); with --persist-uploads its versions are
published into the model repository instead (renamed in, atomically) and the model is the
repository's from then on.

Uploads are taken where RepositoryModelLoad is (--model-control-mode explicit, as in Triton) and, with
--persist-uploads, in poll mode; with --auth-token-file they need the admin scope.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from google.protobuf import json_format, text_format

from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import (
    CONFIG_FILE,
    GRPC_MESSAGE_LIMIT,
    LABELS_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    UPLOAD_CONFIG,
    UPLOAD_ENVELOPE,
    UPLOAD_FILE_PREFIX,
)

from .errors import AlreadyExists, InvalidInput, ModelLoadError, ModelNotFound, ModelTooLarge, NotAllowed
from .logs import event
from .memory_budget import human
from .registry import ModelRegistry
from .settings import ServerSettings

log = logging.getLogger(__name__)

FILE_PREFIX, CONFIG_PARAMETER = UPLOAD_FILE_PREFIX, UPLOAD_CONFIG
WARMUP_FOLDER = "warmup"  # Triton's model_warmup input_data_file folder
PERSIST_FOLDER = ".modelport-uploads"  # staging inside the repository (hidden: never scanned as a model)
# A file or model name: no separators, no leading dot (hidden files, '.', '..'), nothing a shell
# or a file system treats specially.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")


@dataclass(frozen=True)
class Upload:
    """One RepositoryModelLoad's files, by path inside the model folder, and its config."""

    name: str
    config: mc.ModelConfig | None
    files: dict[PurePosixPath, bytes | memoryview]  # memoryviews into the gRPC message (load_request)

    @property
    def nbytes(self) -> int:
        """The files' bytes."""
        return sum(len(data) for data in self.files.values())

    @property
    def versions(self) -> list[int]:
        """The versions the files make, ascending."""
        return sorted({int(path.parts[0]) for path in self.files if path.parts[0].isdigit()})

    @property
    def model_files(self) -> list[PurePosixPath]:
        """Files of the model folder itself (labels.txt, config.pbtxt, warmup data)."""
        return [path for path in self.files if not path.parts[0].isdigit()]


@dataclass(frozen=True)
class UploadSettings:
    """The server settings uploads depend on."""

    max_bytes: int
    persist: bool
    workers: int
    control_mode: str
    verify: bool

    @classmethod
    def of(cls, settings: ServerSettings) -> UploadSettings:
        """From the server's settings."""
        return cls(settings.max_upload_bytes, settings.persist_uploads, settings.workers,
                   settings.model_control_mode, bool(settings.verify_key))  # fmt: skip

    def refusal(self) -> str | None:
        """Why this server takes no uploads; None when it takes them. Uploads change what the server
        serves: they are taken where RepositoryModelLoad is (explicit mode, as in Triton), and in
        poll mode when they are published into the polled repository; by one process only."""
        if not self.max_bytes:
            return "this server takes no uploads (--max-upload-bytes 0)"
        mode = self.control_mode
        if mode == "none" or (mode == "poll" and not self.persist):
            also = " or add --persist-uploads (uploads are then published into the repository it polls)"
            return (f"uploading a model changes what the server serves, which --model-control-mode {mode} does not "
                    "allow (as in Triton); start the server with --model-control-mode explicit"
                    + (also if mode == "poll" else ""))  # fmt: skip
        if self.workers > 1 and not (self.persist and mode == "poll"):
            return (f"this server runs {self.workers} worker processes (--workers) and an upload reaches only one "
                    "of them; upload to a server with --workers 1, or start it with --persist-uploads and "
                    "--model-control-mode poll (every worker then loads the published version at its next poll)")
        return None

    def grpc_receive_limit(self, max_message_bytes: int) -> int:
        """The gRPC server's receive limit: inference's limit, or, on a server that takes uploads,
        an upload's when larger (the data plane still holds inference requests to
        --grpc-max-message-size). A server that takes none never buffers a message above inference's."""
        if self.refusal() is not None:
            return max_message_bytes
        return min(max(max_message_bytes, self.max_bytes + UPLOAD_ENVELOPE), GRPC_MESSAGE_LIMIT)


def parse(name: str, config: str | None, files: Mapping[str, bytes | memoryview], max_bytes: int) -> Upload:
    """Check a RepositoryModelLoad's upload: the model's name, each `file:` name (a version file
    `<version>/<file>`, or the model's labels.txt, config.pbtxt or warmup/<file>), the total size
    against `max_bytes`, and the config (JSON of inference.ModelConfig). InvalidInput otherwise."""
    _check_name(name)
    total = sum(len(data) for data in files.values())
    if max_bytes and total > max_bytes:
        raise InvalidInput(f"model '{name}': the upload has {total} bytes of files ({human(total)}), more than the "
                           f"server accepts ({max_bytes} bytes, --max-upload-bytes); raise --max-upload-bytes or "
                           "upload a smaller model")  # fmt: skip
    paths = {_file_path(name, key): data for key, data in files.items()}
    parsed = _config(name, config, paths.pop(PurePosixPath(CONFIG_FILE), None))
    upload = Upload(name, parsed, paths)
    if paths and not upload.versions:
        raise InvalidInput(f"model '{name}': the upload has no version files; send the model as 'file:1/{MODEL_FILE}' "
                           "(file:<version>/<name>)")  # fmt: skip
    model_file = (parsed.default_model_filename if parsed is not None else "") or MODEL_FILE
    for version in upload.versions:
        if PurePosixPath(str(version), model_file) not in paths:
            raise InvalidInput(f"model '{name}': version {version} of the upload has no {model_file} "
                               f"(send it as 'file:{version}/{model_file}')")  # fmt: skip
    return upload


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"'{name}' cannot name an uploaded model: use letters, digits, '_', '-', '.' and '+' "
                           "(not first), at most 255 characters")  # fmt: skip


def _file_path(model: str, key: str) -> PurePosixPath:
    """The path inside the model folder that parameter `key` names; InvalidInput for traversal,
    absolute paths, hidden or odd names, and files a model folder does not hold."""
    text = key[len(FILE_PREFIX):]
    parts = text.split("/")
    if text.startswith("/") or "\\" in text or "\0" in text or not all(_NAME.fullmatch(p) for p in parts):
        raise InvalidInput(f"model '{model}': '{key}' is not a file name the upload may use: expected "
                           f"'file:<version>/<name>' with a plain file name (no '..', no absolute path, no hidden or "
                           f"nested folders), e.g. 'file:1/{MODEL_FILE}'")  # fmt: skip
    head = parts[0]
    if head.isdigit() and len(parts) == 2:
        if head != str(int(head)) or int(head) < 1:
            raise InvalidInput(f"model '{model}': '{key}': versions are positive integers without leading zeros")
        return PurePosixPath(*parts)
    if parts in ([LABELS_FILE], [CONFIG_FILE]) or (head == WARMUP_FOLDER and len(parts) == 2):
        return PurePosixPath(*parts)
    raise InvalidInput(f"model '{model}': '{key}' is not a file of a model folder: expected 'file:<version>/<name>' "
                       f"(a version's files), 'file:{LABELS_FILE}', 'file:{CONFIG_FILE}' or "
                       f"'file:{WARMUP_FOLDER}/<name>'")  # fmt: skip


def _config(name: str, text: str | None, pbtxt: bytes | memoryview | None) -> mc.ModelConfig | None:
    """The upload's config: the `config` parameter (JSON, as Triton takes it) or a config.pbtxt file."""
    if text is not None and pbtxt is not None:
        raise InvalidInput(f"model '{name}': the upload has both a 'config' parameter and 'file:{CONFIG_FILE}'; "
                           "send one")  # fmt: skip
    if text is None and pbtxt is None:
        return None
    config = mc.ModelConfig()
    try:
        if text is not None:
            json_format.Parse(text, config, ignore_unknown_fields=True)
        else:
            text_format.Parse(str(pbtxt, "utf-8"), config, allow_unknown_field=True)  # type: ignore[arg-type]
    except (json_format.ParseError, text_format.ParseError, UnicodeDecodeError) as exc:
        kind = "the 'config' parameter is not JSON of" if text is not None else f"{CONFIG_FILE} is not"
        raise InvalidInput(f"model '{name}': {kind} a model configuration (inference.ModelConfig): {exc}") from None
    if config.name and config.name != name:
        raise InvalidInput(f"model '{name}': the upload's config names the model '{config.name}'; the names must "
                           "match")  # fmt: skip
    config.name = name
    return config


class Uploads:
    """Where uploads are written, and how they come to serve."""

    def __init__(self, registry: ModelRegistry, settings: UploadSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._root: Path | None = None
        registry.discard = self._discard

    async def load(self, upload: Upload) -> None:
        """Serve `upload` as its model: INVALID_ARGUMENT when its files do not load (nothing
        changes then), ALREADY_EXISTS when --persist-uploads would overwrite a published version."""
        self._check_allowed(upload.name)
        config_only = not upload.files
        if config_only:
            upload = await asyncio.to_thread(self._with_current_files, upload)
        elif self.settings.persist:
            self._check_unpublished(upload)
        start = time.perf_counter()
        folder = await asyncio.to_thread(self._write, upload)  # off the event loop: gigabytes take seconds
        written = time.perf_counter()
        try:
            loaded = await self._preload(upload, folder)
            if self.settings.persist:
                await self._publish(upload, folder, loaded, config_only)
            else:
                await self.registry.load(upload.name, source=folder, preloaded=loaded)
        except BaseException:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise
        if self.settings.persist:
            shutil.rmtree(folder.parent, ignore_errors=True)
        event(log, logging.INFO, "model_uploaded", model=upload.name, versions=",".join(map(str, upload.versions)),
              bytes=upload.nbytes, persisted=self.settings.persist, write_seconds=round(written - start, 3),
              seconds=round(time.perf_counter() - start, 3))  # fmt: skip

    def _check_allowed(self, name: str) -> None:
        why = self.settings.refusal()
        if why is not None:
            raise NotAllowed(f"model '{name}': {why}")

    def _with_current_files(self, upload: Upload) -> Upload:
        """A config without files: the model's current files with the new config (Triton's
        config override)."""
        folder = self.registry.folder(upload.name)
        if not folder.is_dir():
            raise ModelNotFound(f"model '{upload.name}': a config without files changes the files of a model that "
                                "exists; there is none by that name (upload its files with file:<version>/<name>)")
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = PurePosixPath(path.relative_to(folder).as_posix())
            if relative.name != CONFIG_FILE and not any(part.startswith(".") for part in relative.parts):
                files[relative] = path.read_bytes()
        return Upload(upload.name, upload.config, files)

    def _check_unpublished(self, upload: Upload) -> None:
        model_dir = self.registry.root / upload.name
        for version in upload.versions:
            if (model_dir / str(version)).exists():
                raise AlreadyExists(f"model '{upload.name}' version {version} is already in the model repository "
                                    f"({model_dir / str(version)}); published versions are never overwritten: upload "
                                    "it as another version (file:<version>/...)")  # fmt: skip

    # ------------------------------------------------------------ files

    def _root_folder(self) -> Path:
        """Uploads' parent folder: private (0700) in the system's temporary folder, or inside the
        repository with --persist-uploads (so publishing is a rename on one file system)."""
        if self._root is None:
            if self.settings.persist:
                root = self.registry.root / PERSIST_FOLDER
                root.mkdir(mode=0o700, exist_ok=True)
            else:
                root = Path(tempfile.mkdtemp(prefix="modelport-uploads-"))
                atexit.register(shutil.rmtree, root, ignore_errors=True)
            self._root = root
        return self._root

    def _write(self, upload: Upload) -> Path:
        """The upload as a model folder `<private>/<name>/` (only folders made here, files created
        new and never through a link)."""
        folder = Path(tempfile.mkdtemp(dir=self._root_folder())) / upload.name
        folder.mkdir()
        for path, data in upload.files.items():
            target = folder.joinpath(*path.parts)
            target.parent.mkdir(exist_ok=True)
            _write_new(target, data)
        if self.settings.persist:
            self._copy_repository_files(upload, folder)
        if upload.config is not None:
            _write_new(folder / CONFIG_FILE, text_format.MessageToString(upload.config).encode())
        return folder

    def _copy_repository_files(self, upload: Upload, folder: Path) -> None:
        """With --persist-uploads the version joins the repository's model: its config, labels and
        warm-up data apply unless the upload brings its own (copied with their times, so the
        loaded version is recognised as the published one)."""
        model_dir = self.registry.root / upload.name
        for name in (CONFIG_FILE, LABELS_FILE):
            if (model_dir / name).is_file() and not (folder / name).exists() and not (
                    name == CONFIG_FILE and upload.config is not None):
                shutil.copy2(model_dir / name, folder / name)
        if (model_dir / WARMUP_FOLDER).is_dir() and not (folder / WARMUP_FOLDER).exists():
            shutil.copytree(model_dir / WARMUP_FOLDER, folder / WARMUP_FOLDER)

    async def _preload(self, upload: Upload, folder: Path) -> dict:
        if self.settings.verify:
            missing = [v for v in upload.versions if not (folder / str(v) / SIGNATURE_FILE).is_file()]
            if missing:
                raise InvalidInput(
                    f"model '{upload.name}': this server loads only signed versions (--verify-key) and version "
                    f"{missing[0]} of the upload has no {SIGNATURE_FILE}; sign it (`modelport deploy --sign-key`, "
                    f"`modelport sign`) and send the signature as 'file:{missing[0]}/{SIGNATURE_FILE}'"
                )
        try:
            return await self.registry.preload(upload.name, folder)
        except ModelTooLarge:
            raise
        except ModelLoadError as exc:
            serving = "it keeps serving as before" if self.registry.is_ready(upload.name) else "nothing was loaded"
            raise InvalidInput(f"the uploaded files do not load: {exc.message}; {serving}") from None

    async def _publish(self, upload: Upload, folder: Path, loaded: dict, config_only: bool) -> None:
        """Rename the upload's versions (then its config, labels, warm-up files) into the
        repository, and reload the model from there, serving the versions already loaded. A
        config without files replaces the repository's config.pbtxt only."""
        model_dir = self.registry.root / upload.name
        model_dir.mkdir(exist_ok=True)
        try:
            for version in [] if config_only else upload.versions:
                target = model_dir / str(version)
                if target.exists():
                    raise AlreadyExists(f"model '{upload.name}' version {version} appeared in the repository while "
                                        "uploading; published versions are never overwritten")  # fmt: skip
                os.rename(folder / str(version), target)
        except BaseException:
            for version in loaded.values():
                await version.scheduler.close()
            raise
        moved = [] if config_only else upload.model_files
        for path in moved + ([PurePosixPath(CONFIG_FILE)] if upload.config is not None else []):
            target = model_dir.joinpath(*path.parts)
            target.parent.mkdir(exist_ok=True)
            os.replace(folder.joinpath(*path.parts), target)
        await self.registry.load(upload.name, source=None, preloaded=loaded)

    def _discard(self, folder: Path) -> None:
        """An upload nothing serves from any more: its files go (ONNX Runtime holds what it
        mapped until its sessions close)."""
        if self._root is not None and folder.is_relative_to(self._root):
            shutil.rmtree(folder.parent, ignore_errors=True)


def _write_new(path: Path, data: bytes | memoryview) -> None:
    """Create `path` (never an existing file, never through a symbolic link) holding `data`."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
