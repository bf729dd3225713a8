"""`modelport sign`: sign a published version (made elsewhere, or before keys existed) in place."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  openssl ecparam -name prime256v1 -genkey -noout -out sign.pem     # once: the private key
  openssl ec -in sign.pem -pubout -out sign.pub                       # its public half, for the servers
  modelport sign --model-repository ./models --name cnn --key sign.pem             # the latest version
  modelport sign --model-repository ./models --name cnn --version 3 --key sign.pem
  modelport serve --model-repository ./models --verify-key sign.pub

Writes <repository>/<name>/<version>/model.sig (OpenSSF model-signing, a Sigstore bundle signed by
the key), covering every other file of the version; an existing signature is replaced (written
beside the version, then renamed in). `modelport convert` and `modelport compress` sign as they
publish with --sign-key.
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `sign` subcommand's arguments."""
    p.description = "Sign a published model version with an elliptic-curve private key (OpenSSF model-signing)."
    p.epilog = EPILOG
    p.add_argument("--model-repository", required=True, help="repository folder")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", type=int, help="version to sign (default: the latest)")
    p.add_argument("--key", required=True, type=Path, metavar="PRIVATE_KEY.pem", help="elliptic-curve private key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sign; a bad key or a missing version exits 2."""
    from .signing import sign_version

    path = sign_version(args.model_repository, args.name, args.key, args.version)
    print(f"signed {path.parent} ({path.name})", file=sys.stderr)
    return 0
