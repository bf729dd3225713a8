"""In-process ONNX Runtime throughput: the ceiling for any server of the same model and threads.

C Python threads call `session.run` on one shared session (ONNX Runtime releases the GIL) in a
closed loop for S seconds after a warm-up; items/s and latency percentiles of the calls that
finished inside the window are reported. Random inputs follow the model's signature (dynamic
leading dimension = batch, other dynamic dimensions 1).

    python benchmarks/inprocess.py --model /tmp/bench-models/mlp/1/model.onnx --batch 1 \\
        --intra-op-threads 2 --concurrency 1 --seconds 5 [--json out.json]
    # on a GPU (onnxruntime-gpu): the same loop on the CUDA execution provider
    python benchmarks/inprocess.py --model /tmp/bench-models/resnet50/1/model.onnx --batch 32 --provider cuda

With `--provider cuda` the session gets the options `modelport serve --execution-provider cuda`
gives its sessions (device_id only, ONNX Runtime's defaults otherwise), so the two compare;
inputs are numpy arrays, so every call copies them to the GPU, as a server's calls do.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}  # fmt: skip


@dataclass(frozen=True)
class InProcessResult:
    """Throughput and latency (ms) of session.run calls inside the window."""

    model: str
    batch: int
    intra_op_threads: int
    concurrency: int
    seconds: float
    calls: int
    calls_per_s: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    provider: str = "CPUExecutionProvider"  # the provider the session really runs on (first of its list)


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def preload_gpu_libraries() -> None:
    """onnxruntime-gpu >= 1.21 finds CUDA/cuDNN from the nvidia-* wheels (or torch) only after
    `preload_dlls()`; a no-op where it does not exist or fails (the session then says so by
    falling back to CPU)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - a missing library shows up as the CPU fallback
        print(f"onnxruntime.preload_dlls() failed: {exc}", file=sys.stderr)


def session_providers(provider: str = "cpu", device_id: int = 0) -> list:
    """ONNX Runtime's provider list for `provider` (cpu, cuda, tensorrt), CPU last as the fallback."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider '{provider}'; expected one of {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    preload_gpu_libraries()
    return [(PROVIDERS[provider], {"device_id": str(device_id)}), "CPUExecutionProvider"]


def random_feed(session: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every input of `session`, batch dimension `batch`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        dtype = _NUMPY.get(arg.type)
        if dtype is None:
            raise ValueError(f"input '{arg.name}' has type {arg.type}; this benchmark generates numeric inputs only")
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(dims)]
        if np.dtype(dtype).kind == "f":
            feed[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[arg.name] = rng.integers(0, 2 if dtype is np.bool_ else 100, shape).astype(dtype)
    return feed


def measure(
    model: str | Path,
    batch: int = 1,
    intra_op_threads: int = 1,
    seconds: float = 5.0,
    concurrency: int = 1,
    warmup: float = 1.0,
    provider: str = "cpu",
    device_id: int = 0,
) -> InProcessResult:
    """Closed-loop `session.run` from `concurrency` threads on one session (`provider`: cpu,
    cuda or tensorrt; the result's `provider` says which one the session really got)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(model), sess_options=options, providers=session_providers(provider, device_id))
    feed = random_feed(session, batch)
    session.run(None, feed)  # first-run costs (allocations, cuDNN's algorithm search) stay out of the clock
    start = time.perf_counter() + 0.05
    window_start, window_end = start + warmup, start + warmup + seconds
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]

    def loop(samples: list[float]) -> None:
        clock = time.perf_counter
        while clock() < start:
            time.sleep(0.001)
        while (sent := clock()) < window_end:
            session.run(None, feed)
            done = clock()
            if window_start <= done <= window_end:
                samples.append(done - sent)

    threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.concatenate([np.asarray(s) for s in per_thread]) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]) if ms.size else (math.nan,) * 3
    return InProcessResult(
        model=str(model),
        batch=batch,
        intra_op_threads=intra_op_threads,
        concurrency=concurrency,
        seconds=seconds,
        calls=int(ms.size),
        calls_per_s=ms.size / seconds,
        items_per_s=ms.size * batch / seconds,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        avg_ms=float(ms.mean()) if ms.size else math.nan,
        provider=session.get_providers()[0],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="In-process ONNX Runtime throughput (no server, no gRPC).")
    p.add_argument("--model", required=True, type=Path, help="path to model.onnx")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--concurrency", type=int, default=1, help="threads calling session.run (default 1)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                   help="ONNX Runtime execution provider (default cpu; cuda needs onnxruntime-gpu)")
    p.add_argument("--device-id", type=int, default=0, help="GPU for --provider cuda/tensorrt (default 0)")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    args = p.parse_args(argv)
    r = measure(args.model, args.batch, args.intra_op_threads, args.seconds, args.concurrency, args.warmup,
                args.provider, args.device_id)  # fmt: skip
    if r.provider != PROVIDERS[args.provider]:
        print(f"warning: the session runs on {r.provider}, not {PROVIDERS[args.provider]} (CPU fallback)",
              file=sys.stderr)
    print(
        f"{r.model}: batch {r.batch}, {r.intra_op_threads} intra-op threads, {r.concurrency} calling threads, "
        f"{r.provider}, {r.seconds:g} s\n"
        f"  {r.calls_per_s:.1f} calls/s, {r.items_per_s:.1f} items/s; latency ms p50 {r.p50_ms:.3f} "
        f"p90 {r.p90_ms:.3f} p99 {r.p99_ms:.3f} avg {r.avg_ms:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
