"""Server settings, the one place their defaults live: defaults, then MODELPORT_* environment
variables, then command-line flags. `modelport serve`'s flags are generated from these fields
(server/cli.py), with Triton's flag names where Triton has the flag, and the data plane's limits
and the loader's settings are read from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024
Provider = Literal["cpu", "cuda", "tensorrt"]


def option(
    default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, shown: str | None = None,
    **constraints: Any,
) -> Any:
    """A settings field and how `serve` offers it: `flag` when it is not --<field-name> (Triton's
    name, usually), `metavar`, and `shown` when the default reads better otherwise (64 MiB)."""
    extra = {key: value for key, value in (("flag", flag), ("metavar", metavar), ("shown", shown)) if value is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


class ServerSettings(BaseSettings):
    """Everything `modelport serve` can be told. Each field is also MODELPORT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", protected_namespaces=())

    model_repository: Path = option(..., "the model repository: `<name>/<version>/model.onnx`", metavar="DIR")
    model_name: str | None = option(
        None, "the model's name when --model-repository holds one model's files instead of a repository (KServe's "
        "/mnt/models: model.onnx itself, or its version folders); ignored for a repository", metavar="NAME",
        shown="config.pbtxt's name, else the folder's",
    )
    grpc_port: int = option(8001, "gRPC port; 0 picks a free one (the log line `listening on HOST:PORT` tells which)",
                            metavar="N", ge=0, le=65535)  # fmt: skip
    http_port: int = option(8000, "HTTP/REST port of the Open Inference Protocol (0 picks a free one; with --workers N "
                            "the workers share it)", metavar="N", ge=0, le=65535)  # fmt: skip
    allow_http: bool = option(True, "serve the HTTP/REST binding beside gRPC (same data plane, limits, auth and TLS)")
    host: str = option("0.0.0.0", "address to bind", metavar="ADDR")
    # 64 MiB: a 224x224x3 FP32 batch of 64 (~38.5 MiB) fits with room for the envelope.
    max_message_bytes: int = option(
        64 * MIB, "largest request/response in bytes (a 224x224x3 FP32 batch of 64 fits)",
        flag="--grpc-max-message-size", metavar="BYTES", shown="64 MiB", gt=0,
    )
    execution_providers: tuple[Provider, ...] = option(
        ("cpu",), "ONNX Runtime execution provider, repeatable in order of preference; missing ones fall back to "
        "CPU with a warning", flag="--execution-provider",
    )
    device_id: int = option(0, "GPU used by the cuda/tensorrt providers", metavar="N", ge=0)
    workers: int = option(
        1, "server processes sharing the gRPC port (SO_REUSEPORT), each with its own sessions; ONNX Runtime "
        "threads are the usable CPUs divided among them; a crashed worker is restarted", metavar="N", ge=1,
    )
    shutdown_grace_seconds: float = option(
        30.0, "on SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, in-flight ones get this long "
        "to finish", flag="--exit-timeout-secs", metavar="S", ge=0,
    )
    metrics_port: int = option(8002, "Prometheus /metrics port (0 picks a free one; with --workers N, worker i uses "
                               "port + i)", metavar="N", ge=0, le=65535)  # fmt: skip
    allow_metrics: bool = option(True, "serve /metrics at all")
    model_control_mode: Literal["none", "poll", "explicit"] = option(
        "none", "none: load every model at start, never change; poll: also pick up new, changed and removed "
        "models every --repository-poll-secs; explicit: load only --load-model at start, then as "
        "RepositoryModelLoad/Unload (or `modelport models`) say",
    )
    repository_poll_secs: float = option(15.0, "poll interval in poll mode", metavar="S", gt=0)
    load_model: tuple[str, ...] = option((), "explicit mode: a model to load at start; repeatable; '*' loads all",
                                         metavar="NAME", shown="none")  # fmt: skip
    grpc_use_ssl: bool = option(False, "serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)")
    grpc_server_cert: Path | None = option(None, "PEM certificate chain of the server (reread when it changes)",
                                           metavar="FILE")  # fmt: skip
    grpc_server_key: Path | None = option(None, "PEM private key of the server (reread when it changes)",
                                          metavar="FILE")  # fmt: skip
    grpc_use_ssl_mutual: bool = option(False, "mutual TLS: clients need a certificate signed by --grpc-root-cert")
    grpc_root_cert: Path | None = option(None, "PEM CA that signs client certificates (mutual TLS)", metavar="FILE")
    auth_token_file: Path | None = option(
        None, "bearer tokens, '<token> <scope>[,<scope>]' per line (scopes inference, admin: repository "
        "load/unload and settings RPCs need admin); reread when it changes; without it, no authentication",
        metavar="FILE",
    )
    verify_key: tuple[Path, ...] = option(
        (), "load only versions whose signature (model.sig, OpenSSF model-signing) verifies against this public key "
        "(PEM, elliptic curve) or any key in this folder; repeatable, for key rotation (any one key suffices); a "
        "missing or failing signature is a load failure; keys are reread at every load",
        metavar="PUBLIC_KEY.pem", shown="none (signatures not checked)",
    )
    decrypt_key_file: tuple[Path, ...] = option(
        (), "decrypt encrypted versions in memory (never on disk) with the 32-byte key in this file or any key "
        "file in this folder; repeatable, for key rotation (each encrypted file names its key's id); keys are "
        "reread at every load", metavar="KEY", shown="none",
    )
    max_upload_bytes: ByteSize = option(
        2 * 1024 * MIB, "largest model upload (RepositoryModelLoad with file: parameters, `modelport deploy`; taken in "
        "--model-control-mode explicit, or poll with --persist-uploads), all its files together; accepts 2GiB, 500MB "
        "or bytes; where uploads are taken the gRPC and HTTP receive limits grow to fit one (inference "
        "requests stay under --grpc-max-message-size); 0 refuses uploads", metavar="BYTES", shown="2 GiB", ge=0,
    )
    persist_uploads: bool = option(
        False, "publish uploaded versions into the model repository (renamed in atomically; a version already "
        "there is ALREADY_EXISTS) instead of serving them from a private temporary folder until unloaded or the "
        "server stops; needs a writable repository",
    )
    auth_open_health: bool = option(True, "health and reflection answer without a token")
    grpc_max_connection_age_ms: int = option(
        0, "close client connections after this many ms so clients re-resolve DNS and spread over new replicas "
        "(0 = never; the Kubernetes manifests set it)", metavar="N", shown="0 (never)", ge=0,
    )
    grpc_max_connection_age_grace_ms: int = option(30000, "time calls on a closing connection get to finish",
                                                   metavar="N", ge=0)  # fmt: skip
    max_concurrent_streams: int = option(256, "concurrent calls per client connection", metavar="N", gt=0)
    max_tensor_elements: int = option(256 * MIB, "largest tensor a request may declare (refused before anything is "
                                      "allocated)", metavar="N", gt=0)  # fmt: skip
    max_pending_requests: int = option(4096, "requests waiting per model version before RESOURCE_EXHAUSTED "
                                       "(0 = unbounded)", metavar="N", ge=0)  # fmt: skip
    max_inflight_bytes: int = option(
        1024 * MIB, "request bytes the server holds at once (queued or running, all models); past it new "
        "requests get RESOURCE_EXHAUSTED, so a flood of large requests meets back-pressure instead of growing "
        "memory (0 = unbounded)", metavar="N", shown="1073741824 (1 GiB)", ge=0,
    )
    model_memory_limit: ByteSize | None = option(
        None, "memory the models of one server process may take: a version whose files (model.onnx and its "
        "external weights, once per instance) do not fit in what is left of it is refused with a clear load error "
        "instead of the process being OOM-killed; accepts 8GiB, 500MB or bytes (0 = no check)", metavar="BYTES",
        shown="the container's memory limit (cgroup; else RAM) less 10% (at least 256 MiB), divided among --workers",
        ge=0,
    )
    default_request_timeout: float = option(
        0.0, "seconds allowed to requests that carry no deadline; a request still waiting for its model "
        "instance when its deadline (this one or the client's) passes gets DEADLINE_EXCEEDED and never runs, "
        "one that has started finishes (as in Triton)", metavar="S", shown="0 (none)", ge=0,
    )
    # 1 MiB: request buffers above it go back to the OS when freed (server/memory.py).
    malloc_mmap_threshold: int = option(
        MIB, "glibc allocations this large use mmap and go back to the OS when freed, so bursts of large requests "
        "leave no heap behind (0 = glibc's own, rising threshold; an explicit MALLOC_MMAP_THRESHOLD_ in the "
        "environment wins)", metavar="BYTES", ge=0,
    )
    feedback_store: str = option(
        "memory://", "where predictions wait for labels and quality windows live: memory:// (this server) or "
        "redis://[:PASSWORD@]HOST:PORT/DB (shared by replicas: a label reported to any of them pairs; needs the "
        "redis extra)", metavar="URL",
    )
    feedback_ttl: float = option(7 * 24 * 3600.0, "seconds a prediction waits for its label", metavar="S",
                                 shown="604800 (7 days)", gt=0)  # fmt: skip
    quality_window: int = option(1000, "labelled rows per model version behind the rolling quality", metavar="N",
                                 gt=0)  # fmt: skip
    quality_pending: int = option(10000, "request ids per model waiting for a label (memory:// store; Redis bounds "
                                  "them by --feedback-ttl and its maxmemory)", metavar="N", gt=0)  # fmt: skip
    drift_window: int = option(1000, "rows in the sliding window of live input statistics", metavar="N", gt=0)
    # 0.1: tracking every request cost 5.3 % of small-model throughput on the H100 box (benchmarks/README.md).
    drift_sample_rate: float = option(0.1, "share of requests fed to drift tracking and to the predicted-class "
                                      "counts", metavar="R", ge=0, le=1)  # fmt: skip
    allow_explain: bool = option(True, "answer modelport.v1.Explain (feature attributions, `modelport explain`); "
                                 "false: UNIMPLEMENTED")  # fmt: skip
    explain_max_rows: int = option(16, "rows one explanation call may ask for (more: INVALID_ARGUMENT)", metavar="N",
                                   gt=0)  # fmt: skip
    explain_timeout: float = option(60.0, "seconds an explanation may take, waiting included (or the call's "
                                    "deadline, if sooner); then DEADLINE_EXCEEDED", metavar="S", gt=0)  # fmt: skip
    explain_concurrency: int = option(1, "explanations of one model running at once (more wait their turn)",
                                      metavar="N", gt=0)  # fmt: skip
    explain_share: float = option(
        0.05, "while inference requests reach a model version, the share of the time its explanations may work "
        "(building perturbed rows and running them on its instances; they pause in between); 1: no pausing",
        metavar="R", gt=0, le=1,
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = option(
        "auto", "the event loop: uvloop (faster per request; the server extra installs it on Linux and macOS) or "
        "asyncio's own; auto takes uvloop when it is installed",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option(
        "INFO", "INFO logs one line per model load/unload/failure and per failed request, none per successful one"
    )
    log_format: Literal["text", "json"] = option(
        "text", "`event key=value ...` (logfmt) lines, or one JSON object per line with `event` and its fields"
    )

    @field_validator("feedback_store")
    @classmethod
    def _store_url(cls, url: str) -> str:
        """Refused before any model loads (server/feedback_store.open_store opens it)."""
        if url not in ("memory://", "memory") and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected memory:// or redis://[:PASSWORD@]HOST:PORT/DB")
        return url

    @classmethod
    def defaults(cls) -> ServerSettings:
        """Every default, unvalidated and without reading the environment (model_repository unset):
        what in-process users of the data plane or the registry get when they say nothing."""
        return cls.model_construct()
