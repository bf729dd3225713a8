"""`modelport models`: look at and change what a server serves (the repository API)."""

from __future__ import annotations

import argparse

from .cli_common import add_server_options

EPILOG = """examples:
  modelport models --url localhost:8001 list
  modelport models --url localhost:8001 load mlp      # server started with --model-control-mode explicit
  modelport models --url localhost:8001 unload mlp
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `models` subcommand's arguments."""
    p.description = "The model repository API (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload)."
    p.epilog = EPILOG
    add_server_options(p, model=False, version=False, timeout=300.0)  # loads take time
    p.add_argument("action", choices=["list", "load", "unload"], help="what to do")
    p.add_argument("name", nargs="?", help="model name (load, unload)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Do the action; print the index for `list`."""
    from . import Client

    if args.action != "list" and not args.name:
        raise ValueError(f"`modelport models {args.action}` needs a model name")
    with Client(args.url, timeout=args.timeout) as client:
        if args.action == "load":
            client.load_model(args.name)
            print(f"loaded {args.name}: versions {', '.join(client.model_metadata(args.name).versions)}")
        elif args.action == "unload":
            client.unload_model(args.name)
            print(f"unloaded {args.name}")
        else:
            _print_index(client.repository_index())
    return 0


def _print_index(rows) -> None:
    width = max([len(r.name) for r in rows] + [5])
    print(f"{'MODEL':<{width}}  VERSION  STATE        REASON")
    for row in rows:
        print(f"{row.name:<{width}}  {row.version or '-':<7}  {row.state:<11}  {row.reason}")
