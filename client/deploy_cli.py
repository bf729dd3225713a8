"""`modelport deploy`: convert a model here and hand it to a running server (Client.deploy)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli_common import add_server_options, positive_int

EPILOG = """examples:
  modelport deploy model.h5 --url localhost:8001 --name mlp
  modelport deploy model.keras --url localhost:8001 --name mlp --sample test.npz --token-file admin.token
  modelport deploy exported/ --url localhost:8001 --name mlp --version 3 --sign-key sign.pem
  modelport deploy bert.onnx --url http://localhost:8000 --name bert           # over HTTP/REST

A .keras/.h5 file or SavedModel folder is converted here first, with the parity gate (`modelport
convert`'s steps; needs the convert extra: pip install "modelport[convert]"); an .onnx file is uploaded
as it is, with its external-data files. The upload is one RepositoryModelLoad (Triton's `file:`
parameters): it needs the admin scope where the server has auth, and the server serves it under
NAME until it is unloaded (with `serve --persist-uploads`, it is published into the repository).
Progress goes to stderr; the last line (stdout) names the version and the model's inputs and outputs.
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `deploy` subcommand's arguments."""
    p.description = "Convert a model here and hand it to a running server, which serves it at once."
    p.epilog = EPILOG
    p.add_argument("source", help=".keras or .h5 file, SavedModel folder, or .onnx file")
    add_server_options(p, model=False, version=False, timeout=600.0)  # the upload and the load take time
    p.add_argument("--name", required=True, help="model name on the server")
    p.add_argument("--version", type=positive_int,
                   help="version to deploy (default: one more than the highest the server lists)")
    p.add_argument("--sample", type=Path, metavar="FILE.npz",
                   help=".npz of inputs for the parity check (default: random inputs); also the explanations' "
                        "background")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line (the model's labels.txt)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="the model's configuration, config.pbtxt (text) or .json, instead of the converter's")
    p.add_argument("--sign-key", type=Path, metavar="PRIVATE_KEY.pem",
                   help="sign the version (OpenSSF model-signing) for servers started with --verify-key")
    p.add_argument("--encrypt-key-file", type=Path, metavar="KEY",
                   help="encrypt the version for servers started with --decrypt-key-file")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token with the admin scope (default: $MODELPORT_TOKEN)")
    token.add_argument("--token-file", type=Path, metavar="FILE", help="read the bearer token from FILE")
    p.add_argument("--ssl", action="store_true", help="use TLS (gRPC; an https:// URL does for HTTP)")
    p.add_argument("--root-certificates", type=Path, metavar="PEM", help="CA certificates to trust (TLS)")
    p.add_argument("--private-key", type=Path, metavar="PEM", help="client key, for mutual TLS")
    p.add_argument("--certificate-chain", type=Path, metavar="PEM", help="client certificate chain, for mutual TLS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Deploy, with progress on stderr, then print what the server now serves."""
    from . import Client

    config = read_config(args.config) if args.config else None  # the user's files first: their mistakes
    labels = args.labels.read_text().splitlines() if args.labels else None
    with Client(args.url, timeout=args.timeout, token=_token(args), **_tls(args)) as client:
        model = client.deploy(args.source, args.name, version=args.version, sample=args.sample, config=config,
                              sign_key=args.sign_key, encrypt_key_file=args.encrypt_key_file, labels=labels,
                              progress=lambda text: print(text, file=sys.stderr, flush=True))  # fmt: skip
        meta = model.metadata()
    protected = [word for word, used in (("signed", args.sign_key), ("encrypted", args.encrypt_key_file)) if used]
    print(f"deployed {args.name} version {model.deployed_version}: inputs {_specs(meta.inputs)} -> outputs "
          f"{_specs(meta.outputs)}" + (f" ({', '.join(protected)})" if protected else ""))  # fmt: skip
    return 0


def read_config(path: Path) -> str:
    """A config file as the JSON the upload carries: .json as it is, anything else as config.pbtxt."""
    from google.protobuf import json_format, text_format

    from modelport.protocol.generated import model_config_pb2 as mc

    text = path.read_text()
    if path.suffix.lower() == ".json":
        return text
    try:
        config = text_format.Parse(text, mc.ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: not a model configuration in config.pbtxt's text format ({exc})") from None
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


def _token(args: argparse.Namespace) -> str | None:
    # Stripped: a token file from `kubectl create secret --from-file` ends in a newline.
    token = args.token_file.read_text() if args.token_file else (args.token or os.environ.get("MODELPORT_TOKEN", ""))
    return token.strip() or None


def _tls(args: argparse.Namespace) -> dict[str, object]:
    given = {"root_certificates": args.root_certificates, "private_key": args.private_key,
             "certificate_chain": args.certificate_chain}  # fmt: skip
    options: dict[str, object] = {key: value for key, value in given.items() if value is not None}
    if args.ssl:
        options["ssl"] = True
    return options


def _specs(tensors) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)
