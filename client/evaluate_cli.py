"""`modelport evaluate`: accuracy, precision/recall/F1, confusion matrix and latency of a served
classifier on a labelled .npz file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_common import ProgressLine, add_server_options, positive_int

EPILOG = """examples:
  modelport evaluate --url localhost:8001 --model mlp --data test.npz
  modelport evaluate --url localhost:8001 --model mlp --data test.npz -b 256 --threshold 0.3 --json report.json
  modelport evaluate --url localhost:8001 --model two_in --data test.npz --output probs --json -

The .npz holds 'x' (the inputs) and 'y' (integer class labels, 0/1 for binary); a model with
several inputs takes one array per input name instead of 'x'. Predictions are read from the
output: [N] or [N, 1] probabilities (sigmoid) are class 1 when above --threshold; [N, C] scores
give the argmax class; integer [N] or [N, 1] outputs are taken as the labels themselves.
Metrics equal scikit-learn's (zero_division=0); classes are the sorted union of true and
predicted labels.
Exit status: 0 on success, 1 when the server fails a call, 2 for bad data or options.
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `evaluate` subcommand's arguments."""
    p.description = ("Run a labelled .npz through a served classifier in batches and report accuracy,\n"
                     "per-class and macro precision/recall/F1, the confusion matrix and request latency.")  # fmt: skip
    p.epilog = EPILOG
    add_server_options(p)
    p.add_argument("--data", required=True, type=Path, metavar="FILE.npz",
                   help=".npz with 'x' (or one array per input) and 'y'")
    p.add_argument("-b", "--batch-size", type=positive_int, default=64, help="examples per request (default 64)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a [N, 1] probability above this is class 1 (default 0.5)")  # fmt: skip
    p.add_argument("--output", metavar="NAME",
                   help="the output holding the predictions (needed when the model has several)")
    p.add_argument("--json", metavar="FILE|-", help="write every number as JSON to FILE, or to stdout with '-'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the data, evaluate, print the report (and the JSON)."""
    from . import Client, InferenceServerError
    from .evaluate import evaluate, load_data

    arrays, y = load_data(args.data)
    progress = ProgressLine(sys.stderr)
    milestones = _Milestones(progress)
    try:
        with Client(args.url, timeout=args.timeout) as client:
            result = evaluate(client, args.model, arrays, y, version=args.model_version, batch_size=args.batch_size,
                              threshold=args.threshold, output=args.output, progress=milestones.update)  # fmt: skip
    except InferenceServerError as exc:
        raise InferenceServerError(exc.code, f"model '{args.model}' at {args.url}: {exc.message}") from exc
    finally:
        progress.clear()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    to_stdout = args.json == "-"
    # With `--json -` stdout carries only the JSON; the human report moves to stderr.
    report = sys.stderr if to_stdout else sys.stdout
    print("\n".join(format_report(result, args.url)), file=report)
    if args.json:
        text = json.dumps(result.to_dict(), indent=2)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


class _Milestones:
    """Evaluation progress: live on a terminal, plain lines at 25, 50, 75 and 100 % elsewhere."""

    STEPS = 4

    def __init__(self, line: ProgressLine) -> None:
        self._line = line
        self._next = 1

    def update(self, done: int, total: int) -> None:
        """`done` of `total` examples have their predictions."""
        text = f"evaluating: {done}/{total} examples ({100 * done // max(total, 1)}%)"
        self._line.show(text, force=done >= total)
        reached = self._next
        while self._next <= self.STEPS and done * self.STEPS >= self._next * total:
            self._next += 1
        if self._next > reached and done:
            self._line.say(text)


# ---------------------------------------------------------------- report


def format_report(result, url: str) -> list[str]:
    """The human-readable report as lines."""
    m, lat = result.report, result.latency
    if result.mode == "sigmoid":
        how = f"probability > {result.threshold:g} is class 1"
    else:
        how = "argmax over classes" if result.mode == "argmax" else "integer labels as given"
    version = f" version {result.version}" if result.version else ""
    width = max(7, *(len(str(label)) for label in m.labels))
    lines = [
        f"model '{result.model}'{version} at {url}, output '{result.output}' ({how})",
        f"examples   {m.n}",
        f"accuracy   {m.accuracy:.4f}",
        "",
        f"{'class':>{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}",
    ]
    for i, label in enumerate(m.labels):
        lines.append(
            f"{label:>{width}}  {m.precision[i]:>9.4f}  {m.recall[i]:>9.4f}  {m.f1[i]:>9.4f}  {m.support[i]:>9}"
        )
    macro = m.macro
    lines.append(f"{'macro':>{width}}  {macro.precision:>9.4f}  {macro.recall:>9.4f}  {macro.f1:>9.4f}  {m.n:>9}")
    if m.positive is not None:
        p = m.positive
        lines.append(f"binary (positive class 1): precision {p.precision:.4f}  recall {p.recall:.4f}  f1 {p.f1:.4f}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    cell = max(5, len(str(int(m.confusion_matrix.max()))), *(len(str(label)) for label in m.labels))
    corner = "true\\pred"
    lines.append(f"{corner:>{max(width, len(corner))}}" + "".join(f"  {label:>{cell}}" for label in m.labels))
    for label, row in zip(m.labels, m.confusion_matrix):
        lines.append(f"{label:>{max(width, len(corner))}}" + "".join(f"  {v:>{cell}}" for v in row))
    lines += [
        "",
        f"latency    {lat['count']} requests of up to {result.batch_size} examples: mean {lat['mean_ms']:.2f} ms, "
        f"p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms",
        f"throughput {lat['examples_per_s']:.1f} examples/s ({lat['wall_s']:.2f} s in all)",
    ]
    return lines
