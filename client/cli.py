"""The `modelport` command: one entry point, one subcommand per job, one place for errors.

Each subcommand lives beside the package that does the work (`configure(parser)` adds its
arguments); this dispatcher imports only the module of the command being run, so the client-only
install keeps a fast `modelport --help` and needs neither the server nor the converter extras
for `predict`, `bench`, `evaluate` and `models`.

Errors a user can cause (a missing file, bad data, an unreachable server, an unknown model) end
in one `error: ...` line and exit code 2 (1 when the server refused a call or a gate refused a
model: exceptions with an `exit_code` attribute choose their own); `--verbose` or
MODELPORT_VERBOSE=1 shows the traceback as well. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

EPILOG = """examples:
  modelport serve --model-repository ./models --grpc-port 8001
  modelport convert model.keras --model-repository ./models --name mlp
  modelport deploy model.h5 --url localhost:8001 --name mlp     # convert here, upload to a running server
  modelport predict --url localhost:8001 --model mlp --input x.npy
  modelport models --url localhost:8001 list

--verbose (anywhere on the line) or MODELPORT_VERBOSE=1 shows the traceback behind an error.
"""


@dataclass(frozen=True)
class Command:
    """A subcommand: the module that configures and runs it, its one-line help, and the install
    extra it needs beyond the client."""

    module: str
    help: str
    extra: str = ""


COMMANDS: dict[str, Command] = {
    "serve": Command("modelport.server.cli", "serve a model repository over the KServe v2 gRPC protocol", "server"),
    "convert": Command("modelport.converter.cli",
                       "convert a TensorFlow/Keras model to ONNX, check parity, publish a new version", "convert"),
    "compress": Command("modelport.converter.compress_cli",
                        "quantize / convert to fp16 / optimise a published model, publish only if accuracy holds",
                        "convert"),
    "sign": Command("modelport.converter.sign_cli",
                    "sign a published version (OpenSSF model-signing) for `serve --verify-key`", "convert"),
    "deploy": Command("modelport.client.deploy_cli",
                      "convert a model here and upload it to a running server (RepositoryModelLoad with files)"),
    "predict": Command("modelport.client.predict_cli", "run a served model on a .npy/.npz file"),
    "bench": Command("modelport.client.bench_cli",
                     "measure throughput and latency of a served model over a concurrency sweep"),
    "models": Command("modelport.client.models_cli", "list, load and unload the models of a running server"),
    "evaluate": Command("modelport.client.evaluate_cli", "score a served classifier on labelled data "
                        "(accuracy, precision/recall/F1, confusion matrix, latency)"),
    "quality": Command("modelport.client.quality_cli",
                       "rolling quality per model version from reported labels (cluster-wide with a shared store)"),
    "rollout": Command("modelport.client.rollout_cli",
                       "roll a new version out by measured quality: start, status, step, promote, abort"),
    "explain": Command("modelport.client.explain_cli",
                       "explain a served model's predictions: per-row, per-feature attributions (--plot: a picture)"),
}  # fmt: skip


class MissingExtra(Exception):
    """A subcommand needs an install extra that is not installed."""

    exit_code = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand fully configured (None), or only `command` (the
    others then appear in the help by name, without importing their modules; "" configures none)."""
    parser = argparse.ArgumentParser(
        prog="modelport",
        description="Model-as-a-Service for TensorFlow models (ONNX Runtime behind the KServe v2 gRPC API).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelport {_version()}")
    parser.add_argument("--verbose", action="store_true", default=None, help="show tracebacks behind errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.help, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command is None or command == name:
            _module(name, spec).configure(p)
    return parser


def _module(name: str, spec: Command):
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise MissingExtra(_extra_hint(name, spec, exc)) from exc


def _extra_hint(name: str, spec: Command, exc: ImportError) -> str:
    if not spec.extra:  # a client command: the base install is broken or incomplete
        return f"`modelport {name}` needs the client: pip install modelport ({exc})"
    return f"`modelport {name}` needs the {spec.extra} extra: pip install 'modelport[{spec.extra}]' ({exc})"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelport")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand; its return value is the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or os.environ.get("MODELPORT_VERBOSE", "") not in ("", "0")
    argv = [a for a in argv if a != "--verbose"]
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        # Only the command being run is configured: `modelport --help` imports no subcommand.
        args = build_parser(command or "").parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`modelport predict ... | head`): stop quietly, as shell tools do;
        # stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command a pipe stopped
    except Exception as exc:
        code = exit_code(exc, command)
        if code is None:
            raise  # a bug: keep the traceback
        if verbose:
            traceback.print_exc()
        print(f"error: {message(exc, command)}", file=sys.stderr)
        return code


def exit_code(exc: BaseException, command: str | None) -> int | None:
    """The exit code of an error a user can cause, or None for a bug."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    import grpc

    if isinstance(exc, grpc.RpcError):
        return 1
    if isinstance(exc, (OSError, ValueError, ImportError, LookupError)):
        return 2
    return None


def message(exc: BaseException, command: str | None) -> str:
    """One paragraph naming the cause (and the fix, where the error knows it)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    # An ImportError that carries its own exit code (a missing extra the error names itself) says what to install.
    own = isinstance(exc, MissingExtra) or hasattr(exc, "exit_code")
    if isinstance(exc, ImportError) and not own and command in COMMANDS:
        return _extra_hint(command, COMMANDS[command], exc)
    import grpc

    if isinstance(exc, grpc.RpcError):
        return f"[{exc.code().name}] {exc.details()}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
