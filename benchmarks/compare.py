"""modelport vs the minimal grpc.aio stub, same model, same load: what do modelport's layers cost?

Starts `modelport serve` and then `benchmarks/minimal_stub.py` as subprocesses on free ports (one
at a time, so they never compete for CPUs), drives each with the `modelport bench` load generator
and prints requests/s, latency and the modelport/stub throughput ratio per concurrency level.

    python benchmarks/models.py --model-repository /tmp/bench-models
    python benchmarks/compare.py --model-repository /tmp/bench-models --name mlp --batch 1 \\
        --concurrency 16 --seconds 5 --json compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from modelport.client import Client, bench

HERE = Path(__file__).resolve().parent


class Server:
    """A server subprocess; its address comes from the 'listening on HOST:PORT' line it prints."""

    def __init__(self, command: list[str], label: str, cpus: set[int] | None = None,
                 start_timeout: float = 120.0) -> None:
        self.label = label
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin
        )
        self.lines: list[str] = []
        found = threading.Event()
        self.address = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                match = re.search(r"listening on ([^:\s]+):(\d+)", line)
                if match and not found.is_set():
                    self.address = f"{match.group(1)}:{match.group(2)}"
                    found.set()
            found.set()  # the output ended: the process is gone, no need to wait any longer

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(start_timeout) or not self.address:
            self.stop()
            raise RuntimeError(f"{label} did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def modelport_command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(args.model_repository),
            "--grpc-port", "0", "--host", "127.0.0.1", *args.serve_arg]  # fmt: skip


def stub_command(args: argparse.Namespace) -> list[str]:
    model = args.model_repository / args.name / str(args.version) / "model.onnx"
    command = [sys.executable, str(HERE / "minimal_stub.py"), "--model", str(model), "--name", args.name, "--port", "0"]
    if args.stub_intra_op_threads:
        command += ["--intra-op-threads", str(args.stub_intra_op_threads)]
    return command + args.stub_arg


def cpu_list(text: str) -> set[int]:
    """"0-7,12" -> {0, ..., 7, 12} (taskset's list format)."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def measure(server: Server, args: argparse.Namespace) -> list[bench.LevelResult]:
    with Client(server.address, timeout=30) as client:
        meta = client.model_metadata(args.name)
    request = bench.infer_request(args.name, bench.random_inputs(meta.inputs, args.batch))
    return bench.sweep(server.address, request, args.concurrency, args.seconds, args.warmup, batch=args.batch,
                       processes=args.processes, timeout=60)  # fmt: skip


def _median_runs(runs: list[list[bench.LevelResult]]) -> list[bench.LevelResult]:
    """Per level, the run with the median requests/s."""
    by_level = zip(*runs)
    return [sorted(level, key=lambda r: r.requests_per_s)[len(level) // 2] for level in by_level]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from modelport.client.bench_cli import parse_concurrency

    p = argparse.ArgumentParser(description="Throughput of modelport vs the minimal grpc.aio stub on one model.")
    p.add_argument("--model-repository", required=True, type=Path)
    p.add_argument("--name", required=True, help="model name (<repository>/<name>/<version>/model.onnx)")
    p.add_argument("--version", type=int, default=1, help="model version the stub serves (default 1)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=parse_concurrency, default=[16], help="levels, as for modelport bench")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--processes", type=int, default=1, help="client processes (modelport bench --processes)")
    p.add_argument("--stub-intra-op-threads", type=int, help="stub's ONNX Runtime threads (default: as modelport)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `modelport serve` argument, e.g. --serve-arg=--workers=2; repeatable")
    p.add_argument("--stub-arg", action="append", default=[],
                   help="extra minimal_stub.py argument, e.g. --stub-arg=--provider=cuda; repeatable")
    p.add_argument("--server-cpus", type=cpu_list,
                   help="pin the servers to these CPUs, e.g. 0-7 (servers size their threads from it)")
    p.add_argument("--client-cpus", type=cpu_list, help="pin this load generator (and its worker processes), e.g. 8-15")
    p.add_argument("--repeat", type=int, default=1,
                   help="alternate modelport and stub this many times; the median run of each is reported (default 1)")
    p.add_argument("--json", type=Path, help="write every run as JSON")
    args = p.parse_args(argv)

    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    runs: dict[str, list[list[bench.LevelResult]]] = {"modelport": [], "stub": []}
    for _ in range(args.repeat):
        for label, command in (("modelport", modelport_command(args)), ("stub", stub_command(args))):
            with Server(command, label, args.server_cpus) as server:
                try:
                    runs[label].append(measure(server, args))
                except Exception:
                    print(f"{label} failed; its output:\n" + "".join(server.lines), file=sys.stderr)
                    raise
            time.sleep(0.5)
    results = {label: _median_runs(found) for label, found in runs.items()}
    print(f"model {args.name}, batch {args.batch}, {args.seconds:g} s per level after {args.warmup:g} s warm-up, "
          f"{args.processes} client process(es), host {platform.node()}, median of {args.repeat} run(s)")  # fmt: skip
    for label, found in runs.items():
        for level in zip(*found):
            print(f"  {label} c={level[0].concurrency} req/s per run: "
                  + ", ".join(f"{r.requests_per_s:.1f}" for r in level))
    print(f"{'concurrency':>11} {'modelport req/s':>16} {'stub req/s':>11} {'ratio':>6} "
          f"{'modelport p99 ms':>17} {'stub p99 ms':>12}")  # fmt: skip
    for ours, ref in zip(results["modelport"], results["stub"]):
        ratio = ours.requests_per_s / ref.requests_per_s if ref.requests_per_s else float("nan")
        print(f"{ours.concurrency:>11} {ours.requests_per_s:>16.1f} {ref.requests_per_s:>11.1f} {ratio:>6.2f} "
              f"{ours.p99_ms:>17.2f} {ref.p99_ms:>12.2f}")  # fmt: skip
    if args.json:
        document = {
            "model": args.name, "batch": args.batch, "seconds": args.seconds, "warmup": args.warmup,
            "client_processes": args.processes, "started_at": started, "host": platform.node(),
            "cpus": os.cpu_count(), "server_cpus": sorted(args.server_cpus or []),
            "client_cpus": sorted(args.client_cpus or []),
            "median": {label: [r.to_dict() for r in levels] for label, levels in results.items()},
            "runs": {label: [[r.to_dict() for r in run] for run in found] for label, found in runs.items()},
        }  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    failed = any(r.errors for rs in results.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
