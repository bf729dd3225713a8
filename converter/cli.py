"""`modelport convert`: a TensorFlow model in, a new version in the model repository out."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from .defaults import EXTERNAL_DATA_THRESHOLD

_THRESHOLD = f"{EXTERNAL_DATA_THRESHOLD // 2**20} MiB"

EPILOG = f"""examples:
  modelport convert model.keras --model-repository ./models --name mlp
  modelport convert model.h5 --model-repository ./models --name mlp --sample test.npz
  modelport convert ./saved_model_dir --model-repository ./models --name cnn --version 3 --opset 17
  modelport convert embeddings.keras --model-repository ./models --name emb --external-data

Publishes <repository>/<name>/<version>/model.onnx with conversion.json (source and hash, tool
versions, opset, parity report, per-input statistics of the sample) and writes <name>/config.pbtxt.
Nothing is published when ONNX Runtime and TensorFlow disagree beyond --atol + --rtol x |TF|.

Versions of a model are interchangeable: a new version whose inputs and outputs match config.pbtxt's
by position (datatype, dims) is published under the model's tensor names (renamed in the ONNX graph,
recorded in conversion.json); one that does not match is refused (exit 2) naming the differences,
unless --replace-signature makes its inputs and outputs the model's.

Large models: weights over {_THRESHOLD} are written beside the graph as ONNX external data, so the version
folder holds model.onnx (the graph) and model.onnx.data (the weights); an ONNX file alone cannot exceed
2 GiB. --external-data forces that layout for any model, --no-external-data forbids it. ONNX Runtime
and Triton load such a folder as it is. conversion.json lists every file of the version ("files":
name, bytes, sha256) and says "external_data": true or false.

Protection at rest: --encrypt-key-file KEY encrypts model.onnx (and model.onnx.data) with
AES-256-GCM under a fresh data key wrapped by KEY (32 random bytes: `openssl rand -out model.key 32`);
--sign-key PRIVATE.pem signs the version folder with OpenSSF model-signing (model.sig, over every
file, the encrypted ones included). `modelport serve --decrypt-key-file / --verify-key` load them.

Errors end in one paragraph naming the cause and the fix (an op tf2onnx cannot convert: the op, the
node and the opset); --verbose adds the traceback.
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `convert` subcommand's arguments."""
    from .defaults import DEFAULT_ATOL, DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET, DEFAULT_RTOL

    p.description = ("Convert a .keras, .h5 or SavedModel to ONNX (tf2onnx), check it against TensorFlow "
                     "on a sample, and publish it atomically as a new version of a model repository.")  # fmt: skip
    p.epilog = EPILOG
    p.add_argument("source", help=".keras or .h5 file, or a SavedModel folder")
    p.add_argument("--model-repository", required=True, help="repository folder (created if missing)")
    p.add_argument("--name", required=True, help="model name (the folder under the repository)")
    p.add_argument("--version", type=int, help="version to publish (default: next free); never overwrites")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--sample", help=".npz of inputs for the parity check and the input statistics "
                   "(arrays named by input, or 'x'); default: random inputs")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--max-batch-size", type=int,
                   help=f"config.pbtxt max_batch_size (default: the model's current one, else "
                   f"{DEFAULT_MAX_BATCH_SIZE}; 0: no batching); refused if an earlier version would stop loading")
    p.add_argument("--replace-signature", action="store_true",
                   help="make this version's input and output names, datatypes and shapes the model's in "
                   "config.pbtxt, even when they differ (earlier versions may then no longer load)")
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                   help="write the weights as ONNX external data (model.onnx.data beside model.onnx); "
                   f"default: only when they exceed {_THRESHOLD}; --no-external-data: never (refused over 2 GiB)")
    p.add_argument("--sign-key", type=Path, metavar="PRIVATE_KEY.pem",
                   help="sign the version (every file) with this elliptic-curve private key (OpenSSF model-signing; "
                   "writes model.sig into the version folder)")
    p.add_argument("--encrypt-key-file", type=Path, metavar="KEY",
                   help="encrypt the model files at rest (AES-256-GCM, a fresh data key wrapped by the 32-byte key "
                   "in this file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert; a failing parity gate exits 1 (ParityError.exit_code), bad input or a signature
    that differs from the model's 2."""
    # Checked before TensorFlow is imported (seconds): a wrong path is the commonest mistake.
    for path in (args.source, args.sample, args.sign_key, args.encrypt_key_file):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(errno.ENOENT, "no such file or folder", path)
    # Before TensorFlow is imported: oneDNN's allocator keeps every buffer it frees for reuse, so
    # loading a 2.46 GB model held 7.4 GiB after loading instead of 2.3 (the conversion runs
    # TensorFlow only to trace and on a small sample). An explicit setting wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from .pipeline import convert
    from .publish import Protection

    convert(
        args.source, args.model_repository, args.name, version=args.version, opset=args.opset,
        sample=args.sample, atol=args.atol, rtol=args.rtol, max_batch_size=args.max_batch_size,
        replace_signature=args.replace_signature, external_data=args.external_data,
        protection=Protection(args.sign_key, args.encrypt_key_file),
    )  # fmt: skip
    return 0
