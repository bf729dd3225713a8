"""Assemble and run the gRPC server: inference service, health, reflection, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from modelport.protocol import load_request
from modelport.protocol.generated import (
    _pool,
    explain_pb2,
    explain_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc

from .auth import AuthInterceptor, TokenFile
from .dataplane import DataPlane, Limits
from .drift import DriftObserver
from .explain import Explainer, ExplainLimits
from .explain_service import ExplainServicer
from .feedback import FeedbackServicer
from .feedback_store import open_store
from .loader import LoaderSettings
from .loop import describe
from .malformed import TolerantRegistrar
from .memory import fix_mmap_threshold
from .metrics import MetricsEndpoint
from .observers import PredictedClassCounter
from .quality import QualityMonitor
from .registry import ModelRegistry
from .repository import serving_root
from .rollout_service import RolloutServicer
from .servicer import InferenceServicer
from .settings import ServerSettings
from .uploads import Uploads, UploadSettings

if TYPE_CHECKING:
    from .http import HttpEndpoint

log = logging.getLogger("modelport.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# grpc.health.v1 service for liveness probes: SERVING while the process answers at all (until
# shutdown), whatever the models do, so a pod with a model that fails to load is kept out of
# the Services by readiness but not restarted in a loop by liveness.
LIVENESS_SERVICE = "modelport.liveness"


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful with port 0)."""

    server: grpc.aio.Server
    port: int
    dataplane: DataPlane
    health: HealthServicer
    quality: QualityMonitor

    poller: asyncio.Task | None = None
    metrics_port: int | None = None
    explainer: Explainer | None = None
    http: HttpEndpoint | None = None

    @property
    def http_port(self) -> int | None:
        """The bound HTTP/REST port (None with --allow-http false)."""
        return self.http.port if self.http is not None else None

    async def stop(self, grace: float | None) -> None:
        """Drain: report NOT_SERVING, refuse new RPCs, let in-flight ones finish within `grace`."""
        self.dataplane.draining = True
        if self.poller is not None:
            self.poller.cancel()
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await asyncio.gather(self.server.stop(grace), self.http.stop())
        else:
            await self.server.stop(grace)
        await self.quality.close()  # what waits in the buffer reaches the store
        await self.dataplane.registry.close()


def _reflection_pool():
    """Our pool also carries health and reflection, so reflection can describe every service."""
    for module in (health_pb2, reflection_pb2):
        try:
            _pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            _pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _pool.POOL


def build_dataplane(settings: ServerSettings, registry: ModelRegistry) -> tuple[DataPlane, QualityMonitor]:
    """The data plane over `registry` with the settings' limits and every observer (online
    quality, drift, predicted classes); the quality monitor also answers label reports."""
    store = open_store(
        settings.feedback_store, settings.quality_window, settings.quality_pending, settings.feedback_ttl
    )
    quality = QualityMonitor(store, registry.names)
    observers = [quality, DriftObserver(), PredictedClassCounter()]
    uploads = Uploads(registry, UploadSettings.of(settings))
    return DataPlane(registry, Limits.of(settings), settings.model_control_mode, observers, uploads=uploads), quality


def add_services(
    server, dataplane: DataPlane, quality: QualityMonitor, explainer: Explainer | None = None
) -> HealthServicer:
    """Add inference, feedback, rollout, explanations, health and reflection to `server` (a
    grpc.aio.Server, or anything with its two registration methods), every method parsing its
    requests tolerantly. Without `explainer`, explanations run with the default limits."""
    # Requests that do not parse: INVALID_ARGUMENT, not UNKNOWN. Uploads are read without copies.
    registrar = TolerantRegistrar(server, {f"/{SERVICE_NAME}/RepositoryModelLoad": load_request.parse})
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), registrar)
    feedback_pb2_grpc.add_FeedbackServicer_to_server(FeedbackServicer(quality), registrar)
    rollout_pb2_grpc.add_RolloutServicer_to_server(RolloutServicer(dataplane), registrar)
    explainer = explainer or Explainer(dataplane)
    explain_pb2_grpc.add_ExplainServicer_to_server(
        ExplainServicer(explainer, dataplane.limits.max_tensor_elements), registrar
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
    names = [SERVICE_NAME, feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
             rollout_pb2.DESCRIPTOR.services_by_name["Rollout"].full_name,
             explain_pb2.DESCRIPTOR.services_by_name["Explain"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]  # fmt: skip
    # What reflection.enable_server_reflection does for a grpc.aio server, through the registrar.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names, pool=_reflection_pool()), registrar
    )
    return health


async def start_server(settings: ServerSettings, registry: ModelRegistry | None = None) -> RunningServer:
    """Load the repository (unless a registry is given), bind, start serving."""
    if registry is None:
        root = serving_root(settings.model_repository, settings.model_name)  # a KServe /mnt/models too
        registry = ModelRegistry(root, LoaderSettings.of(settings))
        await registry.load_all(_startup_models(settings))
    dataplane, quality = build_dataplane(settings, registry)
    interceptors = (
        [AuthInterceptor(TokenFile(settings.auth_token_file), settings.auth_open_health)]
        if settings.auth_token_file
        else []
    )
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            # Uploads (RepositoryModelLoad with files) may be larger than inference requests; the
            # data plane holds those to --grpc-max-message-size itself.
            ("grpc.max_receive_message_length",
             UploadSettings.of(settings).grpc_receive_limit(settings.max_message_bytes)),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.so_reuseport", 1),  # --workers: several processes share the port
            *_connection_age(settings),
        ],
    )
    explainer = Explainer(dataplane, ExplainLimits.of(settings))
    health = add_services(server, dataplane, quality, explainer)
    host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    port = _bind(server, f"{host}:{settings.grpc_port}", settings)
    if port == 0:
        raise OSError(f"cannot bind gRPC port {settings.host}:{settings.grpc_port}")
    await server.start()
    await _publish_health(health, dataplane)
    loop = asyncio.get_running_loop()
    registry.listeners.append(lambda _name: loop.create_task(_publish_health(health, dataplane)))
    log.info("listening on %s:%d (models: %s; event loop: %s)", settings.host, port,
             ", ".join(registry.names()) or "none", describe(loop))  # fmt: skip
    quality.start()
    running = RunningServer(server, port, dataplane, health, quality, explainer=explainer)
    if settings.allow_http:
        running.http = await _start_http(dataplane, settings)
    if settings.allow_metrics:
        endpoint = MetricsEndpoint(registry, dataplane, quality, explainer=explainer)
        running.metrics_port = endpoint.serve(settings.host, settings.metrics_port)
    if settings.model_control_mode == "poll":
        running.poller = loop.create_task(_poll(registry, settings.repository_poll_secs), name="repository poll")
    return running


async def _start_http(dataplane: DataPlane, settings: ServerSettings) -> HttpEndpoint:
    """The HTTP/REST binding on the same loop and data plane (workers share its port)."""
    from .http import HttpEndpoint  # aiohttp loads only when HTTP is served

    endpoint = HttpEndpoint(dataplane, settings)
    port = await endpoint.start(settings.host, settings.http_port, reuse_port=settings.workers > 1)
    log.info("HTTP/REST on %s:%d", settings.host, port)
    return endpoint


def _connection_age(settings: ServerSettings) -> list[tuple[str, int]]:
    """Ending connections after a while makes clients reconnect (and re-resolve DNS), so new
    replicas behind a headless Service get traffic; in-flight calls get the grace period."""
    if not settings.grpc_max_connection_age_ms:
        return []
    return [
        ("grpc.max_connection_age_ms", settings.grpc_max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", settings.grpc_max_connection_age_grace_ms),
    ]


def _bind(server: grpc.aio.Server, address: str, settings: ServerSettings) -> int:
    if not (settings.grpc_use_ssl or settings.grpc_use_ssl_mutual):
        return server.add_insecure_port(address)
    if settings.grpc_server_cert is None or settings.grpc_server_key is None:
        raise ValueError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    from .tls import server_credentials

    credentials = server_credentials(
        settings.grpc_server_key, settings.grpc_server_cert, settings.grpc_root_cert, settings.grpc_use_ssl_mutual
    )
    return server.add_secure_port(address, credentials)


def _startup_models(settings: ServerSettings) -> list[str] | None:
    """Models to load at start: all, except in explicit mode where --load-model says."""
    if settings.model_control_mode != "explicit" or "*" in settings.load_model:
        return None
    return list(settings.load_model)


async def _poll(registry: ModelRegistry, interval: float) -> None:
    """Poll mode: bring the served models in line with the repository every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            await registry.poll()
        except Exception:  # keep polling; the next round may succeed
            log.exception("repository poll failed")


async def _publish_health(health: HealthServicer, dataplane: DataPlane) -> None:
    """grpc.health.v1: '' and the inference service follow server readiness, each model name its
    own; LIVENESS_SERVICE is SERVING until shutdown."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    if dataplane.draining:
        return
    overall = serving if dataplane.server_ready() else not_serving
    await health.set("", overall)
    await health.set(SERVICE_NAME, overall)
    await health.set(LIVENESS_SERVICE, serving)
    for name in dataplane.registry.names():
        await health.set(name, serving if dataplane.model_ready(name) else not_serving)


async def run(settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully."""
    fix_mmap_threshold(settings.malloc_mmap_threshold)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before loading and binding: a SIGTERM while the server starts (a restarted worker told to
    # stop) ends in the same clean drain once it has started, not in death by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(settings)
    await stop.wait()
    log.info("shutting down: draining in-flight requests (grace %.1fs)", settings.shutdown_grace_seconds)
    await running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
