"""The `modelport` command: one entry point, one subcommand per job.

Each subcommand lives beside the package that does the work and registers itself here; heavy
imports (ONNX Runtime, TensorFlow) happen only when that subcommand runs, so the client-only
install keeps a fast `modelport --help`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EPILOG = """examples:
  modelport serve --model-repository ./models --grpc-port 8001
  modelport convert model.keras --model-repository ./models --name mlp
  modelport predict --url localhost:8001 --model mlp --input x.npy
  modelport models --url localhost:8001 list
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    from modelport.client import bench_cli, evaluate_cli, models_cli, predict_cli
    from modelport.converter import cli as convert_cli
    from modelport.converter import compress_cli
    from modelport.server import cli as serve_cli

    parser = argparse.ArgumentParser(
        prog="modelport",
        description="Model-as-a-Service for TensorFlow models (ONNX Runtime behind the KServe v2 gRPC API).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelport {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (serve_cli, convert_cli, compress_cli, predict_cli, bench_cli, models_cli, evaluate_cli):
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelport")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand; its return value is the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
