"""`modelport models`: look at and change what a server serves (the repository API)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  modelport models --url localhost:8001 list
  modelport models --url localhost:8001 load mlp      # server started with --model-control-mode explicit
  modelport models --url localhost:8001 unload mlp
"""


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `models` subcommand."""
    p = sub.add_parser(
        "models",
        help="list, load and unload the models of a running server",
        description="The model repository API (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="localhost:8001", help="server address host:port (default localhost:8001)")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds (default 300: loads take time)")
    p.add_argument("action", choices=["list", "load", "unload"], help="what to do")
    p.add_argument("name", nargs="?", help="model name (load, unload)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Do the action; print the index for `list`."""
    from . import Client, InferenceServerError

    if args.action != "list" and not args.name:
        print(f"error: `modelport models {args.action}` needs a model name", file=sys.stderr)
        return 2
    with Client(args.url, timeout=args.timeout) as client:
        try:
            if args.action == "load":
                client.load_model(args.name)
                print(f"loaded {args.name}: versions {', '.join(client.model_metadata(args.name).versions)}")
            elif args.action == "unload":
                client.unload_model(args.name)
                print(f"unloaded {args.name}")
            else:
                _print_index(client.repository_index())
        except InferenceServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def _print_index(rows) -> None:
    width = max([len(r.name) for r in rows] + [5])
    print(f"{'MODEL':<{width}}  VERSION  STATE        REASON")
    for row in rows:
        print(f"{row.name:<{width}}  {row.version or '-':<7}  {row.state:<11}  {row.reason}")
