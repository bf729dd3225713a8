"""Inference while explanations run: does a model keep its requests/s when `modelport explain`
calls hit the same model on the same server? (Issue: at least 0.8x.)

    python benchmarks/explain.py --work /tmp/bench-explain --model mlp --concurrency 16 \\
        --seconds 5 --repeat 3 [--explainers 1] [--serve-arg=--explain-share=0.2] [--json explain.json]

One `modelport serve` process serves the seed-shaped benchmark model (benchmarks/models.py: `mlp`
or `cnn`, random weights) with a background sample of 100 rows, as the converter keeps it.
Rounds alternate two loads of the same length, `modelport bench`'s load generator at
--concurrency each time: inference alone, and inference while --explainers processes call
Client.explain on the same model back to back (--rows rows per call) from their own processes. Reported per round and as
the medians: inference requests/s and p50/p99 latency of both loads, their ratio, and the rows
the explainers got explained per second meanwhile. Server and load generator share the
machine's CPUs unless --server-cpus / --client-cpus pin them apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from compare import Server, cpu_list  # benchmarks/compare.py
from machine import CpuMeter  # benchmarks/machine.py

from modelport.client import Client, bench
from modelport.converter.background import write_background

HERE = Path(__file__).resolve().parent


def write_model(repository: Path, name: str) -> Path:
    """The benchmark model with a 100-row background (what the converter keeps from --sample)."""
    from models import check_loads, cnn, mlp, save  # benchmarks/models.py

    path = save({"mlp": mlp, "cnn": cnn}[name](), repository, name)
    check_loads(path)
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 1, (500, 30)) if name == "mlp" else rng.integers(0, 17, (500, 8, 8, 1))
    entry = write_background(path.parent, {"x": rows.astype(np.float32)})
    (path.parent / "conversion.json").write_text(json.dumps({"background": entry}) + "\n")
    return path


EXPLAIN_SERIES = ("modelport_explanation_model_rows_total", "modelport_explanation_work_seconds_total",
                  "modelport_explanation_paused_seconds_total")


def explain_totals(server: Server) -> dict[str, float]:
    """The server's explanation counters (from the /metrics port its log names)."""
    port = next(m.group(1) for line in list(server.lines) if (m := re.search(r"metrics on http://[^:/]+:(\d+)/", line)))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals = dict.fromkeys(EXPLAIN_SERIES, 0.0)
    for name, value in re.findall(r"^([a-z_]+)\{[^}]*\} (\S+)$", text, re.M):
        if name in totals:
            totals[name] += float(value)
    return totals


def _explain_forever(address: str, model: str, rows: np.ndarray, active, done, calls, errors) -> None:
    """An explainer process: Client.explain back to back while `active` is set, until `done`."""
    with Client(address, timeout=300) as client:
        client.explain(model, rows[:1])  # imports and channel ready before any measurement
        while not done.is_set():
            if not active.wait(0.1):
                continue
            try:
                client.explain(model, rows)
            except Exception as exc:  # counted and reported: the benchmark goes on
                with errors.get_lock():
                    errors.value += 1
                print(f"explain failed: {exc}", file=sys.stderr)
                continue
            with calls.get_lock():
                calls.value += 1


class Explainers:
    """`count` processes that call Client.explain back to back while `running()` holds; started
    once, in processes of their own, so that they take no CPU from the load generator's process
    and their start-up from no measurement."""

    def __init__(self, address: str, model: str, rows: np.ndarray, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._active, self._done = context.Event(), context.Event()
        self._calls, self._errors = context.Value("i", 0), context.Value("i", 0)
        self._processes = [
            context.Process(target=_explain_forever, daemon=True,
                            args=(address, model, rows, self._active, self._done, self._calls, self._errors))
            for _ in range(count)
        ]  # fmt: skip
        for process in self._processes:
            process.start()
        time.sleep(0.5)
        if not all(p.is_alive() for p in self._processes):
            raise RuntimeError("an explainer process died at start")

    @property
    def calls(self) -> int:
        return self._calls.value

    @property
    def errors(self) -> int:
        return self._errors.value

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Explain while the block runs; the call in progress at its end finishes then."""
        self._active.set()
        try:
            yield
        finally:
            self._active.clear()

    def close(self) -> None:
        self._done.set()
        for process in self._processes:
            process.join(timeout=300)
            if process.is_alive():
                process.terminate()


def round_of(server: Server, args: argparse.Namespace, request, explainers: Explainers, per_row: float,
             explain_first: bool) -> dict:  # fmt: skip
    """Both loads once, in the given order; with the server's busy cores during each and, while
    explaining, what the explanations did in the same window (the server's counters)."""
    out: dict = {"load_average": os.getloadavg()[0]}
    meter = CpuMeter([server.proc.pid])

    def level(key: str) -> None:
        before = explain_totals(server)
        meter.start()
        out[key] = bench.run_level(server.address, request, args.concurrency, args.seconds, 0,
                                   timeout=60, processes=args.processes)  # fmt: skip
        cpu = meter.stop()
        after = explain_totals(server)
        out[f"{key}_server_cores"] = cpu["server_cores"]
        if key == "explaining":
            done = {name: after[name] - before[name] for name in EXPLAIN_SERIES}
            out["perturbed_rows_per_s"] = done["modelport_explanation_model_rows_total"] / cpu["wall_s"]
            out["explained_rows_per_s"] = out["perturbed_rows_per_s"] / per_row
            worked = done["modelport_explanation_work_seconds_total"]
            out["explain_work_share"] = worked / max(worked + done["modelport_explanation_paused_seconds_total"], 1e-9)

    def alone() -> None:
        bench.run_level(server.address, request, args.concurrency, args.warmup, 0, timeout=60,
                        processes=args.processes)  # fmt: skip  (warm-up, not measured)
        level("alone")

    def explaining() -> None:
        calls, errors = explainers.calls, explainers.errors
        with explainers.running():
            bench.run_level(server.address, request, args.concurrency, args.warmup, 0, timeout=60,
                            processes=args.processes)  # fmt: skip  (warm-up: explanations under way)
            level("explaining")
        out["explain_calls"], out["explain_errors"] = explainers.calls - calls, explainers.errors - errors

    for step in (explaining, alone) if explain_first else (alone, explaining):
        step()
    out["ratio"] = out["explaining"].requests_per_s / out["alone"].requests_per_s
    return out


def describe(r: dict) -> str:
    a, e = r["alone"], r["explaining"]
    return (f"alone {a.requests_per_s:6.0f} req/s (p50 {a.p50_ms:.2f} ms, p99 {a.p99_ms:.2f} ms, server "
            f"{r['alone_server_cores']:.2f} cores) | explaining {e.requests_per_s:6.0f} req/s (p50 {e.p50_ms:.2f} ms, "
            f"p99 {e.p99_ms:.2f} ms, server {r['explaining_server_cores']:.2f} cores) | ratio {r['ratio']:.3f} | "
            f"explanations meanwhile: {r['perturbed_rows_per_s']:.0f} perturbed rows/s = "
            f"{r['explained_rows_per_s']:.1f} rows explained/s, working {r['explain_work_share']:.0%} of their time "
            f"| load average {r['load_average']:.1f}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the model repository")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--processes", type=int, default=1, help="load-generator processes (modelport bench --processes)")
    p.add_argument("--explainers", type=int, default=1, help="processes calling explain back to back (default 1)")
    p.add_argument("--rows", type=int, default=4, help="rows per explanation call (default 4)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (the order of the two loads alternates)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `modelport serve` argument; repeatable")
    p.add_argument("--server-cpus", type=cpu_list, help="pin the server to these CPUs, e.g. 0-7")
    p.add_argument("--client-cpus", type=cpu_list, help="pin this process (load and explainers), e.g. 8-15")
    p.add_argument("--json", type=Path, help="write every round as JSON")
    args = p.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    repository = args.work / "models"
    write_model(repository, args.model)
    command = [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(repository),
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--host", "127.0.0.1",
               "--explain-concurrency", str(max(args.explainers, 1)), *args.serve_arg]  # fmt: skip
    rounds = []
    with Server(command, "modelport", args.server_cpus) as server:
        with Client(server.address, timeout=60) as client:
            meta = client.model_metadata(args.model)
        inputs = bench.random_inputs(meta.inputs, 1)
        request = bench.infer_request(args.model, inputs)
        rng = np.random.default_rng(1)
        rows = (rng.normal(0, 1, (args.rows, 30)) if args.model == "mlp"
                else rng.integers(0, 17, (args.rows, 8, 8, 1))).astype(np.float32)  # fmt: skip
        # Perturbed rows one explained row costs, from an explanation with nothing else running.
        before = explain_totals(server)
        with Client(server.address, timeout=120) as client:
            client.explain(args.model, rows)  # warm
            before, started = explain_totals(server), time.perf_counter()
            client.explain(args.model, rows)
            idle = len(rows) / (time.perf_counter() - started)
        per_row = (explain_totals(server)["modelport_explanation_model_rows_total"]
                   - before["modelport_explanation_model_rows_total"]) / len(rows)  # fmt: skip
        explainers = Explainers(server.address, args.model, rows, args.explainers)
        try:
            for i in range(args.repeat):
                result = round_of(server, args, request, explainers, per_row, explain_first=i % 2 == 1)
                print(f"round {i + 1}: {describe(result)}", flush=True)
                rounds.append(result)
        finally:
            explainers.close()
    ratios = sorted(r["ratio"] for r in rounds)
    median = ratios[len(ratios) // 2]
    alone = float(np.median([r["alone"].requests_per_s for r in rounds]))
    explaining = float(np.median([r["explaining"].requests_per_s for r in rounds]))
    explained = float(np.median([r["explained_rows_per_s"] for r in rounds]))
    print(f"median: alone {alone:.0f} req/s, explaining {explaining:.0f} req/s, ratio {median:.3f} "
          f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}); {explained:.1f} rows explained/s under load, "
          f"{idle:.1f} without ({per_row:.0f} perturbed rows per explained row); "
          f"model {args.model}, concurrency {args.concurrency}, {args.explainers} explainer(s) x {args.rows} rows, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    if args.json:
        doc = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
            "median_ratio": median, "explained_rows_per_s_idle": idle, "perturbed_rows_per_row": per_row,
            "rounds": [{**{k: v for k, v in r.items() if k not in ("alone", "explaining")},
                        "alone": r["alone"].to_dict(), "explaining": r["explaining"].to_dict()} for r in rounds],
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
