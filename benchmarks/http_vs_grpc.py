"""HTTP/REST vs gRPC on one modelport server, in the same run, with the same load generator
(`modelport bench`); and, when an MLServer environment is given, MLServer's v2 HTTP endpoint
serving the same model.onnx (benchmarks/mlserver_onnx.py), loaded the same way.

    python benchmarks/http_vs_grpc.py --work /tmp/hvg --concurrency 16 --seconds 5 \\
        [--mlserver /tmp/mlserver-venv] [--repeat 3] [--json hvg.json]

One `modelport serve` process (gRPC and HTTP on free ports, every default on) is driven by
`modelport bench` subprocesses: over gRPC, over HTTP with the binary tensor extension (what
`Client("http://...")` and tritonclient.http send), and over HTTP with JSON tensors. MLServer
(1.7 has no binary extension: its HTTP load is JSON) then serves the same file with `debug` off
(no access log line per request) and its other defaults (one parallel inference worker). Only
one server runs at a time, so they never compete for CPUs; `--repeat` alternates rounds (each
starting with another of modelport's three loads) and reports each target's median run. Ratios
are against modelport over gRPC. Server and load generator share the machine's CPUs unless
--server-cpus / --client-cpus pin them apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compare import Server, cpu_list  # benchmarks/compare.py
from machine import CpuMeter  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
MLSERVER_MODEL = "mlp"


def write_model(repository: Path, name: str) -> Path:
    """The seed-shaped MLP (benchmarks/models.py `mlp`) as <repository>/<name>/1/model.onnx."""
    from models import check_loads, mlp, save  # benchmarks/models.py

    path = save(mlp(), repository, name)
    check_loads(path)
    return path


def pin(cpus: set[int] | None):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


# ---------------------------------------------------------------- servers


def start_modelport(args: argparse.Namespace) -> tuple[Server, str, str]:
    """`modelport serve` on free ports: (server, gRPC address, HTTP URL)."""
    command = [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(args.model_repository),
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--host", "127.0.0.1",
               "--log-level", "INFO", *args.serve_arg]  # fmt: skip
    server = Server(command, "modelport", args.server_cpus)
    deadline = time.monotonic() + 60
    while not (found := [m for line in list(server.lines) if (m := re.search(r"HTTP/REST on ([^:\s]+):(\d+)", line))]):
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("modelport serve did not open its HTTP port:\n" + "".join(server.lines[-30:]))
        time.sleep(0.05)
    return server, server.address, f"http://{found[0].group(1)}:{found[0].group(2)}"


class MLServer:
    """`mlserver start` on a folder holding settings.json and the model's model-settings.json."""

    def __init__(self, venv: Path, model: Path, folder: Path, threads: int, cpus: set[int] | None) -> None:
        binary = venv / "bin" / "mlserver"
        if not binary.is_file():
            raise FileNotFoundError(f"{binary} not found: python3.11 -m venv {venv} && {venv}/bin/pip install "
                                    "mlserver==1.7.1 onnxruntime==1.31.1 uvloop==0.21.0")  # fmt: skip
        http_port, grpc_port, metrics_port = free_ports(3)
        (folder / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps({
            "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_port": metrics_port}))  # fmt: skip
        (folder / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps({
            "name": MLSERVER_MODEL, "implementation": "mlserver_onnx.OnnxModel",
            "parameters": {"uri": str(model), "version": "1", "extra": {"intra_op_threads": threads}}}))  # fmt: skip
        self.url = f"http://127.0.0.1:{http_port}"
        self.log = folder / "mlserver.log"
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([str(binary), "start", str(folder)], cwd=folder, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=pin(cpus))  # fmt: skip
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"MLServer did not become ready; its log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{MLSERVER_MODEL}/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def version(self) -> str:
        with urllib.request.urlopen(f"{self.url}/v2", timeout=10) as answer:
            return json.loads(answer.read()).get("version", "?")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------- load


def bench(args: argparse.Namespace, server_pid: int, url: str, model: str, label: str, *extra: str) -> dict[str, Any]:
    """One `modelport bench` level in a subprocess; its JSON level, with the command and the
    server's CPU time per request (its process tree's CPU seconds while the bench ran, over the
    requests of warm-up and window at the window's rate: an estimate)."""
    out = args.work / f"bench-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.json"
    command = [sys.executable, "-m", "modelport.client.cli", "bench", "--url", url, "--model", model,
               "--batch", str(args.batch), "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
               "--warmup", str(args.warmup), "--processes", str(args.processes), "--json", str(out),
               *extra]  # fmt: skip
    meter = CpuMeter([server_pid])
    meter.start()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=pin(args.client_cpus), timeout=600)
    cpu = meter.stop()
    if done.returncode != 0:
        raise RuntimeError(f"{label}: modelport bench exited {done.returncode}:\n{done.stdout}{done.stderr}")
    (level,) = json.loads(out.read_text())["levels"]
    level["command"] = "modelport " + " ".join(command[3:])
    served = level["requests_per_s"] * (args.warmup + args.seconds)
    level["server_cpu_us"] = round(1e6 * cpu["server_cores"] * cpu["wall_s"] / served, 1) if served else None
    print(f"    {label}: {level['requests_per_s']:,.1f} req/s, p50 {level['p50_ms']:.2f} ms, "
          f"p99 {level['p99_ms']:.2f} ms, errors {level['errors']}, server ~{level['server_cpu_us']} µs CPU/request",
          flush=True)  # fmt: skip
    return level


def median(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median requests/s (the upper one of an even count)."""
    return sorted(levels, key=lambda level: level["requests_per_s"])[len(levels) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="modelport over HTTP/REST vs gRPC (and MLServer's HTTP), same run.")
    p.add_argument("--work", type=Path, default=Path("/tmp/http-vs-grpc"), help="scratch folder (default %(default)s)")
    p.add_argument("--model-repository", type=Path,
                   help="repository holding --name (default: the seed-shaped MLP written into WORK/models)")
    p.add_argument("--name", default="mlp", help="model name (default mlp)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--processes", type=int, default=1, help="client processes (modelport bench --processes)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; each target's median run is reported")
    p.add_argument("--mlserver", type=Path, metavar="VENV",
                   help="a virtual environment with mlserver and onnxruntime (see benchmarks/mlserver_onnx.py)")
    p.add_argument("--mlserver-threads", type=int,
                   help="ONNX Runtime intra-op threads in MLServer (default: what modelport serve uses here)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `modelport serve` argument; repeatable")
    p.add_argument("--server-cpus", type=cpu_list, help="pin the servers to these CPUs, e.g. 0-7")
    p.add_argument("--client-cpus", type=cpu_list, help="pin the load generator to these CPUs, e.g. 8-15")
    p.add_argument("--json", type=Path, help="write every run as JSON")
    args = p.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model_repository is None:
        args.model_repository = args.work / "models"
        write_model(args.model_repository, args.name)
    model_file = args.model_repository / args.name / "1" / "model.onnx"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    runs: dict[str, list[dict[str, Any]]] = {}
    versions = {}
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}/{args.repeat}", flush=True)
        server, address, http_url = start_modelport(args)
        try:
            targets = [("modelport gRPC", address, ()), ("modelport HTTP binary", http_url, ()),
                       ("modelport HTTP JSON", http_url, ("--http-body", "json"))]  # fmt: skip
            shift = round_ % len(targets)  # each round starts with another target: no order bias
            for label, url, extra in targets[shift:] + targets[:shift]:
                runs.setdefault(label, []).append(bench(args, server.proc.pid, url, args.name, label, *extra))
        finally:
            server.stop()
        if args.mlserver is not None:
            time.sleep(0.5)
            from measure import modelport_threads  # benchmarks/measure.py: the same rule as serve

            threads = args.mlserver_threads or modelport_threads(args.server_cpus)
            mlserver = MLServer(args.mlserver, model_file.resolve(), args.work / "mlserver", threads, args.server_cpus)
            try:
                versions["mlserver"] = mlserver.version()
                runs.setdefault("MLServer HTTP JSON", []).append(
                    bench(args, mlserver.proc.pid, mlserver.url, MLSERVER_MODEL, "MLServer HTTP JSON",
                          "--http-body", "json"))
            finally:
                mlserver.stop()
        time.sleep(0.5)

    order = ["modelport gRPC", "modelport HTTP binary", "modelport HTTP JSON", "MLServer HTTP JSON"]
    results = {label: median(runs[label]) for label in order if label in runs}
    grpc_rate = results["modelport gRPC"]["requests_per_s"]
    print(f"\nmodel {args.name} ({model_file}), batch {args.batch}, concurrency {args.concurrency}, "
          f"{args.seconds:g} s after {args.warmup:g} s warm-up, {args.processes} client process(es), "
          f"median of {args.repeat}, host {platform.node()} ({os.cpu_count()} CPUs), {started}")  # fmt: skip
    print(f"{'target':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs gRPC':>8} {'errors':>7} "
          f"{'server µs':>10}  runs (req/s)")  # fmt: skip
    for label, level in results.items():
        each = ", ".join(f"{r['requests_per_s']:.0f}" for r in runs[label])
        print(f"{label:<24} {level['requests_per_s']:>9.1f} {level['p50_ms']:>8.2f} {level['p99_ms']:>8.2f} "
              f"{level['requests_per_s'] / grpc_rate:>8.2f} {level['errors']:>7} {level['server_cpu_us']!s:>10}  "
              f"{each}")  # fmt: skip
    print("(server µs: the server's CPU time per request, estimated; it includes MLServer's worker processes)")
    if "MLServer HTTP JSON" in results:
        ours, theirs = results["modelport HTTP JSON"], results["MLServer HTTP JSON"]
        binary = results["modelport HTTP binary"]
        print(f"modelport HTTP / MLServer HTTP, both JSON: {ours['requests_per_s'] / theirs['requests_per_s']:.2f}; "
              f"modelport HTTP binary / MLServer: {binary['requests_per_s'] / theirs['requests_per_s']:.2f} "
              f"(MLServer {versions.get('mlserver', '?')})")  # fmt: skip
    print("commands:")
    for label, level in results.items():
        print(f"  {label}: {level['command']}")
    if args.json:
        document = {"model": args.name, "batch": args.batch, "concurrency": args.concurrency,
                    "seconds": args.seconds, "warmup": args.warmup, "processes": args.processes,
                    "repeat": args.repeat, "started_at": started, "host": platform.node(), "cpus": os.cpu_count(),
                    "versions": versions, "median": results, "runs": runs}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(level["errors"] for level in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
