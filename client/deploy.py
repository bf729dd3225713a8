"""Deploying from Python: `Client.deploy`, its async twin, and the seed's one line,

    model = modelport.client.load_model("model.h5", url="localhost:8001", name="mlp")
    predictions = model.predict(test_images)

One flow for every transport (gRPC, HTTP/REST) and for asyncio: choose the version, package the
model here (packaging.py: convert with the parity gate, or take an .onnx file as it is), hand it to
the server in one RepositoryModelLoad (Triton's `config` and `file:` parameters), and return a
Keras-like handle bound to the model's name.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import is_version_name
from modelport.protocol.types import ModelIndexEntry

from . import upload
from .packaging import Package, Progress, check_name, check_source, files_text, package

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncModel
    from .client import Client, Model

DEFAULT_URL = "localhost:8001"
M = TypeVar("M", "Model", "AsyncModel")


def next_version(entries: Iterable[ModelIndexEntry], name: str) -> int:
    """One more than the highest version the server lists for `name` (in any state), else 1."""
    versions = [int(e.version) for e in entries if e.name == name and is_version_name(e.version)]
    return max(versions, default=0) + 1


def deploy(
    client: Client, source: Any, name: str, *, version: int | None = None, timeout: float | None = None,
    progress: Progress | None = None, **packaging: Any,
) -> Model:  # fmt: skip
    """See Client.deploy."""
    say = _say(progress)
    _check(source, name, version)
    chosen = version or next_version(client.repository_index(timeout=timeout), name)
    built = package(source, name, chosen, progress=say, **packaging)
    say(upload_line(built, client.url))
    started = time.monotonic()
    client.load_model(name, config=built.config, files=built.files, timeout=timeout)
    say(load_line(built, time.monotonic() - started))
    return _bound(client.model(name), built, client.model_config(name, timeout=timeout))


async def deploy_async(
    client: AsyncClient, source: Any, name: str, *, version: int | None = None, timeout: float | None = None,
    progress: Progress | None = None, **packaging: Any,
) -> AsyncModel:  # fmt: skip
    """See AsyncClient.deploy: the packaging (a conversion takes seconds) runs in a worker thread,
    so `progress` is called from there."""
    say = _say(progress)
    _check(source, name, version)
    chosen = version or next_version(await client.repository_index(timeout=timeout), name)
    built = await asyncio.to_thread(package, source, name, chosen, progress=say, **packaging)
    say(upload_line(built, client.url))
    started = time.monotonic()
    await client.load_model(name, config=built.config, files=built.files, timeout=timeout)
    say(load_line(built, time.monotonic() - started))
    return _bound(client.model(name), built, await client.model_config(name, timeout=timeout))


def load_model(source: Any, url: str = DEFAULT_URL, name: str | None = None, **options: Any) -> Model:
    """Deploy `source` to the server at `url` and return its handle: the seed's
    `model = maas_sdk.load_model("model.h5"); model.predict(x)`.

    `name` defaults to the file's (or folder's, or Keras model's) name. Deploy options (`version`,
    `sample`, `config`, `sign_key`, `encrypt_key_file`, `labels`, `progress`) go to Client.deploy;
    the others (`timeout`, `token`, TLS, ...) to the Client, which the handle keeps open
    (`model.client.close()` closes it)."""
    from .client import Client

    deploying = {key: options.pop(key) for key in _DEPLOY_OPTIONS if key in options}
    client = Client(url, **options)
    try:
        return client.deploy(source, name or default_name(source), **deploying)
    except BaseException:
        client.close()
        raise


_DEPLOY_OPTIONS = ("version", "sample", "config", "sign_key", "encrypt_key_file", "labels", "progress")


def default_name(source: Any) -> str:
    """A model name from the source: the file's stem, the SavedModel folder's name, the Keras model's `.name`."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        return path.name if path.is_dir() else path.stem
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError("give the model a name (name=...): it has none of its own")
    return name


def upload_line(built: Package, url: str) -> str:
    """The progress line before the upload."""
    protected = [word for word, done in (("encrypted", built.encrypted), ("signed", built.signed)) if done]
    how = f" ({', '.join(protected)})" if protected else ""
    return f"upload: {files_text(len(built.files))}, {upload.size(built.nbytes)}{how} to {url}"


def load_line(built: Package, seconds: float) -> str:
    """The progress line once the server serves the upload."""
    return f"load: {built.name} version {built.version} serving ({seconds:.2f} s, upload included)"


def _check(source: Any, name: str, version: int | None) -> None:
    """The caller's mistakes, found before the server is asked anything."""
    check_name(name)
    check_source(source)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _: None)


def _bound(model: M, built: Package, config: mc.ModelConfig) -> M:
    """The handle, with the version just deployed recorded (it stays bound to the name, so it
    follows what the server serves under it), and predict() batched by the model's
    max_batch_size as Keras' predict() batches (the server refuses larger batches)."""
    model.deployed_version = built.version
    model.batch_size = config.max_batch_size or None
    return model
