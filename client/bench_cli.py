"""`modelport bench`: closed-loop throughput and latency of a served model over a concurrency sweep."""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .cli_common import ProgressLine, add_server_options, positive_float, positive_int

EPILOG = """examples:
  modelport bench --url localhost:8001 --model mlp --concurrency 1,8,32 --seconds 5
  modelport bench --url localhost:8001 --model mlp --batch 16 --concurrency 1:64:x2 --processes 4 \\
      --json mlp.json --csv mlp.csv --plot mlp.png
  modelport bench --url localhost:8001 --model resnet --input batch.npz --concurrency 4
  modelport bench --url http://localhost:8000 --model mlp --concurrency 16   # the HTTP/REST binding

For each concurrency level C, C requests are outstanding at all times (as Triton's perf_analyzer
--concurrency-range does); after --warmup seconds, the requests completing within the next
--seconds count. Inputs are random data shaped from the model's metadata (the batch dimension is
--batch, other dynamic dimensions 1 unless --shape sets them), or the arrays of --input.
An http:// (or https://) --url loads the HTTP/REST binding instead of gRPC: the same loop, with
the request's binary-extension body made once and one keep-alive connection per outstanding
request (needs aiohttp, which the server extra installs); errors count under the gRPC status
their HTTP status stands for.
Exit status: 0 when the run completed (even with some errors), 1 when every request failed or
the model cannot be reached, 2 for bad arguments.
"""

COLUMNS = ("concurrency", "requests/s", "items/s", "p50 ms", "p90 ms", "p99 ms", "avg ms", "errors")
WIDTHS = (11, 11, 11, 9, 9, 9, 9, 7)
CSV_FIELDS = (
    "concurrency", "batch", "seconds", "requests", "errors", "requests_per_s", "items_per_s",
    "p50_ms", "p90_ms", "p99_ms", "avg_ms", "min_ms", "max_ms", "client_processes", "channels",
    "error_codes", "model", "model_version", "url", "started_at",
)  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    """The `bench` subcommand's arguments."""
    p.description = ("Closed-loop load generator for ModelInfer: throughput (requests/s, items/s) and latency "
                     "percentiles at each concurrency level, like Triton's perf_analyzer.")  # fmt: skip
    p.epilog = EPILOG
    add_server_options(p)
    p.add_argument("-b", "--batch", type=positive_int, help="items per request: the batch dimension (default 1)")
    p.add_argument("--concurrency", "--concurrency-range", dest="concurrency", default="1", type=parse_concurrency,
                   help="levels: a comma list and/or start:end[:step] ranges, step +N or xN "
                        "(default 1; e.g. 1,8,32 or 1:64:x2)")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="measurement window per level (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each window (default 1)")
    p.add_argument("--input", type=Path, metavar="FILE",
                   help=".npz with one array per input (or .npy for a single-input model) instead of random data")
    p.add_argument("--input-data", choices=["random", "zero"], default="random",
                   help="generated inputs: random values or zeros (default random)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                   help="dimensions after the batch dimension for a dynamic input (whole shape if it has no "
                        "dynamic batch dimension); repeatable")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="send every request with this id, as clients that report labels do: measures what "
                        "online quality costs (the server remembers each prediction)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="client worker processes sharing each level's concurrency (default 1: this process)")
    p.add_argument("--requests-per-channel", type=positive_int, default=8,
                   help="outstanding requests per gRPC channel/connection (default 8; over HTTP/1.1 always 1)")
    p.add_argument("--http-body", choices=["binary", "json"], default="binary",
                   help="with an http:// --url: tensors in the binary extension (default) or as JSON lists, "
                        "for servers without the extension (MLServer)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results (levels and run metadata) as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one CSV row per level")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="plot throughput against p99 latency (needs matplotlib)")
    p.set_defaults(func=run)


def parse_concurrency(text: str) -> list[int]:
    """"1,8,32" or "1:32:x2" (1,2,4,..,32) or "4:16:4" (4,8,12,16), combined with commas."""
    levels: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if ":" not in part:
                levels.append(int(part))
                continue
            start, end, *rest = part.split(":")
            step = rest[0] if rest else "1"
            value, stop = int(start), int(end)
            multiply = step.startswith("x")
            amount = int(step[1:] if multiply or step.startswith("+") else step)
            if amount < (2 if multiply else 1):
                raise ValueError
            while value <= stop:
                levels.append(value)
                value = value * amount if multiply else value + amount
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad concurrency '{text}': use e.g. 1,8,32 or 1:64:x2 or 4:16:4") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"bad concurrency '{text}': levels must be integers >= 1")
    return levels


def parse_shapes(items: Sequence[str]) -> dict[str, list[int]]:
    """["x:8,16"] -> {"x": [8, 16]}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            raise ValueError(f"bad --shape '{item}': use NAME:D1,D2 (e.g. x:3 or image:224,224,3)") from None
    return shapes




# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Prepare the request, run the sweep, print and save the results."""
    from . import bench
    from ._common import is_http
    from .bench_http import http_infer, require_aiohttp

    if args.plot is not None and not _have_matplotlib():
        raise ValueError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if is_http(args.url):
        require_aiohttp()  # before anything is sent or printed
    request, batch, description = _prepare(args)
    http = is_http(args.url)
    if http:  # the HTTP request, made once: what every call sends
        request = http_infer(request, args.timeout, binary=args.http_body == "binary")
    request_bytes = len(request.body) if http else len(request)
    meta = {
        "protocol": "http" if http else "grpc",
        "http_body": args.http_body if http else None,
        "model": args.model,
        "model_version": args.model_version,
        "url": args.url,
        "batch": batch,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "client_processes": args.processes,
        "requests_per_channel": args.requests_per_channel,
        "timeout": args.timeout,
        "inputs": description,
        "request_bytes": request_bytes,
        "request_id": args.request_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "client_host": platform.node(),
    }
    out = sys.stdout
    print(
        f"modelport bench: model '{args.model}'{' version ' + args.model_version if args.model_version else ''} at "
        f"{args.url}; batch {batch}; {_inputs_line(description)}; request {request_bytes} bytes",
        file=out,
    )
    per_connection = ("HTTP/1.1, one connection per outstanding request" if http
                      else f"{args.requests_per_channel} requests per channel")  # fmt: skip
    print(
        f"{args.warmup:g} s warm-up + {args.seconds:g} s per level; {args.processes} client process(es), "
        f"{per_connection}",
        file=out,
    )
    print(format_header(), file=out, flush=True)
    display = _LevelProgress(ProgressLine(sys.stderr))
    done: list[bench.LevelResult] = []

    def on_level(result: bench.LevelResult) -> None:
        display.clear()
        print(format_row(result), file=out, flush=True)
        for line in format_errors(result):
            print(line, file=out, flush=True)
        done.append(result)
        display.next_level(
            len(done), len(args.concurrency), args.concurrency[len(done)] if len(done) < len(args.concurrency) else None
        )

    display.next_level(0, len(args.concurrency), args.concurrency[0])
    interrupted = False
    try:
        bench.sweep(
            args.url,
            request,
            args.concurrency,
            args.seconds,
            args.warmup,
            batch=batch,
            timeout=args.timeout,
            processes=args.processes,
            requests_per_channel=args.requests_per_channel,
            progress=display.update,
            on_level=on_level,
        )
    except KeyboardInterrupt:
        display.clear()
        print("interrupted: keeping the levels that finished", file=sys.stderr)
        interrupted = True
    _save(args, meta, done)
    if interrupted:
        return 130
    if done and sum(r.requests for r in done) == 0:
        print("error: every request failed", file=sys.stderr)  # the table above says how
        return 1
    return 0


class _Unreachable(Exception):
    """The model's metadata could not be read, so no request can be built."""

    exit_code = 1


def _prepare(args: argparse.Namespace) -> tuple[bytes, int, dict[str, Any]]:
    """The serialized request, its batch size and a description of its inputs."""
    from . import Client, InferenceServerError, bench

    shapes = parse_shapes(args.shape)
    with Client(args.url, timeout=min(args.timeout, 30.0)) as client:
        try:
            meta = client.model_metadata(args.model, args.model_version)
        except InferenceServerError as exc:
            if args.input is None:
                raise _Unreachable(f"cannot read the metadata of model '{args.model}' at {args.url}: {exc}") from None
            print(f"warning: no metadata for model '{args.model}' ({exc}); sending {args.input.name} as it is",
                  file=sys.stderr)
            meta = None
    if meta is not None and not meta.inputs and args.input is None:
        raise _Unreachable(f"the metadata of model '{args.model}' at {args.url} lists no inputs: pass --input "
                           "FILE.npz to say what to send")  # fmt: skip
    if args.input is not None:
        if args.batch is not None or shapes:
            print("warning: --batch and --shape are ignored with --input (the arrays' shapes are sent)",
                  file=sys.stderr)
        inputs = bench.load_inputs(args.input, meta.inputs if meta else None)
        source = str(args.input)
    else:
        inputs = bench.random_inputs(meta.inputs, args.batch or 1, shapes, zeros=args.input_data == "zero")
        source = args.input_data
    datatypes = {t.name: t.datatype for t in meta.inputs} if meta else None
    request = bench.infer_request(
        args.model, inputs, version=args.model_version, datatypes=datatypes, request_id=args.request_id
    )
    description = {
        "source": source,
        "tensors": [
            {"name": n, "datatype": (datatypes or {}).get(n) or _datatype(a), "shape": list(a.shape)}
            for n, a in inputs.items()
        ],
    }
    return request, bench.batch_of(inputs), description


def _datatype(array) -> str:
    from modelport.protocol.codec import datatype_of

    return datatype_of(array)


def _inputs_line(description: dict[str, Any]) -> str:
    tensors = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in description["tensors"])
    return f"inputs ({description['source']}): {tensors}"


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- output


def _num(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.{digits}f}"


def format_header() -> str:
    """The table's header line."""
    return " ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, WIDTHS))


def format_row(result) -> str:
    """One level as a table row, aligned with `format_header`."""
    w = WIDTHS
    return " ".join(
        [
            f"{result.concurrency:>{w[0]}}",
            _num(result.requests_per_s, w[1], 1),
            _num(result.items_per_s, w[2], 1),
            _num(result.p50_ms, w[3], 2),
            _num(result.p90_ms, w[4], 2),
            _num(result.p99_ms, w[5], 2),
            _num(result.avg_ms, w[6], 2),
            f"{result.errors:>{w[7]}}",
        ]
    )


def format_errors(result) -> list[str]:
    """Indented lines under a row: count and first message of each failing status code."""
    return [f"    {e.code} x{e.count}: {e.first_message}" for e in result.error_summary]


class _LevelProgress:
    """The sweep on stderr: a live line per level on a terminal; a plain line per level elsewhere."""

    def __init__(self, line: ProgressLine) -> None:
        self._line = line
        self._prefix = ""

    def next_level(self, index: int, total: int, concurrency: int | None) -> None:
        """Announce level index+1 of total (None: the sweep is over)."""
        if concurrency is None:
            return
        self._prefix = f"[{index + 1}/{total}] concurrency {concurrency}"
        self._line.say(f"{self._prefix}: running")

    def update(self, p) -> None:
        """Show a bench.Progress snapshot."""
        if p.measuring:
            measured = max(1e-9, p.elapsed - p.warmup)
            text = (
                f"{self._prefix}: measuring {measured:4.1f}/{p.seconds:g} s  {p.requests} ok "
                f"({p.requests / measured:.1f}/s)  {p.errors} errors"
            )
        else:
            text = f"{self._prefix}: warming up {p.elapsed:4.1f}/{p.warmup:g} s"
        self._line.show(text, force=True)

    def clear(self) -> None:
        """Remove the live line before printing a result."""
        self._line.clear()


def _save(args: argparse.Namespace, meta: dict[str, Any], results: list) -> None:
    if args.json is not None:
        write_json(args.json, meta, results)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.csv is not None:
        write_csv(args.csv, meta, results)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.plot is not None and results:
        write_plot(args.plot, meta, results)
        print(f"wrote {args.plot}", file=sys.stderr)


def write_json(path: Path, meta: dict[str, Any], results: list) -> None:
    """Run metadata and every level's numbers."""
    document = {**meta, "levels": [r.to_dict() for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_csv(path: Path, meta: dict[str, Any], results: list) -> None:
    """One row per level; the run's metadata repeated in each row so files can be concatenated."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            row = {k: ("" if v is None else v) for k, v in r.to_dict().items()}
            row["error_codes"] = ";".join(f"{e.code}={e.count}" for e in r.error_summary)
            row.update({k: meta[k] for k in ("model", "model_version", "url", "started_at")})
            writer.writerow(row)


def write_plot(path: Path, meta: dict[str, Any], results: list) -> None:
    """Throughput (items/s) against p99 latency, one labelled point per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in results if r.requests]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r.p99_ms for r in points], [r.items_per_s for r in points], marker="o")
    for r in points:
        ax.annotate(f"c={r.concurrency}", (r.p99_ms, r.items_per_s), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (items/s)")
    ax.set_title(f"{meta['model']} @ {meta['url']}, batch {meta['batch']}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
