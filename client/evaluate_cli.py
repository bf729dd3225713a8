"""`modelport evaluate`: accuracy, precision/recall/F1, confusion matrix and latency of a served
classifier on a labelled .npz file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .argtypes import positive_float, positive_int

EPILOG = """examples:
  modelport evaluate --url localhost:8001 --model mlp --data test.npz
  modelport evaluate --url localhost:8001 --model mlp --data test.npz --batch-size 256 --threshold 0.3 --json report.json
  modelport evaluate --url localhost:8001 --model two_in --data test.npz --output probs --json -

The .npz holds 'x' (the inputs) and 'y' (integer class labels, 0/1 for binary); a model with
several inputs takes one array per input name instead of 'x'. Predictions are read from the
output: [N] or [N, 1] probabilities (sigmoid) are class 1 when above --threshold; [N, C] scores
give the argmax class; integer [N] or [N, 1] outputs are taken as the labels themselves.
Metrics equal scikit-learn's (zero_division=0); classes are the sorted union of true and
predicted labels.
Exit status: 0 on success, 1 when the server fails a call, 2 for bad data or options.
"""


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the `evaluate` subcommand."""
    p = sub.add_parser(
        "evaluate",
        help="score a served classifier on labelled data (accuracy, precision/recall/F1, confusion matrix, latency)",
        description="Run a labelled .npz through a served classifier in batches and report accuracy,\n"
        "per-class and macro precision/recall/F1, the confusion matrix and request latency.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-u", "--url", default="localhost:8001", help="server address host:port (default localhost:8001)")
    p.add_argument("-m", "--model", required=True, help="model name")
    p.add_argument("-x", "--model-version", default="", help="model version (default: newest served)")
    p.add_argument("--data", required=True, type=Path, metavar="FILE.npz", help=".npz with 'x' (or one array per input) and 'y'")
    p.add_argument("-b", "--batch-size", type=positive_int, default=64, help="examples per request (default 64)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a [N, 1] probability above this is class 1 (default 0.5)")  # fmt: skip
    p.add_argument("--output", metavar="NAME", help="the output holding the predictions (needed when the model has several)")
    p.add_argument("--json", metavar="FILE|-", help="write every number as JSON to FILE, or to stdout with '-'")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="per-request deadline in seconds (default 60)")
    p.set_defaults(func=run)




def run(args: argparse.Namespace) -> int:
    """Load the data, evaluate, print the report (and the JSON)."""
    from . import Client, InferenceServerError
    from .evaluate import EvaluationInputError, evaluate, load_data

    try:
        arrays, y = load_data(args.data)
    except EvaluationInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = ProgressLine(sys.stderr)
    with Client(args.url, timeout=args.timeout) as client:
        try:
            result = evaluate(client, args.model, arrays, y, version=args.model_version, batch_size=args.batch_size,
                              threshold=args.threshold, output=args.output, progress=progress.update)  # fmt: skip
        except InferenceServerError as exc:
            progress.clear()
            print(f"error: model '{args.model}' at {args.url}: {exc}", file=sys.stderr)
            return 1
        except EvaluationInputError as exc:
            progress.clear()
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
            try:
                Path(args.json).write_text(text + "\n")
            except OSError as exc:
                print(f"error: cannot write {args.json}: {exc}", file=sys.stderr)
                return 2
    return 0


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
        lines.append(f"{label:>{width}}  {m.precision[i]:>9.4f}  {m.recall[i]:>9.4f}  {m.f1[i]:>9.4f}  {m.support[i]:>9}")
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


class ProgressLine:
    """Progress on stderr: one line rewritten with \\r on a terminal, a few plain lines otherwise."""

    PLAIN_STEPS = 4  # plain lines at 25, 50, 75 and 100 %

    def __init__(self, stream: TextIO, min_interval: float = 0.1) -> None:
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._shown = False
        self._next_step = 1

    def update(self, done: int, total: int) -> None:
        """Show that `done` of `total` examples have their predictions."""
        if self.live:
            now = time.monotonic()
            if done < total and now - self._last < self.min_interval:
                return
            self._last = now
            self.stream.write(f"\revaluating: {done}/{total} examples ({100 * done // max(total, 1)}%)")
            self.stream.flush()
            self._shown = True
            return
        reached = self._next_step
        while self._next_step <= self.PLAIN_STEPS and done * self.PLAIN_STEPS >= self._next_step * total:
            self._next_step += 1
        if self._next_step > reached and done:
            print(f"evaluating: {done}/{total} examples ({100 * done // max(total, 1)}%)", file=self.stream, flush=True)

    def clear(self) -> None:
        """Remove the live line before other output."""
        if self.live and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
