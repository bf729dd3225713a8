"""The client over the Open Inference Protocol's HTTP/REST binding: what `Client("http://host:8000")`
and `AsyncClient("http://host:8000")` are.

Same methods, arguments, answers and errors as over gRPC; inference uses the binary tensor
extension both ways (modelport.protocol.rest). A call's timeout is the request's `timeout`
parameter (µs; the server's deadline, as gRPC's) and the socket's. What only the gRPC API has —
labels, quality, rollouts, explanations — raises InferenceServerError UNIMPLEMENTED naming the gRPC address to
use. `AsyncHttpClient` runs the same calls on a small thread pool: the standard library has no
asyncio HTTP client, and the client install adds no dependency for it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from modelport.protocol import rest
from modelport.protocol.codec import CodecError
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.generated import rollout_pb2 as ro
from modelport.protocol.types import ModelIndexEntry, ModelMetadata, ModelQuality, ServerMetadata

from . import upload
from ._http import HttpTransport, model_path, raise_for_status, repository_path
from .aio import AsyncClient
from .client import Client
from .errors import InferenceServerError
from .explanation import Explanation

M = TypeVar("M", bound=Message)
JSON = {"Content-Type": rest.JSON_TYPE}
# What the gRPC API has and the HTTP/REST binding has not: `Client` methods that raise over HTTP.
GRPC_ONLY = ("report_label", "quality", "rollout_status", "rollout_refresh", "explain")
# Threads of an AsyncHttpClient: how many of its calls can be outstanding at once.
ASYNC_THREADS = 16


class HttpClient(Client):
    """`Client` over HTTP/REST; `Client("http://host:8000")` makes one. `token=` is sent as
    `Authorization: Bearer`, TLS comes with https:// (`root_certificates=`, and `private_key=` +
    `certificate_chain=` for mutual TLS), `retries=` and `max_message_bytes=` as over gRPC."""

    def __init__(self, url: str, *, timeout: float | None = None, token: str | None = None, **options: Any) -> None:
        self._http = HttpTransport(url, token=token, **options)
        self.url = self._http.url
        self.timeout = timeout
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _json(self, method: str, path: str, timeout: float | None, body: bytes | None = None) -> Any:
        headers = JSON if body is not None else None
        return self._http.call(method, path, body, headers, self._timeout(timeout)).json()

    def _health(self, path: str, timeout: float | None) -> bool:
        answer = self._http.request("GET", path, timeout=self._timeout(timeout))
        if answer.status == 400:  # Triton's "not live / not ready"
            return False
        raise_for_status(answer)
        return True

    # ------------------------------------------------------------ health and metadata

    def is_server_live(self, *, timeout: float | None = None) -> bool:
        """GET /v2/health/live."""
        return self._health("/v2/health/live", timeout)

    def is_server_ready(self, *, timeout: float | None = None) -> bool:
        """GET /v2/health/ready; False (not an error) while the server cannot be reached."""
        try:
            return self._health("/v2/health/ready", timeout)
        except InferenceServerError as exc:
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                return False
            raise

    def is_model_ready(self, name: str, version: str = "", *, timeout: float | None = None) -> bool:
        """GET /v2/models/{name}[/versions/{version}]/ready."""
        return self._health(model_path(name, version) + "/ready", timeout)

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """GET /v2."""
        data = self._json("GET", "/v2", timeout)
        return ServerMetadata(data["name"], data["version"], tuple(data.get("extensions", ())))

    def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> ModelMetadata:
        """GET /v2/models/{name}[/versions/{version}]: inputs, outputs, served versions."""
        meta = rest.metadata_from_json(self._json("GET", model_path(name, version), timeout))
        self._metadata[(name, version)] = meta
        return meta

    # ------------------------------------------------------------ inference

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """POST .../infer with binary tensors both ways; see Client.infer."""
        timeout = self._timeout(timeout)
        body, length = rest.encode_request(inputs, outputs=outputs, request_id=request_id, timeout_s=timeout)
        headers = JSON if length is None else {"Content-Type": rest.BINARY_TYPE, rest.HEADER_LENGTH: str(length)}
        answer = self._http.call("POST", model_path(model, version) + "/infer", body, headers, timeout)
        try:
            length_text = answer.headers.get(rest.HEADER_LENGTH)
            return rest.decode_response(answer.body, int(length_text) if length_text is not None else None)
        except (CodecError, ValueError, KeyError, TypeError) as exc:
            raise InferenceServerError(grpc.StatusCode.INTERNAL,
                                       f"unreadable answer from {self.url} for model '{model}': {exc}") from None

    # ------------------------------------------------------------ gRPC only

    def report_label(self, model: str, request_id: str, labels, *, timeout: float | None = None) -> bool:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("report_label", self.url)

    def quality(
        self, model: str, version: str = "", *, include_pairs: bool = False, timeout: float | None = None
    ) -> ModelQuality:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("quality", self.url)

    def rollout_status(self, model: str, *, timeout: float | None = None) -> ro.RolloutStatusResponse:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("rollout_status", self.url)

    def rollout_refresh(self, model: str, *, timeout: float | None = None) -> None:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("rollout_refresh", self.url)

    def explain(
        self, model: str, x: object, version: str = "", target: int | None = None, *, output: str | None = None,
        permutations: int = 0, patch_size: int = 0, seed: int = 0, timeout: float | None = None,
    ) -> Explanation:
        """gRPC only (modelport.v1.Explain): raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("explain", self.url)

    # ------------------------------------------------------------ repository, config, statistics

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[ModelIndexEntry]:
        """POST /v2/repository/index."""
        body = b'{"ready": true}' if ready_only else b"{}"
        return [ModelIndexEntry(m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", ""))
                for m in self._json("POST", "/v2/repository/index", timeout, body) or []]  # fmt: skip

    def load_model(
        self, name: str, *, config: upload.Config = None, files: upload.Files = None, timeout: float | None = None
    ) -> None:
        """POST /v2/repository/models/{name}/load; an upload's `config` and `files` go as the
        body's parameters (files in base64), as tritonclient.http sends them."""
        body = upload.http_body(config, files) if config is not None or files else b"{}"
        try:
            self._json("POST", repository_path(name, "load"), timeout, body)
        except InferenceServerError as exc:
            raise upload.explain_refusal(exc, name, files, self.url, http=True) from None

    # The same flow as over gRPC: built on repository_index() and load_model().
    deploy = Client.deploy

    def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """POST /v2/repository/models/{name}/unload."""
        self._json("POST", repository_path(name, "unload"), timeout, b"{}")

    def model_config(self, name: str, version: str = "", *, timeout: float | None = None) -> mc.ModelConfig:
        """GET .../config, as the protobuf `inference.ModelConfig` gRPC returns."""
        return self._message(self._json("GET", model_path(name, version) + "/config", timeout), mc.ModelConfig())

    def model_statistics(
        self, name: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """GET .../stats (every model's without `name`), as the protobuf answer gRPC returns."""
        path = model_path(name, version) + "/stats" if name else "/v2/models/stats"
        return self._message(self._json("GET", path, timeout), pb.ModelStatisticsResponse())

    def _message(self, data: Any, message: M) -> M:
        """`message` filled from the JSON protobuf writes (unknown fields ignored, as newer servers add some)."""
        try:
            return json_format.ParseDict(_maps_as_objects(data, message.DESCRIPTOR), message,
                                         ignore_unknown_fields=True)  # fmt: skip
        except (json_format.ParseError, TypeError, AttributeError) as exc:
            raise InferenceServerError(grpc.StatusCode.INTERNAL,
                                       f"unreadable {message.DESCRIPTOR.name} from {self.url}: {exc}") from None

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the idle connections."""
        self._http.close()


class AsyncHttpClient(AsyncClient):
    """`AsyncClient` over HTTP/REST; `AsyncClient("http://host:8000")` makes one. The calls of an
    `HttpClient` run on a pool of ASYNC_THREADS threads (each with its own keep-alive connection)."""

    def __init__(self, url: str, *, timeout: float | None = None, token: str | None = None, **options: Any) -> None:
        self._sync = HttpClient(url, timeout=timeout, token=token, **options)
        self.url = self._sync.url
        self._metadata = self._sync._metadata  # one cache: predict() reads it
        self._pool = ThreadPoolExecutor(ASYNC_THREADS, thread_name_prefix="modelport-http")

    @property
    def timeout(self) -> float | None:  # type: ignore[override]
        """The default deadline of every call, in seconds."""
        return self._sync.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._sync.timeout = value

    async def _run(self, method, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(method, *args, **kwargs))

    async def is_server_live(self, *, timeout: float | None = None) -> bool:
        """See HttpClient.is_server_live."""
        return await self._run(self._sync.is_server_live, timeout=timeout)

    async def is_server_ready(self, *, timeout: float | None = None) -> bool:
        """See HttpClient.is_server_ready."""
        return await self._run(self._sync.is_server_ready, timeout=timeout)

    async def is_model_ready(self, name: str, version: str = "", *, timeout: float | None = None) -> bool:
        """See HttpClient.is_model_ready."""
        return await self._run(self._sync.is_model_ready, name, version, timeout=timeout)

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """See HttpClient.server_metadata."""
        return await self._run(self._sync.server_metadata, timeout=timeout)

    async def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> ModelMetadata:
        """See HttpClient.model_metadata."""
        return await self._run(self._sync.model_metadata, name, version, timeout=timeout)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """See HttpClient.infer."""
        return await self._run(self._sync.infer, model, inputs, version=version, outputs=outputs,
                               request_id=request_id, timeout=timeout)  # fmt: skip

    async def report_label(self, model: str, request_id: str, labels, *, timeout: float | None = None) -> bool:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("report_label", self.url)

    async def quality(
        self, model: str, version: str = "", *, include_pairs: bool = False, timeout: float | None = None
    ) -> ModelQuality:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("quality", self.url)

    async def rollout_status(self, model: str, *, timeout: float | None = None) -> ro.RolloutStatusResponse:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("rollout_status", self.url)

    async def rollout_refresh(self, model: str, *, timeout: float | None = None) -> None:
        """gRPC only: raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("rollout_refresh", self.url)

    async def explain(
        self, model: str, x: object, version: str = "", target: int | None = None, *, output: str | None = None,
        permutations: int = 0, patch_size: int = 0, seed: int = 0, timeout: float | None = None,
    ) -> Explanation:
        """gRPC only (modelport.v1.Explain): raises InferenceServerError UNIMPLEMENTED."""
        _grpc_only("explain", self.url)

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[ModelIndexEntry]:
        """See HttpClient.repository_index."""
        return await self._run(self._sync.repository_index, ready_only=ready_only, timeout=timeout)

    async def load_model(
        self, name: str, *, config: upload.Config = None, files: upload.Files = None, timeout: float | None = None
    ) -> None:
        """See HttpClient.load_model."""
        await self._run(self._sync.load_model, name, config=config, files=files, timeout=timeout)

    # The same flow as over gRPC: built on repository_index() and load_model().
    deploy = AsyncClient.deploy

    async def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """See HttpClient.unload_model."""
        await self._run(self._sync.unload_model, name, timeout=timeout)

    async def model_config(self, name: str, version: str = "", *, timeout: float | None = None) -> mc.ModelConfig:
        """See HttpClient.model_config."""
        return await self._run(self._sync.model_config, name, version, timeout=timeout)

    async def model_statistics(
        self, name: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """See HttpClient.model_statistics."""
        return await self._run(self._sync.model_statistics, name, version, timeout=timeout)

    async def close(self) -> None:
        """Close the connections and the threads."""
        self._pool.shutdown(wait=False)
        self._sync.close()


def _maps_as_objects(value: Any, descriptor: Descriptor) -> Any:
    """`value` with empty lists where protobuf maps belong replaced by {}: modelport's server
    (server/http.py, up to this writing) writes an empty `response_stats` map as []."""
    if not isinstance(value, dict):
        return value
    for field in descriptor.fields:
        item = value.get(field.json_name, value.get(field.name))
        if field.message_type is None or item is None:
            continue
        key = field.name if field.name in value else field.json_name
        if field.message_type.GetOptions().map_entry:
            if item == []:
                value[key] = {}
        elif isinstance(item, list):
            value[key] = [_maps_as_objects(v, field.message_type) for v in item]
        else:
            value[key] = _maps_as_objects(item, field.message_type)
    return value


def _grpc_only(method: str, url: str) -> NoReturn:
    raise InferenceServerError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method}() is part of modelport's gRPC API only, not of the HTTP/REST binding at {url}: "
        "use a Client on the server's gRPC address (host:port, --grpc-port, default 8001)",
    )
