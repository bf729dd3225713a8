"""`modelport serve`: flags follow Triton's names where Triton has the same flag."""

from __future__ import annotations

import argparse

from modelport.client.argtypes import boolean

EPILOG = """example:
  modelport serve --model-repository ./models --grpc-port 8001
  # then: modelport predict --url localhost:8001 --model mlp --input x.npy

Every flag can also be set as an environment variable MODELPORT_<FLAG> (e.g. MODELPORT_GRPC_PORT=9001).
"""


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `serve` subcommand."""
    p = sub.add_parser(
        "serve",
        help="serve a model repository over the KServe v2 gRPC protocol",
        description="Load every model of a Triton-layout repository into ONNX Runtime and serve it over gRPC "
        "(inference.GRPCInferenceService, grpc.health.v1, server reflection).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-repository", required=True, help="folder with <name>/<version>/model.onnx")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int,
                   help="Prometheus /metrics port (default 8002; with --workers N, worker i uses port + i)")
    p.add_argument("--allow-metrics", type=boolean, help="serve /metrics (default true)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--grpc-max-message-size", dest="max_message_bytes", type=int,
                   help="largest request or response in bytes (default 64 MiB)")
    p.add_argument("--execution-provider", dest="execution_providers", action="append",
                   choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider, in order of preference; repeatable (default cpu)")
    p.add_argument("--device-id", type=int, help="GPU used by the cuda/tensorrt providers (default 0)")
    p.add_argument("--workers", type=int,
                   help="server processes sharing the gRPC port (SO_REUSEPORT), each with its own sessions; "
                        "ONNX Runtime threads are the usable CPUs divided among them (default 1)")
    p.add_argument("--exit-timeout-secs", dest="shutdown_grace_seconds", type=float,
                   help="on SIGTERM, how long in-flight requests may take to finish (default 30)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                   help="none: load every model at start, never change (default); poll: also pick up new, "
                        "changed and removed models every --repository-poll-secs; explicit: load only "
                        "--load-model at start, then as RepositoryModelLoad/Unload (or `modelport models`) say")
    p.add_argument("--repository-poll-secs", type=float, help="poll interval in poll mode (default 15)")
    p.add_argument("--load-model", action="append",
                   help="explicit mode: a model to load at start; repeatable; '*' loads all")
    p.add_argument("--grpc-use-ssl", type=boolean, help="serve gRPC over TLS (default false)")
    p.add_argument("--grpc-server-cert", help="PEM certificate chain of the server (reloaded when it changes)")
    p.add_argument("--grpc-server-key", help="PEM private key of the server (reloaded when it changes)")
    p.add_argument("--grpc-root-cert", help="PEM CA that signs client certificates (mutual TLS)")
    p.add_argument("--grpc-use-ssl-mutual", type=boolean, help="require client certificates signed by --grpc-root-cert")
    p.add_argument("--auth-token-file", help="'<token> <scope>[,<scope>]' per line (scopes: inference, admin); "
                   "reread when it changes; without it, no authentication")
    p.add_argument("--auth-open-health", type=boolean, help="health and reflection answer without a token (default true)")
    p.add_argument("--grpc-max-connection-age-ms", type=int,
                   help="close client connections after this many ms so clients re-resolve and spread over new "
                        "replicas (default 0 = never; the Kubernetes manifests set it)")
    p.add_argument("--grpc-max-connection-age-grace-ms", type=int,
                   help="time calls on a closing connection get to finish (default 30000)")
    p.add_argument("--max-concurrent-streams", type=int, help="concurrent calls per client connection (default 256)")
    p.add_argument("--max-tensor-elements", type=int, help="largest tensor a request may declare (default 268435456)")
    p.add_argument("--max-pending-requests", type=int,
                   help="requests waiting per model version before RESOURCE_EXHAUSTED (default 4096; 0 = unbounded)")
    p.add_argument("--max-inflight-bytes", type=int,
                   help="request bytes the server holds at once (queued or running, all models); past it new "
                        "requests get RESOURCE_EXHAUSTED instead of memory growing (default 1073741824; 0 = unbounded)")
    p.add_argument("--default-request-timeout", type=float,
                   help="seconds allowed to requests that carry no deadline (default 0 = none)")
    p.add_argument("--malloc-mmap-threshold", type=int,
                   help="bytes from which glibc allocations use mmap and go back to the OS when freed, so large "
                        "requests leave no heap behind (default 1048576; 0 = glibc's default)")
    p.add_argument("--quality-window", type=int, help="labelled rows behind the rolling quality metrics (default 1000)")
    p.add_argument("--quality-pending", type=int, help="request ids per model waiting for a label (default 10000)")
    p.add_argument("--drift-window", type=int, help="rows in the sliding window of live input statistics (default 1000)")
    p.add_argument("--drift-sample-rate", type=float, help="share of requests fed to drift tracking and class counting (default 0.1)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default INFO: model loads/unloads/failures and failed requests, one line each)")
    p.add_argument("--log-format", choices=["text", "json"], help="text (logfmt fields) or one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build settings from flags (over environment) and serve until stopped."""
    import asyncio

    try:
        from .app import run as serve
        from .logs import configure
        from .settings import ServerSettings
    except ImportError as exc:  # the client-only install lacks onnxruntime
        raise SystemExit(f"modelport serve needs the server extra: pip install 'modelport[server]' ({exc})")
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command") and v is not None}
    settings = ServerSettings(**given)
    configure(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from .workers import supervise

        return supervise(settings)
    asyncio.run(serve(settings))
    return 0
