"""`modelport predict`: send an .npy/.npz file to a served model and print or save the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .cli_common import add_server_options

EPILOG = """examples:
  modelport predict --url localhost:8001 --model mlp --input x.npy
  modelport predict --url localhost:8001 --model two_in --input inputs.npz --output out.npz
  modelport predict --url http://localhost:8000 --model mlp --input x.npy     # over HTTP/REST

A .npy file feeds a single-input model; a .npz file holds one array per input name (or 'x').
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `predict` subcommand's arguments."""
    p.description = "Send inputs from a .npy or .npz file to a model and print (or save) its outputs."
    p.epilog = EPILOG
    add_server_options(p)
    p.add_argument("--input", required=True, type=Path, help=".npy (single input) or .npz (named inputs)")
    p.add_argument("--output", type=Path, help="save outputs to this .npz instead of printing them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the inputs, call the server, print or save."""
    from modelport.protocol.arrays import load_arrays, select_inputs
    from modelport.protocol.codec import as_wire_array

    from . import Client

    arrays = load_arrays(args.input)  # before connecting: a missing file is the user's first mistake
    with Client(args.url, timeout=args.timeout) as client:
        meta = client.model_metadata(args.model, args.model_version)
        chosen = select_inputs(arrays, [t.name for t in meta.inputs], args.input.name)
        # Cast each array to the model's datatype, as predict() does, so float64 .npy files work.
        inputs = {t.name: as_wire_array(chosen[t.name], t.datatype) for t in meta.inputs}
        outputs = client.infer(args.model, inputs, version=args.model_version)
    if args.output:
        np.savez(args.output, **outputs)
        print(f"saved {', '.join(outputs)} to {args.output}")
    else:
        for name, array in outputs.items():
            print(f"{name} {array.dtype} {list(array.shape)}")
            print(np.array2string(array, threshold=200))
    return 0
