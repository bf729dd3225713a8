"""Server settings: defaults, then MODELPORT_* environment variables, then command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class ServerSettings(BaseSettings):
    """Everything `modelport serve` can be told. Each field is also MODELPORT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", protected_namespaces=())

    model_repository: Path
    host: str = "0.0.0.0"
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535, description="Prometheus /metrics; worker i of --workers uses port + i")
    allow_metrics: bool = True
    # 64 MiB: a 224x224x3 FP32 batch of 64 (~38.5 MiB) fits with room for the envelope.
    max_message_bytes: int = Field(64 * MIB, gt=0)
    execution_providers: tuple[str, ...] = ("cpu",)
    device_id: int = Field(0, ge=0, description="GPU for the cuda/tensorrt providers")
    workers: int = Field(1, ge=1, description="server processes sharing the port")
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_secs: float = Field(15.0, gt=0)
    load_model: tuple[str, ...] = ()  # explicit mode: models to load at start ("*": all)
    quality_window: int = Field(1000, gt=0, description="labelled rows behind the rolling quality metrics")
    quality_pending: int = Field(10000, gt=0, description="request ids per model waiting for a label")
    drift_window: int = Field(1000, gt=0, description="rows in the sliding window of live input statistics")
    # 0.1: tracking every request cost 5.3 % of small-model throughput on the H100 box (benchmarks/README.md).
    drift_sample_rate: float = Field(0.1, ge=0, le=1, description="share of requests fed to drift tracking")
    grpc_use_ssl: bool = False
    grpc_server_cert: Path | None = None
    grpc_server_key: Path | None = None
    grpc_root_cert: Path | None = None
    grpc_use_ssl_mutual: bool = False
    auth_token_file: Path | None = None
    auth_open_health: bool = True  # health and reflection answer without a token
    grpc_max_connection_age_ms: int = Field(0, ge=0, description="close connections after this long (0 = never)")
    grpc_max_connection_age_grace_ms: int = Field(30000, ge=0, description="time given to calls on a closing connection")
    max_concurrent_streams: int = Field(256, gt=0, description="concurrent calls per client connection")
    max_tensor_elements: int = Field(256 * 1024 * 1024, gt=0, description="largest tensor a request may declare")
    max_pending_requests: int = Field(4096, ge=0, description="requests waiting per model version; 0 = unbounded")
    default_request_timeout: float = Field(0.0, ge=0, description="deadline for requests that carry none; 0 = none")
    max_inflight_bytes: int = Field(1024 * MIB, ge=0, description="request bytes held at once before RESOURCE_EXHAUSTED; 0 = unbounded")
    # 1 MiB: request buffers above it go back to the OS when freed (server/memory.py); 0 = glibc's default.
    malloc_mmap_threshold: int = Field(MIB, ge=0, description="allocations of this many bytes or more use mmap")
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
