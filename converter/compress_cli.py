"""`modelport compress`: a smaller or faster version of a published model, behind an accuracy gate."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  modelport compress --model-repository ./models --name cnn --method int8-static \\
      --calibration calib.npz --eval test.npz --max-accuracy-drop 0.01
  modelport compress --model-repository ./models --name mlp --method int8-dynamic --eval test.npz
  modelport compress --model-repository ./models --name cnn --method fp16        # for GPUs
  modelport compress --model-repository ./models --name cnn --method optimize

The result is the next version of the same model, with the report in its conversion.json.
Without --eval, the gate compares predictions with the source version on the calibration data
(or random inputs) and says so. Exit 1 when the gate refuses; nothing is published then.
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `compress` subcommand's arguments."""
    p.description = ("Make a new version of a model with ONNX Runtime's compression tools; publish it only "
                     "when the metric on --eval data drops by at most --max-accuracy-drop.")  # fmt: skip
    p.epilog = EPILOG
    p.add_argument("--model-repository", required=True, help="repository folder")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--from-version", type=int, help="version to compress (default: the latest)")
    p.add_argument("--method", required=True, choices=["int8-dynamic", "int8-static", "fp16", "optimize"])
    p.add_argument("--calibration", help=".npz of representative inputs (needed by int8-static)")
    p.add_argument("--eval", dest="eval_data", help=".npz with inputs ('x' or per input) and labels 'y'")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, help="largest allowed drop (default 0.01)")
    p.add_argument("--threshold", type=float, default=0.5, help="class-1 threshold for sigmoid outputs (default 0.5)")
    p.add_argument("--sign-key", type=Path, metavar="PRIVATE_KEY.pem",
                   help="sign the new version with this elliptic-curve private key (OpenSSF model-signing, model.sig)")
    p.add_argument("--encrypt-key-file", type=Path, metavar="KEY",
                   help="encrypt the new version's model files (AES-256-GCM, data key wrapped by this 32-byte key)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compress; a refusing gate exits 1 (AccuracyGateError.exit_code), bad input 2."""
    from .compress import compress
    from .publish import Protection

    compress(
        args.model_repository, args.name, args.method, from_version=args.from_version,
        calibration=args.calibration, eval_data=args.eval_data, max_accuracy_drop=args.max_accuracy_drop,
        threshold=args.threshold, protection=Protection(args.sign_key, args.encrypt_key_file),
    )  # fmt: skip
    return 0
