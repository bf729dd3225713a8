"""Servers held for a measurement, the load against them, and the in-process reference.

Servers are `modelport serve` / `minimal_stub.py` subprocesses on port 0 (compare.py's `Server`),
pinned with sched_setaffinity, stopped with SIGTERM whatever happens; their logs go to
`DIR/logs/`. Load comes from `modelport bench`'s generator in worker processes pinned away from
the server where the target says so. In-process references run as `inprocess.py` subprocesses
pinned like the server. Each level also reads the server's own /metrics before and after, to say
what it did during the level (rows per ONNX Runtime run, ms per run, busy share, queue time).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compare import Server  # benchmarks/compare.py
from context import Ctx
from machine import CpuMeter, cpu_text
from report import Row, cpu_note, log

from modelport.client import Client, bench

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- servers


def modelport_command(repository: Path, *extra: str) -> list[str]:
    """`modelport serve` on `repository`, gRPC and metrics on free ports of 127.0.0.1."""
    # INFO: the 'listening on' line is logged at INFO (no per-request lines at INFO, only failures).
    return [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(repository),
            "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--host", "127.0.0.1", "--log-level", "INFO",
            *extra]  # fmt: skip


def stub_command(model: Path, name: str, *extra: str) -> list[str]:
    """minimal_stub.py serving `model` as `name` on a free port."""
    return [sys.executable, str(HERE / "minimal_stub.py"), "--model", str(model), "--name", name, "--port", "0", *extra]


@contextlib.contextmanager
def serving(command: list[str], label: str, cpus: set[int] | None, log_file: Path, listeners: int = 1,
            timeout: float = 300.0) -> Iterator[Server]:  # fmt: skip
    """A started server (all `listeners` worker processes listening); always stopped, its output
    saved to `log_file`."""
    log(f"  start {label}{f' on CPUs {cpu_text(cpus)}' if cpus else ''}: {' '.join(command[2:6])} ...")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = Server(command, label, cpus, start_timeout=timeout)
    except RuntimeError as exc:
        log_file.write_text(str(exc))
        raise
    try:
        deadline = time.monotonic() + timeout
        while sum("listening on" in line for line in list(server.lines)) < listeners:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: {listeners} processes should listen; output:\n"
                                   + "".join(server.lines[-50:]))
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        time.sleep(0.2)  # let the reader thread take the last lines
        log_file.write_text("".join(server.lines))


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This thread (and the processes it starts) on `cpus` for a while."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def modelport_threads(cpus: set[int] | None, workers: int = 1, instances: int = 1) -> int:
    """The intra-op threads `modelport serve` gives a session on `cpus` (its own rule)."""
    count = len(cpus) if cpus else len(os.sched_getaffinity(0))
    try:
        from modelport.server.cpus import cgroup_cpu_limit, intra_op_threads

        limit = cgroup_cpu_limit()
        usable = max(1, min(count, math.ceil(limit)) if limit else count)
        return intra_op_threads(usable, workers, instances)
    except ImportError:
        return max(1, count // (workers * instances))


# ---------------------------------------------------------------- load and references


def load(
    ctx: Ctx,
    server: Server,
    model: str,
    *,
    batch: int,
    concurrency: int,
    processes: int = 1,
    client_cpus: set[int] | None = None,
    requests_per_channel: int = bench.REQUESTS_PER_CHANNEL,
    prewarm: float = 0.0,
    request_id: str = "",
) -> tuple[bench.LevelResult, dict[str, float]]:
    """One closed-loop level against `server` from `processes` load-generator processes (always
    child processes, so pinning them never touches this one). `prewarm` seconds of the same load
    run first, unmeasured (e.g. for cuDNN's per-shape algorithm search)."""
    with Client(server.address, timeout=60) as client:
        meta = client.model_metadata(model)
    request = bench.infer_request(model, bench.random_inputs(meta.inputs, batch), request_id=request_id)
    with pinned(client_cpus):
        pool = bench.ProcessPool(processes, server.address, request, timeout=60,
                                 requests_per_channel=requests_per_channel)
    with pool:
        if prewarm > 0:
            pool.run_level(concurrency, prewarm, 0.0, batch=batch)
        meter = CpuMeter([server.proc.pid])
        before = scrape_metrics(server)
        meter.start()
        result = pool.run_level(concurrency, ctx.seconds, ctx.warmup, batch=batch)
        cpu = meter.stop()
        cpu.update(server_stats(before, scrape_metrics(server), cpu["wall_s"]))
    if not result.requests:
        first = "; ".join(f"{e.code} x{e.count}: {e.first_message}" for e in result.error_summary)
        raise RuntimeError(f"{server.label}: no request succeeded ({first or 'no answer'})")
    log(f"    {server.label}: {result.requests_per_s:,.0f} req/s, {result.items_per_s:,.0f} items/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}; "
        f"{cpu_note('', cpu).strip()}")  # fmt: skip
    return result, cpu


def inprocess(ctx: Ctx, model_path: Path, *, batch: int, threads: int, cpus: set[int] | None, provider: str = "cpu",
              concurrency: int = 1, label: str = "inprocess") -> dict[str, Any]:  # fmt: skip
    """inprocess.py in a subprocess pinned to `cpus`; its JSON result."""
    log_file = ctx.log_path(label, provider)
    result_file = log_file.with_suffix(".json")
    command = [sys.executable, str(HERE / "inprocess.py"), "--model", str(model_path), "--batch", str(batch),
               "--intra-op-threads", str(threads), "--concurrency", str(concurrency), "--seconds", str(ctx.seconds),
               "--warmup", str(ctx.warmup), "--provider", provider, "--json", str(result_file)]  # fmt: skip
    log(f"  in-process ORT ({provider}, batch {batch}, {threads} intra-op threads, {concurrency} calling thread(s)"
        f"{f', CPUs {cpu_text(cpus)}' if cpus else ''})")  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=pin, timeout=600)
    log_file.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"inprocess.py failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result = json.loads(result_file.read_text())
    log(f"    in-process: {result['items_per_s']:,.0f} items/s, p99 {result['p99_ms']:.2f} ms on {result['provider']}")
    return result


def alternate(ctx: Ctx, row: Row, sides: list[tuple[str, Callable[[], contextlib.AbstractContextManager]]],
              model: str, *, batch: int, concurrency: int, client_cpus: set[int] | None,
              repeat: int, processes: int = 1,
              request_ids: dict[str, str] | None = None,
              ) -> dict[str, list[tuple[bench.LevelResult, dict]]]:  # fmt: skip
    """Measure each side in turn, `repeat` rounds; the runs of each side. `request_ids` gives the
    sides whose requests carry an id (what online quality remembers)."""
    runs: dict[str, list[tuple[bench.LevelResult, dict]]] = {label: [] for label, _ in sides}
    for round_ in range(repeat):
        for label, start in sides:
            log(f"  {row.name}: {label} run {round_ + 1}/{repeat}")
            with start() as server:
                runs[label].append(load(ctx, server, model, batch=batch, concurrency=concurrency,
                                        processes=processes, client_cpus=client_cpus,
                                        request_id=(request_ids or {}).get(label, "")))
            time.sleep(0.3)
    return runs


def median_run(runs: list[bench.LevelResult]) -> bench.LevelResult:
    """The run of median req/s (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.requests_per_s)[len(runs) // 2]


# ---------------------------------------------------------------- the server's own metrics


# The modelport metrics that explain a level, summed over every worker's /metrics and every model.
# Each request observes the run time of the execution it was part of, so the mean of the infer
# histogram is the time of one run, batched or not.
_SERIES = ("modelport_batch_size_sum", "modelport_batch_size_count",
           "modelport_compute_infer_duration_seconds_sum", "modelport_compute_infer_duration_seconds_count",
           "modelport_queue_duration_seconds_sum", "modelport_queue_duration_seconds_count")  # fmt: skip


def scrape_metrics(server: Server) -> dict[str, float] | None:
    """The _SERIES totals from every /metrics port the server's log names; None without one."""
    ports = {m.group(1) for line in list(server.lines)
             if (m := re.search(r"metrics on http://[^:/]+:(\d+)/metrics", line))}
    if not ports:
        return None
    totals = dict.fromkeys(_SERIES, 0.0)
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            match = re.match(r"([a-z_]+)(?:\{[^}]*\})? ([-+0-9.eEinfa]+)$", line)
            if match and match.group(1) in totals:
                totals[match.group(1)] += float(match.group(2))
    return totals


def server_stats(before: dict[str, float] | None, after: dict[str, float] | None, wall: float) -> dict[str, float]:
    """What the server's own metrics say of a level: rows per ONNX Runtime run, ms per run, the
    share of the time a session was running (summed over instances and workers), queue time per
    request."""
    if not before or not after:
        return {}
    d = {k: after[k] - before[k] for k in _SERIES}
    runs, observed = d["modelport_batch_size_count"], d["modelport_compute_infer_duration_seconds_count"]
    if runs <= 0 or observed <= 0:
        return {}
    run_s = d["modelport_compute_infer_duration_seconds_sum"] / observed
    queued = d["modelport_queue_duration_seconds_count"]
    return {
        "rows_per_exec": round(d["modelport_batch_size_sum"] / runs, 2),
        "ort_ms_per_exec": round(1000 * run_s, 3),
        "ort_busy": round(run_s * runs / wall, 3),
        "queue_ms": round(1000 * d["modelport_queue_duration_seconds_sum"] / queued, 3) if queued else None,
    }


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server (Debian's package) on a free loopback port, as a deployment would run it
    (append-only file, fsync every second); yields its URL."""
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make test installs Debian's redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)
