"""`modelport convert` (placeholder until the converter lands; see converter/README.md)."""

import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Register the `convert` subcommand."""
    p = sub.add_parser("convert", help="convert a TensorFlow model to ONNX into a model repository (coming)")
    p.set_defaults(func=lambda args: (print("modelport convert is not available yet"), 2)[1])
