"""`modelport convert`: a TensorFlow model in, a new version in the model repository out."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  modelport convert model.keras --model-repository ./models --name mlp
  modelport convert model.h5 --model-repository ./models --name mlp --sample test.npz
  modelport convert ./saved_model_dir --model-repository ./models --name cnn --version 3 --opset 17

Publishes <repository>/<name>/<version>/model.onnx with conversion.json (source and hash, tool
versions, opset, parity report, per-input statistics of the sample) and writes <name>/config.pbtxt.
Nothing is published when ONNX Runtime and TensorFlow disagree beyond --atol + --rtol x |TF|.
"""


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `convert` subcommand."""
    from .defaults import DEFAULT_ATOL, DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET, DEFAULT_RTOL

    p = sub.add_parser(
        "convert",
        help="convert a TensorFlow/Keras model to ONNX, check parity, publish a new version",
        description="Convert a .keras, .h5 or SavedModel to ONNX (tf2onnx), check it against TensorFlow "
        "on a sample, and publish it atomically as a new version of a model repository.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help=".keras or .h5 file, or a SavedModel folder")
    p.add_argument("--model-repository", required=True, help="repository folder (created if missing)")
    p.add_argument("--name", required=True, help="model name (the folder under the repository)")
    p.add_argument("--version", type=int, help="version to publish (default: next free); never overwrites")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--sample", help=".npz of inputs for the parity check and the input statistics "
                   "(arrays named by input, or 'x'); default: random inputs")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help=f"config.pbtxt max_batch_size (default {DEFAULT_MAX_BATCH_SIZE}; 0: no batching)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert; exit 1 when the parity gate fails, 2 on bad input."""
    try:
        from .pipeline import ParityError, convert
        from .publish import VersionExists
    except ImportError as exc:
        print(f"error: modelport convert needs the convert extra: pip install 'modelport[convert]' ({exc})", file=sys.stderr)
        return 2
    try:
        convert(
            args.source, args.model_repository, args.name, version=args.version, opset=args.opset,
            sample=args.sample, atol=args.atol, rtol=args.rtol, max_batch_size=args.max_batch_size,
        )
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (VersionExists, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
