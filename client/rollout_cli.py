"""`modelport rollout`: roll a new version of a model out by its measured quality.

start writes `<repository>/<model>/rollout.json` (the servers pick it up at their next poll, or at
once for the --url given); step compares the candidate with the stable version on labelled traffic
(client/rollout.py says how) and advances, promotes, rolls back or holds; status shows where it
stands; promote and abort decide by hand. Every decision is appended to the rollout's history in
the repository and logged as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from .cli_common import positive_float, positive_int

EPILOG = """examples:
  modelport rollout start --model-repository ./models --name mlp --candidate 3 --weight 0.1 --url localhost:8001
  modelport rollout status --url localhost:8001 --model mlp
  modelport rollout step --model-repository ./models --url dns:///modelport-headless:8001 --name mlp --metric f1
  modelport rollout promote --model-repository ./models --name mlp --url localhost:8001
  modelport rollout abort --model-repository ./models --name mlp --url localhost:8001

`step` exit codes: 0 advance, 10 hold, 11 promote, 12 rollback (1: a server call failed, 2: bad
input). A --url may repeat; a dns:/// name stands for every address it resolves to. Servers in poll
mode pick a change up within one poll interval; the --url given are told at once.
"""
EXIT_CODES = {"advance": 0, "hold": 10, "promote": 11, "rollback": 12}
DEFAULT_STEPS = "0.1,0.25,0.5,1.0"


def configure(p: argparse.ArgumentParser) -> None:
    """The `rollout` subcommand and its own subcommands."""
    p.description = "Quality-gated rollouts: split traffic, compare on labelled rows, advance or roll back."
    p.epilog = EPILOG
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start rolling a candidate version out")
    _repository(start)
    start.add_argument("--candidate", type=positive_int, required=True, help="the version to roll out")
    start.add_argument("--stable", type=positive_int,
                       help="the version it replaces (default: what serves unversioned traffic now)")  # fmt: skip
    start.add_argument("--weight", type=_share, help="the candidate's first share (default: the first step)")
    start.add_argument("--steps", type=_steps, default=_steps(DEFAULT_STEPS),
                       help=f"the shares it advances through (default {DEFAULT_STEPS})")  # fmt: skip
    status = sub.add_parser("status", help="weights, traffic, quality and the decision step would take")
    _urls(status, required=True)
    status.add_argument("--model", required=True, help="model name")
    _thresholds(status)
    step = sub.add_parser("step", help="take one decision: hold, advance, promote or rollback")
    _repository(step, urls_required=True)
    _thresholds(step)
    for name, what in (("promote", "make the candidate stable now"), ("abort", "end the rollout: all to stable")):
        _repository(sub.add_parser(name, help=what))
    for parser in sub.choices.values():
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        parser.add_argument("--timeout", type=positive_float, default=30.0, help="deadline per call (default 30)")
        parser.add_argument("--token-file", type=Path,
                            help="a bearer token for servers started with --auth-token-file (step and the pushes "
                                 "need the admin scope); default: $MODELPORT_TOKEN")  # fmt: skip
    p.set_defaults(func=run)


def _repository(p: argparse.ArgumentParser, urls_required: bool = False) -> None:
    p.add_argument("--model-repository", required=True, type=Path, help="the repository the servers serve")
    p.add_argument("--name", required=True, help="model name")
    _urls(p, urls_required)


def _urls(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("-u", "--url", action="append", required=required, default=[],
                   help="a server (host:port or dns:///name:port for all its addresses); repeatable")  # fmt: skip


def _thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=["f1", "accuracy", "mae", "rmse"],
                   help="what to compare (default: f1 for classifiers, mae for regressors)")  # fmt: skip
    p.add_argument("--min-labels", type=positive_int, default=200, help="labelled rows each version needs (200)")
    p.add_argument("--max-drop", type=float, default=0.01, help="how much worse the candidate may be (0.01)")
    p.add_argument("--confidence", type=_confidence, default=0.95, help="one-sided confidence (0.95)")
    p.add_argument("--max-error-rate-increase", type=float, default=0.01,
                   help="how much higher the candidate's error rate may be (0.01)")  # fmt: skip


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a share must be in (0, 1], got {value}")
    return value


def _steps(text: str) -> list[float]:
    steps = [_share(part) for part in text.split(",") if part.strip()]
    if not steps or steps != sorted(steps):
        raise argparse.ArgumentTypeError(f"steps must be increasing shares, e.g. {DEFAULT_STEPS}")
    return steps


def _confidence(text: str) -> float:
    value = float(text)
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"confidence must be in [0.5, 1), got {value}")
    return value


def addresses(urls: list[str]) -> list[str]:
    """Every server address: dns:///name:port expanded to all the addresses the name resolves to."""
    found: list[str] = []
    for url in urls:
        if not url.startswith("dns:///"):
            found.append(url)
            continue
        host, _, port = url[len("dns:///"):].rpartition(":")
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        for info in infos:
            ip = info[4][0]
            found.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace) -> int:
    """Do the action."""
    actions = {"start": _start, "status": _status, "step": _step, "promote": _by_hand, "abort": _by_hand}
    return actions[args.action](args)


def _start(args: argparse.Namespace) -> int:
    from modelport.protocol.repository import version_folders
    from modelport.protocol.rollout import Rollout, read_rollout, write_rollout

    model_dir = args.model_repository / args.name
    available = version_folders(model_dir)
    current = read_rollout(model_dir)
    if current is not None and current.running:
        raise ValueError(
            f"model '{args.name}' already rolls version {current.candidate} out; promote or abort it first"
        )
    stable = args.stable or (current.default_version() if current else _newest_below(available, args.candidate))
    for version in (args.candidate, stable):
        if version not in available:
            raise ValueError(f"{model_dir} has no version {version}; it has {list(available)}")
    weight = args.weight or args.steps[0]
    rollout = Rollout(stable, args.candidate, weight, args.steps, started=time.time(),
                      history=[{"time": time.time(), "decision": "start", "weight_after": weight,
                                "reason": f"version {args.candidate} against {stable}"}])  # fmt: skip
    write_rollout(model_dir, rollout)
    told = _push(args, args.name)
    _say(args, {"model": args.name, "stable": stable, "candidate": args.candidate, "weight": weight,
                "steps": args.steps, "servers_told": told})  # fmt: skip
    return 0


def _newest_below(available: tuple[int, ...], candidate: int) -> int:
    older = [v for v in available if v < candidate]
    if not older:
        raise ValueError(f"no version older than {candidate} to compare it with: pass --stable")
    return older[-1]


def _status(args: argparse.Namespace) -> int:
    from modelport.protocol.rollout import Rollout

    from .rollout import decide

    rollout_text, evidence = _gather(args, args.model, None)
    rollout = Rollout.from_json(rollout_text) if rollout_text else None
    stable, candidate = evidence
    decision = decide(rollout, stable, candidate, _options(args, stable))
    state = {
        "model": args.model, "rollout": json.loads(rollout_text) if rollout_text else None,
        "versions": {str(e.version): e.summary(decision.metric) for e in evidence if e is not None},
        "decision_now": decision.to_dict(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        print("\n".join(_table(args.model, rollout, evidence, decision)))
    return 0


def _step(args: argparse.Namespace) -> int:
    from modelport.protocol.rollout import read_rollout, write_rollout

    from .rollout import apply, decide

    model_dir = args.model_repository / args.name
    rollout = read_rollout(model_dir)
    _, (stable, candidate) = _gather(args, args.name, rollout)
    decision = decide(rollout, stable, candidate, _options(args, stable))
    if rollout is not None and rollout.running:
        write_rollout(model_dir, apply(rollout, decision))
        if decision.decision != "hold":
            _push(args, args.name)
    _log(args.name, decision)
    _say(args, {"model": args.name, **decision.to_dict()})
    return EXIT_CODES[decision.decision]


def _by_hand(args: argparse.Namespace) -> int:
    from modelport.protocol.rollout import read_rollout, write_rollout

    from .rollout import Decision, apply

    model_dir = args.model_repository / args.name
    rollout = read_rollout(model_dir)
    if rollout is None or not rollout.running:
        raise ValueError(f"model '{args.name}' has no running rollout to {args.action}")
    name = "promote" if args.action == "promote" else "rollback"
    after = 1.0 if name == "promote" else 0.0
    decision = Decision(name, f"{args.action} by hand", rollout.weight, after, "")
    rollout = apply(rollout, decision)
    if args.action == "abort":
        rollout.state = "aborted"
    write_rollout(model_dir, rollout)
    told = _push(args, args.name)
    _log(args.name, decision)
    _say(args, {"model": args.name, **decision.to_dict(), "state": rollout.state, "servers_told": told})
    return 0


def _gather(args: argparse.Namespace, model: str, rollout):
    """(the rollout as the first server serves it, (stable evidence, candidate evidence)): traffic
    summed over every server, labelled windows from the first (the feedback store is shared)."""
    import numpy as np

    from modelport.protocol.rollout import Rollout

    from .rollout import Evidence, Traffic

    servers = addresses(args.url)
    if not servers:
        raise ValueError("no server to ask: pass --url")
    traffic: dict[int, Traffic] = {}
    served_text = ""
    for address in servers:
        with _client(args, address) as client:
            status = client.rollout_status(model)
        served_text = served_text or status.rollout_json
        for v in status.versions:
            traffic.setdefault(int(v.version), Traffic()).add(v.requests, v.failures, tuple(v.bucket_bounds_s),
                                                              list(v.bucket_counts))  # fmt: skip
    rollout = rollout or (Rollout.from_json(served_text) if served_text else None)
    if rollout is None:
        return served_text, (None, None)
    with _client(args, servers[0]) as client:
        quality = client.quality(model, include_pairs=True)
    evidence = []
    for version in (rollout.stable, rollout.candidate):
        window = quality.versions.get(str(version))
        predicted = np.asarray(window.predicted if window else (), np.float64)
        truth = np.asarray(window.truth if window else (), np.float64)
        evidence.append(Evidence(version, predicted, truth, traffic.get(version, Traffic())))
    return served_text or rollout.to_json(), tuple(evidence)


def _client(args: argparse.Namespace, address: str):
    """A Client for one server, with the bearer token when one is given."""
    from . import Client

    # Stripped either way: a token from `kubectl create secret --from-file` ends in a newline.
    token = args.token_file.read_text() if args.token_file else os.environ.get("MODELPORT_TOKEN", "")
    token = token.strip() or None
    return Client(address, timeout=args.timeout, token=token)


def _options(args: argparse.Namespace, stable):
    from .rollout import Options

    metric = args.metric
    if metric is None:  # a regressor's window holds non-integer values somewhere
        values = stable.truth if stable is not None else ()
        metric = "mae" if len(values) and any(float(v) != int(v) for v in values) else "f1"
    return Options(metric, args.min_labels, args.max_drop, args.confidence, args.max_error_rate_increase)


def _push(args: argparse.Namespace, model: str) -> list[str]:
    """Tell every --url server to reread the model now; the ones reached."""
    from . import InferenceServerError

    told = []
    for address in addresses(args.url):
        try:
            with _client(args, address) as client:
                client.rollout_refresh(model)
            told.append(address)
        except InferenceServerError as exc:
            print(f"warning: {address} was not told ({exc}); it picks the change up at its next poll",
                  file=sys.stderr)  # fmt: skip
    return told


def _log(model: str, decision) -> None:
    """One structured line per decision (stderr), for the job's log."""
    fields = {"model": model, "decision": decision.decision, "weight_before": decision.weight_before,
              "weight_after": decision.weight_after, "metric": decision.metric, "reason": decision.reason}  # fmt: skip
    print("rollout_decision " + " ".join(f"{k}={json.dumps(v)}" for k, v in fields.items()), file=sys.stderr)


def _say(args: argparse.Namespace, outcome: dict) -> None:
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        # The per-version figures are in --json; the line keeps to what was decided.
        print(" ".join(f"{key}={value}" for key, value in outcome.items() if not isinstance(value, dict)))


def _table(model: str, rollout, evidence, decision) -> list[str]:
    if rollout is None:
        return [f"model '{model}': no rollout"]
    lines = [f"model '{model}': {rollout.state}, candidate {rollout.candidate} at weight {rollout.candidate_share():g} "
             f"(steps {rollout.steps}), stable {rollout.stable}",  # fmt: skip
             f"{'version':>8} {'role':>9} {'requests':>9} {'errors':>7} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'labelled':>9} {decision.metric:>9}"]  # fmt: skip
    for role, e in zip(("stable", "candidate"), evidence):
        s = e.summary(decision.metric)
        value = "-" if s[decision.metric] is None else f"{s[decision.metric]:.4f}"
        lines.append(f"{e.version:>8} {role:>9} {s['requests']:>9} {s['error_rate']:>7.2%} {_ms(s['p50_ms']):>7} "
                     f"{_ms(s['p99_ms']):>7} {s['labelled']:>9} {value:>9}")
    lines.append(f"step would: {decision.decision} ({decision.reason})")
    for record in rollout.history[-5:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.get("time", 0)))
        lines.append(f"  {when}Z {record.get('decision')}: {record.get('reason', '')}")
    return lines


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"
