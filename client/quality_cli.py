"""`modelport quality`: a model's rolling quality per version, as the server keeps it (cluster-wide
with a shared feedback store)."""

from __future__ import annotations

import argparse
import json

from .cli_common import add_server_options

EPILOG = """examples:
  modelport quality --url localhost:8001 --model mlp
  modelport quality --url localhost:8001 --model mlp --model-version 2 --json

Numbers are over each version's last --quality-window labelled rows (see `modelport serve`):
accuracy and macro precision/recall/F1 (scikit-learn's definitions) for classifiers, MAE, RMSE
and R² for regressors. Labels reach the server with Client.report_label(model, id, labels).
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `quality` subcommand's arguments."""
    p.description = "Rolling model quality per version, from the labels clients reported."
    p.epilog = EPILOG
    add_server_options(p)
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Ask the server and print."""
    from . import Client

    with Client(args.url, timeout=args.timeout) as client:
        quality = client.quality(args.model, args.model_version)
    if args.json:
        print(json.dumps(quality.to_dict(), indent=2))
        return 0
    if not quality.versions:
        print(f"model '{quality.model}': no labelled feedback yet")
        return 0
    for version, q in quality.versions.items():
        if q.kind == "regression":
            print(f"{quality.model} v{version} regression  rows {q.count}  MAE {q.mae:.4g}  RMSE {q.rmse:.4g}  "
                  f"R² {q.r2:.4f}")  # fmt: skip
        else:
            print(f"{quality.model} v{version} classification  rows {q.count}  accuracy {q.accuracy:.4f}  "
                  f"precision {q.precision:.4f}  recall {q.recall:.4f}  f1 {q.f1:.4f}  "
                  f"classes {list(q.classes)}")
    return 0
