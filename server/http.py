"""The Open Inference Protocol's HTTP/REST binding on --http-port, beside gRPC.

aiohttp's server runs on the server's own event loop (uvloop where it builds), so HTTP requests
reach the very DataPlane the gRPC servicer uses — same validation, limits, schedulers, metrics,
quality ids and errors — with no second process, thread or copy of the models. aiohttp is a
well-kept asyncio HTTP stack whose parser is C (llhttp); HTTP itself is not parsed here.

Handlers are thin like the servicer's: protocol.rest decodes, one data-plane call, rest encodes.
Errors become `{"error": "..."}` with the status Triton's HTTP server gives the same error
(errors.http_status, next to the gRPC mapping).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from modelport.protocol import rest
from modelport.protocol.codec import CodecError
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.repository import UPLOAD_ENVELOPE

from . import uploads
from .auth import TokenFile
from .dataplane import DataPlane
from .errors import InvalidInput, ModelportError, Unimplemented, http_status, status_of
from .logs import event
from .servicer import NOT_IMPLEMENTED, statistics_message
from .settings import ServerSettings
from .uploads import UploadSettings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"
# Paths of Triton extensions modelport does not implement: 501 with what to do instead.
UNSUPPORTED = {
    "/v2/systemsharedmemory": "SystemSharedMemoryStatus",
    "/v2/cudasharedmemory": "CudaSharedMemoryStatus",
    "/v2/trace/setting": "TraceSetting",
    "/v2/logging": "LogSettings",
}


class HttpEndpoint:
    """The HTTP routes over a DataPlane; `start` binds them on the running event loop."""

    def __init__(self, dataplane: DataPlane, settings: ServerSettings) -> None:
        self._dp = dataplane
        self._settings = settings
        tokens = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
        middlewares = [_errors, *([_auth(tokens, settings.auth_open_health)] if tokens else [])]
        self.app = web.Application(client_max_size=settings.max_message_bytes, middlewares=middlewares)
        self._routes()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _routes(self) -> None:
        add = self.app.router
        add.add_get("/v2", self.server_metadata)
        add.add_get("/v2/health/live", self.live)
        add.add_get("/v2/health/ready", self.ready)
        add.add_get("/v2/models/stats", self.statistics)
        for base in (MODEL, VERSIONED):
            add.add_get(base, self.model_metadata)
            add.add_get(base + "/ready", self.model_ready)
            add.add_post(base + "/infer", self.infer)
            add.add_get(base + "/config", self.model_config)
            add.add_get(base + "/stats", self.statistics)
        add.add_post("/v2/repository/index", self.repository_index)
        add.add_post("/v2/repository/models/{model}/load", self.load)
        add.add_post("/v2/repository/models/{model}/unload", self.unload)
        for prefix, rpc in UNSUPPORTED.items():
            add.add_route("*", prefix + "{tail:.*}", _unsupported(rpc))

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Bind and serve; returns the bound port (port 0 picks one)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self._settings.shutdown_grace_seconds)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), port, ssl_context=_ssl_context(self._settings),
                           reuse_port=reuse_port or None)  # fmt: skip
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the public name holds no port for port 0
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let running requests finish (up to the shutdown grace), close."""
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------ health and metadata

    async def server_metadata(self, request: web.Request) -> web.Response:
        info = self._dp.server_metadata()
        return web.json_response({"name": info.name, "version": info.version, "extensions": list(info.extensions)})

    async def live(self, request: web.Request) -> web.Response:
        return _health(self._dp.server_live())

    async def ready(self, request: web.Request) -> web.Response:
        return _health(self._dp.server_ready())

    async def model_ready(self, request: web.Request) -> web.Response:
        return _health(self._dp.model_ready(*_model(request)))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(rest.metadata_json(self._dp.model_metadata(*_model(request))))

    async def model_config(self, request: web.Request) -> web.Response:
        config = self._dp.model_version(*_model(request)).config
        return web.json_response(json_format.MessageToDict(config, preserving_proto_field_name=True))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        message = pb.ModelStatisticsResponse(model_stats=[statistics_message(v)
                                                          for v in self._dp.statistics(name, version)])  # fmt: skip
        as_json = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)  # zeros too, as Triton
        return web.json_response(_numbers(as_json, message.DESCRIPTOR))

    # ------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        length = _header_length(request)
        try:
            header, binary = rest.split_body(body, length)
        except CodecError as exc:
            raise InvalidInput(f"{_where(request)}: {exc}") from None
        name, version = _model(request)
        timeout = rest.timeout_us(header)
        deadline = time.monotonic() + timeout / 1e6 if timeout else None
        decoded = rest.decode_request(header, binary, name, version, self._dp.limits.max_tensor_elements, deadline,
                                      len(body))  # fmt: skip
        response = await self._dp.infer(decoded)
        default, each = rest.binary_outputs(header)
        try:
            payload, header_length = rest.encode_response(response, default, each)
        except CodecError as exc:
            raise InvalidInput(f"{_where(request)}: {exc}") from None
        if header_length is None:
            return web.Response(body=payload, content_type=rest.JSON_TYPE)
        return web.Response(body=payload, content_type=rest.BINARY_TYPE,
                            headers={rest.HEADER_LENGTH: str(header_length)})  # fmt: skip

    # ------------------------------------------------------------ repository

    async def repository_index(self, request: web.Request) -> web.Response:
        ready = bool((await _json_body(request)).get("ready", False))
        return web.json_response([{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                                  for m in self._dp.repository_index(ready)])  # fmt: skip

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        # An upload's files ride base64 in the JSON body: allow a body that size on this route only.
        limit = self._settings.max_message_bytes
        if UploadSettings.of(self._settings).refusal() is None:
            limit = max(limit, -(-self._settings.max_upload_bytes * 4 // 3) + UPLOAD_ENVELOPE)
        body = await request.clone(client_max_size=limit).read()
        # JSON and base64 of a large model take seconds: off the event loop.
        config, files = await asyncio.to_thread(_upload, name, body)
        await self._dp.load_model(name, config, files)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        _no_parameters(name, await _json_body(request), allowed=("unload_dependents",))
        await self._dp.unload_model(name)
        return web.Response(status=200)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _where(request: web.Request) -> str:
    name, version = _model(request)
    return f"model '{name}'" + (f" version {version}" if version else "")


def _health(ok: bool) -> web.Response:
    # As Triton: 200 when live/ready, 400 otherwise (probes only read the status).
    return web.Response(status=200 if ok else 400)


def _header_length(request: web.Request) -> int | None:
    text = request.headers.get(rest.HEADER_LENGTH)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{rest.HEADER_LENGTH} must be an integer, got {text!r}") from None


async def _json_body(request: web.Request) -> dict:
    return _json_object(await request.read())


def _json_object(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data


def _upload(model: str, body: bytes) -> tuple[str | None, dict[str, bytes]]:
    """An upload's `config` (a JSON string, or the config object itself) and files (`file:<path>`,
    base64 strings) from a load request's body, as tritonclient.http's load_model(name,
    config=..., files=...) sends them."""
    parameters = _json_object(body).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"model '{model}': 'parameters' must be a JSON object")
    config, files = None, {}
    for key, value in parameters.items():
        if key == uploads.CONFIG_PARAMETER:
            if not isinstance(value, (str, dict)):
                raise InvalidInput(f"model '{model}': the 'config' parameter must be JSON of inference.ModelConfig "
                                   "(a string or an object)")  # fmt: skip
            config = value if isinstance(value, str) else json.dumps(value)
        elif key.startswith(uploads.FILE_PREFIX):
            try:
                files[key] = base64.b64decode(value, validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise InvalidInput(f"model '{model}': parameter '{key}' must be the file's bytes in base64") from None
        else:
            raise InvalidInput(f"model '{model}': repository parameter '{key}' is not supported (expected 'config' "
                               "and 'file:<version>/<name>')")  # fmt: skip
    return config, files


def _no_parameters(model: str, body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body.get("parameters") or {}) - set(allowed))
    if unknown:
        raise InvalidInput(f"model '{model}': repository parameters {unknown} are not supported")


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _numbers(value: Any, descriptor: Descriptor) -> Any:
    """protobuf's JSON writes 64-bit integers as strings; Triton's statistics are numbers."""
    for field in descriptor.fields:
        if field.name not in value:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            # A map is {key: value} in JSON; each value converts as the entry message's `value` field.
            value[field.name] = {key: _numbers({"value": item}, field.message_type)["value"]
                                 for key, item in value[field.name].items()}  # fmt: skip
            continue
        items = value[field.name] if _repeated(field) else [value[field.name]]
        if field.type in _INT64:
            items = [int(item) for item in items]
        elif field.message_type is not None:
            items = [_numbers(item, field.message_type) for item in items]
        value[field.name] = items if _repeated(field) else items[0]
    return value


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6.32; `label` is deprecated there
    return bool(repeated) if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _unsupported(rpc: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise Unimplemented(f"{request.path} is not implemented by modelport: {NOT_IMPLEMENTED[rpc]}")

    return handler


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as `{"error": message}` with Triton's status for it; the server keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's own: no route (404), wrong method (405), too large (413)
        if exc.status < 400:
            raise
        limit = "--max-upload-bytes" if request.path.endswith("/load") else "--grpc-max-message-size"
        message = exc.text if exc.status != 413 else (
            f"the request body is larger than the server accepts ({exc.text}); raise {limit}")
        return web.json_response({"error": message}, status=exc.status)
    except ModelportError as exc:
        code, message = status_of(exc)
        event(log, logging.INFO, "request_failed", http=request.path, code=code.name, message=message)
        return web.json_response({"error": message}, status=http_status(code))
    except Exception as exc:
        code, message = status_of(exc)
        log.exception("HTTP request failed unexpectedly: %s %s", request.method, request.path)
        return web.json_response({"error": message}, status=http_status(code))


def _auth(tokens: TokenFile, open_health: bool):
    """Bearer tokens with scopes, as the gRPC interceptor checks them (auth.py)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if open_health and request.path.startswith("/v2/health/"):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        scopes = tokens.scopes(token.strip().encode()) if scheme.lower() == "bearer" and token.strip() else None
        if scopes is None:
            return web.json_response({"error": "missing or invalid bearer token"}, status=401)
        needed = "admin" if _is_admin(request) else "inference"
        if needed not in scopes and "admin" not in scopes:
            return web.json_response({"error": f"this call needs the '{needed}' scope"}, status=403)
        return await handler(request)

    return check


def _is_admin(request: web.Request) -> bool:
    """Repository load/unload and the settings extensions need the admin scope (as over gRPC)."""
    path = request.path
    return request.method == "POST" and (
        (path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload")))
        or path.startswith(tuple(UNSUPPORTED))
    )


def _ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """TLS with the gRPC port's certificate and key (and client certificates with mutual TLS).
    Read once at start: unlike gRPC's credentials, they are not reread when the files change."""
    if not (settings.grpc_use_ssl or settings.grpc_use_ssl_mutual):
        return None
    if settings.grpc_server_cert is None or settings.grpc_server_key is None:
        raise ValueError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.grpc_server_cert, settings.grpc_server_key)
    if settings.grpc_use_ssl_mutual:
        if settings.grpc_root_cert is None:
            raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA that signs client certificates)")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.grpc_root_cert)
    return context

