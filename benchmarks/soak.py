"""Soak: `modelport serve` under mixed traffic for a long while, its memory sampled every second.

    python benchmarks/soak.py --seconds 600 --json soak.json        # the 10-minute soak
    python benchmarks/soak.py --seconds 60 --threads 4               # a quick one

A small repository is built in a temporary folder (onnx.helper models, no TensorFlow), the server
is started as a subprocess (`modelport serve --grpc-port 0 --metrics-port 0 --host 127.0.0.1`; the
port comes from its `listening on HOST:PORT` line), and `--threads` client threads, each on its own
channel, send a mix of requests in a closed loop:

| kind | what | must |
|---|---|---|
| good | add/mul (unbatched and dynamically batched) and a BYTES identity, random data | answer exactly what numpy computes |
| large | y = 2x on a `--large-mb` MiB FP32 tensor (8 MiB each way by default) | answer exactly 2x |
| bad | malformed requests (unknown model/version, wrong datatype/shape/size, BYTES framing, negative and huge dims, mixed contents, unknown output, non-UTF-8 strings) | be refused with the right code (INVALID_ARGUMENT / NOT_FOUND) |
| cancelled | a slow model, cancelled by the client after 0-15 ms or given a 1-15 ms deadline | end CANCELLED, DEADLINE_EXCEEDED, or (if it finished first) OK |

The server's RSS (VmRSS of /proc/PID/status) is sampled every second. Under load it swings by the
size of what is in flight (four 8 MiB requests and their answers are over 100 MiB), so growth is
measured at rest: at checkpoints (the end of the warm-up, the first 10% of the run at most 30 s,
then about every tenth of the run) the traffic pauses, the in-flight requests finish, and one
second later RSS is read. "start" is the first checkpoint, "end" the one after the traffic has
stopped, growth = end - start; "max" is the largest sample of all, under load included. Even at
rest RSS varies by about +-15 MiB (what the allocator keeps of the last 8 MiB buffers), so two
steadier figures come with it: end minus the median of the earlier checkpoints, and the
checkpoints' least-squares slope (MiB per minute), which says whether memory still climbs or has
levelled off.

glibc and large buffers: by default glibc raises its mmap threshold to the size of the largest
block freed so far, so after the first 8 MiB request such buffers come from the heap, and what
is freed stays mapped: RSS at rest climbs to a high-water mark that follows the peak of
concurrent large requests. `modelport serve` therefore fixes the threshold at 1 MiB
(--malloc-mmap-threshold, server/memory.py); `--server-env MODELPORT_MALLOC_MMAP_THRESHOLD=0`
runs the server with glibc's own behaviour for comparison (figures in benchmarks/README.md).

The result (printed, and written with --json) counts every request by kind and outcome, lists
the first messages of each unexpected outcome, and gives the RSS figures. `run_soak()` is the same
run as a function, for tests.
"""  # noqa: E501 (a markdown table's rows cannot be wrapped)

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc

IR_VERSION = 10  # onnxruntime 1.31 reads IR versions up to 13; onnx >= 1.23 writes 14 by default
OPSET = 17
MIB = 1024 * 1024
SLOW_WIDTH, SLOW_DEPTH, SLOW_ROWS = 256, 8, 256
LISTENING = re.compile(r"listening on (\S+):(\d+)")
KIND_WEIGHTS = {"good": 60, "bad": 20, "large": 8, "cancelled": 12}
KEEP_MESSAGES = 5  # first messages kept per unexpected outcome

BATCHED_CONFIG = """max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 500 }
"""


# ---------------------------------------------------------------- the repository


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "soak",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _save(model: onnx.ModelProto, root: Path, name: str, config: str | None = None) -> None:
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


def build_repository(root: Path, large_width: int = 1024) -> Path:
    """add_mul, add_mul_b8 (dynamic batching), strings, scale (y = 2x) and slow (a matmul chain)."""
    pair = [("a", TensorProto.FLOAT, [None, 4]), ("b", TensorProto.FLOAT, [None, 4])]
    add_mul = _model(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        pair,
        [("sum", TensorProto.FLOAT, [None, 4]), ("prod", TensorProto.FLOAT, [None, 4])],
    )
    _save(add_mul, root, "add_mul")
    _save(add_mul, root, "add_mul_b8", BATCHED_CONFIG)
    _save(
        _model([helper.make_node("Identity", ["x"], ["y"])], [("x", TensorProto.STRING, [None, 2])],
               [("y", TensorProto.STRING, [None, 2])]),
        root,
        "strings",
    )
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    _save(
        _model(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            [("x", TensorProto.FLOAT, [None, large_width])],
            [("y", TensorProto.FLOAT, [None, large_width])],
            [two],
        ),
        root,
        "scale",
    )
    weight = (np.random.default_rng(0).standard_normal((SLOW_WIDTH, SLOW_WIDTH))
              / np.sqrt(SLOW_WIDTH)).astype(np.float32)
    nodes, previous = [], "x"
    for i in range(SLOW_DEPTH):
        out = "y" if i == SLOW_DEPTH - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [out]))
        previous = out
    _save(
        _model(
            nodes,
            [("x", TensorProto.FLOAT, [None, SLOW_WIDTH])],
            [("y", TensorProto.FLOAT, [None, SLOW_WIDTH])],
            [numpy_helper.from_array(weight, "w")],
        ),
        root,
        "slow",
    )
    return root


# ---------------------------------------------------------------- the server


class ServeProcess:
    """`modelport serve` in a subprocess, its output in a log file."""

    def __init__(self, repository: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        script = Path(sys.executable).with_name("modelport")
        command = ([str(script)] if script.exists()
                   else [sys.executable, "-c", "from modelport.client.cli import main; raise SystemExit(main())"])
        command += ["serve", "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "0",
                    "--metrics-port", "0", "--host", "127.0.0.1", *extra_args]  # fmt: skip
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **(env or {})})  # fmt: skip
        self.address = ""

    def wait_listening(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                return self.address
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("modelport serve did not start; its log:\n"
                           f"{self.log_path.read_text(errors='replace')[-4000:]}")

    def rss_kib(self) -> int | None:
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# ---------------------------------------------------------------- requests


def _raw_request(model: str, inputs: list[tuple[str, str, list[int], bytes]],
                 version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, data in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def _pair(rows: int = 2) -> tuple[bytes, bytes]:
    return np.ones((rows, 4), "<f4").tobytes(), np.full((rows, 4), 2.0, "<f4").tobytes()


def _bad_requests() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode]]:
    """(name, request, the code it must get)."""
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    a, b = _pair()
    good = [("a", "FP32", [2, 4], a), ("b", "FP32", [2, 4], b)]
    mixed = _raw_request("add_mul", good)
    mixed.inputs[0].contents.fp32_contents.extend([1.0] * 8)
    unknown_output = _raw_request("add_mul", good)
    unknown_output.outputs.add(name="nope")
    framing = struct.pack("<I", 1) + b"a" + struct.pack("<I", 99) + b"b"
    return [
        ("unknown_model", _raw_request("nope", good), not_found),
        ("unknown_version", _raw_request("add_mul", good, version="7"), not_found),
        ("wrong_datatype", _raw_request("add_mul", [("a", "FP64", [1, 4], a), ("b", "FP32", [2, 4], b)]), invalid),
        ("unknown_datatype", _raw_request("add_mul", [("a", "FLOAT", [2, 4], a), ("b", "FP32", [2, 4], b)]), invalid),
        ("raw_size", _raw_request("add_mul", [("a", "FP32", [2, 4], a[:-4]), ("b", "FP32", [2, 4], b)]), invalid),
        ("wrong_shape", _raw_request("add_mul", [("a", "FP32", [4, 2], a), ("b", "FP32", [4, 2], b)]), invalid),
        ("negative_dim", _raw_request("add_mul", [("a", "FP32", [-2, -4], a), ("b", "FP32", [2, 4], b)]), invalid),
        ("huge_dims", _raw_request("add_mul", [("a", "FP32", [2**40, 4], a), ("b", "FP32", [2, 4], b)]), invalid),
        ("missing_input", _raw_request("add_mul", good[:1]), invalid),
        ("mixed_contents", mixed, invalid),
        ("unknown_output", unknown_output, invalid),
        ("bytes_framing", _raw_request("strings", [("x", "BYTES", [1, 2], framing)]), invalid),
        ("bytes_not_utf8",
         _raw_request("strings", [("x", "BYTES", [1, 2], codec.serialize_bytes(np.array([b"\xff", b"ok"], object)))]),
         invalid),
        ("batch_too_large",
         _raw_request("add_mul_b8", [("a", "FP32", [9, 4], _pair(9)[0]), ("b", "FP32", [9, 4], _pair(9)[1])]),
         invalid),
    ]


class Traffic:
    """One client thread's loop; counts go into the shared `Tally`."""

    def __init__(self, address: str, tally: Tally, seed: int, large_mb: float, stop: threading.Event,
                 gate: Gate, weights: dict[str, float] | None = None) -> None:  # fmt: skip
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.tally = tally
        self.seed, self.sent = seed, 0
        self.rng = np.random.default_rng(seed)
        self.random = random.Random(seed)
        self.stop = stop
        self.gate = gate
        self.bad = _bad_requests()
        rows = max(1, int(large_mb * MIB / (4 * 1024)))
        self.large_x = self.rng.standard_normal((rows, 1024)).astype(np.float32)
        self.large_request = codec.build_request("scale", {"x": self.large_x})
        self.large_expected = self.large_x * np.float32(2.0)
        self.slow_request = codec.build_request(
            "slow", {"x": self.rng.standard_normal((SLOW_ROWS, SLOW_WIDTH)).astype(np.float32)})
        mix = {k: w for k, w in (weights or KIND_WEIGHTS).items() if w > 0}
        self.kinds, self.weights = list(mix), list(mix.values())

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                kind = self.random.choices(self.kinds, self.weights)[0]
                with self.gate:
                    outcome, detail = getattr(self, f"_{kind}")()
                self.tally.add(kind, outcome, detail)
        finally:
            self.channel.close()

    def _call(self, request: pb.ModelInferRequest, timeout: float = 60.0):
        try:
            return self.stub.ModelInfer(request, timeout=timeout), None
        except grpc.RpcError as err:
            return None, err

    def _good(self) -> tuple[str, str]:
        model = self.random.choice(["add_mul", "add_mul_b8", "strings"])
        rows = self.random.randint(1, 8)
        if model == "strings":
            words = [self.random.choice(["", "a", "é", "數據", "soak"]) * self.random.randint(0, 3)
                     for _ in range(rows * 2)]
            x = np.empty((rows, 2), dtype=object)
            x.reshape(-1)[:] = [w.encode() for w in words]
            request, expected = codec.build_request(model, {"x": x}), {"y": x}
        else:
            a = self.rng.standard_normal((rows, 4)).astype(np.float32)
            b = self.rng.standard_normal((rows, 4)).astype(np.float32)
            request, expected = codec.build_request(model, {"a": a, "b": b}), {"sum": a + b, "prod": a * b}
        # Unique ids: the server keeps each one's prediction for labelled feedback, a map that must
        # stay bounded (--quality-pending) however long the run.
        self.sent += 1
        request.id = f"soak-{self.seed}-{self.sent}"
        return self._check(request, expected)

    def _large(self) -> tuple[str, str]:
        return self._check(self.large_request, {"y": self.large_expected})

    def _check(self, request: pb.ModelInferRequest, expected: dict[str, np.ndarray]) -> tuple[str, str]:
        response, error = self._call(request)
        if error is not None:
            return f"error:{error.code().name}", error.details() or ""
        outputs = codec.decode_response(response)
        for name, want in expected.items():
            got = outputs.get(name)
            if got is None or got.shape != want.shape or not np.array_equal(got, want):
                return "wrong_answer", f"{request.model_name}: output {name} differs"
        return "ok", ""

    def _bad(self) -> tuple[str, str]:
        name, request, code = self.random.choice(self.bad)
        response, error = self._call(request)
        if error is None:
            return "accepted", f"{name}: answered OK"
        if error.code() != code:
            return f"wrong_code:{error.code().name}", f"{name}: expected {code.name}: {error.details()}"
        if not error.details():
            return "no_message", name
        return "refused", ""

    def _cancelled(self) -> tuple[str, str]:
        if self.random.random() < 0.5:
            future = self.stub.ModelInfer.future(self.slow_request, timeout=60.0)
            time.sleep(self.random.uniform(0.0, 0.015))
            future.cancel()
        else:
            future = self.stub.ModelInfer.future(self.slow_request, timeout=self.random.uniform(0.001, 0.015))
        try:
            response = future.result()
        except grpc.FutureCancelledError:
            return "cancelled", ""
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                return code.name.lower(), ""
            return f"error:{code.name}", err.details() or ""
        y = codec.decode_response(response).get("y")
        return (("completed", "") if y is not None and y.shape == (SLOW_ROWS, SLOW_WIDTH)
                else ("wrong_answer", "slow: bad output"))


class Gate:
    """Lets the controller pause the traffic: `with gate:` around each request; `quiet()` waits
    until no request is in flight and holds new ones back until `resume()`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._in_flight = 0

    def __enter__(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._open)
            self._in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def quiet(self, timeout: float = 120.0) -> bool:
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    def resume(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


class Tally:
    """Thread-safe counts per kind and outcome, with the first messages of unexpected outcomes."""

    EXPECTED = {
        "good": {"ok"},
        "large": {"ok"},
        "bad": {"refused"},
        "cancelled": {"cancelled", "deadline_exceeded", "completed"},
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.messages: dict[str, list[str]] = defaultdict(list)
        self.counting = True

    def add(self, kind: str, outcome: str, detail: str) -> None:
        with self._lock:
            self.counts[kind][outcome] += 1
            if outcome not in self.EXPECTED[kind] and len(self.messages[f"{kind}/{outcome}"]) < KEEP_MESSAGES:
                self.messages[f"{kind}/{outcome}"].append(detail)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {kind: dict(counter) for kind, counter in sorted(self.counts.items())}

    def unexpected(self, kind: str) -> int:
        with self._lock:
            return sum(n for outcome, n in self.counts.get(kind, {}).items() if outcome not in self.EXPECTED[kind])


# ---------------------------------------------------------------- the run


def _slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 3:
        return 0.0
    t = np.array([s[0] for s in samples]) / 60.0
    rss = np.array([s[1] for s in samples]) / 1024.0
    return float(np.polyfit(t, rss, 1)[0])


def run_soak(
    seconds: float = 600.0,
    *,
    threads: int = 4,
    large_mb: float = 8.0,
    warmup: float | None = None,
    seed: int = 0,
    weights: dict[str, float] | None = None,
    serve_args: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Soak a fresh `modelport serve` for `seconds` (warm-up included) and return the figures.
    `weights` ({kind: weight}, default KIND_WEIGHTS) sets the mix; a kind left out is not sent;
    `server_env` adds environment variables for the server (e.g. glibc's MALLOC_* tunables)."""
    warmup = min(30.0, 0.1 * seconds) if warmup is None else warmup
    workdir = Path(tempfile.mkdtemp(prefix="modelport-soak-"))
    say = progress or (lambda _text: None)
    try:
        repository = build_repository(workdir / "models")
        server = ServeProcess(repository, workdir / "serve.log", serve_args, server_env)
        address = server.wait_listening()
        say(f"soak: modelport serve pid {server.process.pid} on {address}; {threads} threads for {seconds:.0f} s "
            f"(warm-up {warmup:.0f} s)")  # fmt: skip
        try:
            result = _drive(server, address, seconds, threads, large_mb, warmup, seed, weights, say)
        finally:
            result_code = server.stop()
        result["server_exit_code"] = result_code
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _drive(server: ServeProcess, address: str, seconds: float, threads: int, large_mb: float, warmup: float,
           seed: int, weights: dict[str, float] | None, say: Callable[[str], None]) -> dict:  # fmt: skip
    tally, stop, gate = Tally(), threading.Event(), Gate()
    clients = [Traffic(address, tally, seed + i, large_mb, stop, gate, weights) for i in range(threads)]
    workers = [threading.Thread(target=c.run, name=f"soak-{i}", daemon=True) for i, c in enumerate(clients)]
    samples: list[tuple[float, int]] = []  # (seconds since start, VmRSS KiB), under load
    rest: list[tuple[float, int]] = []  # the same, with no request in flight (checkpoints)
    start = time.monotonic()
    checkpoints = _checkpoints(seconds, warmup)
    for worker in workers:
        worker.start()
    next_report = start + 10.0
    while (now := time.monotonic()) - start < seconds:
        rss = server.rss_kib()
        if rss is None:
            break  # the server died: reported below
        samples.append((now - start, rss))
        if checkpoints and now - start >= checkpoints[0]:
            checkpoints.pop(0)
            gate.quiet()
            rest.append((time.monotonic() - start, _settled_rss(server)))
            gate.resume()
        if now >= next_report:
            counts = tally.snapshot()
            total = sum(sum(c.values()) for c in counts.values())
            say(f"  {now - start:5.0f} s  {total} requests  RSS {rss / 1024:.1f} MiB  "
                f"failed good {tally.unexpected('good') + tally.unexpected('large')}")  # fmt: skip
            next_report += 10.0
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    stop.set()
    for worker in workers:
        worker.join(120)
    elapsed = time.monotonic() - start
    alive = server.process.poll() is None
    ready = False
    if alive:
        rest.append((time.monotonic() - start, _settled_rss(server)))
        with grpc.insecure_channel(address) as channel:
            try:
                ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            except grpc.RpcError:
                ready = False
    return _summary(tally, samples, rest, warmup, elapsed, threads, large_mb, alive, ready)


def _checkpoints(seconds: float, warmup: float) -> list[float]:
    """When to pause and measure RSS at rest: at the end of the warm-up, then about every tenth of
    the run (at least 10 s apart); the last one is taken after the traffic stops."""
    step = max(10.0, (seconds - warmup) / 10.0)
    points, t = [], warmup
    while t < seconds - step / 2:
        points.append(t)
        t += step
    return points


def _settled_rss(server: ServeProcess, settle: float = 1.0) -> int:
    """VmRSS once in-flight work (e.g. ONNX Runtime still running a cancelled request) is done."""
    time.sleep(settle)
    return server.rss_kib() or 0


def _summary(tally: Tally, samples: list[tuple[float, int]], rest: list[tuple[float, int]], warmup: float,
             elapsed: float, threads: int, large_mb: float, alive: bool, ready: bool) -> dict:  # fmt: skip
    counts = tally.snapshot()
    loaded = [s for s in samples if s[0] >= warmup] or samples[-1:]
    start_kib = rest[0][1] if rest else 0
    end_kib = rest[-1][1] if rest else 0
    # At rest RSS still varies by +-15 MiB with what the allocator kept of the last 8 MiB buffers;
    # the median of the earlier checkpoints is a baseline that one low or high reading cannot move.
    baseline_kib = float(np.median([kib for _, kib in rest[:-1]])) if len(rest) > 1 else float(start_kib)
    max_kib = max((s[1] for s in loaded + rest), default=0)
    total = sum(sum(c.values()) for c in counts.values())
    return {
        "seconds": round(elapsed, 1),
        "warmup_seconds": warmup,
        "threads": threads,
        "large_mb": large_mb,
        "requests": total,
        "requests_per_second": round(total / elapsed, 1) if elapsed else 0.0,
        "counts": counts,
        "failed_good": tally.unexpected("good") + tally.unexpected("large"),
        "bad_not_refused_right": tally.unexpected("bad"),
        "cancelled_unexpected": tally.unexpected("cancelled"),
        "unexpected_messages": dict(tally.messages),
        "server_alive": alive,
        "server_ready_at_end": ready,
        "rss": {
            # start/end: at rest (no request in flight) after the warm-up and after the run;
            # max: the largest sample, under load included
            "start_mib": round(start_kib / 1024, 1),
            "max_mib": round(max_kib / 1024, 1),
            "end_mib": round(end_kib / 1024, 1),
            "growth_mib": round((end_kib - start_kib) / 1024, 1),
            "growth_pct": round(100.0 * (end_kib - start_kib) / start_kib, 1) if start_kib else 0.0,
            "baseline_mib": round(baseline_kib / 1024, 1),
            "growth_vs_baseline_mib": round((end_kib - baseline_kib) / 1024, 1),
            "rest_slope_mib_per_min": round(_slope_mib_per_min(rest), 2),
            "rest_samples": [(round(t, 1), round(kib / 1024, 1)) for t, kib in rest],
            "samples": [(round(t, 1), round(kib / 1024, 1)) for t, kib in samples],
        },
    }


def report(result: dict) -> str:
    """The human-readable summary."""
    lines = [f"soak: {result['seconds']:.0f} s, {result['threads']} threads, {result['requests']} requests "
             f"({result['requests_per_second']}/s)"]  # fmt: skip
    for kind, outcomes in result["counts"].items():
        lines.append(f"  {kind:<10} " + ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items())))
    lines.append(f"  failed good requests: {result['failed_good']}; bad requests not refused with the right code: "
                 f"{result['bad_not_refused_right']}; unexpected cancel outcomes: "
                 f"{result['cancelled_unexpected']}")  # fmt: skip
    for key, messages in result["unexpected_messages"].items():
        lines.append(f"    {key}: {messages[0]}")
    rss = result["rss"]
    lines.append(f"  RSS after warm-up {rss['start_mib']} MiB, max {rss['max_mib']} MiB, end {rss['end_mib']} MiB: "
                 f"growth {rss['growth_mib']:+} MiB ({rss['growth_pct']:+}%), "
                 f"{rss['growth_vs_baseline_mib']:+} MiB over the median of the checkpoints; slope "
                 f"{rss['rest_slope_mib_per_min']:+} MiB/min; at rest: "
                 + ", ".join(f"{t:.0f}s {m} MiB" for t, m in rss["rest_samples"]))  # fmt: skip
    lines.append(f"  server alive {result['server_alive']}, ready at end {result['server_ready_at_end']}")
    return "\n".join(lines)


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KIND_WEIGHTS:
            raise argparse.ArgumentTypeError(f"unknown kind '{kind}'; expected {', '.join(KIND_WEIGHTS)}")
        mix[kind] = float(weight or 1)
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n"
                                            "  python benchmarks/soak.py --seconds 600 --json soak.json")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="length of the run, warm-up included (default 600)")
    parser.add_argument("--threads", type=int, default=4, help="client threads, each on its own channel (default 4)")
    parser.add_argument("--large-mb", type=float, default=8.0,
                        help="size of a large request's tensor in MiB (default 8)")
    parser.add_argument("--warmup", type=float,
                        help="seconds before RSS 'start' is taken (default 10%% of the run, at most 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", type=_mix, help="request mix as kind=weight,... "
                        f"(default {','.join(f'{k}={w}' for k, w in KIND_WEIGHTS.items())}); "
                        "e.g. cancelled=1 for cancels only")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the server, repeatable (e.g. MALLOC_MMAP_THRESHOLD_=1048576)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("serve_args", nargs="*", help="extra `modelport serve` flags, after --")
    args = parser.parse_args(argv)
    result = run_soak(args.seconds, threads=args.threads, large_mb=args.large_mb, warmup=args.warmup, seed=args.seed,
                      weights=args.mix, serve_args=tuple(args.serve_args),
                      server_env=dict(item.split("=", 1) for item in args.server_env))  # fmt: skip
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    clean = (result["failed_good"] == 0 and result["bad_not_refused_right"] == 0 and result["cancelled_unexpected"] == 0
             and result["server_alive"] and result["server_ready_at_end"])  # fmt: skip
    return 0 if clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
