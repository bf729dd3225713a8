"""BERT-base shape served with dynamic batching against in-process ONNX Runtime at its best batch.

Issue 15's target: a BERT-base-shaped encoder (12 layers, hidden 768, 12 heads, intermediate
3072, vocabulary 30,522, 512 positions, random weights), sequence 128, batch-1 requests at
concurrency 16 with dynamic batching: served items/s >= 0.85x in-process ONNX Runtime at its best
batch size, on the same cores, in the same run.

    python benchmarks/bert.py --json bert.json       # BERT-base, the target (~8 min on 2 cores;
                                                     # the first run also converts it, ~3 min)
    python benchmarks/bert.py --layers 2 --hidden 128 --seconds 5 --warmup 2 \\
        --reference-seconds 2 --reference-warmup 0.5 # smoke run (~30 s)
    python benchmarks/bert.py --server-cpus 0-7 --client-cpus 8-15 --json bert-8cpu.json  # 16 cores
    python benchmarks/bert.py --provider cuda --batch-sizes 1,2,4,8,16,32,64 --concurrency 64 \\
        --json bert-gpu.json                         # a GPU box (not run yet)

What it does, in this order:

1. model: the Keras 3 encoder of transformer_models.py (token + position embeddings, post-LN
   blocks of MultiHeadAttention + Dense(gelu) + Dense, [CLS] pooler, Dense(2, softmax); padding
   id 0 masked out of attention), converted by modelport's converter (`convert`, in a child
   process so this one never imports TensorFlow) with a sample of sequence-length token ids
   (rows padded at several lengths), so the parity gate runs on the real shape. The repository
   is kept under --workdir (WORKDIR/<shape>/repository/bert) and reused by later runs, with the
   first run's conversion time (--reconvert converts again).
2. reference: in-process ONNX Runtime on the same model.onnx with the session options
   `modelport serve` gives it (server/runtime.py: same intra-op threads, no spinning, all graph
   optimizations, the same provider list), one thread calling session.run back to back, as the
   server's one instance runs one batch at a time; items/s at each --batch-sizes (rows / the
   calls' total time); best = max. Also this process's busy cores and the whole machine's
   (/proc/stat), which tell a quiet run from one that shared its CPUs with something else.
3. config.pbtxt, rewritten every run: max_batch_size (--max-batch-size; default auto = the best
   in-process batch of the first round, at most --concurrency: with 16 batch-1 requests
   outstanding and max_batch_size 8, one full batch queues while the other runs, so every run
   has the reference's best size and the session never waits for a batch to form),
   dynamic_batching with max_queue_delay_microseconds 5000 (--queue-delay-us: under 1 % of a
   BERT-base batch on a CPU, and long enough for the requests the last batch answered to come
   back when max_batch_size = concurrency), and a model_warmup at the served shape (on a GPU at
   every padded batch size).
4. served: `modelport serve` (free ports, stopped whatever happens, log in WORKDIR/logs), loaded
   by `modelport bench`'s closed-loop generator (bench.ProcessPool: batch-1 requests of
   --sequence token ids, --concurrency outstanding) for --warmup + --seconds; items/s and latency
   percentiles of the window; busy cores of server, client and machine (/proc); and from the
   server's statistics RPC, over the same window: the batch sizes it ran and the run time of
   each, the share of the window a session was running ("ORT busy"), and the completion rate
   (rows completed after the first completion seen in the window, over the time to the last
   one: free of the +-1 batch that a window count has when a batch takes seconds; the default
   120 s window keeps the two within a few %).

ratio = served items/s / best in-process items/s (both this run). Also printed: the same by
completion rate, and per busy core (served items per core-second of the server process over
in-process items per core-second), which is what survives on a machine shared with other work.
--repeat N alternates reference (after the first round: its best batch and max_batch_size only)
and served N times; the median ratio is the result. `--json OUT` writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the neighbours below

from compare import cpu_list  # noqa: E402  (benchmarks/compare.py)
from machine import CLK_TCK, CpuMeter, machine_info  # noqa: E402
from measure import modelport_command, pinned, scrape_metrics, server_stats, serving  # noqa: E402
from report import log, utc_now  # noqa: E402
from transformer_models import INPUT, OUTPUT, BertShape, token_ids  # noqa: E402

from modelport.client import Client, bench  # noqa: E402

MODEL = "bert"
GOAL = 0.85
DEFAULT_WORKDIR = Path("/tmp/modelport-bert")
# Rows of the parity sample, and where their padding starts (full length first; 0 keeps 1 token).
SAMPLE_LENGTHS = (1.0, 0.75, 0.3, 0.0)


# ---------------------------------------------------------------- the model


def model_dir(args: argparse.Namespace) -> Path:
    """WORKDIR/<shape key>: the repository, the sample and the record of the conversion."""
    return args.workdir / shape_of(args).key


def shape_of(args: argparse.Namespace) -> BertShape:
    return BertShape(args.layers, args.hidden, args.heads or max(1, args.hidden // 64),
                     args.intermediate or 4 * args.hidden, args.vocab, args.max_positions, 2, args.seed)  # fmt: skip


def ensure_model(args: argparse.Namespace) -> dict[str, Any]:
    """The converted repository for this shape, converting it on first use; the conversion record."""
    folder = model_dir(args)
    record_file = folder / "conversion-run.json"
    onnx_file = folder / "repository" / MODEL / "1" / "model.onnx"
    if onnx_file.is_file() and record_file.is_file() and not args.reconvert:
        record = json.loads(record_file.read_text())
        if record.get("sequence") == args.sequence:
            log(f"model: {onnx_file} (converted {record['converted_at']} in {record['seconds']:.1f} s; reused)")
            return {**record, "cached": True}
    shutil.rmtree(folder / "repository", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    shape = shape_of(args)
    log(f"model: building and converting {shape.key} ({shape.parameters / 1e6:.1f} M parameters) "
        f"with a sample of sequence {args.sequence} (in a child process) ...")  # fmt: skip
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:  # TensorFlow stays out of this process (and its memory and threads)
        record = pool.apply(_convert, (shape, args.sequence, str(folder), max(args.batch_sizes)))
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    log(f"model: converted in {record['seconds']:.1f} s (build {record['build_s']:.1f} s, convert + parity "
        f"{record['convert_s']:.1f} s), parity max |difference| {record['parity_max_abs_diff']:.3g}, "
        f"model.onnx {record['onnx_mb']:.0f} MB")  # fmt: skip
    return {**record, "cached": False}


def _convert(shape: BertShape, sequence: int, folder: str, max_batch_size: int) -> dict[str, Any]:
    """Build the Keras model, convert it with the parity gate on a sample of `sequence` tokens
    (rows padded at several lengths); the record of the conversion. Runs in a child process."""
    from transformer_models import bert_classifier

    from modelport.converter.pipeline import convert

    root = Path(folder)
    lengths = [max(1, round(f * sequence)) for f in SAMPLE_LENGTHS]
    sample = {INPUT: token_ids(len(lengths), sequence, shape.vocab, seed=shape.seed + 1, pad_to=lengths)}
    np.savez(root / "sample.npz", **sample)
    started = time.perf_counter()
    model = bert_classifier(shape)
    built = time.perf_counter()
    result = convert(model, root / "repository", MODEL, sample=root / "sample.npz", max_batch_size=max_batch_size,
                     progress=lambda line: log(f"  convert: {line.strip()}"))  # fmt: skip
    done = time.perf_counter()
    return {
        "shape": shape.to_dict(), "parameters": shape.parameters, "sequence": sequence,
        "converted_at": utc_now(), "seconds": round(done - started, 2), "build_s": round(built - started, 2),
        "convert_s": round(done - built, 2), "onnx_mb": round((result.path / "model.onnx").stat().st_size / 1e6, 1),
        "parity_max_abs_diff": max(o.max_abs_diff for o in result.parity.outputs),
        "parity_rows": len(lengths), "parity_lengths": lengths, "model": str(result.path / "model.onnx"),
    }  # fmt: skip


def write_config(args: argparse.Namespace, repository: Path, max_batch_size: int) -> str:
    """config.pbtxt of this run: the converter's (inputs, outputs) with `max_batch_size`, dynamic
    batching, intra-op threads when given, and a warm-up at the served shape; its text."""
    from google.protobuf import text_format

    from modelport.protocol.generated import model_config_pb2 as mc

    path = repository / MODEL / "config.pbtxt"
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(), config, allow_unknown_field=True)
    config.max_batch_size = max_batch_size
    config.dynamic_batching.Clear()
    config.dynamic_batching.max_queue_delay_microseconds = args.queue_delay_us
    config.ClearField("model_warmup")
    # On a GPU every batch size is a new shape for the CUDA provider and batches run padded to
    # powers of two and max_batch_size (server/scheduler.py BatchingPolicy.pad_sizes): warm each.
    # On a CPU one run at the largest batch allocates what the others need.
    sizes = [max_batch_size]
    if args.provider != "cpu":
        sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size] + [max_batch_size]
    for size in sizes:
        warmup = config.model_warmup.add(name=f"batch {size} x {args.sequence}", batch_size=size, count=1)
        warmup.inputs[INPUT].data_type = mc.TYPE_INT32
        warmup.inputs[INPUT].dims.append(args.sequence)
        warmup.inputs[INPUT].random_data = True
    config.parameters.pop("intra_op_thread_count", None)
    if args.intra_op_threads:
        config.parameters["intra_op_thread_count"].string_value = str(args.intra_op_threads)
    text = text_format.MessageToString(config)
    path.write_text(text)
    return text


# ---------------------------------------------------------------- the in-process reference


def reference_threads(args: argparse.Namespace) -> int:
    """The intra-op threads `modelport serve` gives the model's one instance here (its own rule)."""
    if args.intra_op_threads:
        return args.intra_op_threads
    from modelport.server.cpus import intra_op_threads, usable_cpus

    return intra_op_threads(usable_cpus(), args.workers, 1)


def reference_session(args: argparse.Namespace, model: Path) -> Any:
    """An ONNX Runtime session built as `modelport serve` builds its instances' (server/runtime.py)."""
    import onnxruntime as ort

    from modelport.server.runtime import SessionOptions, _session_options, available_providers

    providers = (args.provider,) if args.provider == "cpu" else (args.provider, "cpu")
    options = SessionOptions(intra_op_threads=reference_threads(args), providers=providers, device_id=args.device_id)
    session = ort.InferenceSession(str(model), sess_options=_session_options(options),
                                   providers=available_providers(options.providers, args.device_id))  # fmt: skip
    return session


def reference(args: argparse.Namespace, model: Path, batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Items/s of back-to-back session.run at each batch size (one calling thread), pinned to
    --server-cpus when given."""
    server_cpus = set(args.server_cpus) if args.server_cpus else None
    with pinned(server_cpus):
        session = reference_session(args, model)
        provider = session.get_providers()[0]
        if args.provider != "cpu" and provider == "CPUExecutionProvider":
            log(f"warning: the reference session runs on {provider}, not {args.provider} (CPU fallback)")
        results = []
        for batch in batch_sizes:
            feed = {INPUT: token_ids(batch, args.sequence, args.vocab, seed=2)}
            results.append(_time_runs(session, feed, batch, args.reference_seconds, args.reference_warmup,
                                      args.min_calls, provider))  # fmt: skip
            r = results[-1]
            log(f"  in-process batch {batch:>3}: {r['items_per_s']:8.2f} items/s ({r['calls']} calls in "
                f"{r['seconds']:.1f} s, p50 {r['p50_ms']:.1f} ms per call) on {provider}, "
                f"{reference_threads(args)} intra-op threads; busy cores this process {r['process_cores']:g} / "
                f"machine {_num(r['machine_busy_cores'])}")  # fmt: skip
    return results


def _time_runs(session: Any, feed: dict[str, np.ndarray], batch: int, seconds: float, warmup: float,
               min_calls: int, provider: str) -> dict[str, Any]:  # fmt: skip
    """Calls after `warmup` s (at least one call) until `seconds` s and `min_calls` calls have
    passed: items/s = rows / the calls' total time (calls back to back, so no window to round)."""
    clock, outputs = time.perf_counter, [OUTPUT]
    binding = getattr(session, "_sess", None)  # the native binding, as the server's CPU instances call it
    if binding is not None and provider == "CPUExecutionProvider":
        def call() -> None:
            binding.run(outputs, feed, None)
    else:
        def call() -> None:
            session.run(outputs, feed)

    start = clock()
    call()
    while clock() - start < warmup:
        call()
    times: list[float] = []
    machine = MachineMeter()
    begin, cpu = clock(), time.process_time()
    while clock() - begin < seconds or len(times) < min_calls:
        sent = clock()
        call()
        times.append(clock() - sent)
    elapsed, cpu = clock() - begin, time.process_time() - cpu
    ms = np.asarray(times) * 1000.0
    items_per_s = batch * len(times) / elapsed
    return {
        "batch": batch, "calls": len(times), "seconds": round(elapsed, 3), "items_per_s": round(items_per_s, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "ms_per_item": round(float(ms.mean()) / batch, 2), "provider": provider,
        "process_cores": round(cpu / elapsed, 2), "machine_busy_cores": machine.busy_cores(),
        "items_per_core_s": round(items_per_s / (cpu / elapsed), 3) if cpu > 0 else None,
    }  # fmt: skip


class MachineMeter:
    """Busy cores of the whole machine (every process, /proc/stat) since it was made: what else
    ran beside the measurement."""

    def __init__(self) -> None:
        self.t0, self.busy0 = time.perf_counter(), self._busy_s()

    @staticmethod
    def _busy_s() -> float:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return math.nan
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
        return (sum(fields) - fields[3] - fields[4]) / CLK_TCK

    def busy_cores(self) -> float | None:
        wall = time.perf_counter() - self.t0
        busy = (self._busy_s() - self.busy0) / wall if wall > 0 else math.nan
        return round(busy, 2) if math.isfinite(busy) else None


# ---------------------------------------------------------------- served


@dataclass
class Snapshot:
    """What the statistics RPC (and /metrics) said at one moment."""

    at: float  # time.time()
    inference_count: int
    execution_count: int
    last_inference_ms: int
    infer_ns: int  # compute_infer summed over executions
    batches: dict[int, tuple[int, int]]  # batch size -> (executions, compute_infer ns)
    metrics: dict[str, float] | None


def snapshot(client: Client, server: Any) -> Snapshot:
    found = client.model_statistics(MODEL).model_stats
    s = found[0]
    batches = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in s.batch_stats}
    return Snapshot(time.time(), s.inference_count, s.execution_count, s.last_inference,
                    sum(ns for _, ns in batches.values()), batches, scrape_metrics(server))  # fmt: skip


class Poller:
    """Statistics snapshots every `every` s from a thread while a level runs; the CPU meter over
    the window [window_start, window_end] (time.time())."""

    def __init__(self, address: str, server: Any, every: float = 0.25) -> None:
        self.address, self.server, self.every = address, server, every
        self.snaps: list[Snapshot] = []
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, window_start: float, window_end: float) -> None:
        self.window = (window_start, window_end)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            meter, metering = CpuMeter([self.server.proc.pid]), False
            with Client(self.address, timeout=30) as client:
                while not self._stop.is_set():
                    now = time.time()
                    if not metering and now >= self.window[0]:
                        meter.start()
                        machine = MachineMeter()
                        metering = True
                    if metering and not self.cpu and now >= self.window[1]:
                        self.cpu = {**meter.stop(), "machine_busy_cores": machine.busy_cores()}
                    self.snaps.append(snapshot(client, self.server))
                    # Poll at the window's edges too, so the first and last snapshots bound it.
                    edge = self.window[0] if not metering else self.window[1] if not self.cpu else math.inf
                    self._stop.wait(max(0.0, min(self.every, edge - time.time())))
                if metering and not self.cpu:
                    self.cpu = {**meter.stop(), "machine_busy_cores": machine.busy_cores()}
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if self._error is not None:
            raise RuntimeError(f"statistics poller failed: {self._error!r}") from self._error

    def window_stats(self) -> dict[str, Any]:
        """The window's executions by batch size, the ORT busy share and the completion rate."""
        start, end = self.window
        inside = [s for s in self.snaps if start <= s.at <= end]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        wall = b.at - a.at
        sizes = {}
        for size, (count, ns) in sorted(b.batches.items()):
            count0, ns0 = a.batches.get(size, (0, 0))
            if count > count0:
                runs = count - count0
                sizes[size] = {"executions": runs, "ms_per_run": round((ns - ns0) / runs / 1e6, 1)}
        executions = b.execution_count - a.execution_count
        rows = b.inference_count - a.inference_count
        # Completions are batched: the rate between the first and the last completion seen.
        first = next((s for s in inside if s.last_inference_ms > a.last_inference_ms), None)
        rate = None
        if first is not None and b.last_inference_ms > first.last_inference_ms:
            rate = (b.inference_count - first.inference_count) / ((b.last_inference_ms - first.last_inference_ms) / 1e3)
        # ORT busy counts a run whole when it ends inside the window, so with runs of seconds it can
        # pass 1.0 by up to one run / the window.
        out = {
            "stats_wall_s": round(wall, 2), "executions": executions, "rows": rows,
            "rows_per_execution": round(rows / executions, 2) if executions else None,
            "batch_sizes": sizes, "ort_busy": round((b.infer_ns - a.infer_ns) / 1e9 / wall, 3) if wall else None,
            "completion_rate_items_per_s": round(rate, 3) if rate is not None else None,
        }  # fmt: skip
        metrics = server_stats(a.metrics, b.metrics, wall)  # the server's /metrics over the same snapshots
        out["queue_ms"] = metrics.get("queue_ms")
        out["metrics"] = metrics
        return out


def served(args: argparse.Namespace, repository: Path, round_: int) -> dict[str, Any]:
    """One served level: `modelport serve` on the repository, the bench generator's load."""
    # --http-port=0: the HTTP/REST binding (unused here) on a free port, never in another server's way
    extra = [f"--execution-provider={args.provider}", f"--device-id={args.device_id}", f"--workers={args.workers}",
             "--http-port=0", *args.serve_arg]  # fmt: skip
    command = modelport_command(repository, *extra)
    server_cpus = set(args.server_cpus) if args.server_cpus else None
    client_cpus = set(args.client_cpus) if args.client_cpus else None
    log_file = args.workdir / "logs" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-round{round_ + 1}.log"
    with serving(command, "modelport", server_cpus, log_file, listeners=args.workers, timeout=args.start_timeout) \
            as server:  # fmt: skip
        with Client(server.address, timeout=60) as client:
            deadline = time.monotonic() + args.start_timeout
            while not client.is_model_ready(MODEL):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{MODEL} did not become ready; see {log_file}")
                time.sleep(0.2)
            meta = client.model_metadata(MODEL)
        inputs = {INPUT: token_ids(1, args.sequence, args.vocab, seed=3)}
        if [t.name for t in meta.inputs] != [INPUT]:
            raise RuntimeError(f"{MODEL} has inputs {[t.name for t in meta.inputs]}; expected [{INPUT!r}]")
        request = bench.infer_request(MODEL, inputs)
        with pinned(client_cpus):
            pool = bench.ProcessPool(args.processes, server.address, request, timeout=args.request_timeout)
        with pool:
            poller = Poller(server.address, server)
            begin = time.time() + 0.2  # ProcessPool.run_level starts its workers 0.2 s after the call
            poller.start(begin + args.warmup, begin + args.warmup + args.seconds)
            try:
                result = pool.run_level(args.concurrency, args.seconds, args.warmup, batch=1)
            finally:
                poller.stop()
        stats = poller.window_stats()
    if not result.requests:
        first = "; ".join(f"{e.code} x{e.count}: {e.first_message}" for e in result.error_summary)
        raise RuntimeError(f"no request succeeded ({first or 'no answer'}); see {log_file}")
    out = {**result.to_dict(), **poller.cpu, **stats, "log": str(log_file)}
    if poller.cpu.get("server_cores"):
        out["items_per_server_core_s"] = round(result.items_per_s / poller.cpu["server_cores"], 3)
    sizes = ", ".join(f"{k}x{v['executions']} ({v['ms_per_run']:.0f} ms)"
                      for k, v in stats.get("batch_sizes", {}).items())  # fmt: skip
    log(f"  served: {result.items_per_s:.2f} items/s (window count; completion rate "
        f"{_num(stats.get('completion_rate_items_per_s'))}), p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, "
        f"errors {result.errors}; busy cores server {_num(poller.cpu.get('server_cores'))} / client "
        f"{_num(poller.cpu.get('client_cores'))} / machine {_num(poller.cpu.get('machine_busy_cores'))}; "
        f"ORT busy {_num(stats.get('ort_busy'))}; batches {sizes or '-'}; "
        f"queue {_num(stats.get('queue_ms'))} ms/request")  # fmt: skip
    return out


def _size_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    size = int(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"max_batch_size must be >= 1 or auto, got {size}")
    return size


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- the run


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="BERT-shaped encoder: modelport serve (dynamic batching) vs "
                                            "in-process ONNX Runtime at its best batch size.")  # fmt: skip
    g = p.add_argument_group("model (default: BERT-base)")
    g.add_argument("--layers", type=int, default=12)
    g.add_argument("--hidden", type=int, default=768)
    g.add_argument("--heads", type=int, help="attention heads (default hidden / 64)")
    g.add_argument("--intermediate", type=int, help="feed-forward width (default 4 x hidden)")
    g.add_argument("--vocab", type=int, default=30522)
    g.add_argument("--max-positions", type=int, default=512)
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    g.add_argument("--sequence", type=int, default=128, help="tokens per request (default 128)")
    g.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"converted repositories (kept between runs) and server logs (default {DEFAULT_WORKDIR})")
    g.add_argument("--reconvert", action="store_true", help="convert again even when a converted model is there")
    g = p.add_argument_group("serving")
    g.add_argument("--max-batch-size", type=_size_or_auto, default="auto",
                   help="config.pbtxt max_batch_size, or auto: the in-process best batch size of the first "
                        "round, at most --concurrency (default auto)")
    g.add_argument("--queue-delay-us", type=int, default=5000,
                   help="dynamic_batching max_queue_delay_microseconds (default 5000)")
    g.add_argument("--concurrency", type=int, default=16, help="outstanding batch-1 requests (default 16)")
    g.add_argument("--seconds", type=float, default=120.0,
                   help="served measurement window (default 120: a batch takes seconds on a small CPU)")
    g.add_argument("--warmup", type=float, default=20.0, help="served warm-up before the window (default 20)")
    g.add_argument("--processes", type=int, default=1, help="load generator processes (default 1)")
    g.add_argument("--request-timeout", type=float, default=600.0, help="deadline of each request (default 600 s)")
    g.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="execution provider of the server (--execution-provider) and of the reference session")
    g.add_argument("--device-id", type=int, default=0, help="GPU for cuda/tensorrt (default 0)")
    g.add_argument("--workers", type=int, default=1, help="modelport serve --workers (default 1)")
    g.add_argument("--intra-op-threads", type=int,
                   help="ONNX Runtime intra-op threads of server (config.pbtxt) and reference "
                        "(default: modelport serve's rule, the usable CPUs)")
    g.add_argument("--serve-arg", action="append", default=[],
                   help="extra `modelport serve` argument, e.g. --serve-arg=--log-level=DEBUG; repeatable")
    g.add_argument("--server-cpus", type=cpu_list, help="pin server and reference to these CPUs, e.g. 0-7")
    g.add_argument("--client-cpus", type=cpu_list, help="pin the load generator to these CPUs, e.g. 8-15")
    g.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the server to load (default 600)")
    g = p.add_argument_group("reference")
    g.add_argument("--batch-sizes", type=lambda t: sorted({int(x) for x in t.split(",") if x.strip()}),
                   default=[1, 2, 4, 8, 16], help="in-process batch sizes (default 1,2,4,8,16)")
    g.add_argument("--reference-seconds", type=float, default=20.0,
                   help="seconds of back-to-back calls per batch size (default 20)")
    g.add_argument("--reference-warmup", type=float, default=3.0, help="warm-up seconds per batch size (default 3)")
    g.add_argument("--min-calls", type=int, default=3, help="at least this many timed calls per batch size")
    g = p.add_argument_group("run")
    g.add_argument("--repeat", type=int, default=1,
                   help="rounds of reference + served; after the first the reference runs its best batch "
                        "and max_batch_size only; the median ratio is the result (default 1)")
    g.add_argument("--goal", type=float, default=GOAL, help=f"served / in-process best (default {GOAL})")
    g.add_argument("--json", type=Path, help="write every number as JSON")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.repeat < 1 or not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--concurrency and --repeat must be >= 1 and --batch-sizes positive")
    if args.sequence > args.max_positions:
        p.error(f"--sequence {args.sequence} exceeds --max-positions {args.max_positions}")
    shape = shape_of(args)

    started = utc_now()
    machine = machine_info()
    log(f"machine: {machine['summary']}")
    log(f"software: {machine['software']}")
    conversion = ensure_model(args)
    repository = model_dir(args) / "repository"
    model_file = repository / MODEL / "1" / "model.onnx"

    rounds: list[dict[str, Any]] = []
    max_batch_size, config_text = 0, ""
    for round_ in range(args.repeat):
        if round_ == 0:
            sizes = args.batch_sizes
        else:
            sizes = sorted({rounds[0]["best"]["batch"], min(max_batch_size, max(args.batch_sizes))})
        log(f"round {round_ + 1}/{args.repeat}: in-process ONNX Runtime, batch sizes {sizes}")
        ref = reference(args, model_file, sizes)
        best = max(ref, key=lambda r: r["items_per_s"])
        if round_ == 0:
            auto = args.max_batch_size == "auto"
            max_batch_size = min(best["batch"], args.concurrency) if auto else args.max_batch_size
            config_text = write_config(args, repository, max_batch_size)
            log(f"config.pbtxt: max_batch_size {max_batch_size}{' (auto: the best in-process batch)' if auto else ''}, "
                f"max_queue_delay_microseconds {args.queue_delay_us}; concurrency {args.concurrency}, "
                f"sequence {args.sequence}, provider {args.provider}")  # fmt: skip
        log(f"round {round_ + 1}/{args.repeat}: modelport serve, batch-1 requests at concurrency {args.concurrency}, "
            f"{args.warmup:g} s warm-up + {args.seconds:g} s")  # fmt: skip
        srv = served(args, repository, round_)
        ratio = srv["items_per_s"] / best["items_per_s"]
        rate = srv.get("completion_rate_items_per_s")
        per_core = srv.get("items_per_server_core_s"), best.get("items_per_core_s")
        rounds.append({
            "reference": ref, "best": best, "served": srv, "ratio": round(ratio, 3),
            "ratio_completion_rate": round(rate / best["items_per_s"], 3) if rate else None,
            # For a shared machine: items per busy core-second of the serving process vs the reference's.
            "ratio_per_core": round(per_core[0] / per_core[1], 3) if all(per_core) else None,
        })  # fmt: skip
        log(f"round {round_ + 1}: served {srv['items_per_s']:.2f} / in-process best {best['items_per_s']:.2f} "
            f"(batch {best['batch']}) = {ratio:.3f}")  # fmt: skip

    ratio = statistics.median(r["ratio"] for r in rounds)
    median_round = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    document = {
        "issue": 15, "goal": args.goal, "ratio": ratio, "passed": ratio >= args.goal,
        "started_at": started, "finished_at": utc_now(), "host": platform.node(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine,
        "shape": shape.to_dict(), "parameters": shape.parameters, "sequence": args.sequence,
        "conversion": conversion, "max_batch_size": max_batch_size, "config_pbtxt": config_text,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reference_intra_op_threads": reference_threads(args), "rounds": rounds,
        "equivalent_commands": equivalent_commands(args, repository),
    }  # fmt: skip
    print(summary(document, median_round))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=_plain) + "\n")
        log(f"wrote {args.json}")
    return 0


def equivalent_commands(args: argparse.Namespace, repository: Path) -> list[str]:
    """The same load by hand (`modelport bench` sends random ids in [0, 100); the cost is the same)."""
    return [
        f"modelport serve --model-repository {repository} --grpc-port 8001 --execution-provider {args.provider}",
        f"modelport bench --url localhost:8001 --model {MODEL} --batch 1 --concurrency {args.concurrency} "
        f"--shape {INPUT}:{args.sequence} --warmup {args.warmup:g} --seconds {args.seconds:g}",
    ]


def summary(document: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The result as markdown (the median round's details)."""
    s, conv, srv, best = document["shape"], document["conversion"], chosen["served"], chosen["best"]
    lines = [
        f"## BERT-shaped encoder (L{s['layers']} H{s['hidden']} A{s['heads']} I{s['intermediate']}, "
        f"{document['parameters'] / 1e6:.1f} M parameters), sequence {document['sequence']}",
        "",
        f"- conversion: {conv['seconds']:.1f} s (build {conv['build_s']:.1f} s, tf2onnx + parity "
        f"{conv['convert_s']:.1f} s{', reused from an earlier run' if conv.get('cached') else ''}), "
        f"parity max |difference| {conv['parity_max_abs_diff']:.3g} on {conv['parity_rows']} rows, "
        f"model.onnx {conv['onnx_mb']:.0f} MB",
        f"- in-process ONNX Runtime ({best['provider']}, {document['reference_intra_op_threads']} intra-op "
        "threads, one calling thread):",
        "",
        "| batch | items/s | ms per call (p50) | calls | busy cores: ORT process / machine |",
        "|---|---|---|---|---|",
    ]
    for r in chosen["reference"]:
        mark = " **best**" if r is best else ""
        lines.append(f"| {r['batch']} | {r['items_per_s']:.2f}{mark} | {r['p50_ms']:.0f} | {r['calls']} "
                     f"| {_num(r.get('process_cores'))} / {_num(r.get('machine_busy_cores'))} |")
    sizes = ", ".join(f"{k}: {v['executions']} runs of {v['ms_per_run']:.0f} ms"
                      for k, v in srv.get("batch_sizes", {}).items())  # fmt: skip
    by_batch = {r["batch"]: r for r in chosen["reference"]}
    slower = ", ".join(f"batch {k}: {v['ms_per_run'] / by_batch[int(k)]['p50_ms']:.2f}x"
                       for k, v in srv.get("batch_sizes", {}).items() if int(k) in by_batch)  # fmt: skip
    lines += [
        "",
        f"- config.pbtxt: max_batch_size {document['max_batch_size']}"
        f"{' (auto: the best in-process batch)' if document['settings']['max_batch_size'] == 'auto' else ''}, "
        f"dynamic_batching max_queue_delay_microseconds {document['settings']['queue_delay_us']}",
        f"- served (batch-1 requests, concurrency {srv['concurrency']}, {srv['seconds']:g} s window): "
        f"**{srv['items_per_s']:.2f} items/s** (completion rate {_num(srv.get('completion_rate_items_per_s'))}), "
        f"p50 {srv['p50_ms']:.0f} ms, p99 {srv['p99_ms']:.0f} ms, errors {srv['errors']}",
        f"- server batches in the window: {sizes or '-'}; ORT busy {_num(srv.get('ort_busy'))}; queue "
        f"{_num(srv.get('queue_ms'))} ms/request; busy cores server {_num(srv.get('server_cores'))} / client "
        f"{_num(srv.get('client_cores'))} / machine {_num(srv.get('machine_busy_cores'))}; served run time / "
        f"in-process p50 at the same batch: {slower or '-'}",
        f"- ratio served / in-process best (batch {best['batch']}): **{chosen['ratio']:.3f}** "
        f"(by completion rate {_num(chosen.get('ratio_completion_rate'))}; per busy core of the serving process "
        f"{_num(chosen.get('ratio_per_core'))}); median over "
        f"{len(document['rounds'])} round(s): {document['ratio']:.3f}; goal >= {document['goal']:g}: "
        f"{'pass' if document['passed'] else 'short'}",
    ]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
