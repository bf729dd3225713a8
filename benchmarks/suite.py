"""Every throughput target of the project in one run: modelport against its references, same
machine, same run, written to `DIR/results.json` and `DIR/results.md` as each target finishes.

    python benchmarks/suite.py --out /tmp/suite                  # 16-core box: everything but the GPU (~5 min)
    python benchmarks/suite.py --out /tmp/suite --gpu            # ... and ResNet-50 on CUDA
    python benchmarks/suite.py --out /tmp/suite --quick          # a laptop: ~2 s per level, smoke-test sizes
    python benchmarks/suite.py --out /tmp/suite --only mlp_vs_stub,drift_cost

Targets (ratio = modelport / reference, both measured in this run; goal = the issue's):

| target | load | reference | goal |
|---|---|---|---|
| mlp_vs_stub | seed-1 MLP, batch 1, concurrency 16; servers and the client on the same 2 CPUs | minimal_stub.py, same load | >= 0.9 req/s |
| resnet50_cpu_vs_inprocess | ResNet-50, batch 8, concurrency 4; server on CPUs 0-7, client on 8-15 | in-process ORT on 0-7, same intra-op threads, batch 8 | >= 0.85 items/s |
| cnn_vs_stub, cnn_vs_inprocess | seed-2 CNN, batch 8, concurrency 4 | the stub / in-process ORT | report |
| cnn_dynamic_batching | CNN, batch-1 requests, concurrency 32 | the same model without dynamic batching | >= 1.3 items/s |
| mlp_workers | MLP, batch 1, concurrency 128 from 8 client processes (CPUs 8-15); server on 0-7 | --workers 1 | >= 5 req/s |
| resnet50_gpu (--gpu) | ResNet-50 fp32, batch-1 requests, concurrency 64, cuda + dynamic batching (32); server on 0-7, 4 client processes on 8-15 | in-process ORT CUDA, batch 32 | >= 0.6 items/s |
| resnet50_gpu_workers (--gpu) | the same with --workers 4 and concurrency 256 (64 per worker) | in-process ORT CUDA, batch 32 | report |
| drift_cost | MLP as mlp_vs_stub, conversion.json with input statistics (drift on) | the same model without them | report |

Servers are `modelport serve` / `minimal_stub.py` subprocesses on port 0 (compare.py's `Server`),
pinned with sched_setaffinity, stopped with SIGTERM whatever happens; their logs go to
`DIR/logs/`. Load comes from `modelport bench`'s generator in worker processes pinned away from
the server where the target says so. In-process references run as `inprocess.py` subprocesses
pinned like the server. A target that fails is recorded with its error; the others still run.
Targets that need 16 CPUs (resnet50_cpu_vs_inprocess, mlp_workers) are skipped on smaller
machines, except that with --quick resnet50_cpu_vs_inprocess runs the CNN instead, unpinned, as a
smoke test (`--allow-small` runs both scaled down to the CPUs there are: for testing the suite,
not for numbers). ResNet-50 needs torch + torchvision (exported once into DIR/models).

Choices made by measuring (models.BATCHED): cnn_batched waits up to 500 us for a batch to fill
(0-5000 us gave the same throughput within noise on 2 cores: the event loop, not the wait, limits
it; --cnn-delay-us tries others). resnet50_gpu_batched: max_batch_size 32 at concurrency 64 (one
batch forms while the other runs) and a 100 ms delay that keeps every batch at 32 rows: ONNX
Runtime's CUDA provider spends ~100 ms whenever the input shape changes (H100, any
cudnn_conv_algo_search), so with a 2 ms delay mixed batch sizes ran at ~160 ms per batch instead
of ~10 ms (127 vs 1,056 items/s).

The notes of each row say how busy the server's and the client's CPUs were (from /proc) and, for
modelport, what its own /metrics say of the level: rows per ONNX Runtime run, ms per run, the
share of the time a session ran, queue time per request.

Exact commands (16-core GPU box, ~5 min; a 2-core laptop, ~1.5 min):

    python benchmarks/suite.py --out /tmp/suite --work /tmp/suite-work --gpu
    python benchmarks/suite.py --out /tmp/suite --quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402  (benchmarks/models.py)
from compare import Server  # noqa: E402

from modelport.client import Client  # noqa: E402
from modelport.client import bench  # noqa: E402

SMALL_CPUS = 16  # the CPU layout (server 0-7, client 8-15) of the 16-core targets
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One line of results.md."""

    name: str
    title: str
    goal: float | None = None
    status: str = "pending"  # pending, running, pass, short, report, skipped, error
    measured: str = ""
    reference: str = ""
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    elapsed_s: float | None = None

    def judge(self) -> None:
        """pass/short against the goal; report when there is none."""
        if self.ratio is None or not math.isfinite(self.ratio):
            self.status = "error"
            self.error = self.error or "no ratio measured"
        elif self.goal is None:
            self.status = "report"
        else:
            self.status = "pass" if self.ratio >= self.goal else "short"


class Results:
    """Every row, written to results.json and results.md after each change."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out, self.header, self.rows = out, header, {}

    def add(self, row: Row) -> Row:
        self.rows[row.name] = row
        return row

    def write(self) -> None:
        self.header["updated_at"] = _now()
        document = {"suite": self.header, "targets": [_row_dict(r) for r in self.rows.values()]}
        _write_atomic(self.out / "results.json", json.dumps(document, indent=2, default=_json_default) + "\n")
        _write_atomic(self.out / "results.md", self.markdown())

    def markdown(self) -> str:
        h, m = self.header, self.header["machine"]
        mode = "quick" if h["quick"] else "full"
        lines = [
            "# modelport benchmark suite",
            "",
            f"- run: {h['started_at']} to {h.get('finished_at') or '(running)'}, {mode} mode: {h['seconds']:g} s per "
            f"level after {h['warmup']:g} s warm-up; `{h['command']}`",
            f"- machine: {m['summary']}",
            f"- software: {m['software']}",
            "- ratio = modelport / reference, both measured in this run on this machine; pass = ratio >= goal",
            "",
            "| target | measured | reference | ratio | goal | result | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows.values():
            ratio = f"{r.ratio:.2f}" if r.ratio is not None and math.isfinite(r.ratio) else ""
            goal = f">= {r.goal:g}" if r.goal is not None else "report"
            notes = "; ".join(r.notes + ([f"error: {r.error.splitlines()[-1] if r.error else ''}"] if r.status == "error" else []))
            lines.append(f"| {r.name} | {r.measured} | {r.reference} | {ratio} | {goal} | {r.status} | {_cell(notes)} |")
        errors = [r for r in self.rows.values() if r.error]
        if errors:
            lines += ["", "## Errors", ""]
            for r in errors:
                lines += [f"### {r.name}", "", "```", r.error.strip()[-3000:], "```", ""]
        return "\n".join(lines) + "\n"


def _row_dict(row: Row) -> dict[str, Any]:
    return {k: getattr(row, k) for k in row.__dataclass_fields__}


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """CPU, affinity, cgroup limit, memory, GPU and software versions."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor() or "unknown CPU")
    siblings = re.search(r"^siblings\s*:\s*(\d+)", cpuinfo, re.M)
    cores = re.search(r"^cpu cores\s*:\s*(\d+)", cpuinfo, re.M)
    per_core = int(siblings.group(1)) // int(cores.group(1)) if siblings and cores and int(cores.group(1)) else None
    affinity = sorted(os.sched_getaffinity(0))
    try:
        from modelport.server.cpus import cgroup_cpu_limit

        limit = cgroup_cpu_limit()
    except Exception:  # noqa: BLE001 - the client-only install has no server package
        limit = None
    mem = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    gpus = _gpus()
    info = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "affinity": _cpu_text(affinity),
        "usable_cpus": len(affinity),
        "threads_per_core": per_core,
        "cgroup_cpu_limit": limit,
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpus": gpus,
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("modelport", "onnxruntime", "onnxruntime-gpu", "numpy", "grpcio", "protobuf", "onnx", "torch", "torchvision")},
        "onnxruntime_providers": _ort_providers(),
        "git": _git(),
    }  # fmt: skip
    ht = f", {per_core} thread(s) per core" if per_core else ""
    cg = f", cgroup limit {limit:g} CPUs" if limit else ""
    info["summary"] = (
        f"{model}; {info['logical_cpus']} logical CPUs (affinity {info['affinity']}{ht}{cg}); "
        f"{info['memory_gib']} GiB RAM; GPU: {', '.join(gpus) if gpus else 'none'}; host {info['host']}"
    )
    v = info["versions"]
    ort_name = "onnxruntime-gpu" if v["onnxruntime-gpu"] else "onnxruntime"
    info["software"] = (
        f"Python {info['python']}, {ort_name} {v[ort_name]} ({', '.join(info['onnxruntime_providers'])}), "
        f"grpcio {v['grpcio']}, numpy {v['numpy']}, torch {v['torch'] or '-'}, modelport {v['modelport']}"
        + (f" (git {info['git']})" if info["git"] else "")
    )
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [", ".join(p.strip() for p in line.split(",")) for line in out.splitlines() if line.strip()]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_text(cpus: Sequence[int] | set[int] | None) -> str:
    """{0,1,2,5} -> "0-2,5" (taskset's list format); "" for none."""
    ordered, parts = sorted(cpus or []), []
    for cpu in ordered:
        if parts and cpu == parts[-1][1] + 1:
            parts[-1][1] = cpu
        else:
            parts.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)


# ---------------------------------------------------------------- CPU accounting


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "; rest[0] is field 3
        table[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


def _tree(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    found, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


class CpuMeter:
    """Busy cores of a server's process tree and of the rest of this script's children (the load
    generator) between start() and stop()."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = list(server_pids)

    def _sample(self) -> tuple[dict[int, float], dict[int, float]]:
        table = _proc_table()
        server = set().union(*(_tree(table, p) for p in self.server_pids)) if self.server_pids else set()
        client = _tree(table, os.getpid()) - server - {os.getpid()}
        return {p: table[p][1] for p in server if p in table}, {p: table[p][1] for p in client if p in table}

    def start(self) -> None:
        self.t0, (self.s0, self.c0) = time.perf_counter(), self._sample()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        s1, c1 = self._sample()
        server = sum(v - self.s0.get(p, 0.0) for p, v in s1.items())
        client = sum(v - self.c0.get(p, 0.0) for p, v in c1.items())
        return {"server_cores": round(server / wall, 2), "client_cores": round(client / wall, 2), "wall_s": round(wall, 2)}


# ---------------------------------------------------------------- servers, load, references


@dataclass
class Ctx:
    """What every target needs: sizes, folders, the CPUs and the results."""

    out: Path
    work: Path  # models and repositories
    quick: bool
    seconds: float
    warmup: float
    repeat: int
    allow_small: bool
    gpu: bool
    cpus: list[int]
    results: Results
    counter: int = 0
    written: set[str] = field(default_factory=set)  # models written into WORK/models in this run
    cnn_delay_us: int | None = None  # overrides cnn_batched's max_queue_delay_microseconds

    @property
    def big(self) -> bool:
        """Enough CPUs for the 16-core layout."""
        return len(self.cpus) >= SMALL_CPUS

    def halves(self) -> tuple[set[int], set[int]]:
        """Server CPUs (first 8, or first half) and client CPUs (next 8, or second half)."""
        if self.big:
            return set(self.cpus[:8]), set(self.cpus[8:16])
        half = max(1, len(self.cpus) // 2)
        return set(self.cpus[:half]), set(self.cpus[half:] or self.cpus[:half])

    def pair(self) -> set[int] | None:
        """Two CPUs for server and client together (mlp_vs_stub); None (no pinning) on a 2-3 CPU box."""
        return set(self.cpus[:2]) if len(self.cpus) >= 4 else None

    def log_path(self, target: str, label: str) -> Path:
        self.counter += 1
        return self.out / "logs" / f"{self.counter:02d}-{target}-{label}.log"


def modelport_command(repository: Path, *extra: str) -> list[str]:
    # INFO: the 'listening on' line is logged at INFO (no per-request lines at INFO, only failures).
    return [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(repository),
            "--grpc-port", "0", "--metrics-port", "0", "--host", "127.0.0.1", "--log-level", "INFO", *extra]  # fmt: skip


def stub_command(model: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "minimal_stub.py"), "--model", str(model), "--name", name, "--port", "0", *extra]


@contextlib.contextmanager
def serving(command: list[str], label: str, cpus: set[int] | None, log_file: Path, listeners: int = 1,
            timeout: float = 300.0) -> Iterator[Server]:  # fmt: skip
    """A started server (all `listeners` worker processes listening); always stopped, its output
    saved to `log_file`."""
    log(f"  start {label}{f' on CPUs {_cpu_text(cpus)}' if cpus else ''}: {' '.join(command[2:6])} ...")
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
                raise RuntimeError(f"{label}: {listeners} processes should listen; output:\n" + "".join(server.lines[-50:]))
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
) -> tuple[bench.LevelResult, dict[str, float]]:
    """One closed-loop level against `server` from `processes` load-generator processes (always
    child processes, so pinning them never touches this one). `prewarm` seconds of the same load
    run first, unmeasured (e.g. for cuDNN's per-shape algorithm search)."""
    with Client(server.address, timeout=60) as client:
        meta = client.model_metadata(model)
    request = bench.infer_request(model, bench.random_inputs(meta.inputs, batch))
    with pinned(client_cpus):
        pool = bench.ProcessPool(processes, server.address, request, timeout=60, requests_per_channel=requests_per_channel)
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
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}; {_cpu_note('', cpu).strip()}")  # fmt: skip
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
        f"{f', CPUs {_cpu_text(cpus)}' if cpus else ''})")  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=pin, timeout=600)
    log_file.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"inprocess.py failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result = json.loads(result_file.read_text())
    log(f"    in-process: {result['items_per_s']:,.0f} items/s, p99 {result['p99_ms']:.2f} ms on {result['provider']}")
    return result


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


def median_run(runs: list[bench.LevelResult]) -> bench.LevelResult:
    return sorted(runs, key=lambda r: r.requests_per_s)[len(runs) // 2]


def _rps(r: bench.LevelResult, items: bool = False) -> str:
    value = r.items_per_s if items else r.requests_per_s
    return f"{value:,.0f} {'items' if items else 'req'}/s (p99 {r.p99_ms:.1f} ms)"


def _errors_note(label: str, r: bench.LevelResult) -> list[str]:
    if not r.errors:
        return []
    return [f"{label}: {r.errors} failed requests ({', '.join(f'{e.code}: {e.first_message[:80]}' for e in r.error_summary)})"]


def _cpu_note(label: str, cpu: dict[str, float]) -> str:
    text = f"{label} busy cores server {cpu['server_cores']:g} / client {cpu['client_cores']:g}"
    if cpu.get("rows_per_exec") is not None:
        text += (f", {cpu['rows_per_exec']:g} rows per ORT run of {cpu['ort_ms_per_exec']:g} ms, ORT busy "
                 f"{cpu['ort_busy']:.0%} of the time, server queue {cpu['queue_ms']:g} ms/request")  # fmt: skip
    return text


# The modelport metrics that explain a level, summed over every worker's /metrics and every model.
# Each request observes the run time of the execution it was part of, so the mean of the infer
# histogram is the time of one run, batched or not.
_SERIES = ("modelport_batch_size_sum", "modelport_batch_size_count",
           "modelport_compute_infer_duration_seconds_sum", "modelport_compute_infer_duration_seconds_count",
           "modelport_queue_duration_seconds_sum", "modelport_queue_duration_seconds_count")  # fmt: skip


def scrape_metrics(server: Server) -> dict[str, float] | None:
    """The _SERIES totals from every /metrics port the server's log names; None without one."""
    ports = {m.group(1) for line in list(server.lines) if (m := re.search(r"metrics on http://[^:/]+:(\d+)/metrics", line))}
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


# ---------------------------------------------------------------- models


def model_file(ctx: Ctx, name: str) -> Path:
    """WORK/models/<name>/1/model.onnx, written on first use (ResNet-50 is kept between runs)."""
    store = ctx.work / "models"
    path = store / name / "1" / "model.onnx"
    if name == "resnet50" and path.is_file():
        return path
    if name not in ctx.written:
        t0 = time.perf_counter()
        log(f"  writing model {name} ...")
        bench_models.write(store, name)
        ctx.written.add(name)
        log(f"  model {name} written in {time.perf_counter() - t0:.1f} s")
    return path


def repository(ctx: Ctx, label: str, entries: dict[str, tuple[str, str | None, dict | None]]) -> Path:
    """A model repository WORK/repos/<label> with {served name: (model, config.pbtxt text, conversion.json)}."""
    root = ctx.work / "repos" / label
    shutil.rmtree(root, ignore_errors=True)
    for served, (model, config, conversion) in entries.items():
        folder = root / served / "1"
        folder.mkdir(parents=True)
        try:
            os.link(model_file(ctx, model), folder / "model.onnx")
        except OSError:
            shutil.copyfile(model_file(ctx, model), folder / "model.onnx")
        if config:
            (root / served / "config.pbtxt").write_text(f'name: "{served}"\n{config}')
        if conversion:
            (folder / "conversion.json").write_text(json.dumps(conversion))
    return root


def batched_config(name: str) -> str:
    return bench_models.BATCHED[name][1]


# ---------------------------------------------------------------- targets


def alternate(ctx: Ctx, row: Row, sides: list[tuple[str, Callable[[], contextlib.AbstractContextManager]]],
              model: str, *, batch: int, concurrency: int, client_cpus: set[int] | None,
              repeat: int, processes: int = 1) -> dict[str, list[tuple[bench.LevelResult, dict]]]:  # fmt: skip
    """Measure each side in turn, `repeat` rounds; the runs of each side."""
    runs: dict[str, list[tuple[bench.LevelResult, dict]]] = {label: [] for label, _ in sides}
    for round_ in range(repeat):
        for label, start in sides:
            log(f"  {row.name}: {label} run {round_ + 1}/{repeat}")
            with start() as server:
                runs[label].append(load(ctx, server, model, batch=batch, concurrency=concurrency,
                                        processes=processes, client_cpus=client_cpus))
            time.sleep(0.3)
    return runs


def _ratio_rows(row: Row, runs: dict[str, list[tuple[bench.LevelResult, dict]]], ours: str, ref: str,
                items: bool = False) -> tuple[bench.LevelResult, bench.LevelResult]:  # fmt: skip
    mine, theirs = median_run([r for r, _ in runs[ours]]), median_run([r for r, _ in runs[ref]])
    value = (lambda r: r.items_per_s) if items else (lambda r: r.requests_per_s)
    row.ratio = value(mine) / value(theirs) if value(theirs) else float("nan")
    row.measured, row.reference = _rps(mine, items), f"{ref}: {_rps(theirs, items)}"
    if len(runs[ours]) > 1:
        for label in (ours, ref):
            row.notes.append(f"{label} runs " + ", ".join(f"{value(r):,.0f}" for r, _ in runs[label]) + f" (median of {len(runs[label])})")
    for label, median in ((ours, mine), (ref, theirs)):
        cpu = next(c for r, c in runs[label] if r is median)
        row.notes += [_cpu_note(label, cpu)] + _errors_note(label, median)
    row.details["runs"] = {label: [dict(r.to_dict(), cpu=c) for r, c in found] for label, found in runs.items()}
    return mine, theirs


def t_mlp_vs_stub(ctx: Ctx, row: Row) -> None:
    cpus = ctx.pair()
    repo = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    model = repo / "mlp" / "1" / "model.onnx"
    sides = [
        ("modelport", lambda: serving(modelport_command(repo), "modelport", cpus, ctx.log_path(row.name, "modelport"))),
        ("stub", lambda: serving(stub_command(model, "mlp"), "stub", cpus, ctx.log_path(row.name, "stub"))),
        ("stub --inline", lambda: serving(stub_command(model, "mlp", "--inline", "--intra-op-threads", "1"),
                                          "stub --inline", cpus, ctx.log_path(row.name, "stub-inline"))),
    ]
    runs = alternate(ctx, row, sides, "mlp", batch=1, concurrency=16, client_cpus=cpus, repeat=ctx.repeat)
    _ratio_rows(row, runs, "modelport", "stub")
    # modelport runs this model inline on the event loop (its warm-up run is under 50 us) with one
    # intra-op thread; the stub doing the same is the stricter reference, reported beside the target.
    inline = median_run([r for r, _ in runs["stub --inline"]])
    mine = median_run([r for r, _ in runs["modelport"]])
    row.details["vs_stub_inline"] = mine.requests_per_s / inline.requests_per_s if inline.requests_per_s else None
    row.notes.append(f"stub --inline (session on the event loop, 1 intra-op thread, as modelport runs this model): "
                     f"{_rps(inline)}, modelport / it = {row.details['vs_stub_inline']:.2f}; runs "
                     + ", ".join(f"{r.requests_per_s:,.0f}" for r, _ in runs["stub --inline"]))
    where = f"servers and client on CPUs {_cpu_text(cpus)}" if cpus else "no pinning (fewer than 4 CPUs): servers and client share them all"
    row.notes.insert(0, f"batch 1, concurrency 16, 1 client process; {where}; modelport defaults (metrics, validation on)")


def _cnn_stand_in(ctx: Ctx, row: Row) -> bool:
    """resnet50_cpu_vs_inprocess on a small box: True when it runs the CNN instead (--quick)."""
    if ctx.big or ctx.allow_small:
        return False
    if ctx.quick:
        return True
    raise Skip(f"needs {SMALL_CPUS} CPUs (server on 0-7, client on 8-15); this machine has {len(ctx.cpus)} usable "
               "(--quick runs the CNN instead as a smoke test)")  # fmt: skip


class Skip(Exception):
    """The target cannot run here; the message says why."""


def t_resnet50_cpu(ctx: Ctx, row: Row) -> None:
    stand_in = _cnn_stand_in(ctx, row)
    name = "cnn" if stand_in else "resnet50"
    server_cpus, client_cpus = (None, None) if stand_in else ctx.halves()
    repo = repository(ctx, name, {name: (name, None, None)})
    threads = modelport_threads(server_cpus)
    with serving(modelport_command(repo), "modelport", server_cpus, ctx.log_path(row.name, "modelport")) as server:
        ours, cpu = load(ctx, server, name, batch=8, concurrency=4, client_cpus=client_cpus)
    ref = inprocess(ctx, repo / name / "1" / "model.onnx", batch=8, threads=threads, cpus=server_cpus)
    row.ratio = ours.items_per_s / ref["items_per_s"]
    row.measured = _rps(ours, items=True)
    row.reference = f"in-process: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.1f} ms)"
    if stand_in:
        row.notes.append(f"SMALL BOX (--quick, {len(ctx.cpus)} CPUs): the CNN stands in for ResNet-50, nothing pinned")
    else:
        row.notes.append(f"ResNet-50; server on CPUs {_cpu_text(server_cpus)}, client on {_cpu_text(client_cpus)}")
    row.notes.append(f"batch 8, concurrency 4; in-process: {threads} intra-op threads (as modelport's session), "
                     f"1 calling thread (modelport runs one batch at a time per instance)")  # fmt: skip
    row.notes += _errors_note("modelport", ours) + [_cpu_note("modelport", cpu)]
    row.details.update(model=name, modelport=dict(ours.to_dict(), cpu=cpu), inprocess=ref)


def t_cnn(ctx: Ctx, rows: dict[str, Row]) -> None:
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    repo = repository(ctx, "cnn", {"cnn": ("cnn", None, None)})
    model = repo / "cnn" / "1" / "model.onnx"
    threads = modelport_threads(server_cpus)
    results = {}
    for label, command in (("modelport", modelport_command(repo)), ("stub", stub_command(model, "cnn"))):
        with serving(command, label, server_cpus, ctx.log_path("cnn", label)) as server:
            results[label] = load(ctx, server, "cnn", batch=8, concurrency=4, client_cpus=client_cpus)
    ref = inprocess(ctx, model, batch=8, threads=threads, cpus=server_cpus)
    ours, cpu = results["modelport"]
    stub, stub_cpu = results["stub"]
    where = (f"server on CPUs {_cpu_text(server_cpus)}, client on {_cpu_text(client_cpus)}" if server_cpus
             else "no pinning (fewer than 16 CPUs)")  # fmt: skip
    common = [f"batch 8, concurrency 4; {where}", _cpu_note("modelport", cpu)] + _errors_note("modelport", ours)
    if "cnn_vs_stub" in rows:
        row = rows["cnn_vs_stub"]
        row.ratio = ours.items_per_s / stub.items_per_s
        row.measured, row.reference = _rps(ours, items=True), f"stub: {_rps(stub, items=True)}"
        row.notes += common + [_cpu_note("stub", stub_cpu)] + _errors_note("stub", stub)
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu), stub=dict(stub.to_dict(), cpu=stub_cpu))
    if "cnn_vs_inprocess" in rows:
        row = rows["cnn_vs_inprocess"]
        row.ratio = ours.items_per_s / ref["items_per_s"]
        row.measured = _rps(ours, items=True)
        row.reference = f"in-process: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.2f} ms)"
        row.notes += common + [f"in-process: {threads} intra-op threads, 1 calling thread"]
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu), inprocess=ref)


def t_cnn_batching(ctx: Ctx, row: Row) -> None:
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    processes = 2 if ctx.big else 1
    repo_plain = repository(ctx, "cnn", {"cnn": ("cnn", None, None)})
    config = batched_config("cnn_batched")
    if ctx.cnn_delay_us is not None:
        config = re.sub(r"max_queue_delay_microseconds:\s*\d+", f"max_queue_delay_microseconds: {ctx.cnn_delay_us}", config)
    repo_batched = repository(ctx, "cnn_batched", {"cnn": ("cnn", config, None)})
    sides = [(label, lambda repo=repo, label=label: serving(modelport_command(repo), label, server_cpus,
                                                           ctx.log_path(row.name, label.replace(" ", "-"))))
             for label, repo in (("batching", repo_batched), ("no batching", repo_plain))]
    runs = alternate(ctx, row, sides, "cnn", batch=1, concurrency=32, client_cpus=client_cpus, repeat=ctx.repeat,
                     processes=processes)
    ours, ref = _ratio_rows(row, runs, "batching", "no batching", items=True)
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    where = (f"server on CPUs {_cpu_text(server_cpus)}, {processes} client process(es) on {_cpu_text(client_cpus)}"
             if server_cpus else "no pinning")  # fmt: skip
    row.notes[:0] = [
        f"batch-1 requests, concurrency 32; max_batch_size 64, max_queue_delay {delay.group(1) if delay else '?'} us; {where}",
        f"p99 {ours.p99_ms:.1f} ms with batching vs {ref.p99_ms:.1f} ms without",
    ]


def t_mlp_workers(ctx: Ctx, row: Row) -> None:
    if not ctx.big and not ctx.allow_small:
        raise Skip(f"needs {SMALL_CPUS} CPUs (server on 0-7, 8 client processes on 8-15); this machine has {len(ctx.cpus)} usable")
    server_cpus, client_cpus = ctx.halves()
    many = 8 if ctx.big else max(2, len(server_cpus))
    processes = 8 if ctx.big else len(client_cpus)
    concurrency = 128 if ctx.big else 32
    repo = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    found = {}
    for workers in (many, 1):
        label = f"workers-{workers}"
        with serving(modelport_command(repo, "--workers", str(workers)), label, server_cpus,
                     ctx.log_path(row.name, label), listeners=workers) as server:  # fmt: skip
            # One request per channel: many connections, so SO_REUSEPORT spreads them evenly.
            found[workers] = load(ctx, server, "mlp", batch=1, concurrency=concurrency, processes=processes,
                                  client_cpus=client_cpus, requests_per_channel=1)  # fmt: skip
    (ours, cpu), (ref, ref_cpu) = found[many], found[1]
    row.ratio = ours.requests_per_s / ref.requests_per_s
    row.measured, row.reference = f"--workers {many}: {_rps(ours)}", f"--workers 1: {_rps(ref)}"
    if not ctx.big:
        row.notes.append(f"SMALL BOX (--allow-small, {len(ctx.cpus)} CPUs): scaled down, not the target's numbers")
    row.notes += [
        f"batch 1, concurrency {concurrency} from {processes} client processes (1 request per connection) on CPUs "
        f"{_cpu_text(client_cpus)}; server on {_cpu_text(server_cpus)}",
        _cpu_note(f"--workers {many}", cpu), _cpu_note("--workers 1", ref_cpu),
    ] + _errors_note(f"--workers {many}", ours) + _errors_note("--workers 1", ref)
    row.details.update(workers_many=dict(ours.to_dict(), cpu=cpu, workers=many), workers_1=dict(ref.to_dict(), cpu=ref_cpu))


def t_resnet50_gpu(ctx: Ctx, rows: dict[str, Row]) -> None:
    if not ctx.gpu:
        raise Skip("pass --gpu (needs onnxruntime-gpu and a CUDA GPU)")
    providers = _ort_providers()
    if "CUDAExecutionProvider" not in providers:
        raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider here (providers: {', '.join(providers)})")
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    processes = 4 if ctx.big else 1
    config = batched_config("resnet50_gpu_batched")
    repo = repository(ctx, "resnet50_gpu", {"resnet50": ("resnet50", config, None)})
    prewarm = 2.0 if ctx.quick else 5.0
    # resnet50_gpu: the target as the issue states it; resnet50_gpu_workers: the same per worker
    # process (64 outstanding requests each), the way to use more of the GPU than one event loop can.
    plans = [(name, workers, 64 * workers) for name, workers in (("resnet50_gpu", 1), ("resnet50_gpu_workers", 4)) if name in rows]
    found = {}
    for name, workers, concurrency in plans:
        label = f"modelport-cuda-w{workers}"
        command = modelport_command(repo, "--execution-provider", "cuda", "--workers", str(workers))
        with serving(command, label, server_cpus, ctx.log_path(name, label), listeners=workers) as server:
            result = load(ctx, server, "resnet50", batch=1, concurrency=concurrency, processes=processes,
                          client_cpus=client_cpus, prewarm=prewarm, requests_per_channel=1 if workers > 1 else 8)  # fmt: skip
            fallback = [line.strip() for line in server.lines if "CPU fallback" in line]
            fallback += [line.strip() for line in server.lines if "not available in this onnxruntime" in line]
        found[name] = (workers, concurrency, result, fallback)
    ref = inprocess(ctx, repo / "resnet50" / "1" / "model.onnx", batch=32, threads=modelport_threads(server_cpus),
                    cpus=server_cpus, provider="cuda")  # fmt: skip
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    for name, (workers, concurrency, (ours, cpu), fallback) in found.items():
        row = rows[name]
        row.ratio = ours.items_per_s / ref["items_per_s"]
        row.measured = f"modelport cuda, --workers {workers}: {_rps(ours, items=True)}"
        row.reference = f"in-process CUDA batch 32: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.1f} ms)"
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu, workers=workers), inprocess=ref,
                           server_fallback_lines=fallback, cuda=not fallback)  # fmt: skip
        row.notes += [
            "server on CUDAExecutionProvider: " + ("yes (no CPU-fallback line in its log)" if not fallback else f"NO: {fallback[0]}"),
            f"in-process session on {ref['provider']}",
            f"batch-1 requests, concurrency {concurrency} from {processes} client process(es)"
            + (f" on CPUs {_cpu_text(client_cpus)}, server on {_cpu_text(server_cpus)}" if server_cpus else "")
            + f"; --workers {workers}, max_batch_size 32, max_queue_delay {delay.group(1) if delay else '?'} us; "
            f"{prewarm:g} s unmeasured pre-warm",
            _cpu_note("modelport", cpu),
        ] + _errors_note("modelport", ours)
        if fallback or ref["provider"] != "CUDAExecutionProvider":
            row.judge()
            row.status = "error"
            row.error = "not on CUDA: " + (fallback[0] if fallback else f"in-process session on {ref['provider']}")


def t_drift_cost(ctx: Ctx, row: Row) -> None:
    cpus = ctx.pair()
    features = 30
    stats = {"x": {"count": 1000, "mean": [0.0] * features, "std": [1.0] * features,
                   "min": [-4.0] * features, "max": [4.0] * features}}  # fmt: skip
    plain = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    drift = repository(ctx, "mlp_drift", {"mlp": ("mlp", None, {"input_statistics": stats})})
    scraped: list[str] = []

    @contextlib.contextmanager
    def with_drift() -> Iterator[Server]:
        with serving(modelport_command(drift), "drift on", cpus, ctx.log_path(row.name, "drift-on")) as server:
            yield server
            scraped.append(_scrape_drift_rows(server))

    sides = [
        ("drift on", with_drift),
        ("drift off", lambda: serving(modelport_command(plain), "drift off", cpus, ctx.log_path(row.name, "drift-off"))),
    ]
    runs = alternate(ctx, row, sides, "mlp", batch=1, concurrency=16, client_cpus=cpus, repeat=ctx.repeat)
    _ratio_rows(row, runs, "drift on", "drift off")
    where = f"server and client on CPUs {_cpu_text(cpus)}" if cpus else "no pinning"
    cost = (1 - row.ratio) * 100 if row.ratio else float("nan")
    row.notes.insert(0, f"cost {cost:.1f}% of req/s (claim: < 5%); MLP batch 1, concurrency 16; {where}; "
                        f"drift tracking confirmed by /metrics: {scraped[-1] if scraped else 'not scraped'}")  # fmt: skip


def _scrape_drift_rows(server: Server) -> str:
    """modelport_drift_window_rows from the server's /metrics (port from its log)."""
    port = next((m.group(1) for line in server.lines if (m := re.search(r"metrics on http://[^:]+:(\d+)/metrics", line))), None)
    if port is None:
        return "no metrics line in the log"
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError as exc:
        return f"scrape failed: {exc}"
    rows = [line for line in text.splitlines() if line.startswith("modelport_drift_window_rows")]
    return rows[0] if rows else "no modelport_drift_window_rows series"


@dataclass(frozen=True)
class Target:
    rows: tuple[tuple[str, str, float | None], ...]  # (name, title, goal)
    run: Callable[..., None]
    multi: bool = False  # run(ctx, {name: row}) instead of run(ctx, row)


TARGETS = [
    Target((("mlp_vs_stub", "seed-1 MLP vs minimal stub, batch 1, c=16, 2 shared CPUs", 0.9),), t_mlp_vs_stub),
    Target((("resnet50_cpu_vs_inprocess", "ResNet-50 CPU vs in-process ORT, batch 8, c=4", 0.85),), t_resnet50_cpu),
    Target((("cnn_vs_stub", "seed-2 CNN vs minimal stub, batch 8, c=4", None),
            ("cnn_vs_inprocess", "seed-2 CNN vs in-process ORT, batch 8, c=4", None)), t_cnn, multi=True),
    Target((("cnn_dynamic_batching", "CNN batch-1 c=32, dynamic batching vs none", 1.3),), t_cnn_batching),
    Target((("mlp_workers", "MLP --workers 8 vs --workers 1, 16 cores", 5.0),), t_mlp_workers),
    Target((("resnet50_gpu", "ResNet-50 CUDA + dynamic batching vs in-process CUDA batch 32", 0.6),
            ("resnet50_gpu_workers", "the same with --workers 4, 64 requests outstanding per worker", None)),
           t_resnet50_gpu, multi=True),
    Target((("drift_cost", "MLP with drift tracking vs without", None),), t_drift_cost),
]
NAMES = [name for t in TARGETS for name, _, _ in t.rows]


def run_target(ctx: Ctx, target: Target, rows: dict[str, Row]) -> None:
    """Run one target into its rows; errors and skips are recorded, never raised."""
    label = ", ".join(rows)
    log(f"{label}: start")
    for row in rows.values():
        row.status = "running"
    ctx.results.write()
    t0 = time.perf_counter()
    try:
        target.run(ctx, rows) if target.multi else target.run(ctx, next(iter(rows.values())))
        for row in rows.values():
            if row.status == "running":
                row.judge()
    except Skip as exc:
        for row in rows.values():
            row.status, row.notes = "skipped", [str(exc)]
    except Exception:  # noqa: BLE001 - record it, go on with the next target
        error = traceback.format_exc()
        for row in rows.values():
            row.status, row.error = "error", error
        log(f"{label}: ERROR {error.strip().splitlines()[-1]}")
    elapsed = time.perf_counter() - t0
    for row in rows.values():
        row.elapsed_s = round(elapsed, 1)
        ratio = f", ratio {row.ratio:.2f}" if row.ratio is not None else ""
        log(f"{row.name}: {row.status}{ratio} ({elapsed:.0f} s)")
    ctx.results.write()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="Run every modelport throughput target; write DIR/results.json and results.md.",
                                epilog=f"targets: {', '.join(NAMES)}")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output folder: results.json, results.md, logs/")
    p.add_argument("--work", type=Path, help="folder for the models and repositories (default: OUT; ResNet-50 is ~100 MB)")
    p.add_argument("--quick", action="store_true", help="short levels (2 s after 0.5 s warm-up) and small-box stand-ins: a smoke test, not the numbers")
    p.add_argument("--only", help="comma-separated target names (default: all)")
    p.add_argument("--gpu", action="store_true", help="also run resnet50_gpu (onnxruntime-gpu with CUDA)")
    p.add_argument("--seconds", type=float, help="measured seconds per level (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per level (default 1; 0.5 with --quick)")
    p.add_argument("--repeat", type=int, help="alternating rounds of mlp_vs_stub, cnn_dynamic_batching and drift_cost (default 3)")
    p.add_argument("--allow-small", action="store_true",
                   help="run the 16-CPU targets scaled down to this machine's CPUs (tests the suite; numbers mean little)")
    p.add_argument("--cnn-delay-us", type=int,
                   help="cnn_dynamic_batching's max_queue_delay_microseconds (default: models.BATCHED's)")
    args = p.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(NAMES)
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")

    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on SIGTERM too
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    repeat = args.repeat or 3
    started = time.perf_counter()
    machine = machine_info()
    log(f"machine: {machine['summary']}")
    log(f"software: {machine['software']}")
    header = {
        "started_at": _now(), "finished_at": None, "quick": args.quick, "seconds": seconds, "warmup": warmup,
        "repeat": repeat, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine,
    }  # fmt: skip
    results = Results(args.out, header)
    ctx = Ctx(args.out, args.work or args.out, args.quick, seconds, warmup, repeat, args.allow_small, args.gpu,
              sorted(os.sched_getaffinity(0)), results, cnn_delay_us=args.cnn_delay_us)  # fmt: skip
    plan = []
    for target in TARGETS:
        rows = {name: results.add(Row(name, title, goal)) for name, title, goal in target.rows if name in only}
        if rows:
            plan.append((target, rows))
    results.write()
    try:
        for target, rows in plan:
            run_target(ctx, target, rows)
    except KeyboardInterrupt:
        log("interrupted; results so far are written")
        for row in results.rows.values():
            if row.status in ("pending", "running"):
                row.status, row.error = "error", "interrupted"
        return 130
    finally:
        header["finished_at"] = _now()
        header["elapsed_s"] = round(time.perf_counter() - started, 1)
        results.write()
        log(f"done in {header['elapsed_s']:.0f} s: {args.out / 'results.md'}")
    print((args.out / "results.md").read_text())
    return 1 if any(r.status == "error" for r in results.rows.values()) else 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
