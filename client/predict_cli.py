"""`modelport predict`: send an .npy/.npz file to a served model and print or save the outputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

EPILOG = """examples:
  modelport predict --url localhost:8001 --model mlp --input x.npy
  modelport predict --url localhost:8001 --model two_in --input inputs.npz --output out.npz

A .npy file feeds a single-input model; a .npz file maps its array names to input names.
"""


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `predict` subcommand."""
    p = sub.add_parser(
        "predict",
        help="run a served model on a .npy/.npz file",
        description="Send inputs from a .npy or .npz file to a model and print (or save) its outputs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="localhost:8001", help="server address host:port (default localhost:8001)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", default="", help="model version (default: newest served)")
    p.add_argument("--input", required=True, type=Path, help=".npy (single input) or .npz (named inputs)")
    p.add_argument("--output", type=Path, help="save outputs to this .npz instead of printing them")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds (default 60)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the inputs, call the server, print or save."""
    from . import Client, InferenceServerError
    from modelport.protocol.datatypes import NUMPY_DTYPES

    with Client(args.url, timeout=args.timeout) as client:
        try:
            meta = client.model_metadata(args.model, args.model_version)
            inputs = _load(args.input, [t.name for t in meta.inputs])
            # Cast each array to the model's datatype, as predict() does, so float64 .npy files work.
            types = {t.name: t.datatype for t in meta.inputs}
            inputs = {n: (a if types.get(n) in (None, "BYTES") else a.astype(NUMPY_DTYPES[types[n]])) for n, a in inputs.items()}
            outputs = client.infer(args.model, inputs, version=args.model_version)
        except InferenceServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.output:
        np.savez(args.output, **outputs)
        print(f"saved {', '.join(outputs)} to {args.output}")
    else:
        for name, array in outputs.items():
            print(f"{name} {array.dtype} {list(array.shape)}")
            print(np.array2string(array, threshold=200))
    return 0


def _load(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if len(names) != 1:
        raise ValueError(f"the model has inputs {names}; pass an .npz with one array per input")
    return {names[0]: np.load(path, allow_pickle=False)}
